"""The built-in (fixed) selection rules over a `Pool`, compared with the learned ranker in ``g3 verify fit``.

A rule maps a pool to the point it answers, or None when the pool lacks what the rule needs (no
embeddings, no neighbour, no generated answer). `rule_answers` applies a rule to many pools and falls back
to the pool's first candidate where the rule has no answer, so every rule answers every query. Add a rule
by adding it to `RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from g3.verify.pools import RANKED_SOURCES, Pool
from g3.verify.rules import cluster_select
from g3.verify.scoring import DEFAULT_VERIFY_CONFIG, consensus_scores, consensus_select, embedding_scores

Point = tuple[float, float]
Rule = Callable[[Pool], Point | None]


def candidate_coords(pool: Pool) -> np.ndarray:
    """The candidates' ``(n, 2)`` (lat, lon)."""
    return np.array([[c.lat, c.lon] for c in pool.candidates], dtype=np.float64)


def _point(coords: np.ndarray, row: int) -> Point:
    return float(coords[row, 0]), float(coords[row, 1])


def g3_embedding(pool: Pool) -> Point | None:
    """G3's rule: the candidate whose location embedding is most similar (cosine) to the photo's GPS vector."""
    if pool.query_gps is None or pool.candidate_embeddings is None:
        return None
    scores = embedding_scores(np.asarray(pool.query_gps), np.asarray(pool.candidate_embeddings))
    return _point(candidate_coords(pool), int(np.argmax(scores)))


def top1_neighbour(pool: Pool) -> Point | None:
    """The best retrieved neighbour (or the best-ranked retrieved / gallery candidate)."""
    if pool.neighbours:
        lat, lon = pool.neighbours[0]
        return float(lat), float(lon)
    ranked = [
        (c.rank if c.rank is not None else 0, i) for i, c in enumerate(pool.candidates) if c.source in RANKED_SOURCES
    ]
    return _point(candidate_coords(pool), min(ranked)[1]) if ranked else None


def lmm_first(pool: Pool) -> Point | None:
    """The LMM's first answer: the first generated candidate (the first prompt's first sample)."""
    for c in pool.candidates:
        if c.source not in RANKED_SOURCES:
            return c.lat, c.lon
    return None


def consensus(pool: Pool) -> Point | None:
    """g3's consensus score over all candidates, the neighbours adding support (``VerifyConfig`` defaults)."""
    coords = candidate_coords(pool)
    support = np.asarray(pool.neighbours, dtype=np.float64) if pool.neighbours else None
    scores = consensus_scores(
        coords,
        support=support,
        support_weights=None if support is None else np.full(len(support), DEFAULT_VERIFY_CONFIG.neighbour_weight),
        scale_km=DEFAULT_VERIFY_CONFIG.consensus_scale_km,
    )
    return _point(coords, int(np.argmax(scores)))


def consensus_neighbours(pool: Pool) -> Point | None:
    """g3's `consensus_select` over the retrieved neighbours alone."""
    if not pool.neighbours:
        return None
    points = np.asarray(pool.neighbours, dtype=np.float64)
    return _point(points, consensus_select(points))


def cluster(pool: Pool) -> Point | None:
    """The densest-cluster rule (`g3.verify.rules.cluster_select`) over the candidates and the neighbours."""
    # only retrieved photos carry a rank here: a gallery point's rank r is not neighbour r (it counts as generated)
    ranks = [c.rank if c.source == "retrieval" else None for c in pool.candidates]
    choice = cluster_select(candidate_coords(pool), ranks=ranks, neighbours=pool.neighbours or None)
    return choice.lat, choice.lon


#: name → rule, in the order tables show them.
RULES: dict[str, Rule] = {
    "g3_embedding": g3_embedding,
    "top1_neighbour": top1_neighbour,
    "lmm_first": lmm_first,
    "consensus": consensus,
    "consensus_neighbours": consensus_neighbours,
    "cluster": cluster,
}


def rule_answers(rule: Rule, pools: Sequence[Pool]) -> tuple[np.ndarray, int]:
    """The rule's answers ``(N, 2)`` over the pools and how many pools it answered itself (the others fall
    back to their first candidate)."""
    out = np.empty((len(pools), 2))
    answered = 0
    for i, pool in enumerate(pools):
        point = rule(pool)
        if point is None:
            point = (pool.candidates[0].lat, pool.candidates[0].lon)
        else:
            answered += 1
        out[i] = point
    return out, answered
