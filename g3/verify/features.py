"""Candidate features of one pool: what the learned ranker (`g3.verify.ranker`) sees of each candidate.

`pool_features` is a pure, vectorised function of a `Pool`: one row per candidate, one column per name in
`FEATURES` (the ranker's feature schema; its artefact records it and a ranker fitted on another schema is
refused). A value that does not exist for a pool (no embeddings, no neighbours, no generated answer, no
``lmm_rerank`` candidate) is NaN, which LightGBM treats as *missing* (learned, not imputed).

Families:

* **embedding**: G3's cosine between the photo's GPS-aligned vector and the candidate's location
  embedding, its gap to the pool's best cosine and its rank;
* **consensus** at `SCALES_KM` (1, 25, 200, 750 km): the share of the other generated answers, of the
  retrieved neighbours and of everything else in the pool within that distance;
* **nearest neighbour**: distance, rank and similarity of the retrieved photo nearest the candidate,
  whether the candidate coincides (≤ 1 km) with one, and its distance to the top neighbour;
* **own retrieval**: the candidate's rank, similarity and similarity gap to the best (retrieved candidates);
  its sample index (generated candidates);
* **source**: one-hot over `SOURCE_CATEGORIES` (any ``rag_*`` prompt is ``rag``) and, for a ``rag_K`` prompt,
  its K (how many neighbours it was shown), so each RAG prompt is told apart;
* **agreement**: how many other samples and prompts answered within 25 km; whether the candidate agrees
  (≤ 25 km) with an ``lmm_rerank`` candidate (missing when the pool has none);
* **pool**: sizes (candidates, generated answers, prompts, neighbours), whether embeddings exist, and the
  best consensus in the pool (so that a candidate's support is seen relative to its rivals').

Distances are great-circle (haversine) km.
"""

from __future__ import annotations

import numpy as np

from g3.geo import pairwise_haversine_km
from g3.verify.pools import RANKED_SOURCES, Pool
from g3.verify.scoring import embedding_scores

#: Consensus scales, km.
SCALES_KM = (1, 25, 200, 750)
#: Source categories of the one-hot features, in order.
SOURCE_CATEGORIES = ("retrieval", "gallery", "zero_shot", "rag", "lmm_rerank", "other")
#: Distance within which a candidate "agrees" with another answer or an ``lmm_rerank`` choice, km.
AGREE_KM = 25.0
#: Distance within which a candidate lies "at" a retrieved photo's location, km.
AT_PHOTO_KM = 1.0

#: The feature schema: column names of `pool_features`, in order.
FEATURES: tuple[str, ...] = (
    "cosine",
    "cosine_gap",
    "cosine_rank",
    *(f"agree_{group}_{r}km" for group in ("generated", "neighbours", "all") for r in SCALES_KM),
    "nearest_neighbour_km",
    "nearest_neighbour_rank",
    "nearest_neighbour_score",
    "at_retrieved_photo",
    "top_neighbour_km",
    "rank",
    "retrieval_score",
    "retrieval_score_gap",
    "sample",
    *(f"source_{name}" for name in SOURCE_CATEGORIES),
    "rag_k",
    "samples_agree",
    "prompts_agree",
    "prompts_agree_share",
    "agrees_lmm_rerank",
    "lmm_rerank_km",
    "pool_candidates",
    "pool_generated",
    "pool_prompts",
    "pool_neighbours",
    "pool_has_embeddings",
    "pool_best_agree_all_25km",
    "agree_all_25km_gap",
)


def source_category(source: str) -> str:
    """The one-hot category of a candidate's source (``rag_5`` → ``rag``; unknown → ``other``)."""
    if source in SOURCE_CATEGORIES:
        return source
    if source.startswith("rag"):
        return "rag"
    return "other"


def rag_k(source: str) -> float:
    """K of a ``rag_K`` prompt (``rag_10`` → 10.0), else NaN."""
    head, _, tail = source.partition("_")
    return float(tail) if head == "rag" and tail.isdigit() else float("nan")


