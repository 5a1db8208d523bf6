"""G3's prompt ensemble (geo-diversification): prompt specs, template rendering, requests for one image.

The paper's ensemble is one zero-shot prompt and three RAG prompts showing the coordinates of the
5, 10 and 15 most similar and least similar retrieved images; each prompt is sampled ``samples`` times
at a high temperature, and the first ``candidates_per_prompt`` parsed answers of each prompt go to
verification together with the top ``retrieved_candidates`` retrieved coordinates.

Templates are Jinja files (default: the ``prompts/`` folder shipped with g3) rendered by banks, the
template engine of llama-index's ``RichPromptTemplate``: the same text (a test compares them), without
importing llama-index's package (1–3 s on a 2-core machine, at every start of ``g3``).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from g3.errors import PromptError
from g3.lmm.base import COORDINATE_SCHEMA, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, LMMRequest
from g3.neighbours import Neighbours

T = TypeVar("T")


class PromptSpec(BaseModel):
    """One prompt of the ensemble."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="tag carried by every answer of this prompt, e.g. 'rag_10'")
    template: str = Field(default="rag.j2", description="template file in the prompt folder")
    k_similar: int = Field(default=0, ge=0, description="similar neighbours shown")
    k_dissimilar: int = Field(default=0, ge=0, description="dissimilar neighbours shown")
    samples: int = Field(default=10, ge=1, description="answers sampled (n)")
    with_place_names: bool = Field(default=False, description="show neighbours' place names too")


def paper_prompts(samples: int = 10) -> list[PromptSpec]:
    """The paper's ensemble: zero-shot, RAG with 5, 10 and 15 similar + dissimilar coordinates."""
    return [
        PromptSpec(name="zero_shot", template="zero_shot.j2", samples=samples),
        *(PromptSpec(name=f"rag_{k}", k_similar=k, k_dissimilar=k, samples=samples) for k in (5, 10, 15)),
    ]


