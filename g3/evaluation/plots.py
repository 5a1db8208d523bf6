"""Evaluation figures as PNG files: error CDF, world map of truths and predictions, Recall vs Area.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg renderer, never through pyplot, so
nothing opens a display and no global state is touched. Every file is written atomically (a temporary
file in the same folder, then ``os.replace``).

The world map draws the country outlines of the bundled ``g3/assets/countries-110m.json`` (Natural Earth
1:110m via world-atlas), decoded by `decode_topojson`, in an equirectangular projection (x = longitude,
y = latitude) whose pixel geometry is fixed: `world_map_pixel` gives where a point lands in the PNG.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure

from g3.errors import TopoJSONError
from g3.evaluation.metrics import THRESHOLD_NAMES, THRESHOLDS_KM, cap_area_km2
from g3.geo import validate_latlon
from g3.io import atomic_open

#: Resolution of every PNG, in dots per inch.
DPI = 100
#: Size of the world map in inches (at `DPI`: 1200 × 660 pixels).
WORLD_MAP_SIZE_IN: tuple[float, float] = (12.0, 6.6)
#: The map's axes in figure fractions (left, bottom, width, height), chosen so that one degree of
#: longitude and one of latitude take the same number of pixels (1128 × 564 px for 360° × 180°).
WORLD_MAP_AXES: tuple[float, float, float, float] = (0.03, 0.04, 0.94, 564 / 660)
#: Colours of the world map.
OCEAN_COLOR = "#dfeaf4"
LAND_COLOR = "#f4f3ee"
BORDER_COLOR = "#9b9b9b"
TRUTH_COLOR = "#1a9850"
PRED_COLOR = "#d7301f"
LINE_COLOR = "#4d4d4d"
#: Range of the error CDF's x axis, in km.
CDF_RANGE_KM: tuple[float, float] = (1.0, 20000.0)


@dataclasses.dataclass(frozen=True)
class TopoFeature:
    """One geometry of a TopoJSON object: its name, id and polygons (each a list of rings, outer first)."""

    name: str
    id: str
    polygons: list[list[np.ndarray]]


# --- TopoJSON --------------------------------------------------------------------------------------


def _topology_path(path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        return Path(path)
    return Path(str(resources.files("g3.assets").joinpath("countries-110m.json")))


def _load_topology(path: str | os.PathLike[str] | None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The topology and its arcs as absolute ``(k, 2)`` lon/lat arrays (quantization undone)."""
    file = _topology_path(path)
    try:
        topology = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TopoJSONError(f"cannot read TopoJSON {str(file)!r}: {exc}") from exc
    if not isinstance(topology, dict) or topology.get("type") != "Topology" or "arcs" not in topology:
        raise TopoJSONError(f"{str(file)!r} is not a TopoJSON Topology (no type 'Topology' with 'arcs')")
    transform = topology.get("transform")
    scale = translate = None
    if transform is not None:
        try:
            scale = np.asarray(transform["scale"], dtype=np.float64).reshape(2)
            translate = np.asarray(transform["translate"], dtype=np.float64).reshape(2)
        except (KeyError, TypeError, ValueError) as exc:
            raise TopoJSONError(f"{str(file)!r}: bad 'transform' {transform!r} ({exc})") from exc
    arcs = []
    for i, arc in enumerate(topology["arcs"]):
        try:
            points = np.asarray(arc, dtype=np.float64).reshape(-1, len(arc[0]) if arc else 2)[:, :2]
        except (TypeError, ValueError, IndexError) as exc:
            raise TopoJSONError(f"{str(file)!r}: arc {i} is not a list of positions ({exc})") from exc
        if scale is not None and translate is not None:
            # Quantized arcs are delta-encoded: each position is the offset from the previous one.
            points = np.cumsum(points, axis=0) * scale + translate
        arcs.append(points)
    return topology, arcs


def _stitch(arcs: list[np.ndarray], indices: Sequence[int]) -> np.ndarray:
    """Join arcs into one line; index ``~i`` (negative) is arc ``i`` reversed. Shared end points appear once."""
    parts = []
    for k, index in enumerate(indices):
        i = int(index)
        j = i if i >= 0 else ~i
        if j >= len(arcs):
            raise TopoJSONError(f"arc index {i} out of range (the topology has {len(arcs)} arcs)")
        points = arcs[j] if i >= 0 else arcs[j][::-1]
        parts.append(points if k == 0 else points[1:])
    return np.concatenate(parts, axis=0) if parts else np.empty((0, 2))


