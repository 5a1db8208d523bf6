"""Per-group scores: by continent, by country and by any metadata column (e.g. IM2GPS3k's scene label).

`locate_truth` names the country and continent of every ground-truth point, offline (GeoNames nearest
place via `g3.data.geocode.reverse_geocode_offline`, continent from ``g3/assets/country_continent.csv``).
`breakdown` scores each group with `g3.evaluation.metrics.summarize`, so a group's numbers are exactly
those of the whole benchmark's scoring applied to its rows.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from g3.data.geocode import reverse_geocode_offline
from g3.evaluation.metrics import THRESHOLDS_KM, summarize

#: Continent of a country code that is empty or not in the table.
UNKNOWN = "Unknown"
#: Label of the row that gathers the groups too small (or beyond ``top``) to be listed.
OTHER = "other"
#: Truth points farther than this from any GeoNames place (≥ ~1000 inhabitants) get no country.
#: Benchmark photos are taken on land, where such places can still be sparse (Patagonia, the Australian
#: outback, Namibia, Iceland): 44 IM2GPS3k and 38 YFCC4k truths lie more than 50 km from one, none of
#: IM2GPS3k's and one of YFCC4k's more than 200 km. Open ocean stays without a country.
TRUTH_MAX_DISTANCE_KM = 200.0
#: Names of the values of metadata columns, used by `breakdown` when no ``labels`` are given.
#: IM2GPS3k's ``S3_Label`` is the argmax of its ``Prob_indoor, Prob_natural, Prob_urban`` columns.
KNOWN_LABELS: dict[str, dict[str, str]] = {"S3_Label": {"0": "indoor", "1": "natural", "2": "urban"}}
#: Country codes that GeoNames uses but the pycountry-convert table lacks, and their continents.
_EXTRA_CONTINENTS: dict[str, str] = {
    "AQ": "Antarctica",
    "EH": "Africa",
    "PN": "Oceania",
    "SX": "North America",
    "TF": "Antarctica",
    "TL": "Asia",
    "VA": "Europe",
}


@functools.lru_cache(maxsize=1)
def _continent_table() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code (upper case) → continent name, from the bundled CSV."""
    text = resources.files("g3.assets").joinpath("country_continent.csv").read_text(encoding="utf-8")
    # keep_default_na=False: Namibia's code is "NA".
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    mapping = dict(_EXTRA_CONTINENTS)
    mapping.update(zip(table["country_code"].str.strip().str.upper(), table["continent"].str.strip(), strict=True))
    return mapping


def continent_table() -> dict[str, str]:
    """ISO 3166-1 alpha-2 country code → continent name (from ``g3/assets/country_continent.csv``)."""
    return dict(_continent_table())


def continent_of(country_codes: Iterable[object]) -> np.ndarray:
    """Continent names (``"Europe"``, ``"North America"``, …) of ISO alpha-2 codes; ``"Unknown"`` if unknown.

    Case and surrounding spaces are ignored; empty, missing and unknown codes give `UNKNOWN`.
    """
    table = _continent_table()
    codes = pd.Series(list(country_codes), dtype=object)
    keys = codes.where(codes.notna(), "").astype(str).str.strip().str.upper()
    return keys.map(table).fillna(UNKNOWN).to_numpy(dtype=object)


def locate_truth(frame: pd.DataFrame, *, max_distance_km: float = TRUTH_MAX_DISTANCE_KM) -> pd.DataFrame:
    """A copy of ``frame`` with ``country``, ``country_code`` and ``continent`` of its ground truth.

    The truth is read from ``LAT, LON`` (else ``gt_lat, gt_lon``). Rows keep their order and index. A point
    farther than ``max_distance_km`` from any GeoNames place (open sea) gets country ``""``, code ``""`` and
    continent ``"Unknown"``. Vectorised (one KD-tree query for all rows).

    Raises:
        KeyError: neither pair of coordinate columns is present.
        InvalidCoordinatesError: a coordinate is NaN or out of range.
    """
    lat, lon = _truth_columns(frame)
    out = frame.copy()
    latlon = frame[[lat, lon]].to_numpy(dtype=np.float64)
    places = reverse_geocode_offline(latlon, max_distance_km=max_distance_km)
    out["country"] = places["country"].to_numpy(dtype=object)
    out["country_code"] = places["country_code"].to_numpy(dtype=object)
    out["continent"] = continent_of(out["country_code"])
    return out


def _truth_columns(frame: pd.DataFrame) -> tuple[str, str]:
    for pair in (("LAT", "LON"), ("gt_lat", "gt_lon")):
        if all(c in frame.columns for c in pair):
            return pair
    raise KeyError(f"frame has no LAT, LON (or gt_lat, gt_lon) columns; columns: {list(frame.columns)}")


