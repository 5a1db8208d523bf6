"""LMM verification (listwise rerank): one more request showing the photo and the top candidates, numbered with
their place names, asking which one is right under a JSON schema (``{"choice": <number>}``).

This is the request and its answer only; which candidates are shown and what the choice does is the verify
step's business (`g3.agent.steps`). The template is ``rerank.j2`` in the prompt folder (the shipped one by
default; a custom ``ensemble.prompt_dir`` must hold one too). Its variable is ``candidates``: a list of
``{number, lat, lon, place}``, numbered from 1 in the order shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g3.errors import RerankError
from g3.lmm.base import LMMRequest
from g3.lmm.prompts import PromptError, load_template

#: The template of the rerank request, in the prompt folder.
RERANK_TEMPLATE = "rerank.j2"
#: Tag of the rerank request and source of the candidate it chooses (`g3.verify.Candidate.source`).
RERANK_TAG = "lmm_rerank"
# {"choice":20} is 12 characters; tokenizers split it into at most 12 tokens, so 16 never cut a constrained answer
_MAX_TOKENS = 16
_OBJECT = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class RerankOption:
    """One candidate as the rerank prompt shows it: its location and place name ("" when unknown)."""

    lat: float
    lon: float
    place: str = ""


def rerank_schema(count: int) -> dict[str, Any]:
    """JSON schema of the answer: ``{"choice": n}`` with n an integer from 1 to ``count``."""
    if count < 1:
        raise ValueError(f"a rerank needs at least one candidate, got {count}")
    choice = {"type": "integer", "minimum": 1, "maximum": count}
    return {"type": "object", "properties": {"choice": choice}, "required": ["choice"], "additionalProperties": False}


def render_rerank_prompt(options: Sequence[RerankOption], prompt_dir: Path | None = None) -> str:
    """The text of the rerank prompt for these candidates (numbered from 1)."""
    template = load_template(RERANK_TEMPLATE, prompt_dir)
    rows = [{"number": i, "lat": o.lat, "lon": o.lon, "place": o.place} for i, o in enumerate(options, 1)]
    try:
        return str(template.text({"candidates": rows})).strip()
    except Exception as exc:  # jinja raises many kinds; all mean the template is broken
        raise PromptError(f"prompt template {RERANK_TEMPLATE!r} cannot be rendered: {exc}") from exc


def rerank_request(
    image: bytes,
    options: Sequence[RerankOption],
    *,
    prompt_dir: Path | None = None,
    structured: bool = True,
    seed: int | None = None,
) -> LMMRequest:
    """The rerank request: one greedy answer (temperature 0), constrained to `rerank_schema` when ``structured``."""
    return LMMRequest(
        prompt=render_rerank_prompt(options, prompt_dir),
        image=image,
        n=1,
        temperature=0.0,
        max_tokens=_MAX_TOKENS,
        json_schema=rerank_schema(len(options)) if structured else None,
        seed=seed,
        tag=RERANK_TAG,
    )


def parse_choice(text: str, count: int) -> int:
    """The candidate a rerank answer chose, as a 0-based row of the ``count`` shown.

    The answer is a JSON object ``{"choice": n}`` (the whole text, or the last such object in it, e.g. inside a
    code fence) with n an integer from 1 to ``count``. Raises `RerankError` naming the answer otherwise.
    """
    shown = text if len(text) <= 120 else text[:117] + "..."
    found: object = None
    for match in _OBJECT.finditer(text):
        try:
            obj = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "choice" in obj:
            found = obj["choice"]
    if found is None:
        raise RerankError(f'the rerank answer {shown!r} holds no JSON object {{"choice": <number>}}')
    if isinstance(found, bool) or not isinstance(found, int) or not 1 <= found <= count:
        raise RerankError(f"the rerank answer {shown!r} chose {found!r}, not a candidate number from 1 to {count}")
    return found - 1