def _geometry_polygons(geometry: Mapping[str, Any], arcs: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Polygons (lists of rings) of a geometry; lines count as one-ring polygons, points are skipped."""
    kind = geometry.get("type")
    refs = geometry.get("arcs", [])
    if kind == "Polygon":
        return [[_stitch(arcs, ring) for ring in refs]]
    if kind == "MultiPolygon":
        return [[_stitch(arcs, ring) for ring in polygon] for polygon in refs]
    if kind == "LineString":
        return [[_stitch(arcs, refs)]]
    if kind == "MultiLineString":
        return [[_stitch(arcs, line)] for line in refs]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in _geometry_polygons(g, arcs)]
    if kind in (None, "Point", "MultiPoint"):
        return []
    raise TopoJSONError(f"unknown TopoJSON geometry type {kind!r}")


def topojson_features(
    path: str | os.PathLike[str] | None = None, *, object_name: str = "countries"
) -> list[TopoFeature]:
    """The geometries of one object of a TopoJSON file (default: the bundled countries), decoded.

    Raises:
        TopoJSONError: the file cannot be read or decoded, or has no object ``object_name``.
    """
    topology, arcs = _load_topology(path)
    objects = topology.get("objects") or {}
    if object_name not in objects:
        raise TopoJSONError(f"TopoJSON has no object {object_name!r}; objects: {sorted(objects)}")
    root = objects[object_name]
    geometries = root.get("geometries", []) if root.get("type") == "GeometryCollection" else [root]
    features = []
    for geometry in geometries:
        properties = geometry.get("properties") or {}
        features.append(
            TopoFeature(
                name=str(properties.get("name", "")),
                id=str(geometry.get("id", "")),
                polygons=_geometry_polygons(geometry, arcs),
            )
        )
    return features


def decode_topojson(path: str | os.PathLike[str] | None = None, *, object_name: str = "countries") -> list[np.ndarray]:
    """All rings (outer boundaries and holes) of a TopoJSON object as ``(M, 2)`` (lon, lat) arrays.

    Handles quantized, delta-encoded arcs (``transform``), Polygon / MultiPolygon / GeometryCollection
    geometries and reversed arcs (index ``~i``). Default: the bundled Natural Earth 110m countries.
    """
    return [
        ring for feature in topojson_features(path, object_name=object_name) for p in feature.polygons for ring in p
    ]


def _seamless(ring: np.ndarray) -> list[np.ndarray]:
    """Copies of a lon/lat ring to draw on a [-180, 180] map: cut at the antimeridian, closed around a pole.

    A ring crossing ±180° is unwrapped into a continuous one and drawn once more shifted by 360°; a ring
    that goes round a pole (Antarctica) is closed along the pole's latitude.
    """
    if len(ring) < 2 or np.abs(np.diff(ring[:, 0])).max() <= 180:
        return [ring]
    lon = np.unwrap(ring[:, 0], period=360.0)
    lat = ring[:, 1]
    if abs(lon[-1] - lon[0]) > 180:  # winds round a pole
        pole = math.copysign(90.0, float(np.mean(lat)))
        lon = np.concatenate((lon, [lon[-1], lon[0]]))
        lat = np.concatenate((lat, [pole, pole]))
    unwrapped = np.column_stack((lon, lat))
    shift = np.array([360.0, 0.0])
    copies = [unwrapped]
    if lon.max() > 180:
        copies.append(unwrapped - shift)
    if lon.min() < -180:
        copies.append(unwrapped + shift)
    return copies


# --- saving ----------------------------------------------------------------------------------------


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and return the path."""
    target = Path(path)
    with atomic_open(target, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)
    return target


# --- error CDF -------------------------------------------------------------------------------------


def _distances(name: str, values: object) -> np.ndarray:
    d = np.asarray(values, dtype=np.float64).reshape(-1)
    if (d[~np.isnan(d)] < 0).any():
        raise ValueError(f"error_cdf: distances of {name!r} include negative values")
    return d


def error_cdf(
    distances_by_name: Mapping[str, object],
    path: str | os.PathLike[str],
    *,
    denominators: Mapping[str, int] | None = None,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    title: str = "Error distribution",
) -> Path:
    """Cumulative error curves: fraction of images with error ≤ x km, x on a log scale from 1 to 20,000 km.

    Args:
        distances_by_name: per-image errors in km of each method. NaN or inf counts as never correct.
        path: the PNG to write.
        denominators: per method, the number of images to divide by (≥ its number of distances), so that
            missing or failed images count as wrong; default the number of distances.
        thresholds: vertical reference lines (km).
        title: the figure's title.

    Raises:
        ValueError: no method, a method without distances and denominator, negative distances, or a
            denominator smaller than the number of distances.
    """
    if not distances_by_name:
        raise ValueError("error_cdf needs at least one method's distances")
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot()
    grid = np.geomspace(*CDF_RANGE_KM, 2000)
    for name, values in distances_by_name.items():
        d = _distances(name, values)
        denom = int((denominators or {}).get(name, d.size))
        if denom <= 0 or denom < d.size:
            raise ValueError(f"error_cdf: method {name!r} has {d.size} distances and denominator {denom}")
        finite = np.sort(d[np.isfinite(d)])
        fraction = np.searchsorted(finite, grid, side="right") / denom
        ax.plot(grid, fraction, label=f"{name} (n={denom})", linewidth=1.8)
    for t in thresholds:
        ax.axvline(t, color="0.6", linestyle="--", linewidth=0.8, zorder=0)
        label = f"{t:g} km" + (f"\n{THRESHOLD_NAMES[float(t)]}" if float(t) in THRESHOLD_NAMES else "")
        ax.text(t, 1.01, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(*CDF_RANGE_KM)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("error (km, log scale)")
    ax.set_ylabel("fraction of images with error ≤ x")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title, pad=28)
    fig.tight_layout()
    return _save(fig, path)


# --- world map -------------------------------------------------------------------------------------


def world_map_pixel(lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    """Pixel column and row (from the top-left corner) where ``(lat, lon)`` lands in a `world_map` PNG."""
    left, bottom, width, height = WORLD_MAP_AXES
    w_px, h_px = WORLD_MAP_SIZE_IN[0] * DPI, WORLD_MAP_SIZE_IN[1] * DPI
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    x = (left + width * (lon_a + 180.0) / 360.0) * w_px
    y = h_px - (bottom + height * (lat_a + 90.0) / 180.0) * h_px
    return x, y


def _pair_segments(truth: np.ndarray, pred: np.ndarray) -> list[np.ndarray]:
    """Straight segments truth → prediction the short way round: a pair across ±180° gives two pieces."""
    segments = []
    for (lat1, lon1), (lat2, lon2) in zip(truth, pred, strict=True):
        dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
        end = lon1 + dlon
        if -180.0 <= end <= 180.0:
            segments.append(np.array([[lon1, lat1], [end, lat2]]))
            continue
        edge = 180.0 if end > 180.0 else -180.0
        lat_cross = lat1 + (lat2 - lat1) * (edge - lon1) / dlon
        segments.append(np.array([[lon1, lat1], [edge, lat_cross]]))
        segments.append(np.array([[-edge, lat_cross], [end - 2 * edge, lat2]]))
    return segments


def world_map(
    truth: object,
    pred: object,
    path: str | os.PathLike[str],
    *,
    max_lines: int = 1000,
    seed: int = 0,
    title: str = "Ground truth and predictions",
) -> Path:
    """Map of ground-truth (green) and predicted (red) points with a line from each truth to its prediction.

    Args:
        truth: ``(N, 2)`` (lat, lon) in degrees.
        pred: ``(N, 2)`` (lat, lon); rows with NaN (failed images) get no point and no line.
        path: the PNG to write.
        max_lines: draw lines for at most this many pairs (a seeded random sample); every point is drawn.
        seed: seed of that sample.
        title: the figure's title.

    Raises:
        InvalidCoordinatesError: a truth is NaN or out of range, or a prediction out of range.
        ValueError: shapes differ or ``max_lines`` is negative.
    """
    t = validate_latlon(truth, what="world_map truth")
    p_all = np.asarray(pred, dtype=np.float64)
    if p_all.shape != t.shape:
        raise ValueError(f"world_map: truth has shape {t.shape} but predictions have shape {p_all.shape}")
    if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 0:
        raise ValueError(f"max_lines must be an integer >= 0, not {max_lines!r}")
    ok = np.isfinite(p_all).all(axis=1)
    p = validate_latlon(p_all[ok], what="world_map predictions")
    t_ok = t[ok]

    fig = Figure(figsize=WORLD_MAP_SIZE_IN)
    ax = fig.add_axes(WORLD_MAP_AXES)
    ax.set_facecolor(OCEAN_COLOR)
    rings = [copy for ring in decode_topojson() for copy in _seamless(ring)]
    ax.add_collection(PolyCollection(rings, facecolors=LAND_COLOR, edgecolors=BORDER_COLOR, linewidths=0.4, zorder=1))
    if len(p) and max_lines:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(p), size=min(max_lines, len(p)), replace=False))
        lines = LineCollection(
            _pair_segments(t_ok[chosen], p[chosen]), colors=LINE_COLOR, linewidths=0.5, alpha=0.35, zorder=2
        )
        ax.add_collection(lines)
    size = 14.0 if len(t) <= 5000 else 6.0
    ax.scatter(p[:, 1], p[:, 0], s=size, c=PRED_COLOR, linewidths=0, zorder=3, label=f"prediction ({len(p)})")
    ax.scatter(t[:, 1], t[:, 0], s=size, c=TRUTH_COLOR, linewidths=0, zorder=4, label=f"ground truth ({len(t)})")
    ax.set_xlim(-180.0, 180.0)
    ax.set_ylim(-90.0, 90.0)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.tick_params(labelsize=7, length=3, pad=2)
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
    shown = min(max_lines, len(p))
    fig.text(0.03, 0.965, title, fontsize=13, va="center")
    fig.text(0.03, 0.925, f"lines: {shown} of {len(p)} pairs (equirectangular)", fontsize=8, color="0.35", va="center")
    fig.legend(loc="upper right", bbox_to_anchor=(0.97, 0.995), ncol=2, fontsize=9, frameon=False, markerscale=2)
    return _save(fig, path)


