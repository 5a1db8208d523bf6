"""The pool simulator (g3.verify.simulate) and what it shows: the densest-cluster rule against top-1 and G3's
rule, the learned ranker against every fixed rule on a setting it was not fitted on, and calibration.

Pools are simulated over the real IM2GPS3k locations and GeoCLIP's gallery (the shared data folder).
Photos are taken in one seeded random order (the CSV lists an author's photos together): fitting uses the
first ones, tests later ones, so they never share a photo and are i.i.d. samples of the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import SHARED_DATA

from g3.geo import haversine_km
from g3.verify.baselines import RULES, rule_answers
from g3.verify.calibration import expected_calibration_error
from g3.verify.pools import Pool, parse_pool, pool_line
from g3.verify.ranker import Ranker, fit_ranker
from g3.verify.simulate import SETTINGS, PoolSimulator, Truths, load_gallery, load_truths

THRESHOLDS = (1.0, 25.0, 200.0, 750.0, 2500.0)
RADII = ("25", "200", "750")
FIT_ON = ("weak_lmm", "strong_lmm")
HELD_OUT = "paper"
FIT_PHOTOS = 300
TEST_OFFSET, TEST_PHOTOS = 1000, 500


@pytest.fixture(scope="module")
def truths() -> Truths:
    return load_truths(SHARED_DATA / "im2gps3k" / "im2gps3k_places365.csv")


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return load_gallery(SHARED_DATA / "geoclip_gps_gallery" / "coordinates_100K.csv")


def _pools(name: str, truths: Truths, gallery: np.ndarray, count: int, offset: int = 0) -> list[Pool]:
    return list(PoolSimulator(SETTINGS[name], truths, gallery, seed=0).pools(count, offset=offset, shuffle=0))


def _accuracy(points: np.ndarray, pools: Sequence[Pool]) -> np.ndarray:
    truth = np.array([p.truth for p in pools], dtype=np.float64)
    error = haversine_km(points[:, 0], points[:, 1], truth[:, 0], truth[:, 1])
    return np.array([np.mean(error <= t) for t in THRESHOLDS])


def _rule(name: str, pools: Sequence[Pool]) -> np.ndarray:
    points, answered = rule_answers(RULES[name], pools)
    assert answered == len(pools), f"{name} fell back to the first candidate on {len(pools) - answered} pools"
    return _accuracy(points, pools)


@pytest.fixture(scope="module")
def ranker(truths: Truths, gallery: np.ndarray) -> Ranker:
    return fit_ranker([p for name in FIT_ON for p in _pools(name, truths, gallery, FIT_PHOTOS)], seed=0)


@dataclass(frozen=True)
class Answers:
    """The ranker's answers on the held-out setting's pools: points ``(N, 2)``, stated P(within r) per radius."""

    pools: list[Pool]
    points: np.ndarray
    stated: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def held_out(ranker: Ranker, truths: Truths, gallery: np.ndarray) -> Answers:
    pools = _pools(HELD_OUT, truths, gallery, TEST_PHOTOS, TEST_OFFSET)
    points, stated = np.empty((len(pools), 2)), {r: np.empty(len(pools)) for r in RADII}
    for row, pool in enumerate(pools):
        raw = ranker.probabilities(pool)  # once per pool: choose and confidence both derive from it
        index = int(np.argmax(raw.mean(axis=1)))
        if row < 20:  # the shortcut answers what the public calls answer
            assert index == ranker.choose(pool) and ranker.confidence(pool, index) == ranker.calibrated(raw[index])
        points[row] = pool.candidates[index].lat, pool.candidates[index].lon
        for r, value in ranker.calibrated(raw[index]).items():
            stated[r][row] = value
    return Answers(pools, points, stated)


def test_pools_are_valid_reproducible_and_sliceable(truths: Truths, gallery: np.ndarray) -> None:
    pools = _pools("paper", truths, gallery, 12)
    again = _pools("paper", truths, gallery, 4, offset=8)
    assert [pool_line(p) for p in again] == [pool_line(p) for p in pools[8:]]  # a photo's pool depends on its row
    other_seed = list(PoolSimulator(SETTINGS["paper"], truths, gallery, seed=1).pools(12))
    assert [pool_line(p) for p in other_seed] != [pool_line(p) for p in pools]
    for pool in pools:
        assert parse_pool(pool_line(pool)) == pool  # the pools.jsonl format, exactly
        sources = {c.source for c in pool.candidates}
        assert sources == {"zero_shot", "rag_5", "rag_10", "rag_15", "retrieval"}
        assert len(pool.candidates) == 21 and len(pool.neighbours or ()) == 15
        assert pool.query_gps is not None and pool.candidate_embeddings is not None
    one = _pools("one_answer", truths, gallery, 3)[0]
    assert one.query_gps is None and one.candidate_embeddings is None  # a pool without embeddings
    assert [c.rank for c in one.candidates if c.source == "retrieval"] == list(range(20))


def test_one_answer_setting_resembles_the_issues_held_back_measurements(truths: Truths, gallery: np.ndarray) -> None:
    """The setting of the issue's real data (top-20 neighbours, one commercial-LMM answer): its top-1 and LMM
    rows stay within 10 points of the measured ones at every threshold."""
    pools = _pools("one_answer", truths, gallery, 400, offset=2000)
    measured = {"top1_neighbour": (13.3, 34.1, 45.6, 61.7, 78.1), "lmm_first": (17.0, 44.3, 60.0, 76.0, 86.3)}
    for rule, row in measured.items():
        simulated = 100 * _rule(rule, pools)
        assert np.abs(simulated - np.array(row)).max() <= 10.0, (rule, simulated.round(1), row)


@pytest.mark.parametrize("setting", ["paper", "strong_lmm", "weak_lmm", "gallery", "one_answer"])
def test_cluster_rule_keeps_top1_precision_and_beats_g3_rule(setting: str, truths: Truths, gallery: np.ndarray) -> None:
    """With G3's ensemble of LMM answers (paper, weak or strong LMM): never below top-1 at 1 km, above G3's
    rule at 25 km and beyond. The two exceptions the README names, checked as what they are: on gallery
    pools (no LMM) it is level with G3's rule at 750 and 2500 km (the photo's vector knows the region) and,
    like one_answer pools (one LMM answer, no embeddings: G3's rule does not apply), level with top-1 at
    1 km (within 1 point either way; gallery: 8.7 against 9.3 on these 300 photos, 10.6 against 10.5 on 1,000)."""
    pools = _pools(setting, truths, gallery, 300, offset=TEST_OFFSET)
    cluster, top1 = _rule("cluster", pools), _rule("top1_neighbour", pools)
    if setting in ("gallery", "one_answer"):
        assert abs(cluster[0] - top1[0]) <= 0.01, (cluster, top1)
    else:
        assert cluster[0] >= top1[0], (cluster, top1)
    if setting == "one_answer":
        return
    g3 = _rule("g3_embedding", pools)
    if setting == "gallery":
        assert (cluster[1:3] > g3[1:3]).all(), (cluster, g3)
        assert (np.abs(cluster[3:] - g3[3:]) <= 0.01).all(), (cluster, g3)
    else:
        assert (cluster[1:] > g3[1:]).all(), (cluster, g3)


def test_ranker_beats_every_fixed_rule_on_a_held_out_setting(held_out: Answers) -> None:
    """Fitted on a weak and a strong LMM, applied to the paper's average LMM on other photos: at least as
    accurate as every fixed rule at every threshold, and more accurate than each somewhere from 25 km."""
    learned = _accuracy(held_out.points, held_out.pools)
    for name in RULES:
        fixed = _rule(name, held_out.pools)
        assert (learned >= fixed).all(), (name, learned, fixed)
        assert (learned > fixed)[1:].any(), (name, learned, fixed)


def test_confidence_is_calibrated_on_held_out_data(held_out: Answers) -> None:
    """The stated probabilities on the held-out setting's photos: ECE below 0.05 at each radius and over all
    of them (measured 0.039 / 0.036 / 0.030 and 0.029; the sampling noise of an ECE over 500 pools is
    about 0.02, bench/verify.py measures on 1,000)."""
    truth = np.array([p.truth for p in held_out.pools], dtype=np.float64)
    error = haversine_km(held_out.points[:, 0], held_out.points[:, 1], truth[:, 0], truth[:, 1])
    hits = {r: error <= float(r) for r in RADII}
    for r in RADII:
        assert 0.05 < hits[r].mean() < 0.95  # the radius is informative: neither always hit nor always missed
        assert expected_calibration_error(held_out.stated[r], hits[r]) < 0.05, r
    pooled = expected_calibration_error(
        np.concatenate(list(held_out.stated.values())), np.concatenate(list(hits.values()))
    )
    assert pooled < 0.05
