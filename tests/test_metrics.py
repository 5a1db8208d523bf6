"""Evaluation metrics and prediction-file scoring, including an exact reproduction of published numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA
from geopy.distance import geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from g3 import geo
from g3.errors import InvalidCoordinatesError
from g3.evaluation import (
    DEFAULT_CONVENTION,
    GEOESTIMATION_RADIUS_KM,
    SPHERE_AREA_KM2,
    THRESHOLDS_KM,
    accuracy,
    area_needed_km2,
    areas_needed_km2,
    cap_area_km2,
    distances_km,
    geoscore,
    percent_table,
    recall_at_areas,
    recall_vs_area,
    resolve_columns,
    score_predictions,
    stored_summary_mismatches,
    summarize,
)

R = geo.EARTH_RADIUS_KM


def destination(lat: float, lon: float, bearing_deg: float, km: float, radius: float = R) -> tuple[float, float]:
    """The point ``km`` away from (lat, lon) along the initial bearing, on a sphere (the destination formula)."""
    p1, l1, theta = map(math.radians, (lat, lon, bearing_deg))
    delta = km / radius
    p2 = math.asin(math.sin(p1) * math.cos(delta) + math.cos(p1) * math.sin(delta) * math.cos(theta))
    l2 = l1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(p1), math.cos(delta) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 180.0) % 360.0 - 180.0


def point_at_exactly(km: float, radius: float = R) -> tuple[float, float]:
    """A point due north of (0, 0) whose haversine distance from (0, 0) is exactly ``km`` in float64.

    The destination formula lands within an ulp or two; near the equator one ulp of latitude moves the
    distance by about one ulp of ``km``, so stepping the latitude finds the exact float.
    """
    lat, _ = destination(0.0, 0.0, 0.0, km, radius)
    for direction in (np.inf, -np.inf):
        x = lat
        for _ in range(64):
            d = distances_km([[0.0, 0.0]], [[x, 0.0]], "haversine-le", radius_km=radius)[0]
            if d == km:
                return x, 0.0
            x = float(np.nextafter(x, direction))
    raise AssertionError(f"no float latitude at exactly {km} km")


# --------------------------------------------------------------------------------------------------
# Distances and conventions
# --------------------------------------------------------------------------------------------------

CITIES = np.array(
    [
        [48.8566, 2.3522],  # Paris
        [51.5074, -0.1278],  # London
        [-33.8688, 151.2093],  # Sydney
        [40.7128, -74.0060],  # New York
        [64.1466, -21.9426],  # Reykjavik
        [0.0, 179.9],
    ]
)


def test_default_convention_is_g3s() -> None:
    assert DEFAULT_CONVENTION == "geodesic-lt"
    assert THRESHOLDS_KM == (1.0, 25.0, 200.0, 750.0, 2500.0)


def test_geodesic_matches_geopy_exactly() -> None:
    truth, pred = CITIES, np.roll(CITIES, 1, axis=0)
    ours = distances_km(truth, pred, "geodesic-lt")
    ref = [geodesic(tuple(a), tuple(b)).km for a, b in zip(truth, pred, strict=True)]
    assert ours.tolist() == ref


def test_geodesic_hand_values() -> None:
    # One degree of the WGS-84 equator is a·π/180; pole to equator is the meridian quadrant 10001.965729 km.
    d = distances_km([[0.0, 0.0], [90.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], "geodesic-lt")
    assert d[0] == pytest.approx(6378.137 * math.pi / 180, rel=1e-12)
    assert d[1] == pytest.approx(10001.965729, rel=1e-9)
    # the ellipsoid and the mean-radius sphere disagree by ~0.06 % on a meridian quadrant
    h = distances_km([[90.0, 0.0]], [[0.0, 0.0]], "haversine-le")[0]
    assert h == pytest.approx(math.pi / 2 * R, rel=1e-12) and abs(h / d[1] - 1) > 5e-4


def test_haversine_default_radius_is_g3_geo_to_the_bit() -> None:
    truth, pred = CITIES, np.roll(CITIES, 2, axis=0)
    ours = distances_km(truth, pred, "haversine-le")
    ref = geo.haversine_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1])
    assert np.array_equal(ours, ref)
    ge = distances_km(truth, pred, "haversine-le", radius_km=GEOESTIMATION_RADIUS_KM)
    np.testing.assert_allclose(ge, ref * 6371.0 / R, rtol=1e-14)


def test_convention_and_radius_errors() -> None:
    with pytest.raises(ValueError, match="unknown convention"):
        distances_km(CITIES, CITIES, "haversine-lt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only to the 'haversine-le'"):
        distances_km(CITIES, CITIES, "geodesic-lt", radius_km=6371.0)
    with pytest.raises(ValueError, match="positive"):
        distances_km(CITIES, CITIES, "haversine-le", radius_km=0.0)
    with pytest.raises(ValueError, match="shape"):
        distances_km(CITIES, CITIES[:2], "haversine-le")
    with pytest.raises(InvalidCoordinatesError, match="nan"):
        distances_km(CITIES, np.where(np.eye(6, 2, dtype=bool), np.nan, CITIES), "haversine-le")


# --------------------------------------------------------------------------------------------------
# Accuracy, GeoScore, summaries
# --------------------------------------------------------------------------------------------------


def test_accuracy_strict_vs_inclusive_at_an_exact_25_km_boundary() -> None:
    p = point_at_exactly(25.0)
    d = distances_km([[0.0, 0.0]], [p], "haversine-le")
    assert d[0] == 25.0
    assert accuracy(d, convention="haversine-le") == {1.0: 0.0, 25.0: 1.0, 200.0: 1.0, 750.0: 1.0, 2500.0: 1.0}
    assert accuracy(d, convention="geodesic-lt") == {1.0: 0.0, 25.0: 0.0, 200.0: 1.0, 750.0: 1.0, 2500.0: 1.0}
    # the same boundary with the GeoEstimation radius
    q = point_at_exactly(25.0, radius=6371.0)
    d2 = distances_km([[0.0, 0.0]], [q], "haversine-le", radius_km=6371.0)
    assert d2[0] == 25.0 and accuracy(d2, (25.0,), "haversine-le") == {25.0: 1.0}
    assert accuracy(d2, (25.0,), "geodesic-lt") == {25.0: 0.0}


def test_accuracy_boundary_from_the_destination_formula_any_start() -> None:
    # Wherever the destination formula lands, a threshold equal to the computed distance is the boundary.
    truth = [[48.8566, 2.3522], [-33.8688, 151.2093], [64.1466, -21.9426]]
    pred = [destination(lat, lon, brg, 25.0) for (lat, lon), brg in zip(truth, (0.0, 45.0, 250.0), strict=True)]
    d = distances_km(truth, pred, "haversine-le")
    np.testing.assert_allclose(d, 25.0, rtol=1e-12)
    for x in d:
        assert accuracy([x], (float(x),), "haversine-le") == {float(x): 1.0}
        assert accuracy([x], (float(x),), "geodesic-lt") == {float(x): 0.0}
        assert accuracy([x], (float(np.nextafter(x, np.inf)),), "geodesic-lt") == {float(np.nextafter(x, np.inf)): 1.0}
    # geodesic: a point 25 km away by geopy's own direct solution is 25 km back within a nanometre
    gp = geodesic(kilometers=25.0).destination((48.8566, 2.3522), 30.0)
    g = distances_km([[48.8566, 2.3522]], [[gp.latitude, gp.longitude]], "geodesic-lt")
    assert g[0] == pytest.approx(25.0, abs=1e-9)
    assert accuracy(g, (float(g[0]),), "geodesic-lt") == {float(g[0]): 0.0}


def test_accuracy_denominator_counts_missing_images_as_wrong() -> None:
    d = [0.5, 30.0, 800.0]
    assert accuracy(d, (1.0, 1000.0), "haversine-le") == {1.0: 1 / 3, 1000.0: 1.0}
    assert accuracy(d, (1.0, 1000.0), "haversine-le", denominator=4) == {1.0: 0.25, 1000.0: 0.75}
    assert accuracy([], (1.0,), "haversine-le", denominator=5) == {1.0: 0.0}
    assert accuracy([math.inf, 0.0], (1.0,), "geodesic-lt") == {1.0: 0.5}
    with pytest.raises(ValueError, match="at least"):
        accuracy(d, denominator=2)
    with pytest.raises(ValueError, match="no distances"):
        accuracy([])
    with pytest.raises(ValueError, match="NaN"):
        accuracy([1.0, math.nan])
    with pytest.raises(ValueError, match="negative"):
        accuracy([-1.0])
    with pytest.raises(TypeError):
        accuracy(d, denominator=True)
    with pytest.raises(TypeError):
        accuracy(d, denominator=3.0)  # type: ignore[arg-type]


def test_accuracy_fraction_is_the_exact_ratio() -> None:
    d = np.r_[np.zeros(316), np.full(2997 - 316, 10.0)]
    assert accuracy(d, (1.0,), "haversine-le") == {1.0: 316 / 2997}


def test_geoscore_hand_values() -> None:
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / math.e, rel=1e-15)
    np.testing.assert_allclose(geoscore([0.0, 1492.7 * 2]), [5000.0, 5000 / math.e**2], rtol=1e-15)
    assert geoscore(np.array([20000.0]))[0] == pytest.approx(5000 * math.exp(-20000 / 1492.7), rel=1e-15)


def test_summarize_median_mean_geoscore_and_convention() -> None:
    # points on the equator: haversine distance is R·Δλ
    km = np.array([10.0, 20.0, 30.0, 100.0])
    pred = np.column_stack([np.zeros(4), np.degrees(km / R)])
    truth = np.zeros((4, 2))
    rep = summarize(truth, pred, convention="haversine-le", denominator=5)
    assert rep["convention"] == "haversine-le" and rep["radius_km"] == R
    assert rep["n"] == 4 and rep["denominator"] == 5
    assert rep["median_km"] == pytest.approx(25.0, rel=1e-12)
    assert rep["mean_km"] == pytest.approx(40.0, rel=1e-12)
    assert rep["geoscore"] == pytest.approx(float(np.mean(5000 * np.exp(-km / 1492.7))), rel=1e-12)
    assert rep["accuracy"] == {"1km": 0.0, "25km": 0.4, "200km": 0.8, "750km": 0.8, "2500km": 0.8}
    assert rep["thresholds_km"] == list(THRESHOLDS_KM)
    assert percent_table(rep) == {"1km": 0.0, "25km": 40.0, "200km": 80.0, "750km": 80.0, "2500km": 80.0}
    json.dumps(rep)
    g = summarize(truth, pred)
    assert g["convention"] == "geodesic-lt" and g["radius_km"] is None
    empty = summarize(np.zeros((0, 2)), np.zeros((0, 2)), convention="haversine-le", denominator=3)
    assert empty["n"] == 0 and empty["accuracy"]["2500km"] == 0.0 and math.isnan(empty["mean_km"])


# --------------------------------------------------------------------------------------------------
# Recall vs Area
# --------------------------------------------------------------------------------------------------


def cap_by_hand(r: float) -> float:
    """The textbook formula; 1 − cos cancels for small r (relative error ~1e-8 at 1 km)."""
    return 2 * math.pi * R**2 * (1 - math.cos(r / R))


def north_of_origin(*kms: float) -> np.ndarray:
    """Candidates due north of (0, 0) at these haversine distances, in rank order."""
    return np.array([[math.degrees(k / R), 0.0] for k in kms])


def test_cap_area_hand_values() -> None:
    assert cap_area_km2(0.0) == 0.0
    assert cap_area_km2(1.0) == pytest.approx(math.pi, rel=1e-7)  # a small cap is a flat disk
    assert cap_area_km2(math.pi / 2 * R) == pytest.approx(2 * math.pi * R**2, rel=1e-15)  # hemisphere
    assert cap_area_km2(math.pi * R) == SPHERE_AREA_KM2 == cap_area_km2(math.inf) == cap_area_km2(1e9)
    assert pytest.approx(5.1007e8, rel=1e-4) == SPHERE_AREA_KM2
    for r in (10.0, 100.0, 1000.0, 2500.0, 15000.0):
        assert cap_area_km2(r) == pytest.approx(cap_by_hand(r), rel=1e-9)
    np.testing.assert_array_equal(cap_area_km2(np.array([0.0, math.inf])), [0.0, SPHERE_AREA_KM2])
    # a scalar and the same value inside an array give the same bits (numpy scalars square with pow())
    radii = np.random.default_rng(0).uniform(0, 20000, 2000)
    assert [cap_area_km2(float(r)) for r in radii] == cap_area_km2(radii).tolist()
    with pytest.raises(ValueError):
        cap_area_km2(-1.0)


@pytest.mark.parametrize(
    ("kms", "best_rank", "best_km"),
    [
        ((1000.0, 100.0, 10.0), 3, 10.0),  # 3·cap(10) ≈ 942 < 2·cap(100) ≈ 62,832 < cap(1000)
        ((100.0, 10.0, 1000.0), 2, 10.0),  # 2·cap(10) ≈ 628 < cap(100)
        ((10.0, 100.0, 1000.0), 1, 10.0),
        ((20.0, 15.0), 1, 20.0),  # cap(20) ≈ 1257 < 2·cap(15) ≈ 1414: a closer second candidate does not pay
        ((20.0, 14.0), 2, 14.0),  # 2·cap(14) ≈ 1232 < cap(20)
        ((5000.0, 4000.0, 3000.0, 2000.0, 1.0), 5, 1.0),
    ],
)
def test_area_needed_hand_grids(kms: tuple[float, ...], best_rank: int, best_km: float) -> None:
    cands = north_of_origin(*kms)
    by_hand = min((j + 1) * cap_by_hand(k) for j, k in enumerate(kms))
    assert by_hand == pytest.approx(best_rank * cap_by_hand(best_km), rel=1e-12)
    assert area_needed_km2([0.0, 0.0], cands) == pytest.approx(by_hand, rel=1e-7)


def test_area_needed_empty_and_exact_hit() -> None:
    assert area_needed_km2([10.0, 20.0], np.zeros((0, 2))) == math.inf
    assert area_needed_km2([10.0, 20.0], []) == math.inf
    assert area_needed_km2([10.0, 20.0], [[50.0, 50.0], [10.0, 20.0]]) == 0.0
    out = areas_needed_km2([[0.0, 0.0], [1.0, 1.0]], [[], [[1.0, 1.0]]])
    assert out.tolist() == [math.inf, 0.0]
    with pytest.raises(ValueError, match="candidate lists"):
        areas_needed_km2([[0.0, 0.0]], [])
    with pytest.raises(InvalidCoordinatesError, match=r"candidate 2 of image 1 is \[95.0, 0.0\]"):
        areas_needed_km2([[0.0, 0.0], [0.0, 0.0]], [[], [[0.0, 0.0], [95.0, 0.0]]])
    with pytest.raises(InvalidCoordinatesError, match=r"candidates of image 0: expected shape \(k, 2\)"):
        areas_needed_km2([[0.0, 0.0]], [[[1.0, 2.0, 3.0]]])
    with pytest.raises(InvalidCoordinatesError, match="nan"):
        area_needed_km2([0.0, 0.0], [[math.nan, 0.0]])


latitudes = st.floats(-90, 90, allow_nan=False)
longitudes = st.floats(-180, 180, allow_nan=False)
points = st.tuples(latitudes, longitudes)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(points, points), min_size=1, max_size=30), extra=st.lists(st.floats(0, 19000)))
def test_one_candidate_recall_equals_haversine_le_accuracy(
    pairs: list[tuple[tuple[float, float], tuple[float, float]]], extra: list[float]
) -> None:
    truth = np.array([p for p, _ in pairs])
    pred = np.array([q for _, q in pairs])
    d = distances_km(truth, pred, "haversine-le")
    # standard thresholds, arbitrary ones, and the distances themselves (exact boundaries); the identity
    # needs cap to be increasing, which holds in float64 away from the antipode (cap is flat within ~0.1 m of πR).
    thresholds = [*THRESHOLDS_KM, *extra, *(float(x) for x in d if x < 19000.0)]
    needed = areas_needed_km2(truth, [p[None, :] for p in pred])
    recall = recall_at_areas(needed, cap_area_km2(np.array(thresholds)))
    acc = accuracy(d, thresholds, "haversine-le")
    assert [recall[cap_area_km2(t)] for t in thresholds] == [acc[float(t)] for t in thresholds]
    rva = recall_vs_area(truth, [p[None, :] for p in pred])
    assert rva["recall"] == {f"{t:g}km": acc[t] for t in THRESHOLDS_KM}


candidate_lists = st.lists(st.lists(points, max_size=6), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(truth=st.lists(points, min_size=12, max_size=12), lists=candidate_lists)
def test_batch_areas_equal_the_scalar_function(truth: list[tuple[float, float]], lists: list[list]) -> None:
    t = np.array(truth[: len(lists)])
    cands = [np.array(c, dtype=np.float64).reshape(-1, 2) for c in lists]
    batch = areas_needed_km2(t, cands)
    scalar = np.array([area_needed_km2(ti, ci) for ti, ci in zip(t, cands, strict=True)])
    assert np.array_equal(batch, scalar)
    assert np.array_equal(np.isinf(batch), np.array([len(c) == 0 for c in cands]))


@settings(max_examples=100, deadline=None)
@given(truth=st.lists(points, min_size=12, max_size=12), lists=candidate_lists)
def test_recall_is_monotone_in_area_and_the_curve_ends_at_one(truth: list[tuple[float, float]], lists: list) -> None:
    t = np.array(truth[: len(lists)])
    rva = recall_vs_area(t, lists, curve_points=60)
    areas, recall = rva["curve"]["areas_km2"], rva["curve"]["recall"]
    assert areas[0] == 1.0 and areas[-1] == SPHERE_AREA_KM2 and len(areas) == 60
    assert np.all(np.diff(areas) > 0) and np.all(np.diff(recall) >= 0)
    assert np.all(np.diff(list(rva["recall"].values())) >= 0)
    nonempty = sum(1 for c in lists if len(c))
    assert recall[-1] == nonempty / len(lists)
    if nonempty == len(lists):
        assert recall[-1] == 1.0
    json.dumps(rva)


def test_recall_vs_area_report_and_denominator() -> None:
    truth = np.zeros((3, 2))
    lists = [north_of_origin(10.0), north_of_origin(1000.0, 20.0), []]
    rva = recall_vs_area(truth, lists, denominator=4)
    assert rva["n"] == 3 and rva["denominator"] == 4 and rva["radius_km"] == R
    assert rva["areas_km2"]["25km"] == cap_area_km2(25.0)
    # image 0 needs cap(10); image 1 needs 2·cap(20) ≈ 2513 km² (more than cap(25) ≈ 1963, less than cap(200))
    assert rva["recall"] == {"1km": 0.0, "25km": 0.25, "200km": 0.5, "750km": 0.5, "2500km": 0.5}
    assert rva["curve"]["recall"][-1] == 0.5
    assert recall_at_areas([1.0, math.inf], [0.5, 1.0, math.inf]) == {0.5: 0.0, 1.0: 0.5, math.inf: 0.5}
    assert recall_at_areas([math.inf], [SPHERE_AREA_KM2], denominator=2) == {SPHERE_AREA_KM2: 0.0}
    with pytest.raises(ValueError, match="at least"):
        recall_at_areas([1.0, 2.0], [1.0], denominator=1)


# --------------------------------------------------------------------------------------------------
# Reproducing GeoEstimation's published per-image files (Müller-Budack et al., ECCV 2018)
# --------------------------------------------------------------------------------------------------

BASELINE_DIRS = {
    "im2gps3k": (SHARED_DATA / "im2gps3k" / "baselines_geoestimation", 2997),
    "im2gps": (SHARED_DATA / "im2gps" / "baselines_geoestimation", 237),
}


def _baseline_params() -> list:
    params = []
    for name, (folder, rows) in BASELINE_DIRS.items():
        files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if not files:
            params.append(pytest.param(None, rows, id=name, marks=pytest.mark.skip(reason=f"{folder} is absent")))
        params += [pytest.param(f, rows, id=f"{name}/{f.stem}") for f in files]
    return params


@pytest.mark.parametrize(("path", "rows"), _baseline_params())
def test_geoestimation_summaries_reproduced_to_the_stored_digit(path: Path, rows: int) -> None:
    rep = score_predictions(path, convention="haversine-le", radius_km=GEOESTIMATION_RADIUS_KM)
    assert rep["rows"] == rep["n"] == rep["denominator"] == rows and rep["missing_predictions"] == 0
    assert rep["columns"] == {
        "gt_lat": "gt_lat",
        "gt_lon": "gt_long",
        "pred_lat": "predicted_lat",
        "pred_lon": "predicted_long",
    }
    stored = rep["stored_summary"]
    assert stored is not None and set(stored["accuracy"]) == {"1km", "25km", "200km", "750km", "2500km"}
    # the summary line is str(round(x, 6)) of the fractions and str(round(x, 2)) of the mean: match the text
    for key, text in stored["as_written"].items():
        ours = rep["mean_km"] if key == "mean_km" else rep["accuracy"][key]
        assert str(round(ours, 2 if key == "mean_km" else 6)) == text, key
    assert stored_summary_mismatches(rep) == []
    # and every stored per-image distance (written with 2 decimals) is ours up to that rounding, plus at most
    # ~0.2 m: the files' coordinates are themselves rounded to 6 decimals (≤ 0.056 m each) after the
    # distances were computed, so a handful of rows differ by 1 in the last written digit.
    frame = pd.read_csv(path, nrows=rows)
    d = distances_km(
        frame[["gt_lat", "gt_long"]].to_numpy(),
        frame[["predicted_lat", "predicted_long"]].to_numpy(),
        "haversine-le",
        radius_km=6371.0,
    )
    diff = np.abs(d - frame["great_circle_distance"].to_numpy())
    assert diff.max() <= 0.005 + 2.5e-4 and np.mean(diff > 0.005) < 0.01


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [("im2gps3k", [10.5, 28.0, 36.6, 49.7, 66.0]), ("im2gps", [16.9, 43.0, 51.9, 66.7, 80.2])],
)
def test_isns_numbers_of_the_comparison_tables(dataset: str, expected: list[float]) -> None:
    path = BASELINE_DIRS[dataset][0] / "ISNs_M-fstar-S3.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rep = score_predictions(path, convention="haversine-le", radius_km=6371.0)
    assert list(percent_table(rep).values()) == expected


def test_isns_on_the_cc_subset(tmp_path: Path) -> None:
    path = BASELINE_DIRS["im2gps3k"][0] / "ISNs_M-fstar-S3.csv"
    subset = SHARED_DATA / "im2gps3k" / "images_cc_subset500.csv"
    if not (path.is_file() and subset.is_file()):
        pytest.skip("IM2GPS3k baselines or CC subset absent")
    ids = set(pd.read_csv(subset)["IMG_ID"])
    frame = pd.read_csv(path, nrows=2997, dtype=str)
    part = tmp_path / "subset.csv"
    frame[frame["img_id"].isin(ids)].to_csv(part, index=False)
    rep = score_predictions(part, convention="haversine-le", radius_km=6371.0)
    assert rep["n"] == 500 and rep["stored_summary"] is None
    assert list(percent_table(rep).values()) == [11.6, 28.0, 34.4, 47.6, 65.8]


# --------------------------------------------------------------------------------------------------
# score_predictions: formats and columns
# --------------------------------------------------------------------------------------------------

TRUTH = np.array([[48.8566, 2.3522], [51.5074, -0.1278], [-33.8688, 151.2093], [40.7128, -74.0060]])
PRED = np.array([[48.86, 2.35], [48.8566, 2.3522], [np.nan, np.nan], [40.7128, -74.0060]])


def test_score_our_jsonl_with_a_missing_prediction(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    with path.open("w") as fh:
        for i, (t, p) in enumerate(zip(TRUTH, PRED, strict=True)):
            # the records g3.evaluation's runner writes: nested candidates/timings, and an error when it failed
            rec = {"img_id": f"im{i}", "gt_lat": t[0], "gt_lon": t[1]}
            if np.isnan(p).any():
                rec |= {"pred_lat": None, "pred_lon": None, "error": "RuntimeError: boom"}
            else:
                rec |= {"pred_lat": p[0], "pred_lon": p[1], "candidates": [[p[0], p[1], 0.9]], "timings": {"a": 1.0}}
            fh.write(json.dumps(rec) + "\n")
        fh.write("\n")
    rep = score_predictions(path)
    assert rep["convention"] == "geodesic-lt" and rep["file"] == str(path)
    assert rep["rows"] == 4 and rep["n"] == 3 and rep["denominator"] == 4
    assert rep["missing_predictions"] == 1 and rep["missing_ids"] == ["im2"] and rep["stored_summary"] is None
    ok = ~np.isnan(PRED).any(axis=1)
    expected = summarize(TRUTH[ok], PRED[ok], denominator=4)
    assert {k: rep[k] for k in expected} == expected
    assert rep["accuracy"]["1km"] == 0.5  # Paris ≈ 0.25 km and New York 0 km; London → Paris and Sydney wrong
    assert score_predictions(path, denominator=10)["accuracy"]["1km"] == 0.2
    with pytest.raises(ValueError, match="smaller than the 4 rows"):
        score_predictions(path, denominator=3)


@pytest.mark.parametrize(
    "header",
    [
        ("LAT", "LON", "LAT_pred", "LON_pred"),
        ("true_lat", "true_lon", "pred_lat", "pred_lng"),
        ("Latitude_GT", "Longitude_GT", "lat_pred", "lon_pred"),
        ("gt_lat", "gt_long", "predicted_lat", "predicted_long"),
        ("lat", "long", "Predicted_Latitude", "Predicted_Longitude"),
    ],
)
def test_score_csv_with_other_spellings(tmp_path: Path, header: tuple[str, str, str, str]) -> None:
    frame = pd.DataFrame(np.column_stack([TRUTH, PRED]), columns=list(header))
    frame.insert(0, "other", ["a", "b", "c", "d"])
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    rep = score_predictions(path, convention="haversine-le")
    assert rep["columns"] == dict(zip(("gt_lat", "gt_lon", "pred_lat", "pred_lon"), header, strict=True))
    assert rep["n"] == 3 and rep["missing_predictions"] == 1 and rep["missing_ids"] == [2]
    ok = ~np.isnan(PRED).any(axis=1)
    assert rep["mean_km"] == summarize(TRUTH[ok], PRED[ok], convention="haversine-le")["mean_km"]


def test_score_with_explicit_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    pd.DataFrame(np.column_stack([TRUTH, TRUTH]), columns=["a", "b", "c", "d"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"Columns found: 'a', 'b', 'c', 'd'"):
        score_predictions(path)
    rep = score_predictions(path, columns={"gt_lat": "a", "gt_lon": "b", "pred_lat": "C", "pred_lon": "d"})
    assert rep["columns"] == {"gt_lat": "a", "gt_lon": "b", "pred_lat": "c", "pred_lon": "d"}
    assert rep["accuracy"]["1km"] == 1.0 and rep["mean_km"] == 0.0 and rep["geoscore"] == 5000.0
    with pytest.raises(ValueError, match="unknown keys"):
        score_predictions(path, columns={"lat": "a"})
    with pytest.raises(ValueError, match="'zz' is not in the file"):
        score_predictions(path, columns={"gt_lat": "zz", "gt_lon": "b", "pred_lat": "c", "pred_lon": "d"})
    with pytest.raises(ValueError, match="used for both"):
        score_predictions(path, columns={"gt_lat": "a", "gt_lon": "b", "pred_lat": "a", "pred_lon": "d"})


def test_ambiguous_and_missing_columns_name_what_was_found() -> None:
    with pytest.raises(ValueError, match=r"gt_lat: ambiguous.*'gt_lat', 'LAT'.*Columns found"):
        resolve_columns(["gt_lat", "LAT", "gt_lon", "pred_lat", "pred_lon"])
    with pytest.raises(ValueError, match=r"pred_lat: no column.*pred_lon: no column.*Columns found: 'lat', 'lon'"):
        resolve_columns(["lat", "lon"])
    # an explicit name settles an ambiguity
    cols = resolve_columns(["gt_lat", "LAT", "gt_lon", "pred_lat", "pred_lon"], {"gt_lat": "LAT"})
    assert cols["gt_lat"] == "LAT"


def test_summary_lines_after_a_blank_line(tmp_path: Path) -> None:
    body = "img_id,gt_lat,predicted_lat,gt_long,predicted_long\r\nx,0,0,0,0\r\ny,0,0,0,10\r\n"
    good = body + "\r\ncity acc (25km),mean deviation (km)\r\n0.5,555.97\r\n"
    path = tmp_path / "s.csv"
    path.write_text(good, newline="")
    rep = score_predictions(path, convention="haversine-le", radius_km=6371.0)
    assert rep["rows"] == 2 and rep["stored_summary"]["accuracy"] == {"25km": 0.5}
    assert rep["stored_summary"]["mean_km"] == 555.97 and rep["mean_km"] == pytest.approx(6371.0 * math.pi / 36)
    assert stored_summary_mismatches(rep) == []
    wrong = body + "\ncity acc (25km),mean deviation (km)\n0.4,555.97\n"
    path.write_text(wrong)
    mism = stored_summary_mismatches(score_predictions(path, convention="haversine-le", radius_km=6371.0))
    assert len(mism) == 1 and mism[0].startswith("25km: stored 0.4")
    path.write_text(body + "\nz,1,1,1,1\n")
    with pytest.raises(ValueError, match="1 non-empty lines follow the blank line"):
        score_predictions(path)
    path.write_text(body + "\nname\nnot-a-number\n")
    with pytest.raises(ValueError, match="not a number"):
        score_predictions(path)


def test_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("gt_lat,gt_lon,pred_lat,pred_lon\n1,2,abc,4\n")
    with pytest.raises(ValueError, match="'pred_lat' holds a value that is not a number"):
        score_predictions(path)
    path.write_text("gt_lat,gt_lon,pred_lat,pred_lon\n1,,3,4\n")
    with pytest.raises(ValueError, match="row 0 has no ground truth"):
        score_predictions(path)
    path.write_text("gt_lat,gt_lon,pred_lat,pred_lon\n1,2,95,4\n")
    with pytest.raises(InvalidCoordinatesError, match="outside"):
        score_predictions(path)
    with pytest.raises(ValueError, match="cannot read"):
        score_predictions(tmp_path / "absent.csv")


def test_the_geoestimation_radius_matters() -> None:
    path = BASELINE_DIRS["im2gps3k"][0] / "base-vgg_L-m.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    # with the IUGG mean radius the mean error rounds one hundredth of a km away from the stored 4293.68
    rep = score_predictions(path, convention="haversine-le")
    assert rep["radius_km"] == R and stored_summary_mismatches(rep) == [
        "mean_km: stored 4293.68, ours 4293.688903585934 (rounds to 4293.69)"
    ]
    # and G3's own convention moves images across the 25 km threshold: 16.3 % instead of 16.5 %
    g3_rep = score_predictions(path)
    assert g3_rep["convention"] == "geodesic-lt" and percent_table(g3_rep)["25km"] == 16.3
