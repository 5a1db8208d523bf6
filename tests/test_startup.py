"""Start-up stays light (issue 17): the command line, the configuration and the photo checks import no heavy
library, the packages export their names lazily, and a missing dependency still fails where it is used."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import g3

ROOT = Path(g3.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "faiss", "langgraph", "llama_index", "pandas", "matplotlib", "openai", "fastapi")
LAZY_PACKAGES = ("g3.agent", "g3.data", "g3.evaluation", "g3.index", "g3.lmm", "g3.models", "g3.train", "g3.verify")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh process that imports this checkout's g3."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def heavy_loaded_by(code: str) -> set[str]:
    """The heavy top-level packages in ``sys.modules`` after running ``code`` (its SystemExit allowed)."""
    probe = (
        f"import json, sys\ntry:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = run_python(probe)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import g3.cli",
        "import sys; sys.argv = ['g3', '--help']; from g3.cli import main; main()",
        "import sys; sys.argv = ['g3', 'locate', '--help']; from g3.cli import main; main()",
        "import g3.agent, g3.data, g3.evaluation, g3.index, g3.lmm, g3.models, g3.train",
        "from g3.agent import G3Config; G3Config.load('configs/tiny.yaml')",
        "from g3.data.query_image import load_query_image",
        "from g3.lmm.prompts import paper_prompts as p, render_prompt as r; from g3.neighbours import Neighbours as N; "
        "r(p()[0], N.empty(), N.empty())",
    ],
)
def test_start_up_imports_nothing_heavy(code: str) -> None:
    assert heavy_loaded_by(code) == set()


def test_the_check_sees_a_heavy_import() -> None:
    assert {"torch", "langgraph"} <= heavy_loaded_by("from g3.agent import G3")


def _type_checking_names(init: Path) -> set[str]:
    """The names imported under ``if TYPE_CHECKING:`` in a package's ``__init__.py``."""
    names: set[str] = set()
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            names |= {alias.name for stmt in node.body if isinstance(stmt, ast.ImportFrom) for alias in stmt.names}
    return names


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_exports_are_the_modules_objects(name: str) -> None:
    package = importlib.import_module(name)
    exports = {n: module for module, names in package._EXPORTS.items() for n in names}
    assert set(package.__all__) == set(exports) == _type_checking_names(Path(package.__file__))
    for public, module in exports.items():
        assert getattr(package, public) is getattr(importlib.import_module(module), public)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018


def test_a_missing_dependency_still_fails_where_it_is_used() -> None:
    code = "import sys; sys.modules['langgraph'] = None; import g3.agent; from g3.agent import G3"
    done = run_python(code)
    assert done.returncode == 1
    assert "ModuleNotFoundError" in done.stderr and "langgraph" in done.stderr
