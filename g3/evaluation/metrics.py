"""Geolocation metrics: accuracy at distance thresholds, GeoScore, and Recall vs Area.

Every number here depends on a *convention*, and published tables mix two of them:

``"geodesic-lt"`` (the default, G3's evaluation)
    Ellipsoidal WGS-84 distance from geopy (`g3.geo.geodesic_km`) and a strict comparison: an image
    counts as correct at ``t`` km when its error is ``< t``.
``"haversine-le"`` (GeoEstimation, GeoCLIP)
    Great-circle (haversine) distance on a sphere and an inclusive comparison: correct when ``≤ t``.
    The sphere's radius is ``radius_km``, by default the IUGG mean radius 6371.0088 km
    (`g3.geo.EARTH_RADIUS_KM`); GeoEstimation's published per-image files used 6371.0 km
    (`GEOESTIMATION_RADIUS_KM`), so pass ``radius_km=6371.0`` to reproduce them to the last digit.

The two differ by up to ~0.5 % in distance (ellipsoid vs sphere), which moves images across the
1/25/200/750/2500 km thresholds; state the convention with every number (`summarize` does).

All functions take batches of points as ``(N, 2)`` arrays of ``(latitude, longitude)`` in degrees and
return kilometres (distances) or square kilometres (areas). They are vectorised with numpy, except the
geodesic distance, for which geopy offers only a per-pair call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from g3.errors import InvalidCoordinatesError
from g3.geo import EARTH_RADIUS_KM, geodesic_km, haversine_km, validate_latlon

#: The standard thresholds of IM2GPS / IM2GPS3k / YFCC4k tables: street, city, region, country, continent.
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
#: What each standard threshold stands for, for labels and reports.
THRESHOLD_NAMES = {1.0: "street", 25.0: "city", 200.0: "region", 750.0: "country", 2500.0: "continent"}

Convention = Literal["geodesic-lt", "haversine-le"]
#: The conventions `distances_km` and `accuracy` know, in the order of `Convention`.
CONVENTIONS: tuple[str, ...] = get_args(Convention)
#: G3's convention: geopy geodesic distance, correct when strictly below the threshold.
DEFAULT_CONVENTION: Convention = "geodesic-lt"

#: The sphere radius (km) of the GeoEstimation result files (Müller-Budack et al., ECCV 2018).
GEOESTIMATION_RADIUS_KM = 6371.0

#: GeoScore (GeoGuessr's score) decay length in km: ``5000 · exp(-d / 1492.7)``.
GEOSCORE_SCALE_KM = 1492.7
#: GeoScore of an exact guess.
GEOSCORE_MAX = 5000.0

#: Area of the whole sphere of radius `EARTH_RADIUS_KM`, in km² (≈ 5.1e8), computed exactly as
#: ``cap_area_km2`` computes a cap reaching the antipode, so that the two are equal to the last bit.
SPHERE_AREA_KM2 = 4.0 * math.pi * EARTH_RADIUS_KM**2


def _check_convention(convention: str) -> Convention:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {', '.join(map(repr, CONVENTIONS))}")
    return convention  # type: ignore[return-value]


def _check_radius(radius_km: float | None, convention: Convention) -> float | None:
    if radius_km is None:
        return EARTH_RADIUS_KM if convention == "haversine-le" else None
    if convention != "haversine-le":
        raise ValueError(
            f"radius_km={radius_km!r} applies only to the 'haversine-le' convention; "
            f"{convention!r} uses the WGS-84 ellipsoid (pass radius_km=None)"
        )
    radius = float(radius_km)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius_km must be a positive finite number of km, got {radius_km!r}")
    return radius


def _check_denominator(denominator: int | None, n: int, what: str = "distances") -> int:
    if denominator is None:
        if n == 0:
            raise ValueError(f"no {what} to score; pass denominator=… to report zeros over missing images")
        return n
    if isinstance(denominator, bool) or not isinstance(denominator, int | np.integer):
        raise TypeError(f"denominator must be an int, got {denominator!r}")
    if denominator < n or denominator <= 0:
        raise ValueError(
            f"denominator {denominator} must be positive and at least the number of scored {what} ({n}); "
            "it counts every image of the benchmark, missing or failed ones as wrong"
        )
    return int(denominator)


def _as_distances(distances: object) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 1:
        d = d.reshape(-1)
    if np.isnan(d).any():
        i = int(np.flatnonzero(np.isnan(d))[0])
        raise ValueError(
            f"distance at position {i} is NaN; drop unscored images and pass denominator=… to count them as wrong"
        )
    if (d < 0).any():
        i = int(np.flatnonzero(d < 0)[0])
        raise ValueError(f"distance at position {i} is negative ({float(d[i])!r} km)")
    return d


def threshold_key(threshold_km: float) -> str:
    """The report key of a threshold: ``1.0 → "1km"``, ``2500.0 → "2500km"``, ``0.5 → "0.5km"``."""
    return f"{float(threshold_km):g}km"


def distances_km(
    truth: object,
    pred: object,
    convention: Convention = DEFAULT_CONVENTION,
    *,
    radius_km: float | None = None,
) -> np.ndarray:
    """Per-image error in km between ``truth`` and ``pred``, both ``(N, 2)`` (lat, lon) in degrees.

    Args:
        truth: ground-truth points.
        pred: predicted points, same shape.
        convention: ``"geodesic-lt"`` (geopy WGS-84 geodesic) or ``"haversine-le"`` (sphere).
        radius_km: sphere radius for ``"haversine-le"``; default `g3.geo.EARTH_RADIUS_KM` (6371.0088).
            GeoEstimation's files used 6371.0 (`GEOESTIMATION_RADIUS_KM`). Not allowed with geodesic.

    Raises:
        InvalidCoordinatesError: NaN, infinite or out-of-range coordinates (drop missing predictions first).
        ValueError: shapes differ, unknown convention, or a radius given for the geodesic convention.
    """
    conv = _check_convention(convention)
    radius = _check_radius(radius_km, conv)
    t = validate_latlon(truth, what="ground truth")
    p = validate_latlon(pred, what="predictions")
    if t.shape != p.shape:
        raise ValueError(f"ground truth has shape {t.shape} but predictions have shape {p.shape}")
    if conv == "geodesic-lt":
        return geodesic_km(t[:, 0], t[:, 1], p[:, 0], p[:, 1])
    assert radius is not None
    return haversine_km(t[:, 0], t[:, 1], p[:, 0], p[:, 1], radius_km=radius)


def accuracy(
    distances: object,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    convention: Convention = DEFAULT_CONVENTION,
    denominator: int | None = None,
) -> dict[float, float]:
    """Fraction of images whose error is within each threshold: ``{threshold_km: fraction}``.

    Within means ``d < t`` under ``"geodesic-lt"`` and ``d ≤ t`` under ``"haversine-le"``; the convention
    only picks the comparison here (the distances are already computed).

    Args:
        distances: per-image errors in km of the scored images (no NaN; ``inf`` counts as wrong).
        thresholds: in km.
        convention: which comparison to use.
        denominator: the number of images of the benchmark, at least ``len(distances)``; images beyond the
            scored ones (missing or failed predictions) count as wrong. Default: ``len(distances)``.
    """
    conv = _check_convention(convention)
    d = _as_distances(distances)
    denom = _check_denominator(denominator, d.size)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    within = d[:, None] < t[None, :] if conv == "geodesic-lt" else d[:, None] <= t[None, :]
    counts = within.sum(axis=0)
    # int / int in Python: the correctly rounded fraction.
    return {float(th): int(c) / denom for th, c in zip(t, counts, strict=True)}


def geoscore(distances: object) -> np.ndarray:
    """GeoScore of each error: ``5000 · exp(-d / 1492.7)`` (5000 for an exact guess, 5000/e at 1492.7 km)."""
    d = np.asarray(distances, dtype=np.float64)
    out: np.ndarray = GEOSCORE_MAX * np.exp(-d / GEOSCORE_SCALE_KM)
    return out


def summarize(
    truth: object,
    pred: object,
    *,
    convention: Convention = DEFAULT_CONVENTION,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    denominator: int | None = None,
    radius_km: float | None = None,
) -> dict[str, Any]:
    """Score predictions against ground truth; a JSON-ready report that states its convention.

    Args:
        truth, pred: ``(N, 2)`` (lat, lon) of the N scored images.
        convention, radius_km: see `distances_km`.
        thresholds: accuracy thresholds in km.
        denominator: number of images in the benchmark (≥ N); the others count as wrong. Default N.

    Returns:
        ``convention``; ``radius_km`` (sphere radius for haversine, None for geodesic); ``n`` (images scored);
        ``denominator``; ``accuracy`` as fractions keyed ``"1km"``, ``"25km"``, …; ``median_km``,
        ``mean_km`` and ``geoscore`` (mean GeoScore) over the N scored images (NaN when N is 0);
        ``thresholds_km``.
    """
    conv = _check_convention(convention)
    radius = _check_radius(radius_km, conv)
    d = distances_km(truth, pred, conv, radius_km=radius)
    denom = _check_denominator(denominator, d.size, "images")
    acc = accuracy(d, thresholds, conv, denom)
    empty = d.size == 0
    return {
        "convention": conv,
        "radius_km": radius,
        "n": int(d.size),
        "denominator": denom,
        "accuracy": {threshold_key(t): v for t, v in acc.items()},
        "median_km": math.nan if empty else float(np.median(d)),
        "mean_km": math.nan if empty else float(np.mean(d)),
        "geoscore": math.nan if empty else float(np.mean(geoscore(d))),
        "thresholds_km": [float(t) for t in thresholds],
    }


# --------------------------------------------------------------------------------------------------
# Recall vs Area
# --------------------------------------------------------------------------------------------------
#
# Bianco et al. (2024) score a *ranked list of predicted regions* by the area one has to accept before the
# regions contain the ground truth, and plot recall as a function of that area ("Recall vs Area", RvA).
# Here the predictions are ranked *points*, and a region is built from them as follows:
#
# * every candidate gets a disk (spherical cap) of one common radius r around it;
# * accepting the first j candidates costs j · cap(r) km², where cap(r) = 2πR²(1 − cos(r/R)) is the area of a
#   cap of geodesic radius r on the sphere of radius R = 6371.0088 km (overlaps are counted twice: this is
#   the area *searched*, as if each disk were inspected separately);
# * the truth is inside the disk of candidate j once r ≥ d_j, its haversine distance to the truth;
# * so the least area at which the truth is found is  A = min_j  j · cap(d_j).
#
# A candidate list recalls the truth at area a when A ≤ a. With a single candidate, A = cap(d_1), and
# because cap is increasing on [0, πR], recall at a = cap(t) equals accuracy at t km under haversine-≤
# (R = 6371.0088). A far-down candidate only helps if it is much closer than those above it: rank j pays j
# times its cap. An empty list never recalls (A = inf). Every non-empty list recalls at the area of the
# whole sphere, since cap(d) ≤ 4πR².


def cap_area_km2(radius_km: object) -> Any:
    """Area in km² of a spherical cap of geodesic radius ``radius_km`` on the sphere of `EARTH_RADIUS_KM`.

    ``2πR²(1 − cos(r/R))``, computed as ``4πR² sin²(r / 2R)`` (no cancellation for small r). Radii are
    clipped to [0, πR]: a cap reaching the antipode (or beyond, ``inf`` included) is the whole sphere,
    exactly `SPHERE_AREA_KM2`. Returns a float for a scalar, an array otherwise.
    """
    r0 = np.asarray(radius_km, dtype=np.float64)
    # Always compute on ≥1-d arrays and square by multiplication: numpy scalars square with pow(), which can
    # differ from the array loop in the last bit, and areas must not depend on how they were passed.
    r = np.atleast_1d(r0)
    if np.isnan(r).any():
        raise ValueError("cap radius is NaN")
    if (r < 0).any():
        raise ValueError(f"cap radius must be ≥ 0 km, got {float(r[r < 0].ravel()[0])!r}")
    s = np.sin(np.minimum(r, math.pi * EARTH_RADIUS_KM) / (2 * EARTH_RADIUS_KM))
    area = SPHERE_AREA_KM2 * (s * s)
    return float(area[0]) if r0.ndim == 0 else area


def _candidate_array(candidates: object, what: str) -> np.ndarray:
    """One ranked list as a ``(k, 2)`` float64 array (unvalidated); an empty list gives ``(0, 2)``."""
    arr = np.asarray(candidates, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidCoordinatesError(f"{what}: expected shape (k, 2) of (lat, lon), got {arr.shape}")
    return arr


def area_needed_km2(truth: object, candidates: object) -> float:
    """Least area in km² at which the ranked ``candidates`` ``(k, 2)`` contain ``truth`` ``(2,)``.

    ``min_j j · cap_area_km2(d_j)`` over ranks j = 1…k (d_j: haversine distance of candidate j to the truth,
    R = 6371.0088 km); ``inf`` when there is no candidate. See the construction above `cap_area_km2`.
    """
    t = validate_latlon(np.asarray(truth, dtype=np.float64).reshape(1, 2), what="ground truth")
    c = _candidate_array(candidates, "candidates")
    if c.shape[0] == 0:
        return math.inf
    validate_latlon(c, what="candidates")
    d = haversine_km(t[:, 0], t[:, 1], c[:, 0], c[:, 1])
    ranks = np.arange(1, c.shape[0] + 1, dtype=np.float64)
    return float(np.min(ranks * cap_area_km2(d)))


def areas_needed_km2(truth: object, candidates: Sequence[object]) -> np.ndarray:
    """`area_needed_km2` for N images at once: ``truth`` ``(N, 2)``, ``candidates`` N arrays ``(k_i, 2)``.

    Each list is converted to an array once (the input is ragged); distances, caps, ranks and the minimum
    per image are then computed on all candidates together. ``inf`` where a list is empty.
    """
    t = validate_latlon(truth, what="ground truth")
    if len(candidates) != t.shape[0]:
        raise ValueError(f"{t.shape[0]} ground-truth points but {len(candidates)} candidate lists")
    # Ragged input: one array conversion per list, then everything else on the concatenation.
    lists = [_candidate_array(c, f"candidates of image {i}") for i, c in enumerate(candidates)]
    counts = np.fromiter((c.shape[0] for c in lists), dtype=np.int64, count=len(lists))
    out = np.full(t.shape[0], np.inf)
    if counts.sum() == 0:
        return out
    flat = np.concatenate(lists, axis=0)
    owner = np.repeat(np.arange(t.shape[0]), counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ranks = (np.arange(flat.shape[0]) - np.repeat(starts, counts) + 1).astype(np.float64)
    bad = ~np.isfinite(flat).all(axis=1) | (np.abs(flat[:, 0]) > 90.0) | (np.abs(flat[:, 1]) > 180.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidCoordinatesError(
            f"candidate {int(ranks[i])} of image {int(owner[i])} is {flat[i].tolist()!r}; expected a finite "
            "(lat, lon) with |lat| ≤ 90 and |lon| ≤ 180 degrees"
        )
    d = haversine_km(t[owner, 0], t[owner, 1], flat[:, 0], flat[:, 1])
    cost = ranks * cap_area_km2(d)
    nonempty = counts > 0
    out[nonempty] = np.minimum.reduceat(cost, starts[nonempty])
    return out


def recall_at_areas(
    areas_needed: object, areas_km2: Sequence[float] | np.ndarray, denominator: int | None = None
) -> dict[float, float]:
    """Fraction of images whose (finite) needed area is ``≤`` each area in ``areas_km2``: ``{area: recall}``.

    ``denominator`` (≥ number of images) counts images without a candidate list as not recalled.
    """
    needed = np.asarray(areas_needed, dtype=np.float64).reshape(-1)
    if np.isnan(needed).any():
        raise ValueError("an area needed is NaN")
    denom = _check_denominator(denominator, needed.size, "images")
    a = np.asarray(areas_km2, dtype=np.float64).reshape(-1)
    # an image with no candidate (area needed inf) is not recalled at any area, not even an infinite one
    counts = (np.isfinite(needed)[:, None] & (needed[:, None] <= a[None, :])).sum(axis=0)
    return {float(x): int(c) / denom for x, c in zip(a, counts, strict=True)}


def recall_vs_area(
    truth: object,
    candidates: Sequence[object],
    *,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    denominator: int | None = None,
    curve_points: int = 101,
) -> dict[str, Any]:
    """Recall vs Area of ranked point candidates (construction above `cap_area_km2`).

    Args:
        truth: ``(N, 2)`` ground truth.
        candidates: for each image, its ranked candidates ``(k_i, 2)`` (best first); may be empty.
        thresholds: report recall at the cap areas of disks of these radii (km).
        denominator: number of images in the benchmark (≥ N); the others count as not recalled.
        curve_points: number of areas of the curve, log-spaced from 1 km² to the whole sphere.

    Returns:
        ``n``, ``denominator``, ``radius_km`` (R), ``areas_km2`` (``{"1km": cap area of the 1 km disk, …}``),
        ``recall`` (at those areas, same keys), ``median_area_km2`` (over the N images; inf if half are
        never recalled) and ``curve`` (``{"areas_km2": [...], "recall": [...]}``).
    """
    if curve_points < 2:
        raise ValueError(f"curve_points must be at least 2, got {curve_points}")
    needed = areas_needed_km2(truth, candidates)
    denom = _check_denominator(denominator, needed.size, "images")
    th = [float(t) for t in thresholds]
    th_areas = np.asarray(cap_area_km2(np.asarray(th, dtype=np.float64)), dtype=np.float64).reshape(-1)
    at_thresholds = recall_at_areas(needed, th_areas, denom)
    grid = np.geomspace(1.0, SPHERE_AREA_KM2, curve_points)
    grid[0], grid[-1] = 1.0, SPHERE_AREA_KM2
    curve = recall_at_areas(needed, grid, denom)
    return {
        "n": int(needed.size),
        "denominator": denom,
        "radius_km": EARTH_RADIUS_KM,
        "thresholds_km": th,
        "areas_km2": {threshold_key(t): float(a) for t, a in zip(th, th_areas, strict=True)},
        "recall": {threshold_key(t): at_thresholds[float(a)] for t, a in zip(th, th_areas, strict=True)},
        "median_area_km2": math.nan if needed.size == 0 else float(np.median(needed)),
        "curve": {"areas_km2": [float(a) for a in grid], "recall": [curve[float(a)] for a in grid]},
    }


def percent_table(report: Mapping[str, Any], digits: int = 1) -> dict[str, float]:
    """The accuracy of a `summarize` report as percentages rounded like paper tables (``{"1km": 10.5, …}``)."""
    return {k: round(100.0 * v, digits) for k, v in report["accuracy"].items()}
