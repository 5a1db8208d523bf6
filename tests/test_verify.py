from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from g3.geo import haversine_km
from g3.models import GeoAligner
from g3.verify import (
    Candidate,
    VerifyConfig,
    consensus_scores,
    consensus_select,
    embedding_scores,
    verify,
)
from g3.verify import scoring as verify_module

PARIS = (48.8566, 2.3522)
TOKYO = (35.6762, 139.6503)
LIMA = (-12.0464, -77.0428)
SYDNEY = (-33.8688, 151.2093)
KM_PER_DEG = 6371.0088 * math.pi / 180  # along a meridian, and along the equator

# Five points around Paris, all within 20 km of it.
PARIS_CLUSTER = [(48.8566, 2.3522), (48.90, 2.30), (48.80, 2.45), (48.95, 2.40), (48.82, 2.25)]

ONLY_CONSENSUS = VerifyConfig(embedding_weight=0, consensus_weight=1)
ONLY_RETRIEVAL = VerifyConfig(embedding_weight=0, retrieval_weight=1)


def candidates(points: list[tuple[float, float]], source: str = "zero_shot") -> list[Candidate]:
    return [Candidate(lat, lon, source, sample=i) for i, (lat, lon) in enumerate(points)]


def ring(lat: float, lon: float, radius_km: float, k: int) -> np.ndarray:
    """``k`` points on a circle of ``radius_km`` around (lat, lon) (small-distance approximation)."""
    angles = np.arange(k) * 2 * np.pi / k
    return np.c_[
        lat + radius_km / KM_PER_DEG * np.cos(angles),
        lon + radius_km / KM_PER_DEG * np.sin(angles) / np.cos(np.radians(lat)),
    ]


@pytest.fixture(autouse=True)
def _fresh_warning_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "_warned_missing_embedding", False)


def km_from(candidate: Candidate, point: tuple[float, float]) -> float:
    """Great-circle distance in km from a candidate to a (lat, lon) point."""
    a, b = np.array([candidate.lat, candidate.lon]), np.array(point)
    return float(haversine_km(a[0], a[1], b[0], b[1]))


def test_paris_cluster_fixture_is_within_20_km() -> None:
    assert all(km_from(c, PARIS) <= 20 for c in candidates(PARIS_CLUSTER))


# -- single components ------------------------------------------------------------------------------


def test_embedding_only_picks_the_most_similar_row() -> None:
    rng = np.random.default_rng(0)
    query = rng.standard_normal(16)
    emb = rng.standard_normal((6, 16))
    emb[4] = 3.0 * query + 0.1 * rng.standard_normal(16)  # scaled: cosine ignores norms
    cands = candidates([PARIS, TOKYO, LIMA, SYDNEY, (10.0, 10.0), (-5.0, 20.0)])
    scored = verify(cands, query_gps=query, location_embeddings=emb)
    assert scored[0].candidate is cands[4]
    assert [s.rank for s in scored] == list(range(6))
    expected = embedding_scores(query, emb)
    assert int(np.argmax(expected)) == 4
    for s in scored:
        assert s.components["embedding"] == pytest.approx(expected[cands.index(s.candidate)])
    assert [s.score for s in scored] == sorted((s.score for s in scored), reverse=True)


def test_embedding_scores_are_cosines_and_accept_tensors() -> None:
    query = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.6, 0.8], [-1.0, 0.0]])
    np.testing.assert_allclose(embedding_scores(query, emb), [1.0, 0.0, 0.6, -1.0], atol=1e-7)


def test_retrieval_only_picks_the_best_retrieved() -> None:
    cands = [
        Candidate(*PARIS, "zero_shot"),
        Candidate(*TOKYO, "retrieval", sample=0, retrieval_score=0.9),
        Candidate(*LIMA, "retrieval", sample=1, retrieval_score=1.4),
        Candidate(*SYDNEY, "retrieval", sample=2, retrieval_score=0.3),
    ]
    scored = verify(cands, config=ONLY_RETRIEVAL)
    assert [s.candidate for s in scored] == [cands[2], cands[1], cands[3], cands[0]]
    assert scored[0].components["retrieval"] == 1.4
    assert scored[-1].components["retrieval"] == 0.0  # unknown retrieval score counts as 0
    assert scored[0].score == pytest.approx(1.0)
    assert scored[-1].score == pytest.approx(0.0)


