"""The LMM backends g3 knows, by the name ``lmm.backend`` gives them, and `make_backend`.

A new backend is one file and one registry line: a module in ``g3/lmm/`` holding its config type (a subclass of
`g3.lmm.config.LMMConfig` with ``backend: Literal["name"] = "name"``, and `LMMConfig.concurrent_calls` if it takes
more than one call at once) and its builder (``build(config) -> LMMBackend``), then one `BACKENDS` entry naming
both as ``"module:attribute"``. Config types are imported when a configuration is read and builders only when a
backend is made, so the module imports nothing heavy at its top (the shipped backends' config types live in
`g3.lmm.config` because their modules import torch or vLLM). `G3Config.lmm` then accepts ``backend: name``,
``g3.agent`` builds it with `make_backend`, and nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from g3.errors import ConfigError
from g3.lmm.config import DEFAULT_BACKEND, LMMConfig

if TYPE_CHECKING:
    from g3.lmm.base import LMMBackend


@dataclass(frozen=True)
class Backend:
    """One backend: its config type and its builder (None: no backend is made), as ``"module:attribute"``."""

    config: str
    build: str | None


#: backend name (``lmm.backend``) → its config type and builder
BACKENDS: dict[str, Backend] = {
    "none": Backend("g3.lmm.config:NoLMMConfig", None),
    "vllm": Backend("g3.lmm.config:VLLMConfig", "g3.lmm.vllm_backend:build"),
    "openai": Backend("g3.lmm.config:OpenAIConfig", "g3.lmm.openai_backend:build"),
    "transformers": Backend("g3.lmm.config:TransformersConfig", "g3.lmm.transformers_backend:build"),
}


def _attribute(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def config_types() -> dict[str, type[LMMConfig]]:
    """Each backend's config type, by name."""
    return {name: _attribute(entry.config) for name, entry in BACKENDS.items()}


def config_type(backend: str) -> type[LMMConfig]:
    """The config type of ``backend``; `ConfigError` naming the known ones for any other name."""
    types = config_types()
    if backend not in types:
        raise ConfigError(f"unknown lmm.backend {backend!r}: use one of {', '.join(types)}")
    return types[backend]


def _backend_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("backend", DEFAULT_BACKEND))
    return str(getattr(value, "backend", DEFAULT_BACKEND))


def config_union() -> Any:
    """The type of ``G3Config.lmm``: one of the backends' config types, chosen by ``backend`` (default vllm)."""
    members = tuple(Annotated[kind, Tag(name)] for name, kind in config_types().items())
    return Annotated[
        Union[members],  # noqa: UP007 - built from the registry at run time
        Discriminator(
            _backend_of,
            custom_error_type="unknown_backend",
            custom_error_message=f"unknown lmm.backend: use one of {', '.join(BACKENDS)}",
        ),
    ]


def carry_over(settings: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """One backend's ``lmm:`` settings as ``backend``'s: ``backend: NAME`` and the settings it takes too (model,
    timeout_s, …), when a configuration switches backends (``extends:`` with another ``lmm.backend``, ``g3 locate
    --lmm-url``) or a saved configuration holds settings its backend does not take."""
    fields = config_type(backend).model_fields
    return {**{key: value for key, value in settings.items() if key in fields}, "backend": backend}


def make_backend(config: LMMConfig) -> LMMBackend | None:
    """The backend a config names, wrapped in a micro-batcher (`g3.lmm.batching.BatchingBackend`) that passes it
    `LMMConfig.concurrent_calls` calls at once; None for ``backend: none``. ``config.model`` is used as given
    (the agent resolves ``tiny://`` names first)."""
    from g3.lmm.batching import BatchingBackend

    config_type(config.backend)  # an unknown name fails here, with the known ones
    spec = BACKENDS[config.backend].build
    if spec is None:
        return None
    build: Callable[[Any], LMMBackend] = _attribute(spec)
    return BatchingBackend(build(config), max_wait_ms=config.batch_window_ms,
                           max_concurrent_calls=config.concurrent_calls())  # fmt: skip
