"""Lazy package exports (PEP 562): a package lists its public names and imports their module on first use.

So ``import g3.agent`` or ``from g3.data.query_image import load_query_image`` does not load torch, pandas,
FAISS or LangGraph before something needs them, and the ``g3`` command answers ``--help`` or rejects a
missing photo at once. Nothing is hidden: a missing dependency raises where the name is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names live in submodules: ``{module: names}``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups find a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | where.keys())

    return __getattr__, __dir__