# --- Recall vs Area --------------------------------------------------------------------------------


def _curve(name: str, curve: object) -> tuple[np.ndarray, np.ndarray]:
    """``(areas, recall)`` from a pair, an ``(M, 2)`` array or a mapping with ``areas_km2`` and ``recall``."""
    if isinstance(curve, Mapping):
        inner = curve.get("curve", curve)
        if not isinstance(inner, Mapping) or "recall" not in inner:
            raise ValueError(f"recall_area_curve: curve {name!r} has no 'recall' (keys: {sorted(curve)})")
        area_key = next((k for k in ("areas_km2", "areas", "area_km2") if k in inner), None)
        if area_key is None:
            raise ValueError(f"recall_area_curve: curve {name!r} has no 'areas_km2' (keys: {sorted(inner)})")
        pair: tuple[object, object] = (inner[area_key], inner["recall"])
    elif isinstance(curve, tuple | list) and len(curve) == 2:
        pair = (curve[0], curve[1])
    else:
        arr = np.asarray(curve, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"recall_area_curve: curve {name!r} must be (areas, recall), got shape {arr.shape}")
        pair = (arr[:, 0], arr[:, 1])
    areas = np.asarray(pair[0], dtype=np.float64).reshape(-1)
    recall = np.asarray(pair[1], dtype=np.float64).reshape(-1)
    if areas.shape != recall.shape:
        raise ValueError(f"recall_area_curve: curve {name!r} has {areas.size} areas but {recall.size} recalls")
    return areas, recall


