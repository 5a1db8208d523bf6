"""The densest-cluster rule (g3.verify.rules): where the cluster is, which point of it is answered."""

from __future__ import annotations

import numpy as np
import pytest

from g3.verify import consensus_select
from g3.verify.rules import ClusterParams, cluster_select

PARIS = (48.8566, 2.3522)
TOKYO = (35.6762, 139.6503)
ROME = (41.9028, 12.4964)


def near(point: tuple[float, float], dlat: float, dlon: float = 0.0) -> tuple[float, float]:
    return (point[0] + dlat, point[1] + dlon)


def test_top_neighbour_inside_the_densest_cluster_is_answered_exactly() -> None:
    # LMM answers around Paris (city centre, 1-3 km off); retrieval found a photo 300 m from the truth
    answers = [near(PARIS, 0.01 * i) for i in range(1, 6)]
    exact = near(PARIS, 0.003, 0.002)
    neighbours = [exact, near(PARIS, 0.05), TOKYO, ROME]
    choice = cluster_select([*answers, exact], ranks=[None] * 5 + [0], neighbours=neighbours)
    assert (choice.lat, choice.lon) == exact and choice.candidate == 5 and choice.neighbour == 0
    # consensus alone answers a point in the middle of the answers, kilometres from the exact photo
    picked = consensus_select([*answers, exact], scale_km=25.0)
    assert picked != 5


def test_densest_cluster_elsewhere_snaps_to_its_best_ranked_photo() -> None:
    answers = [near(ROME, 0.02 * i, 0.01) for i in range(5)]
    neighbours = [TOKYO, near(TOKYO, 3.0), near(ROME, 0.004), near(ROME, 0.03), near(ROME, -0.05), (0.0, 0.0)]
    choice = cluster_select([*answers, TOKYO], ranks=[None] * 5 + [0], neighbours=neighbours)
    # the top photo (Tokyo) is alone: Rome's cluster wins and its best-ranked photo (rank 2) is answered
    assert choice.neighbour == 2 and (choice.lat, choice.lon) == neighbours[2]
    assert choice.candidate is None  # not a candidate: snapped to the retrieved photo's location
    assert choice.members.tolist() == [True] * 5 + [False]
    # with both ratios 0 the top photo always keeps its region and cluster (the rule then answers top-1)
    keep = cluster_select([*answers, TOKYO], ranks=[None] * 5 + [0], neighbours=neighbours,
                          params=ClusterParams(top_ratio=0.0, region_top_ratio=0.0))  # fmt: skip
    assert keep.candidate == 5 and keep.neighbour == 0
    # the region decides first: with region_top_ratio 0 Tokyo's region is kept, and in it Tokyo is the cluster
    region = cluster_select([*answers, TOKYO], ranks=[None] * 5 + [0], neighbours=neighbours,
                            params=ClusterParams(region_top_ratio=0.0))  # fmt: skip
    assert region.neighbour == 0 and not region.members[:5].any()


def test_answers_agreeing_on_a_region_outvote_a_tight_pair_far_away() -> None:
    # five answers across France (none within 25 km of another) against the top photo and its twin in Tokyo:
    # at 25 km Tokyo is the densest place; over the region France is, and its retrieved photo is answered
    france = [PARIS, (45.76, 4.84), (43.30, 5.37), (44.84, -0.58), (47.22, -1.55)]
    neighbours = [TOKYO, near(TOKYO, 0.01), (0.0, 0.0), near((45.76, 4.84), 0.002)]
    choice = cluster_select([*france, TOKYO], ranks=[None] * 5 + [0], neighbours=neighbours)
    assert choice.neighbour == 3 and (choice.lat, choice.lon) == neighbours[3]
    # at 25 km alone (the top photo's region kept) Tokyo wins: its density matches Lyon's best
    local = cluster_select([*france, TOKYO], ranks=[None] * 5 + [0], neighbours=neighbours,
                           params=ClusterParams(region_top_ratio=0.0))  # fmt: skip
    assert local.neighbour == 0 and (local.lat, local.lon) == TOKYO


def test_a_cluster_of_generated_answers_answers_the_most_accompanied_one() -> None:
    lone = near(PARIS, 0.2)
    twins = [near(PARIS, 0.001), near(PARIS, 0.0012), near(PARIS, 0.0014)]
    choice = cluster_select([lone, *twins, TOKYO])
    assert choice.neighbour is None and choice.candidate in (1, 2, 3)
    assert choice.members.tolist() == [True, True, True, True, False]
    assert choice.density.shape == (5,) and choice.density[4] == pytest.approx(1.0)  # itself only


def test_retrieval_candidates_without_neighbours_are_ranked_photos() -> None:
    # no neighbour list: retrieval candidates (with ranks) are the photos; the better rank inside the cluster wins
    coords = [TOKYO, near(ROME, 0.01), near(ROME, 0.002), near(ROME, -0.01)]
    choice = cluster_select(coords, ranks=[0, None, 3, 1])
    assert choice.candidate == 3 and choice.neighbour == 1


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        cluster_select(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="ranks"):
        cluster_select([PARIS, ROME], ranks=[0])
    with pytest.raises(ValueError, match="candidates"):
        cluster_select([(95.0, 0.0)])
    with pytest.raises(ValueError, match="top_ratio"):
        ClusterParams(top_ratio=1.5)
    with pytest.raises(ValueError, match="scale_km"):
        ClusterParams(scale_km=0.0)
    with pytest.raises(ValueError, match="region_top_ratio"):
        ClusterParams(region_top_ratio=-0.1)


def test_gallery_candidates_count_as_generated_in_the_pool_rule() -> None:
    # the pool rule (baselines "cluster"): gallery points gathered in Paris against a lone top photo in Tokyo.
    # Were their ranks 0..4 read as retrieval ranks they would be neighbours 0..4 (mass 0, Tokyo answered).
    from g3.verify.baselines import cluster
    from g3.verify.pools import Pool

    gallery = [{"lat": PARIS[0] + 0.01 * i, "lon": PARIS[1], "source": "gallery", "rank": i} for i in range(5)]
    top = {"lat": TOKYO[0], "lon": TOKYO[1], "source": "retrieval", "rank": 0}
    # fillers far from Europe: within the 2,500 km region kernel they would tip the region to Rome, not Paris
    fillers = [(-40.0, -70.0), (-30.0, 150.0), (-10.0, -140.0)]
    pool = Pool.model_validate({"id": "q", "candidates": [top, *gallery], "neighbours": [TOKYO, ROME, *fillers]})
    point = cluster(pool)
    assert point is not None and abs(point[0] - PARIS[0]) < 0.05 and point[1] == PARIS[1]
