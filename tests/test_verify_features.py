"""Candidate features of a pool (g3.verify.features): values on hand-built pools, missing values as NaN, source
categories, the lmm_rerank agreement, and purity (a permuted pool gives permuted rows)."""

from __future__ import annotations

import numpy as np
import pytest

from g3.verify import FEATURES, Pool, PoolCandidate, pool_features
from g3.verify.features import source_category

PARIS, LYON, TOKYO = (48.8566, 2.3522), (45.764, 4.8357), (35.6762, 139.6503)


def near(point: tuple[float, float], km: float) -> tuple[float, float]:
    """A point ``km`` north of ``point``."""
    return point[0] + km / 111.195, point[1]


def candidate(point: tuple[float, float], source: str, index: int = 0, score: float | None = None) -> PoolCandidate:
    if source in ("retrieval", "gallery"):
        return PoolCandidate(lat=point[0], lon=point[1], source=source, rank=index, retrieval_score=score)
    return PoolCandidate(lat=point[0], lon=point[1], source=source, sample=index)


def column(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, FEATURES.index(name)]


def paris_pool(**extra: object) -> Pool:
    candidates = [
        candidate(PARIS, "zero_shot", 0),
        candidate(near(PARIS, 10), "zero_shot", 1),
        candidate(near(PARIS, 0.5), "rag_5", 0),
        candidate(TOKYO, "rag_10", 0),
        candidate(PARIS, "retrieval", 0, 0.9),
        candidate(LYON, "retrieval", 1, 0.7),
    ]
    neighbours = [PARIS, LYON, near(PARIS, 300)]
    return Pool(id="q", truth=PARIS, candidates=candidates, neighbours=neighbours, **extra)  # type: ignore[arg-type]


def test_values_on_a_hand_built_pool_without_embeddings() -> None:
    x = pool_features(paris_pool())
    assert x.shape == (6, len(FEATURES)) and x.dtype == np.float64
    # no embeddings: the cosine features are missing (NaN), not zero
    for name in ("cosine", "cosine_gap", "cosine_rank"):
        assert np.isnan(column(x, name)).all()
    assert (column(x, "pool_has_embeddings") == 0).all()
    # the first zero-shot answer: of the 3 other generated answers, 1 within 1 km, 2 within 25 km
    np.testing.assert_allclose(column(x, "agree_generated_1km")[0], 1 / 3)
    np.testing.assert_allclose(column(x, "agree_generated_25km")[0], 2 / 3)
    # neighbours: Paris itself (≤ 1 km); at 750 km Paris, Lyon (392 km) and the point 300 km north
    np.testing.assert_allclose(column(x, "agree_neighbours_1km")[0], 1 / 3)
    np.testing.assert_allclose(column(x, "agree_neighbours_750km")[0], 1.0)
    # everything else: 5 other candidates + 3 neighbours; within 25 km: 2 generated, retrieval Paris, neighbour Paris
    np.testing.assert_allclose(column(x, "agree_all_25km")[0], 4 / 8)
    # Tokyo agrees with nothing, at any scale but the continental one
    assert column(x, "agree_all_750km")[3] == 0 and column(x, "samples_agree")[3] == 0
    # nearest retrieved photo of Lyon's retrieval candidate is neighbour 1 (itself), its score 0.7
    assert column(x, "nearest_neighbour_rank")[5] == 1 and column(x, "nearest_neighbour_score")[5] == 0.7
    assert column(x, "at_retrieved_photo").tolist() == [1, 0, 1, 0, 1, 1]
    np.testing.assert_allclose(column(x, "top_neighbour_km")[1], 10, rtol=1e-3)
    # own retrieval: rank and score for retrieved candidates, NaN for generated ones; samples the other way round
    assert np.isnan(column(x, "rank")[:4]).all() and column(x, "rank")[4:].tolist() == [0, 1]
    np.testing.assert_allclose(column(x, "retrieval_score_gap")[4:], [0.0, -0.2])
    assert column(x, "sample")[:4].tolist() == [0, 1, 0, 0] and np.isnan(column(x, "sample")[4:]).all()
    # agreement: the first answer has 2 samples within 25 km, from 2 prompts (zero_shot, rag_5) of 3
    assert column(x, "samples_agree")[0] == 2 and column(x, "prompts_agree")[0] == 2
    np.testing.assert_allclose(column(x, "prompts_agree_share")[0], 2 / 3)
    # no lmm_rerank candidate: its agreement is missing for everyone
    assert np.isnan(column(x, "agrees_lmm_rerank")).all() and np.isnan(column(x, "lmm_rerank_km")).all()
    # pool sizes
    assert column(x, "pool_candidates")[0] == 6 and column(x, "pool_generated")[0] == 4
    assert column(x, "pool_prompts")[0] == 3 and column(x, "pool_neighbours")[0] == 3
    np.testing.assert_allclose(column(x, "agree_all_25km_gap"), column(x, "agree_all_25km") - 4 / 8)


