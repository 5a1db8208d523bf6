"""The tiny setting shows G3's method offline: constrained decoding makes the random LLaVA answer coordinates,
so every prompt of the ensemble contributes candidates, and `--explain`/`--json` show the raw LMM texts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import SHARED_DATA
from typer.testing import CliRunner

from g3.agent import G3, G3Config, GeoPrediction, RankedCandidate
from g3.cli import app
from g3.lmm.base import COORDINATE_SCHEMA

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
PHOTOS = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))[:3]
PROMPTS = ["zero_shot", "rag_5", "rag_10", "rag_15"]  # the tiny ensemble, in its order

needs_photos = pytest.mark.skipif(not PHOTOS, reason="the shared IM2GPS3k photos are not available")


@pytest.fixture(scope="module")
def tiny_g3(tiny_assets: Path) -> Iterator[G3]:
    config = G3Config.load(TINY).model_copy(update={"cache_dir": str(tiny_assets.parent)})
    assert [p.name for p in config.effective_ensemble.prompts] == PROMPTS
    assert config.lmm.backend == "transformers" and config.ensemble.structured_output  # the schema is asked for
    with G3.from_config(config) as g3:
        yield g3


@needs_photos
def test_every_prompt_of_the_tiny_ensemble_yields_parsed_candidates(tiny_g3: G3) -> None:
    samples = {p.name: p.samples for p in tiny_g3.config.effective_ensemble.prompts}
    for photo in PHOTOS:
        p: GeoPrediction = tiny_g3.locate(photo)
        assert not p.degraded and p.usage.failed_prompts == 0
        # the raw texts of each prompt, in the ensemble's order; each one is JSON of the coordinate schema
        assert list(p.raw_answers) == PROMPTS
        for prompt, texts in p.raw_answers.items():
            assert len(texts) == samples[prompt]
            for text in texts:
                jsonschema.validate(json.loads(text), COORDINATE_SCHEMA)
        assert p.parse["parsed"] == p.parse["answers"] == sum(samples.values())
        # every prompt contributes candidates that are its own parsed answers
        per_source: dict[str, set[tuple[float, float]]] = {}
        for c in p.candidates:
            per_source.setdefault(c.source, set()).add((c.lat, c.lon))
        assert set(per_source) == {*PROMPTS, "retrieval"}
        for prompt in PROMPTS:
            answers = {(float(a["latitude"]), float(a["longitude"])) for a in map(json.loads, p.raw_answers[prompt])}
            assert per_source[prompt] <= answers
        assert p.source in per_source and not any("could not be parsed" in w for w in p.warnings)


@needs_photos
def test_explain_and_json_show_the_raw_lmm_texts(tiny_assets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("G3_CACHE_DIR", str(tiny_assets.parent))
    runner = CliRunner()
    explained = runner.invoke(app, ["locate", "--config", str(TINY), str(PHOTOS[0]), "--explain"])
    assert explained.exit_code == 0, explained.output
    out = explained.output
    assert "raw LMM answers (the first of each prompt" in out
    shown = [line.strip() for line in out.splitlines() if line.strip().startswith(tuple(f"{p} (" for p in PROMPTS))]
    assert [line.split(" ", 1)[0] for line in shown] == PROMPTS
    for line in shown:
        assert line.split(": ", 1)[1].startswith('{"latitude":')
    as_json = runner.invoke(app, ["locate", "--config", str(TINY), str(PHOTOS[0]), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert list(data["raw_answers"]) == PROMPTS and all(len(v) == 4 for v in data["raw_answers"].values())
    # the explanation shows each prompt's first text as --json has it (the same seeded run)
    for line, prompt in zip(shown, PROMPTS, strict=True):
        assert line.split(": ", 1)[1] == data["raw_answers"][prompt][0]


def test_explain_escapes_cuts_and_names_failed_prompts() -> None:
    from g3.cli.locate import _explanation

    candidate = RankedCandidate(lat=1.0, lon=2.0, source="retrieval", sample=0, score=1.0, components={}, rank=0)
    raw = {"zero_shot": ["ab\x1b[31m\ncd" + "x" * 300, "second"], "rag_5": []}
    p = GeoPrediction(lat=1.0, lon=2.0, score=1.0, source="retrieval", candidates=[candidate], raw_answers=raw)
    lines = _explanation(p).splitlines()
    (zero_shot,) = [line for line in lines if "zero_shot (2): " in line]
    shown = zero_shot.split(": ", 1)[1]
    assert shown.startswith("ab\\x1b[31m\\ncd") and shown.endswith("…") and len(shown) == 100
    assert "second" not in zero_shot  # only the first text of a prompt
    assert any("rag_5 (0): (no answer: the prompt failed)" in line for line in lines)
