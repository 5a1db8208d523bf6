"""Imports point down the layers of docs/design.md: nothing imports from a layer above it (or beside it)."""

from __future__ import annotations

import ast
from pathlib import Path

import g3

#: Package (first component under g3) → layer. A module may import its own package and lower layers.
LAYERS = {
    "__init__": 0,
    "assets": 0,
    "configs": 0,  # the shipped YAML configurations, found by name
    "errors": 0,
    "io": 0,
    "lazy": 0,
    "media": 0,  # what kind of image bytes hold (magic numbers), for the server and the LMM backends
    "geo": 1,
    "neighbours": 1,  # one photo's retrieved neighbours: index → prompts → agent → JSON
    "ray_support": 1,  # the generic Ray plumbing (session, actors, jobs) of index builds and evaluation runs
    "models": 2,
    "data": 2,
    "index": 3,
    "lmm": 3,
    "verify": 3,
    "train": 3,
    "agent": 4,
    "serve": 5,
    "evaluation": 5,
    "fetch": 5,  # g3 fetch official: downloads, then converts (models), imports (index), writes a bundle (agent)
    "cli": 6,  # the command line sits on top: it wires serve and evaluation too
}
ROOT = Path(g3.__file__).parent


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_g3_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "g3" or a.name.startswith("g3.")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and (node.module == "g3" or node.module.startswith("g3."))
        ):
            if node.module == "g3":
                found |= {f"g3.{a.name}" for a in node.names if a.name != "__version__"}
            else:
                found.add(node.module)
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(LAYERS), f"give these a layer: {sorted(packages - set(LAYERS))}"


def test_imports_point_down() -> None:
    violations = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        own = package_of(".".join(rel.parts))
        for target in imported_g3_modules(path):
            other = package_of(target)
            if other != own and LAYERS[other] >= LAYERS[own] and other not in ("errors", "io", "__init__", "assets"):
                violations.append(f"{'/'.join(rel.parts)}.py imports {target} (layer {LAYERS[other]} ≥ {LAYERS[own]})")
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from g3.train import train_aligner\nimport g3.cli\n")
    assert imported_g3_modules(bad) == {"g3.train", "g3.cli"}