@pytest.mark.parametrize("outlier_first", [True, False])
def test_consensus_picks_the_dense_cluster_over_outliers(outlier_first: bool) -> None:
    points = [TOKYO, LIMA, *PARIS_CLUSTER] if outlier_first else [*PARIS_CLUSTER, TOKYO, LIMA]
    scored = verify(candidates(points), config=ONLY_CONSENSUS)
    best = scored[0].candidate
    assert km_from(best, PARIS) <= 20
    assert {(s.candidate.lat, s.candidate.lon) for s in scored[-2:]} == {TOKYO, LIMA}
    assert scored[-1].components["consensus"] == 0.0


def test_consensus_select_on_coordinates_alone() -> None:
    points = [list(TOKYO), list(LIMA), *map(list, PARIS_CLUSTER)]  # plain lists: no model, no torch
    chosen = consensus_select(points)
    assert 2 <= chosen <= 6
    assert consensus_select(np.array(points), scale_km=25.0) in range(2, 7)
    assert consensus_select([PARIS]) == 0
    assert consensus_select(np.array([TOKYO, LIMA, PARIS]), weights=[0, 0, 1]) == 0  # only Paris weighs: ties → 0
    with pytest.raises(ValueError, match="empty"):
        consensus_select(np.empty((0, 2)))


def test_consensus_scores_are_normalised_fractions_of_available_mass() -> None:
    # two duplicates and one far point: each duplicate has half of the other mass on it
    scores = consensus_scores([PARIS, PARIS, TOKYO])
    np.testing.assert_allclose(scores, [0.5, 0.5, 0.0], atol=1e-12)
    assert consensus_scores([PARIS, PARIS]).tolist() == [1.0, 1.0]
    assert consensus_scores([PARIS]).tolist() == [0.0]  # nothing else to agree with
    # support mass counts in the denominator: 1 candidate + 3 support points, 1 of them on it
    scores = consensus_scores([PARIS], support=[PARIS, TOKYO, LIMA])
    np.testing.assert_allclose(scores, [1 / 3], atol=1e-12)
    scores = consensus_scores([PARIS, TOKYO], weights=[2.0, 1.0], support=[TOKYO], support_weights=[3.0])
    np.testing.assert_allclose(scores, [0.0, 3.0 / 5.0], atol=1e-12)


# -- ties, kernels, scales, support -----------------------------------------------------------------


def test_ties_are_deterministic() -> None:
    # two isolated candidates score the same: the first in input order wins, every time
    assert consensus_select([TOKYO, LIMA]) == 0
    assert consensus_select([LIMA, TOKYO]) == 0
    cands = candidates([TOKYO, LIMA, SYDNEY])
    for config in (ONLY_CONSENSUS, ONLY_RETRIEVAL):
        for _ in range(3):
            assert [s.candidate for s in verify(cands, config=config)] == cands
    # equal embeddings: input order
    emb = np.ones((3, 4))
    assert [s.candidate for s in verify(cands, query_gps=np.ones(4), location_embeddings=emb)] == cands


def test_scale_changes_the_outcome() -> None:
    # a tight pair (10 km apart) vs a centre with 4 points at 60 km around it
    pair = np.array([[0.0, 0.0], [0.0, 10 / KM_PER_DEG]])
    spread = np.vstack([[[0.0, 20.0]], ring(0.0, 20.0, 60.0, 4)])
    coords = np.vstack([pair, spread])
    assert consensus_select(coords, scale_km=25.0) == 0  # small scale: only the tight pair agrees
    assert consensus_select(coords, scale_km=500.0) == 2  # large scale: the bigger group wins


def test_kernel_changes_the_outcome() -> None:
    # a pair 150 km apart (1.5 scales) vs a centre with 4 points at 250 km (2.5 scales): beyond 2 scales the
    # exponential kernel keeps more mass than the gaussian, so it prefers the larger, wider group
    pair = np.array([[0.0, 0.0], [0.0, 150 / KM_PER_DEG]])
    spread = np.vstack([[[0.0, 20.0]], ring(0.0, 20.0, 250.0, 4)])
    coords = np.vstack([pair, spread])
    assert consensus_select(coords, scale_km=100.0, kernel="gaussian") == 0
    assert consensus_select(coords, scale_km=100.0, kernel="exponential") == 2
    cands = [Candidate(lat, lon, "zero_shot") for lat, lon in coords]
    gaussian = VerifyConfig(embedding_weight=0, consensus_weight=1, consensus_kernel="gaussian")
    exponential = VerifyConfig(embedding_weight=0, consensus_weight=1, consensus_kernel="exponential")
    assert verify(cands, config=gaussian)[0].candidate is cands[0]
    assert verify(cands, config=exponential)[0].candidate is cands[2]


