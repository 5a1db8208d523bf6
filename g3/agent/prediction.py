"""`GeoPrediction`: what `G3.locate` returns — the answer, every candidate and the evidence, as JSON."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field


class RankedCandidate(BaseModel):
    """One candidate location with where it came from and how it scored."""

    model_config = ConfigDict(frozen=True)

    lat: float
    lon: float
    source: str = Field(description="'retrieval', 'gallery' or the prompt that produced it (e.g. 'rag_10')")
    sample: int = Field(description="answer index within its prompt, or retrieval rank")
    score: float = Field(description="fused verification score, relative to this photo's candidates (GeoPrediction)")
    components: dict[str, float] = Field(description="raw score components: embedding, consensus, retrieval")
    rank: int


class Neighbour(BaseModel):
    """A retrieved database image used as evidence."""

    model_config = ConfigDict(frozen=True)

    img_id: str | None
    lat: float
    lon: float
    score: float
    place: str = ""


class LMMUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    backend: str | None = None
    prompts: int = 0
    failed_prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Degradation(BaseModel):
    """Why a prediction is not what its configuration promises (see `g3.agent.degradation` for the codes).

    ``reason`` is a stable code (``"lmm_unreachable"``, ``"lmm_timeout"``, ``"lmm_error"``,
    ``"prompts_failed"``, ``"no_parseable_answer"``); ``message`` is a sentence naming the prompt(s), the
    error and the LMM's URL or model.
    """

    model_config = ConfigDict(frozen=True)

    reason: str
    message: str


class GeoPrediction(BaseModel):
    """The location of one photo. ``lat``/``lon`` in degrees; ``score`` is the chosen candidate's fused
    verification score, a relative score: each component is min-max normalised within this photo's candidate
    set, so the winner has 1.0 (with the paper's weights) and a lone candidate 0. It ranks the candidates of
    one photo; it is not a confidence, a probability, nor comparable across photos. With a fitted ranker
    (``verify.ranker``) the ranker orders the candidates and ``score`` is its score (the mean over 1 / 25 / 200 /
    750 / 2500 km of its raw probability of lying within that distance; the fixed rule's value stays in the
    candidates' ``components``), and ``confidence`` holds the answer's calibrated probabilities.

    ``candidates`` are ranked best first (the answer is rank 0). ``warnings`` say when a step degraded
    (an LMM that failed or timed out, no parseable answer, …); ``degradations`` (and ``degraded``) say
    whether and why the answer is not what the configuration promises; ``timings`` are seconds per step.
    """

    model_config = ConfigDict(frozen=True)

    lat: float
    lon: float
    score: float = Field(
        description="relative score: the answer's fused verification score, min-max normalised within the photo's "
        "candidate set (1.0 for the winner with the paper's weights, 0 for a lone candidate); with verify.ranker "
        "the ranker's score; not a confidence"
    )
    source: str
    address: dict[str, str] | None = None
    candidates: list[RankedCandidate]
    similar: list[Neighbour] = Field(default_factory=list)
    dissimilar: list[Neighbour] = Field(default_factory=list)
    usage: LMMUsage = Field(default_factory=LMMUsage)
    parse: dict[str, Any] = Field(default_factory=dict, description="answer-parsing counts (g3.lmm.ParseStats)")
    raw_answers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="the LMM's raw answer texts per prompt, in the ensemble's prompt order (empty: no LMM ran)",
    )
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    mode: str = "full"
    note: str | None = None
    degradations: list[Degradation] = Field(
        default_factory=list, description="why the answer is not what the configuration promises (empty: it is)"
    )
    confidence: dict[str, float] | None = Field(
        default=None,
        description="calibrated probability that the answer lies within r km, keyed by r ('25', '200', '750'); "
        "None when no fitted ranker (verify.ranker) chose the answer",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def degraded(self) -> bool:
        """True when a step the configuration asks for did not deliver (e.g. the LMM failed: retrieval only)."""
        return bool(self.degradations)

    @property
    def place(self) -> str:
        """ "City, State, Country" of the answer when known, else ""."""
        if not self.address:
            return ""
        return ", ".join(v for k in ("city", "state", "country") if (v := self.address.get(k)))
