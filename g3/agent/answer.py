"""What a finished graph state answers: the `GeoPrediction` (`prediction_of`) and the candidate pool (`pool_of`).

Pure functions of the final state (`g3.agent.graph.LocateState`), so `G3.alocate`, `G3.astream` and
`G3.alocate_with_pool` build the same answer from the same state, whichever way they ran the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from g3.agent.config import G3Config
from g3.agent.degradation import assess, rerank_failed
from g3.agent.prediction import GeoPrediction, LMMUsage, Neighbour, RankedCandidate
from g3.lmm.base import LMMBackend, LMMResponse
from g3.lmm.rerank import RERANK_TAG
from g3.neighbours import Neighbours
from g3.verify import Pool
from g3.verify.pools import RANKED_SOURCES

if TYPE_CHECKING:
    from g3.models import GeoAligner


def neighbour_rows(found: Neighbours | None) -> list[Neighbour]:
    """The prediction's rows of retrieved neighbours (none: no retrieval), from their one JSON form."""
    if found is None:
        return []
    return [Neighbour(lat=lat, lon=lon, score=score, place=place, img_id=img_id)
            for lat, lon, score, place, img_id in found.rows()]  # fmt: skip


def raw_answers(responses: Sequence[LMMResponse], config: G3Config) -> dict[str, list[str]]:
    """Each prompt's raw LMM texts (a failed prompt: none), in the ensemble's prompt order."""
    order = {spec.name: i for i, spec in enumerate(config.effective_ensemble.prompts)}
    ordered = sorted(responses, key=lambda r: order.get(r.tag, len(order)))
    return {r.tag: list(r.texts) for r in ordered}


def prediction_of(state: Any, config: G3Config, backend: LMMBackend | None) -> GeoPrediction:
    """The `GeoPrediction` of a finished graph state; ``backend`` (None: no LMM) names the LMM in the usage and
    in degradations."""
    ranked = state["ranked"]
    best = ranked[0]
    responses = state.get("responses", [])
    endpoint = backend.endpoint if backend is not None else "none"
    timings = dict(state.get("timings", {}))
    per_prompt = [v for k, v in timings.items() if k.startswith("generate:")]
    if per_prompt:
        timings["generate"] = max(per_prompt)
    warnings = list(state.get("warnings", []))
    if config.note:
        warnings.append(config.note)
    degradations = assess(
        config.pipeline.mode,
        responses,
        generated=sum(c.source not in RANKED_SOURCES and c.source != RERANK_TAG for c in state.get("candidates", [])),
        # the LMM's own answers: neither retrieved/gallery points nor the rerank's pick among them
        parse=state.get("parse"),
        endpoint=endpoint,
    )
    reranked = state.get("rerank")
    answers = raw_answers(responses, config)
    tokens = [r.usage for r in responses]
    if reranked is not None:  # verify.mode lmm_rerank: its raw answer and tokens are reported with the prompts'
        answers[reranked.response.tag] = list(reranked.response.texts)
        tokens.append(reranked.response.usage)
        if reranked.error is not None:
            degradations.append(rerank_failed(reranked.error, endpoint))
    return GeoPrediction(
        lat=best.candidate.lat,
        lon=best.candidate.lon,
        score=float(best.score),
        source=best.candidate.source,
        address=state.get("address"),
        candidates=[
            RankedCandidate(
                lat=s.candidate.lat,
                lon=s.candidate.lon,
                source=s.candidate.source,
                sample=s.candidate.sample,
                score=float(s.score),
                components={k: float(v) for k, v in s.components.items()},
                rank=s.rank,
            )
            for s in ranked
        ],
        similar=neighbour_rows(state.get("similar")),
        dissimilar=neighbour_rows(state.get("dissimilar")),
        usage=LMMUsage(
            backend=backend.name if backend is not None else None,
            prompts=len(responses),
            failed_prompts=sum(not r.ok for r in responses),
            prompt_tokens=sum(u.prompt_tokens for u in tokens),
            completion_tokens=sum(u.completion_tokens for u in tokens),
        ),
        parse=state["parse"].to_dict() if "parse" in state else {},
        raw_answers=answers,
        timings=timings,
        warnings=warnings,
        mode=config.pipeline.mode,
        note=config.note,
        degradations=degradations,
        confidence=state.get("confidence"),
    )


def pool_of(state: Any, aligner: GeoAligner) -> Pool:
    """The candidate pool of a finished graph state: the ranker's when it ran, else built from the state."""
    if "pool" in state:
        return state["pool"]  # type: ignore[no-any-return]
    from g3.agent.pooling import state_pool

    return state_pool(state, aligner)