def test_support_points_shift_the_choice() -> None:
    cands = candidates([TOKYO, LIMA])
    assert verify(cands, config=ONLY_CONSENSUS)[0].candidate is cands[0]
    near_lima = np.array([[-12.0, -77.0], [-12.1, -77.1]])
    scored = verify(cands, neighbours=near_lima, config=ONLY_CONSENSUS)
    assert scored[0].candidate is cands[1]
    # two neighbours of mass 0.5 within ~15 km of Lima: almost all of the 1 + 2 × 0.5 available mass but Tokyo's
    assert scored[0].components["consensus"] == pytest.approx(0.5, abs=0.01)
    assert consensus_select([TOKYO, LIMA]) == 0
    assert int(np.argmax(consensus_scores([TOKYO, LIMA], support=near_lima))) == 1
    # neighbour_weight = 0: the neighbours carry no mass, back to the tie
    config = VerifyConfig(embedding_weight=0, consensus_weight=1, neighbour_weight=0)
    assert verify(cands, neighbours=near_lima, config=config)[0].candidate is cands[0]


# -- fusion -----------------------------------------------------------------------------------------


def test_weighted_fusion_of_min_max_normalised_components() -> None:
    cands = [
        Candidate(*PARIS, "zero_shot"),
        Candidate(*TOKYO, "retrieval", retrieval_score=0.8),
        Candidate(*LIMA, "retrieval", sample=1, retrieval_score=0.4),
    ]
    query = np.array([1.0, 0.0])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # cosines 1, 0, 0.6
    neighbours = np.array([LIMA])  # one neighbour of mass 0.5 on Lima
    config = VerifyConfig(embedding_weight=1.0, consensus_weight=0.5, retrieval_weight=2.0, neighbour_weight=0.5)
    scored = verify(cands, query_gps=query, location_embeddings=emb, neighbours=neighbours, config=config)
    by_source = {(s.candidate.lat, s.candidate.lon): s for s in scored}
    paris, tokyo, lima = (by_source[p] for p in (PARIS, TOKYO, LIMA))
    # raw components
    assert paris.components["embedding"] == pytest.approx(1.0)
    assert tokyo.components["embedding"] == pytest.approx(0.0, abs=1e-12)
    assert lima.components["embedding"] == pytest.approx(0.6)
    assert lima.components["consensus"] == pytest.approx(0.5 / 2.5)  # 0.5 of the 2 + 0.5 available mass
    assert paris.components["consensus"] == tokyo.components["consensus"] == 0.0
    assert [paris.components["retrieval"], tokyo.components["retrieval"], lima.components["retrieval"]] == [0, 0.8, 0.4]
    # min-max: embedding (1, 0, 0.6), consensus (0, 0, 1), retrieval (0, 1, 0.5)
    assert paris.score == pytest.approx(1.0 * 1.0)
    assert tokyo.score == pytest.approx(2.0 * 1.0)
    assert lima.score == pytest.approx(1.0 * 0.6 + 0.5 * 1.0 + 2.0 * 0.5)  # 2.1: beats Tokyo's 2.0
    assert [s.candidate for s in scored] == [cands[2], cands[1], cands[0]]
    assert [s.rank for s in scored] == [0, 1, 2]


def test_constant_component_contributes_nothing() -> None:
    cands = candidates([TOKYO, LIMA, SYDNEY])
    config = VerifyConfig(embedding_weight=1.0, consensus_weight=1.0, retrieval_weight=1.0)
    scored = verify(cands, query_gps=np.ones(3), location_embeddings=np.ones((3, 3)), config=config)
    assert [s.score for s in scored] == [0.0, 0.0, 0.0]
    assert [s.candidate for s in scored] == cands


# -- with a model -----------------------------------------------------------------------------------


