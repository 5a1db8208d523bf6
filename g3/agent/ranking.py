"""The learned ranker in the pipeline (``verify.ranker``): it re-chooses the answer and states its confidence.

After the verify step (and the LMM rerank, whose choice is then one of the candidates and a feature), the
query's pool (`g3.agent.pooling.state_pool`) is scored by the fitted `g3.verify.ranker.Ranker`: the
candidates are re-ordered by the ranker's score (recorded as the ``ranker`` component beside the fixed
rule's components), and the answer's calibrated P(within 25 / 200 / 750 km) becomes
`GeoPrediction.confidence`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from g3.agent.pooling import state_pool
from g3.verify import ScoredCandidate

if TYPE_CHECKING:
    from g3.models import GeoAligner
    from g3.verify.ranker import Ranker


def rank_state(state: Any, aligner: GeoAligner, ranker: Ranker) -> dict[str, Any]:
    """The state update of the rank step: ``ranked`` re-ordered by the ranker, and ``confidence``."""
    candidates = state["candidates"]
    pool = state_pool(state, aligner)
    probabilities = ranker.probabilities(pool)
    score = probabilities.mean(axis=1)
    order = np.lexsort((np.arange(len(score)), -score)).tolist()  # score descending, then input order
    before = {id(s.candidate): s.components for s in state["ranked"]}
    ranked = [
        ScoredCandidate(
            candidate=candidates[i],
            score=float(score[i]),
            components={**before.get(id(candidates[i]), {}), "ranker": float(score[i])},
            rank=rank,
        )
        for rank, i in enumerate(order)
    ]
    return {"ranked": ranked, "confidence": ranker.calibrated(probabilities[order[0]])}
