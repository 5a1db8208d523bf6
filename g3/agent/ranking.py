"""The learned ranker in the pipeline (``verify.ranker``): it re-chooses the answer and states its confidence.

After the verify step (and the LMM rerank, whose choice is then one of the candidates and a feature), the
query's pool (`g3.agent.pooling.state_pool`) is scored by the fitted `g3.verify.ranker.Ranker`: the
candidates are re-ordered by the ranker's score (recorded as the ``ranker`` component beside the fixed
rule's components), and the answer's calibrated P(within 25 / 200 / 750 km) becomes
`GeoPrediction.confidence`. A pool of another shape than the ranker's training pools (embeddings, LMM answers
or neighbours that none of them had, or that all of them had) gets a warning on the prediction: the confidence
is then not calibrated for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from g3.agent.pooling import state_pool
from g3.verify import ScoredCandidate

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from g3.models import GeoAligner
    from g3.verify.ranker import Ranker


def rank_state(state: Any, aligner: GeoAligner, ranker: Ranker) -> dict[str, Any]:
    """The state update of the rank step: ``ranked`` re-ordered by the ranker, ``confidence``, and the ``pool``
    it scored (the candidates do not change after this step, so `G3.pool` reuses it)."""
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
    update: dict[str, Any] = {"ranked": ranked, "confidence": ranker.calibrated(probabilities[order[0]]), "pool": pool}
    shape = ranker.shape_warning(pool)
    if shape is not None:
        log.warning("%s", shape)
        update["warnings"] = [shape]
    return update