def test_tiny_aligner_picks_the_query_location(tiny_aligner: GeoAligner) -> None:
    points = [TOKYO, LIMA, PARIS, SYDNEY, (64.1466, -21.9426)]
    cands = candidates(points)
    for target in (2, 4):
        query = tiny_aligner.encode_gps([list(points[target])])[0]
        scored = verify(cands, query_gps=query, aligner=tiny_aligner)
        assert scored[0].candidate is cands[target]
        assert scored[0].components["embedding"] == pytest.approx(1.0, abs=1e-5)
    # precomputed location embeddings give the same ranking
    with torch.no_grad():
        emb = tiny_aligner.encode_gps(points)
    scored_pre = verify(cands, query_gps=query, location_embeddings=emb)
    assert [s.candidate for s in scored_pre] == [s.candidate for s in scored]


def test_missing_embedding_falls_back_to_consensus_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    cands = candidates([TOKYO, LIMA, *PARIS_CLUSTER])
    with caplog.at_level(logging.WARNING, logger="g3.verify"):
        scored = verify(cands)  # default config: embedding only, but no query embedding
        again = verify(cands, query_gps=np.ones(4))  # a query but nothing to embed the candidates with
    assert all(math.isnan(s.components["embedding"]) for s in scored + again)
    assert km_from(scored[0].candidate, PARIS) <= 20
    assert [s.candidate for s in again] == [s.candidate for s in scored]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falling back to consensus" in warnings[0].getMessage()
    # with a retrieval weight configured, the fallback keeps it (and consensus weight 0 stays 0)
    cands[0] = Candidate(*TOKYO, "retrieval", retrieval_score=1.0)
    config = VerifyConfig(embedding_weight=1.0, retrieval_weight=1.0)
    assert verify(cands, config=config)[0].candidate is cands[0]


def test_embedding_weight_zero_reports_nan_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="g3.verify"):
        scored = verify(candidates([TOKYO, LIMA]), config=ONLY_CONSENSUS)
    assert all(math.isnan(s.components["embedding"]) for s in scored)
    assert not caplog.records


# -- validation -------------------------------------------------------------------------------------


def test_bad_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="latitude"):
        Candidate(91.0, 0.0, "zero_shot")
    with pytest.raises(ValueError, match="longitude"):
        Candidate(0.0, float("nan"), "zero_shot")
    with pytest.raises(ValueError):
        Candidate(0.0, 0.0, "")
    with pytest.raises(ValueError):
        Candidate(0.0, 0.0, "retrieval", sample=-1)
    with pytest.raises(ValueError):
        Candidate(0.0, 0.0, "retrieval", sample=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Candidate(0.0, 0.0, "retrieval", retrieval_score=float("inf"))
    with pytest.raises(ValueError, match="no candidates"):
        verify([])
    with pytest.raises(ValueError):
        verify([(0.0, 0.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="latitude"):
        consensus_select([[95.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        consensus_select([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="neighbours"):
        verify(candidates([PARIS]), neighbours=[[0.0, 200.0]])
    cands = candidates([PARIS, TOKYO])
    with pytest.raises(ValueError, match="location_embeddings"):
        verify(cands, query_gps=np.ones(4), location_embeddings=np.ones((3, 4)))
    with pytest.raises(ValueError, match="location_embeddings"):
        verify(cands, query_gps=np.ones(4), location_embeddings=np.ones((2, 5)))
    with pytest.raises(ValueError, match="query_gps"):
        verify(cands, query_gps=np.ones((1, 4)), location_embeddings=np.ones((2, 4)))
    with pytest.raises(ValueError, match="zero vector"):
        embedding_scores(np.ones(2), np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        embedding_scores(np.array([np.nan, 1.0]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="weights"):
        consensus_scores([PARIS, TOKYO], weights=[1.0])
    with pytest.raises(ValueError, match="≥ 0"):
        consensus_scores([PARIS, TOKYO], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="support_weights"):
        consensus_scores([PARIS], support=[TOKYO, LIMA], support_weights=[1.0])
    with pytest.raises(ValueError, match="support_weights"):
        consensus_scores([PARIS], support_weights=[1.0])
    with pytest.raises(ValueError, match="scale_km"):
        consensus_scores([PARIS], scale_km=0.0)
    with pytest.raises(ValueError, match="kernel"):
        consensus_scores([PARIS], kernel="box")  # type: ignore[arg-type]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        VerifyConfig(embedding_weight=0)
    with pytest.raises(ValueError):
        VerifyConfig(consensus_weight=-1)
    with pytest.raises(ValueError):
        VerifyConfig(consensus_scale_km=0)
    with pytest.raises(ValueError):
        VerifyConfig(consensus_kernel="box")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        VerifyConfig(embeding_weight=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        VerifyConfig().embedding_weight = 0.5