def recall_area_curve(
    curves: Mapping[str, object],
    path: str | os.PathLike[str],
    *,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    title: str = "Recall vs Area",
) -> Path:
    """Recall (fraction of images) against the area searched (km², log scale) for each method.

    Args:
        curves: per method, ``(areas_km2, recall)``, or a mapping such as the ``curve`` of
            `g3.evaluation.metrics.recall_vs_area` (``{"areas_km2": [...], "recall": [...]}``).
        path: the PNG to write.
        thresholds: reference lines at the areas of disks of these radii (km).
        title: the figure's title.
    """
    if not curves:
        raise ValueError("recall_area_curve needs at least one curve")
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot()
    lowest, highest = math.inf, 0.0
    for name, curve in curves.items():
        areas, recall = _curve(name, curve)
        keep = np.isfinite(areas) & (areas > 0) & np.isfinite(recall)
        if not keep.any():
            raise ValueError(f"recall_area_curve: curve {name!r} has no positive finite area")
        order = np.argsort(areas[keep], kind="stable")
        a, r = areas[keep][order], recall[keep][order]
        lowest, highest = min(lowest, float(a[0])), max(highest, float(a[-1]))
        ax.plot(a, r, label=name, linewidth=1.8)
    for t in thresholds:
        area = cap_area_km2(t)
        if lowest <= area <= highest:
            ax.axvline(area, color="0.6", linestyle="--", linewidth=0.8, zorder=0)
            ax.text(area, 1.01, f"{t:g} km disk", transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
    ax.set(xscale="log", xlim=(lowest, highest), ylim=(0.0, 1.0), xlabel="area searched (km², log scale)",
           ylabel="recall")  # fmt: skip
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title, pad=18)
    fig.tight_layout()
    return _save(fig, path)


