"""Withholding answers that are not sure enough (selective prediction).

A user asks for "only answers with at least 80 % chance of lying within 200 km" as ``{"200": 0.8}``
(``g3 locate --min-confidence 200=0.8``, the server's ``min_confidence`` request field). A prediction whose
calibrated `GeoPrediction.confidence` misses a requirement, or that has no confidence at all (no fitted
ranker chose it), is *withheld*: reported as withheld with its probability, never as an answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from g3.agent.prediction import GeoPrediction

#: The radii (km) of `GeoPrediction.confidence`, as its keys.
RADII: tuple[str, ...] = ("25", "200", "750")
#: The answer fields a withheld prediction's JSON leaves out (so that nothing reads it as an answer).
ANSWER_FIELDS: tuple[str, ...] = ("lat", "lon", "score", "source", "address")


class Shortfall(BaseModel):
    """One requirement a prediction does not meet: P(within ``radius_km``) is ``probability`` (None: unknown),
    below the ``min_probability`` asked for."""

    model_config = ConfigDict(frozen=True)

    radius_km: str
    probability: float | None
    min_probability: float
    message: str


def check_requirements(requirements: Mapping[str, Any]) -> dict[str, float]:
    """``requirements`` (radius → minimum probability) checked: radii among `RADII`, probabilities in [0, 1].

    Raises:
        ValueError: naming the bad radius or probability and what is allowed.
    """
    checked: dict[str, float] = {}
    for radius, value in requirements.items():
        key = str(radius).strip().removesuffix("km").strip()
        if key not in RADII:
            raise ValueError(f"no confidence is given for {radius!r} km; choose one of {', '.join(RADII)}")
        try:
            probability = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the minimum probability for {key} km must be a number, not {value!r}") from None
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            raise ValueError(f"the minimum probability for {key} km must lie in [0, 1], not {value!r}")
        checked[key] = probability
    return checked


def parse_min_confidence(specs: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``["200=0.8", "25=0.5"]`` as ``{"200": 0.8, "25": 0.5}`` (a percentage such as ``80%`` also reads).

    Raises:
        ValueError: a spec that is not ``RADIUS=PROBABILITY`` with a known radius and a probability in [0, 1].
    """
    pairs: dict[str, Any] = {}
    for spec in specs:
        radius, sep, value = spec.partition("=")
        if not sep:
            raise ValueError(f"{spec!r} is not RADIUS=PROBABILITY (e.g. 200=0.8: at least 80 % within 200 km)")
        value = value.strip()
        pairs[radius] = float(value[:-1]) / 100 if value.endswith("%") and _is_number(value[:-1]) else value
    return check_requirements(pairs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def shortfalls(prediction: GeoPrediction, requirements: Mapping[str, float]) -> list[Shortfall]:
    """The requirements ``prediction`` misses (empty: it may be given as an answer)."""
    return confidence_shortfalls(prediction.confidence, requirements)


def confidence_shortfalls(confidence: Mapping[str, float] | None, requirements: Mapping[str, float]) -> list[Shortfall]:
    """The requirements an answer with this ``confidence`` (radius → probability; None: no ranker) misses."""
    missed = []
    for radius, needed in requirements.items():
        probability = None if confidence is None else confidence.get(radius)
        if probability is None:
            message = (f"no calibrated probability of lying within {radius} km (no fitted ranker chose this answer: "
                       "set verify.ranker to a folder written by g3 verify fit)")  # fmt: skip
        elif probability < needed:
            message = f"P(within {radius} km) = {100 * probability:.0f} %, below the {100 * needed:.0f} % asked for"
        else:
            continue
        missed.append(Shortfall(radius_km=radius, probability=probability, min_probability=needed, message=message))
    return missed


def withheld_text(missed: list[Shortfall]) -> str:
    """One sentence saying that the answer is withheld and why."""
    return "WITHHELD: no answer given: " + "; ".join(s.message for s in missed) + "."


def withheld_payload(prediction: GeoPrediction, missed: list[Shortfall]) -> dict[str, Any]:
    """A withheld prediction as JSON: no answer fields (`ANSWER_FIELDS`), ``"withheld"`` listing the missed
    requirements, and the rest (confidence, degradations, candidates as evidence) as in the prediction."""
    data = {k: v for k, v in prediction.model_dump(mode="json").items() if k not in ANSWER_FIELDS}
    return {"withheld": [s.model_dump(mode="json") for s in missed], "withheld_message": withheld_text(missed), **data}


def confidence_text(confidence: Mapping[str, float] | None) -> str:
    """``"P(≤25 km) 41 %, P(≤200 km) 78 %, P(≤750 km) 93 %"``; ``""`` without a confidence."""
    if not confidence:
        return ""
    return ", ".join(f"P(≤{r} km) {100 * p:.0f} %" for r, p in sorted(confidence.items(), key=lambda kv: float(kv[0])))