def _group_labels(values: pd.Series, labels: Mapping[Any, str] | None) -> pd.Series:
    """Group values as text: mapped through ``labels`` (keys compared as text), empty/NaN → `UNKNOWN`."""
    text = values.astype(object).where(values.notna(), "")
    text = text.map(lambda v: _format_value(v)).astype(object)
    if labels:
        by_text = {_format_value(k): str(v) for k, v in labels.items()}
        text = text.map(lambda v: by_text.get(v, v))
    text = text.str.strip()
    return text.where(text != "", UNKNOWN)


def _format_value(value: object) -> str:
    """``2`` and ``2.0`` both as ``"2"`` (a label column read as float), anything else via ``str``."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _summarize(
    truth: np.ndarray, pred: np.ndarray, *, convention: str, thresholds: Sequence[float], n: int
) -> dict[str, Any]:
    options: dict[str, Any] = {"convention": convention, "thresholds": thresholds, "denominator": n}
    return summarize(truth, pred, **options)


def breakdown(
    records: pd.DataFrame,
    group: str,
    *,
    convention: str,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    min_count: int = 10,
    top: int | None = 20,
    labels: Mapping[Any, str] | None = None,
    min_listed: int = 0,
) -> pd.DataFrame:
    """Scores per value of ``records[group]``: how many images and accuracy at each threshold, median error.

    Args:
        records: one row per image with ``gt_lat, gt_lon, pred_lat, pred_lon`` and the ``group`` column. A
            row whose prediction is missing (NaN/None: the image failed) counts as wrong in its group.
        group: the column to group by (``"continent"``, ``"country"``, ``"S3_Label"``, …). Empty or missing
            values form the group ``"Unknown"``.
        convention: the distance convention, passed to `summarize` (e.g. ``"geodesic-lt"``).
        thresholds: accuracy thresholds in km.
        min_count: groups with fewer rows go into the ``"other"`` row.
        top: list at most this many groups (the largest); the rest go into ``"other"``. None: no limit.
        labels: names of group values (e.g. ``{0: "indoor"}``); default `KNOWN_LABELS` of ``group``.
        min_listed: list at least this many of the largest groups even below ``min_count`` (within
            ``top``), so that a short run's breakdown is not one ``"other"`` row.

    Returns:
        One row per group, sorted by ``n`` descending (then by name), the ``"other"`` row last: columns
        ``group`` (named after ``group``), ``n`` (rows, the denominator), ``scored`` (rows with a
        prediction), one accuracy fraction per threshold (``"1km"``, ``"25km"``, …; same keys as
        `summarize`) and ``median_km`` (over scored rows; NaN when none). ``attrs["other_groups"]`` holds
        how many groups ``"other"`` gathers, ``attrs["other_members"]`` which (``[name, rows]``, largest first).

    Raises:
        KeyError: a required column is absent.
        ValueError: ``min_count`` or ``top`` out of range, or invalid coordinates.
    """
    needed = ["gt_lat", "gt_lon", "pred_lat", "pred_lon", group]
    absent = [c for c in needed if c not in records.columns]
    if absent:
        raise KeyError(f"breakdown needs columns {needed}; missing {absent} (columns: {list(records.columns)})")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, not {min_count!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be an integer >= 1 or None, not {top!r}")
    if isinstance(min_listed, bool) or not isinstance(min_listed, int) or min_listed < 0:
        raise ValueError(f"min_listed must be an integer >= 0, not {min_listed!r}")
    names = _group_labels(records[group], labels if labels is not None else KNOWN_LABELS.get(group))
    truth = records[["gt_lat", "gt_lon"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    pred = records[["pred_lat", "pred_lon"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    scored = np.isfinite(pred).all(axis=1)

    counts = names.value_counts(sort=False)
    ordered = sorted(counts.index, key=lambda g: (-int(counts[g]), str(g)))
    candidates = [g for g in ordered if g != OTHER]
    listed = [g for i, g in enumerate(candidates) if counts[g] >= min_count or i < min_listed]
    if top is not None:
        listed = listed[:top]
    rest = [g for g in ordered if g not in set(listed)]
    keys = np.asarray(names.to_numpy(dtype=object))

    rows = []
    members = [(g, keys == g) for g in listed]
    if rest:
        members.append((OTHER, np.isin(keys, np.asarray(rest, dtype=object))))
    for name, mask in members:
        ok = mask & scored
        report = _summarize(truth[ok], pred[ok], convention=convention, thresholds=thresholds, n=int(mask.sum()))
        rows.append(
            {group: name, "n": int(mask.sum()), "scored": int(ok.sum())}
            | {k: float(v) for k, v in report["accuracy"].items()}
            | {"median_km": float(report["median_km"])}
        )
    accuracy_keys = [f"{float(t):g}km" for t in thresholds]
    out = pd.DataFrame(rows, columns=[group, "n", "scored", *accuracy_keys, "median_km"])
    out.attrs["other_groups"] = len(rest)
    out.attrs["other_members"] = [[str(g), int(counts[g])] for g in rest]
    return out