# --- calibration (runs whose predictions carry a confidence) ----------------------------------------


def reliability_diagram(
    reliability_by_radius: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "Reliability"
) -> Path:
    """Stated probability against observed accuracy, one line per radius (``{"25": reliability, ...}`` as
    `g3.evaluation.selective.reliability` gives), the diagonal being perfect calibration; dots sized by their
    bin's predictions, each radius' ECE in its legend and the predictions per bin in a lower panel."""
    if not reliability_by_radius:
        raise ValueError("reliability_diagram needs at least one radius")
    fig = Figure(figsize=(7.0, 7.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfectly calibrated")
    width = 1.0 / max(len(next(iter(reliability_by_radius.values()))["bins"]), 1)
    for number, (radius, data) in enumerate(reliability_by_radius.items()):
        bins = [b for b in data["bins"] if b["n"]]
        label = f"within {radius} km (ECE {float(data['ece']):.3f}, n={data['n']})"
        line = top.plot([b["probability"] for b in bins], [b["accuracy"] for b in bins], linewidth=1.2, alpha=0.6)
        most = max(b["n"] for b in bins)  # a bin's dot grows with its predictions: sparse bins are noisy
        top.scatter([b["probability"] for b in bins], [b["accuracy"] for b in bins], s=[12 + 140 * b["n"] / most
                    for b in bins], color=line[0].get_color(), label=label, zorder=3)  # fmt: skip
        shift = (number - (len(reliability_by_radius) - 1) / 2) * width / (len(reliability_by_radius) + 1)
        bottom.bar([(b["low"] + b["high"]) / 2 + shift for b in data["bins"]], [b["n"] for b in data["bins"]],
                   width=width / (len(reliability_by_radius) + 1), label=f"{radius} km")  # fmt: skip
    top.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel="share of answers really within r km", title=title)
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="stated probability P(within r km)", ylabel="predictions")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def risk_coverage_curve(
    curves_by_radius: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "Risk–coverage"
) -> Path:
    """Accuracy of the answers kept against the share kept (most confident first), one line per radius
    (``{"25": risk_coverage, ...}`` as `g3.evaluation.selective.risk_coverage` gives)."""
    if not curves_by_radius:
        raise ValueError("risk_coverage_curve needs at least one radius")
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot()
    for radius, curve in curves_by_radius.items():
        coverage = np.asarray(curve["coverage"], dtype=np.float64)
        accuracy = np.asarray(curve["accuracy"], dtype=np.float64)
        ax.plot(coverage, accuracy, linewidth=1.8, label=f"within {radius} km")
        ax.axhline(accuracy[-1], color=ax.lines[-1].get_color(), linestyle=":", linewidth=0.8, zorder=0)
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), xlabel="coverage: share of answers kept (most confident first)",
           ylabel="accuracy of the answers kept", title=title)  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, path)
