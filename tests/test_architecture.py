"""docs/architecture.md stays true: its layer table is the one the layering test enforces, the modules it
names exist, and its query flow lists exactly the graph's steps."""

from __future__ import annotations

import re
from pathlib import Path

from test_layering import LAYERS

from g3.agent.progress import Step

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")


def table_after(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table under ``heading`` (cells stripped of spaces and backticks)."""
    section = PAGE.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def test_layer_table_is_the_enforced_one() -> None:
    documented = {package: int(layer) for package, layer, *_ in table_after("## Layers")}
    assert documented == LAYERS


def test_flow_lists_the_steps() -> None:
    documented = [row[0] for row in table_after("## The flow of one query")]
    assert len(documented) == len(set(documented))
    assert set(documented) == {s.value for s in Step} - {Step.CHOICES.value}


def test_named_modules_exist() -> None:
    named = set(re.findall(r"`(g3/[\w/]+\.py)`", PAGE)) | set(re.findall(r"`(g3/[\w/]+/)`", PAGE))
    assert named, "the page names no module"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    dotted = set(re.findall(r"`(g3(?:\.\w+)+)", PAGE))
    for name in dotted:
        parts = name.split(".")
        for cut in range(len(parts), 1, -1):  # a module, or an attribute of one
            base = REPO.joinpath(*parts[:cut])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                break
        else:
            raise AssertionError(f"docs/architecture.md names {name}, which is no module of g3")