def test_sources_fall_into_their_categories() -> None:
    assert [source_category(s) for s in ("retrieval", "gallery", "zero_shot", "rag_5", "rag_15", "lmm_rerank")] == [
        "retrieval", "gallery", "zero_shot", "rag", "rag", "lmm_rerank"]  # fmt: skip
    assert source_category("my_prompt") == "other"
    x = pool_features(paris_pool())
    one_hot = x[:, [FEATURES.index(f"source_{c}") for c in ("retrieval", "zero_shot", "rag", "other")]]
    assert one_hot.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    every = [FEATURES.index(f"source_{c}") for c in ("retrieval", "gallery", "zero_shot", "rag", "lmm_rerank", "other")]
    assert (x[:, every].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(column(x, "rag_k"), [np.nan, np.nan, 5, 10, np.nan, np.nan])


def test_lmm_rerank_agreement_and_embeddings() -> None:
    base = paris_pool()
    candidates = [*base.candidates, candidate(near(PARIS, 5), "lmm_rerank", 1)]
    rng = np.random.default_rng(0)
    query = rng.normal(size=8)
    embeddings = rng.normal(size=(len(candidates), 8))
    embeddings[3] = query  # Tokyo's embedding points exactly where the photo's does
    pool = base.model_copy(
        update={"candidates": candidates, "query_gps": query.tolist(), "candidate_embeddings": embeddings.tolist()}
    )
    pool = Pool.model_validate(pool.model_dump())  # validated like a read line
    x = pool_features(pool)
    assert column(x, "agrees_lmm_rerank").tolist() == [1, 1, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(column(x, "lmm_rerank_km")[-1], 0.0)
    cosine = embeddings @ query / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(query)
    np.testing.assert_allclose(column(x, "cosine"), cosine)
    assert column(x, "cosine_rank")[3] == 0 and column(x, "cosine_gap")[3] == 0
    assert (column(x, "cosine_gap") <= 0).all() and (column(x, "pool_has_embeddings") == 1).all()


def test_a_lone_generated_answer_has_missing_consensus_not_zero() -> None:
    pool = Pool(id="one", candidates=[candidate(TOKYO, "zero_shot")])
    x = pool_features(pool)
    for name in ("agree_generated_25km", "agree_neighbours_25km", "agree_all_25km", "nearest_neighbour_km"):
        assert np.isnan(column(x, name)).all(), name
    assert column(x, "samples_agree")[0] == 0 and column(x, "prompts_agree_share")[0] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_features_are_a_pure_function_of_the_pool(seed: int) -> None:
    pool = paris_pool()
    x = pool_features(pool)
    np.testing.assert_array_equal(x, pool_features(pool))  # no hidden state
    order = np.random.default_rng(seed).permutation(len(pool.candidates))
    permuted = pool.model_copy(update={"candidates": [pool.candidates[i] for i in order]})
    y = pool_features(permuted)
    # a candidate's features do not depend on where it is listed (only cosine/argmax ties could, none here)
    np.testing.assert_allclose(y, x[order], equal_nan=True)
