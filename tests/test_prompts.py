"""G3's prompt ensemble: paper defaults, rendering (banks, like RichPromptTemplate), custom prompt folders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from g3.lmm.base import COORDINATE_SCHEMA
from g3.lmm.prompts import (
    EnsembleConfig,
    PromptError,
    PromptSpec,
    build_requests,
    default_prompt_dir,
    load_template,
    render_prompt,
)
from g3.neighbours import Neighbours

SIMILAR = Neighbours(
    np.array([[10.0 + i, 20.0 + i] for i in range(20)]),
    np.zeros(20),
    places=[f"Town{i}, Country{i}" for i in range(20)],
)
DISSIMILAR = Neighbours(
    np.array([[-10.0 - i, -20.0 - i] for i in range(20)]), np.zeros(20), places=[f"Far{i}" for i in range(20)]
)
NONE = Neighbours.empty()
IMAGE = b"\xff\xd8 jpeg bytes"
PAIR = re.compile(r"\((-?\d+\.\d{4}), (-?\d+\.\d{4})\)")


def test_paper_defaults() -> None:
    config = EnsembleConfig()
    assert [(p.name, p.k_similar, p.k_dissimilar, p.samples) for p in config.prompts] == [
        ("zero_shot", 0, 0, 10),
        ("rag_5", 5, 5, 10),
        ("rag_10", 10, 10, 10),
        ("rag_15", 15, 15, 10),
    ]
    assert (config.temperature, config.max_tokens, config.candidates_per_prompt, config.retrieved_candidates) == (
        1.2,
        200,
        5,
        1,
    )
    assert config.max_k_similar == 15 and config.max_k_dissimilar == 15


def test_requests_carry_the_right_neighbours() -> None:
    requests = build_requests(EnsembleConfig(seed=100), IMAGE, SIMILAR, DISSIMILAR)
    assert [r.tag for r in requests] == ["zero_shot", "rag_5", "rag_10", "rag_15"]
    assert [r.seed for r in requests] == [100, 101, 102, 103]
    assert all(r.image == IMAGE and r.n == 10 and r.json_schema == COORDINATE_SCHEMA for r in requests)
    assert PAIR.findall(requests[0].prompt) == []
    for request, k in zip(requests[1:], (5, 10, 15), strict=True):
        pairs = [(float(a), float(b)) for a, b in PAIR.findall(request.prompt)]
        similar = [(10.0 + i, 20.0 + i) for i in range(k)]
        dissimilar = [(-10.0 - i, -20.0 - i) for i in range(k)]
        assert pairs == similar + dissimilar  # best first, similar before dissimilar
        assert '{"latitude": <float>, "longitude": <float>}' in request.prompt
        assert "Town0" not in request.prompt  # place names are off by default


def test_place_names_and_short_evidence() -> None:
    spec = PromptSpec(name="rag", k_similar=3, k_dissimilar=1, with_place_names=True)
    text = render_prompt(spec, SIMILAR, DISSIMILAR)
    assert "(10.0000, 20.0000) Town0, Country0" in text and "Far0" in text and "Town3" not in text
    few = Neighbours(np.array([[1.0, 2.0], [np.nan, np.nan]]), np.zeros(2))
    text = render_prompt(PromptSpec(name="rag", k_similar=5, k_dissimilar=5), few, NONE)
    assert PAIR.findall(text) == [("1.0000", "2.0000")]  # only the valid neighbours there are
    assert "look different" not in text


def test_structured_output_off_and_validation() -> None:
    requests = build_requests(EnsembleConfig(structured_output=False), IMAGE, SIMILAR, DISSIMILAR)
    assert all(r.json_schema is None for r in requests)
    with pytest.raises(ValidationError, match="unique"):
        EnsembleConfig(prompts=(PromptSpec(name="a"), PromptSpec(name="a")))
    with pytest.raises(ValidationError, match="is not a folder"):
        EnsembleConfig(prompt_dir=Path("/no/such/folder"))
    with pytest.raises(PromptError, match=r"\['rag_5', 'rag_10', 'rag_15'\] show retrieved neighbours"):
        build_requests(EnsembleConfig(), IMAGE, NONE, NONE)
    zero_shot_only = EnsembleConfig(prompts=(PromptSpec(name="zs", template="zero_shot.j2"),))
    assert len(build_requests(zero_shot_only, IMAGE, NONE, NONE)) == 1


def test_custom_prompt_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.j2").write_text("Guess where. {% for n in similar %}[{{ n.lat }}]{% endfor %} k={{ k_similar }}")
    config = EnsembleConfig(prompt_dir=tmp_path, prompts=(PromptSpec(name="mine", template="mine.j2", k_similar=2),))
    assert build_requests(config, IMAGE, SIMILAR, DISSIMILAR)[0].prompt == "Guess where. [10.0][11.0] k=2"
    # an edited template is picked up (the cache follows the file's modification time)
    (tmp_path / "mine.j2").write_text("Changed {{ k_similar }}")
    os.utime(tmp_path / "mine.j2", ns=(1, 1))
    assert build_requests(config, IMAGE, SIMILAR, DISSIMILAR)[0].prompt == "Changed 2"
    with pytest.raises(PromptError, match=r"'rag\.j2' not found in .* \(available: \['mine\.j2'\]\)"):
        render_prompt(PromptSpec(name="x"), SIMILAR, DISSIMILAR, tmp_path)
    (tmp_path / "broken.j2").write_text("{% for n in similar %} unclosed")
    with pytest.raises(PromptError, match="cannot be rendered"):
        render_prompt(PromptSpec(name="b", template="broken.j2"), SIMILAR, DISSIMILAR, tmp_path)


def test_shipped_templates_and_cli_export(tmp_path: Path) -> None:
    assert {"zero_shot.j2", "rag.j2"} <= {p.name for p in default_prompt_dir().iterdir()}
    g3 = str(Path(sys.executable).with_name("g3"))
    subprocess.run([g3, "prompts", "export", str(tmp_path / "p")], check=True, capture_output=True)
    assert (tmp_path / "p" / "rag.j2").read_text() == (default_prompt_dir() / "rag.j2").read_text()
    again = subprocess.run([g3, "prompts", "export", str(tmp_path / "p")], capture_output=True, text=True)
    assert again.returncode != 0 and "--force" in again.stderr
    shown = subprocess.run([g3, "prompts", "show", "-k", "2"], check=True, capture_output=True, text=True).stdout
    assert shown.count("--- rag_") == 3 and "(48.8584, 2.2945)" in shown


def test_rendering_gives_llama_index_rich_prompt_template_text(tmp_path: Path) -> None:
    """banks, called directly, renders the text of llama-index's RichPromptTemplate (which renders with banks)."""
    from llama_index.core.prompts import RichPromptTemplate

    (tmp_path / "x.j2").write_text(
        "  {% for n in similar %}\n{{ n.lat | round(1) }}{{ ',' if not loop.last }}\n{% endfor %}"
    )
    similar = [{"lat": 10.0 + i, "lon": 20.0 + i, "place": f"Town{i}"} for i in range(5)]
    dissimilar = [{"lat": -10.0 - i, "lon": -20.0 - i, "place": f"Far{i}"} for i in range(3)]
    for path in [*default_prompt_dir().glob("*.j2"), tmp_path / "x.j2"]:
        for k, names in ((0, False), (5, False), (3, True)):
            context = {"similar": similar[:k], "dissimilar": dissimilar[:k], "with_place_names": names,
                       "k_similar": k, "k_dissimilar": k}  # fmt: skip
            expected = RichPromptTemplate(path.read_text()).format(**context)
            assert load_template(path.name, path.parent).text(context) == expected
    x = PromptSpec(name="x", template="x.j2", k_similar=2)
    assert render_prompt(x, SIMILAR, DISSIMILAR, tmp_path) == "10.0,\n11.0"
    (tmp_path / "chat.j2").write_text('{% chat role="user" %}Where?{% endchat %}')
    with pytest.raises(PromptError, match="chat blocks"):
        render_prompt(PromptSpec(name="c", template="chat.j2"), SIMILAR, DISSIMILAR, tmp_path)
