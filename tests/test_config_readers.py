"""Every setting of `G3Config` is read somewhere: a field nobody reads is a knob that does nothing.

The check walks G3Config's fields recursively (nested configs, every LMM backend's config type, the prompt specs)
and looks, by AST, for an attribute access of the field's name in g3's code outside the module that defines it,
or, in that module, inside a function or method that code elsewhere uses (a setting read where it lives, such as
``EnsembleConfig.kept_answers`` reading ``candidates_per_prompt`` for the agent). A read by a validator alone does
not count: nothing outside calls a validator by name. A read elsewhere counts only through something that names a
configuration (``config.lmm.model``, ``ensemble.seed``, ``spec.samples``): ``request.seed`` or ``self.model`` of
another class has a field of the same name, not this setting.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from pydantic import BaseModel

import g3
from g3.agent.config import G3Config
from g3.lmm.registry import config_types

ROOT = Path(g3.__file__).parent
#: What the expression before ``.setting`` must mention for a read elsewhere to count as a read of the setting.
CONFIG_RECEIVER = re.compile(r"config|cfg|settings|spec|lmm|ensemble|pipeline|pipe|verify|options|params")

#: Settings read only where they are defined (by a validator or a property of their own config), and why.
READ_IN_PLACE: dict[str, str] = {}


def nested_models(annotation: object) -> Iterator[type[BaseModel]]:
    """The config types inside a field's type (``X | None``, ``tuple[X, ...]``, a discriminated union, …)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from nested_models(arg)


def settings(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel], str]]:
    """``(dotted path, config type, field name)`` of every field of ``model``, nested ones included."""
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}", model, name
        for inner in dict.fromkeys(nested_models(info.annotation)):
            yield from settings(inner, f"{prefix}{name}.")


def all_settings() -> list[tuple[str, type[BaseModel], str]]:
    found = list(settings(G3Config))
    for kind in config_types().values():  # every backend's settings, not only those of the default one
        found += settings(kind, "lmm.")
    return list(dict.fromkeys(found))


def defining_file(model: type[BaseModel], name: str) -> Path:
    """The file of the class in ``model``'s hierarchy that declares field ``name``."""
    owner = next(c for c in model.__mro__ if name in getattr(c, "__annotations__", {}))
    return Path(inspect.getfile(owner)).resolve()


def read_attributes(node: ast.AST, *, of_config: bool = False) -> set[str]:
    """The attribute names read (``x.name`` in a load context) in ``node``; ``of_config``: only where ``x`` names a
    configuration (`CONFIG_RECEIVER`)."""
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)
        and (not of_config or CONFIG_RECEIVER.search(ast.unparse(n.value)))
    }  # fmt: skip


def used_names(tree: ast.AST) -> set[str]:
    """The names a module uses: attributes it reads, names it loads or imports."""
    names = read_attributes(tree) | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


@cache
def modules() -> dict[Path, ast.Module]:
    return {path.resolve(): ast.parse(path.read_text(encoding="utf-8")) for path in ROOT.rglob("*.py")}


@cache
def used_elsewhere(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """The attributes the modules other than ``path`` read, and the names they use."""
    elsewhere = [tree for other, tree in modules().items() if other != path]
    attributes = frozenset().union(*(read_attributes(tree, of_config=True) for tree in elsewhere))
    return attributes, frozenset().union(*(used_names(tree) for tree in elsewhere))


def is_read(path: Path, name: str) -> bool:
    """Whether field ``name``, defined in ``path``, is read by another module or by a function of ``path`` that
    another module uses."""
    attributes, used = used_elsewhere(path)
    if name in attributes:
        return True
    functions = [n for n in ast.walk(modules()[path]) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    return any(f.name in used and name in read_attributes(f) for f in functions)


def unread() -> list[str]:
    return sorted({dotted for dotted, model, name in all_settings() if not is_read(defining_file(model, name), name)})


def test_the_walk_reaches_nested_and_per_backend_settings() -> None:
    dotted = {d for d, _, _ in all_settings()}
    assert {"cache_dir", "lmm.device", "lmm.engine_args", "lmm.base_url", "ensemble.prompts.k_similar"} <= dotted
    assert {"verify.rerank_candidates", "pipeline.gallery_k", "ensemble.candidates_per_prompt"} <= dotted


def test_the_check_tells_a_read_setting_from_an_unread_one() -> None:
    prompts = (ROOT / "lmm" / "prompts.py").resolve()
    assert is_read(prompts, "candidates_per_prompt")  # through EnsembleConfig.kept_answers, called by the agent
    assert not is_read(prompts, "a_setting_nobody_reads")
    assert "seed" in read_attributes(ast.parse("request.seed")) and not read_attributes(
        ast.parse("request.seed"), of_config=True
    )  # another class's field of the same name is no read of the setting


def test_every_setting_is_read_outside_its_definition() -> None:
    missing = [d for d in unread() if d not in READ_IN_PLACE]
    assert missing == [], f"settings nobody reads (use them, remove them, or explain in READ_IN_PLACE): {missing}"


def test_the_allow_list_names_only_settings_read_in_place() -> None:
    assert set(READ_IN_PLACE) <= set(unread()), "READ_IN_PLACE names a setting that is now read elsewhere"