class EnsembleConfig(BaseModel):
    """Every knob of geo-diversification, with the paper's values as defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: tuple[PromptSpec, ...] = Field(default_factory=lambda: tuple(paper_prompts()), min_length=1)
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0, description="sampling temperature (G3: 1.2)")
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    candidates_per_prompt: int = Field(default=5, ge=1, description="parsed answers per prompt verified (G3: 5)")
    retrieved_candidates: int = Field(default=1, ge=0, description="top retrieved coordinates verified (G3: 1)")
    structured_output: bool = Field(default=True, description="ask backends to constrain answers to the JSON schema")
    prompt_dir: Path | None = Field(default=None, description="folder of templates; None = the ones shipped with g3")
    seed: int | None = Field(default=None, description="sampling seed, for reproducible runs")

    @field_validator("prompts")
    @classmethod
    def _unique_names(cls, prompts: tuple[PromptSpec, ...]) -> tuple[PromptSpec, ...]:
        names = [p.name for p in prompts]
        if len(set(names)) != len(names):
            raise ValueError(f"prompt names must be unique, got {names}")
        return prompts

    @model_validator(mode="after")
    def _dir_exists(self) -> EnsembleConfig:
        if self.prompt_dir is not None and not self.prompt_dir.is_dir():
            raise ValueError(f"prompt_dir {self.prompt_dir} is not a folder")
        return self

    @property
    def max_k_similar(self) -> int:
        return max(p.k_similar for p in self.prompts)

    @property
    def max_k_dissimilar(self) -> int:
        return max(p.k_dissimilar for p in self.prompts)

    def retrieved_count(self, *, answers: bool = True) -> int:
        """How many top retrieved coordinates join the candidates: ``retrieved_candidates``, or at least one
        when there is no LMM answer to verify (``answers=False``: retrieval mode, or every prompt failed)."""
        return self.retrieved_candidates if answers else max(self.retrieved_candidates, 1)

    def retrieval_k(self, *, full: bool) -> tuple[int, int]:
        """``(k_similar, k_dissimilar)`` the retrieve step asks the index for: enough similar neighbours for the
        RAG prompts and the retrieved candidates, and dissimilar ones only when the prompts run (``full``)."""
        return max(self.max_k_similar, self.retrieved_count(answers=False)), self.max_k_dissimilar if full else 0

    def kept_answers(self, parsed: Sequence[T | None]) -> list[tuple[int, T]]:
        """The answers of one prompt that go to verification: the first ``candidates_per_prompt`` that parsed,
        each with its sample index."""
        return [(i, p) for i, p in enumerate(parsed) if p is not None][: self.candidates_per_prompt]


def default_prompt_dir() -> Path:
    """The folder of templates shipped with g3."""
    return Path(str(importlib.resources.files("g3.lmm") / "prompts"))


class _NoRenderCache:
    """banks' render cache, turned off: every photo's evidence differs, so it would only grow."""

    def get(self, context: dict[str, Any]) -> str | None:
        return None

    def set(self, context: dict[str, Any], prompt: str) -> None:
        pass

    def clear(self) -> None:
        pass


@cache
def _template(path: Path, mtime_ns: int) -> Any:
    from banks import Prompt

    text = path.read_text(encoding="utf-8")
    if "endchat" in text:
        raise ValueError("chat blocks ({% chat %}) are not supported: a G3 prompt is one text beside the photo")
    return Prompt(text, render_cache=_NoRenderCache())


def load_template(name: str, prompt_dir: Path | None = None) -> Any:
    """The banks ``Prompt`` of ``name`` in ``prompt_dir`` (cached until the file changes)."""
    folder = prompt_dir or default_prompt_dir()
    path = folder / name
    if not path.is_file():
        available = sorted(p.name for p in folder.glob("*.j2")) if folder.is_dir() else []
        raise PromptError(f"prompt template {name!r} not found in {folder} (available: {available})")
    try:
        return _template(path, path.stat().st_mtime_ns)
    except Exception as exc:  # jinja's syntax errors and friends
        raise PromptError(f"prompt template {path} cannot be rendered: {exc}") from exc


def _shown(found: Neighbours, k: int) -> list[dict[str, Any]]:
    """The template's view of the first ``k`` neighbours (those with finite coordinates)."""
    return [
        {"lat": float(lat), "lon": float(lon), "place": place}
        for (lat, lon), place in zip(found.coordinates[:k], found.places[:k], strict=True)
        if np.isfinite(lat) and np.isfinite(lon)
    ]


def render_prompt(spec: PromptSpec, similar: Neighbours, dissimilar: Neighbours, prompt_dir: Path | None = None) -> str:
    """The text of one prompt for one image, showing its retrieved ``similar`` and ``dissimilar`` neighbours."""
    template = load_template(spec.template, prompt_dir)
    try:
        text = template.text(
            {
                "similar": _shown(similar, spec.k_similar),
                "dissimilar": _shown(dissimilar, spec.k_dissimilar),
                "with_place_names": spec.with_place_names,
                "k_similar": spec.k_similar,
                "k_dissimilar": spec.k_dissimilar,
            }
        )
    except Exception as exc:  # jinja raises many kinds; all mean the template is broken
        raise PromptError(f"prompt template {spec.template!r} cannot be rendered: {exc}") from exc
    return str(text).strip()


def build_requests(
    config: EnsembleConfig, image: bytes, similar: Neighbours, dissimilar: Neighbours
) -> list[LMMRequest]:
    """One `LMMRequest` per prompt of the ensemble for one image (tags = prompt names).

    A RAG prompt shows up to its k neighbours (fewer when there are fewer); a RAG prompt with no
    neighbours at all is an error (configure zero-shot prompts only when there is no retrieval).
    """
    if len(similar) == 0 and len(dissimilar) == 0:
        rag = [p.name for p in config.prompts if p.k_similar or p.k_dissimilar]
        if rag:
            raise PromptError(f"prompts {rag} show retrieved neighbours, but there is no retrieval evidence")
    return [
        LMMRequest(
            prompt=render_prompt(spec, similar, dissimilar, config.prompt_dir),
            image=image,
            n=spec.samples,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            json_schema=dict(COORDINATE_SCHEMA) if config.structured_output else None,
            seed=None if config.seed is None else config.seed + i,
            tag=spec.name,
        )
        for i, spec in enumerate(config.prompts)
    ]