def _share(near: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the share of the ``mask``-ed columns that are ``near`` (NaN where a row has no such column)."""
    total = mask.sum(axis=1).astype(np.float64)
    hits = (near & mask).sum(axis=1).astype(np.float64)
    return np.divide(hits, total, out=np.full(len(total), np.nan), where=total > 0)


def pool_features(pool: Pool) -> np.ndarray:
    """The ``(n, len(FEATURES))`` float64 feature matrix of the pool's n candidates (NaN = missing)."""
    cands = pool.candidates
    n = len(cands)
    coords = np.array([[c.lat, c.lon] for c in cands], dtype=np.float64)
    sources = [c.source for c in cands]
    ranked = np.array([s in RANKED_SOURCES for s in sources])
    generated = ~ranked
    categories = [source_category(s) for s in sources]
    out: dict[str, np.ndarray] = {}

    # embedding
    if pool.query_gps is not None and pool.candidate_embeddings is not None:
        cosine = embedding_scores(np.asarray(pool.query_gps), np.asarray(pool.candidate_embeddings))
        out["cosine"] = cosine
        out["cosine_gap"] = cosine - cosine.max()
        out["cosine_rank"] = np.argsort(np.argsort(-cosine, kind="stable"), kind="stable").astype(np.float64)
    else:
        for name in ("cosine", "cosine_gap", "cosine_rank"):
            out[name] = np.full(n, np.nan)

    # consensus among generated answers, neighbours and everything
    between = pairwise_haversine_km(coords, coords)
    others = ~np.eye(n, dtype=bool)
    neighbours = np.asarray(pool.neighbours, dtype=np.float64).reshape(-1, 2) if pool.neighbours else np.empty((0, 2))
    m = len(neighbours)
    to_neighbours = pairwise_haversine_km(coords, neighbours) if m else np.empty((n, 0))
    everything = np.concatenate([between, to_neighbours], axis=1)
    other_mask = np.concatenate([others, np.ones((n, m), dtype=bool)], axis=1)
    generated_mask = others & generated[None, :]
    for r in SCALES_KM:
        out[f"agree_generated_{r}km"] = _share(between <= r, generated_mask)
        out[f"agree_neighbours_{r}km"] = _share(to_neighbours <= r, np.ones((n, m), dtype=bool))
        out[f"agree_all_{r}km"] = _share(everything <= r, other_mask)

    # nearest retrieved photo
    score_of_rank = {c.rank: c.retrieval_score for c in cands if c.source == "retrieval" and c.rank is not None}
    if m:
        nearest = np.argmin(to_neighbours, axis=1)
        nearest_km = to_neighbours[np.arange(n), nearest]
        out["nearest_neighbour_km"] = nearest_km
        out["nearest_neighbour_rank"] = nearest.astype(np.float64)
        scores = [score_of_rank.get(int(k)) for k in nearest]
        out["nearest_neighbour_score"] = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
        out["at_retrieved_photo"] = (nearest_km <= AT_PHOTO_KM).astype(np.float64)
        out["top_neighbour_km"] = to_neighbours[:, 0].copy()
    else:
        for name in ("nearest_neighbour_km", "nearest_neighbour_rank", "nearest_neighbour_score"):
            out[name] = np.full(n, np.nan)
        out["at_retrieved_photo"] = np.full(n, np.nan)
        out["top_neighbour_km"] = np.full(n, np.nan)

    # the candidate's own retrieval / sample
    def column(values: list[float | int | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    out["rank"] = column([c.rank if c.source in RANKED_SOURCES else None for c in cands])
    own_score = column([c.retrieval_score for c in cands])
    out["retrieval_score"] = own_score
    known = np.isfinite(own_score)
    out["retrieval_score_gap"] = own_score - (own_score[known].max() if known.any() else np.nan)
    out["sample"] = column([c.sample if c.source not in RANKED_SOURCES else None for c in cands])

    for name in SOURCE_CATEGORIES:
        out[f"source_{name}"] = np.array([c == name for c in categories], dtype=np.float64)
    out["rag_k"] = np.array([rag_k(s) for s in sources], dtype=np.float64)

    # agreement of samples and prompts (within AGREE_KM, the candidate itself left out)
    agree = (between <= AGREE_KM) & generated_mask
    out["samples_agree"] = agree.sum(axis=1).astype(np.float64)
    prompts = sorted({s for s, g in zip(sources, generated, strict=True) if g})
    per_prompt = np.array([[s == p for s in sources] for p in prompts], dtype=bool).reshape(len(prompts), n)
    prompts_agree = (agree[:, None, :] & per_prompt[None, :, :]).any(axis=2).sum(axis=1).astype(np.float64)
    out["prompts_agree"] = prompts_agree
    out["prompts_agree_share"] = prompts_agree / len(prompts) if prompts else np.full(n, np.nan)

    rerank = np.array([c == "lmm_rerank" for c in categories])
    if rerank.any():
        rerank_km = between[:, rerank].min(axis=1)
        out["lmm_rerank_km"] = rerank_km
        out["agrees_lmm_rerank"] = (rerank_km <= AGREE_KM).astype(np.float64)
    else:
        out["lmm_rerank_km"] = np.full(n, np.nan)
        out["agrees_lmm_rerank"] = np.full(n, np.nan)

    # the pool as a whole
    out["pool_candidates"] = np.full(n, float(n))
    out["pool_generated"] = np.full(n, float(generated.sum()))
    out["pool_prompts"] = np.full(n, float(len(prompts)))
    out["pool_neighbours"] = np.full(n, float(m))
    out["pool_has_embeddings"] = np.full(n, float(pool.has_embeddings))
    agree_all = out["agree_all_25km"]
    best = float(np.nanmax(agree_all)) if np.isfinite(agree_all).any() else np.nan
    out["pool_best_agree_all_25km"] = np.full(n, best)
    out["agree_all_25km_gap"] = agree_all - best

    return np.stack([out[name] for name in FEATURES], axis=1)
