"""Score a file of per-image predictions (CSV or JSONL) with `g3.evaluation.metrics.summarize`.

Reads the common layouts:

* g3's own JSONL records (``gt_lat, gt_lon, pred_lat, pred_lon`` and anything else);
* GeoEstimation's result CSVs (``img_id, gt_lat, predicted_lat, gt_long, predicted_long,
  great_circle_distance``, then a blank line and a two-line summary, which is parsed into
  ``stored_summary`` so that the published numbers can be checked against a recomputation);
* other CSVs whose columns are spelled like ``LAT/LON`` + ``LAT_pred/LON_pred``, ``true_lat`` +
  ``pred_lon``, … (matched case-insensitively), or named explicitly with ``columns=``.

Numbers are parsed with correctly rounded conversions (Python's ``float`` and ``json``), so the scores
depend only on the digits in the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from g3.evaluation.metrics import DEFAULT_CONVENTION, Convention, summarize, threshold_key

#: The four columns `score_predictions` needs.
ROLES: tuple[str, ...] = ("gt_lat", "gt_lon", "pred_lat", "pred_lon")

#: Spellings recognised for each role, compared case-insensitively with the file's column names.
COLUMN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "gt_lat": (
        "gt_lat",
        "gt_latitude",
        "true_lat",
        "true_latitude",
        "lat_gt",
        "latitude_gt",
        "lat_true",
        "latitude_true",
        "target_lat",
        "lat",
        "latitude",
    ),
    "gt_lon": (
        "gt_lon",
        "gt_long",
        "gt_lng",
        "gt_longitude",
        "true_lon",
        "true_long",
        "true_lng",
        "true_longitude",
        "lon_gt",
        "long_gt",
        "lng_gt",
        "longitude_gt",
        "lon_true",
        "long_true",
        "longitude_true",
        "target_lon",
        "lon",
        "long",
        "lng",
        "longitude",
    ),
    "pred_lat": (
        "pred_lat",
        "predicted_lat",
        "pred_latitude",
        "predicted_latitude",
        "lat_pred",
        "lat_predicted",
        "latitude_pred",
        "latitude_predicted",
    ),
    "pred_lon": (
        "pred_lon",
        "pred_long",
        "pred_lng",
        "predicted_lon",
        "predicted_long",
        "predicted_lng",
        "pred_longitude",
        "predicted_longitude",
        "lon_pred",
        "long_pred",
        "lng_pred",
        "lon_predicted",
        "long_predicted",
        "longitude_pred",
        "longitude_predicted",
    ),
}

#: Columns taken, when present, to name images in ``missing_ids`` (first match in this order).
ID_SPELLINGS: tuple[str, ...] = ("img_id", "image_id", "id", "image", "img", "filename", "file", "path")

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_KM_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*km", re.IGNORECASE)


def score_predictions(
    path: str | os.PathLike[str],
    *,
    convention: Convention = DEFAULT_CONVENTION,
    radius_km: float | None = None,
    columns: Mapping[str, str] | None = None,
    denominator: int | None = None,
) -> dict[str, Any]:
    """Score per-image predictions stored in a CSV or JSONL file.

    Args:
        path: a ``.csv``/``.tsv`` file with a header row, or a ``.jsonl``/``.ndjson`` file of one JSON object
            per line (other suffixes: JSONL if the first character is ``{``, else CSV).
        convention, radius_km: see `g3.evaluation.metrics.distances_km`. To reproduce GeoEstimation's
            files use ``convention="haversine-le", radius_km=6371.0``.
        columns: explicit column names for some or all of ``gt_lat``, ``gt_lon``, ``pred_lat``, ``pred_lon``;
            the others are detected among `COLUMN_SPELLINGS`.
        denominator: number of images in the benchmark, at least the number of rows (e.g. 3000 when a file
            has rows only for 2,997); images without a row count as wrong. Default: the number of rows.

    Returns:
        `summarize`'s report plus ``file``, ``rows`` (data rows read), ``columns`` (the mapping used),
        ``missing_predictions`` (rows whose predicted latitude or longitude is empty/NaN: not scored but
        counted as wrong in the denominator), ``missing_ids`` (their image ids, or 0-based row numbers when
        the file has no id column) and ``stored_summary`` (the summary lines after the data, parsed, or None).

    Raises:
        ValueError: unreadable file, missing or ambiguous columns (the message lists the columns found),
            non-numeric values, a missing ground truth, or trailing lines that are not a summary.
        InvalidCoordinatesError: coordinates out of range.
    """
    file = Path(path)
    frame, stored = _read_table(file)
    mapping = resolve_columns(list(frame.columns), columns)
    values = {role: _numeric(frame[col], col, file) for role, col in mapping.items()}
    truth = np.column_stack([values["gt_lat"], values["gt_lon"]])
    pred = np.column_stack([values["pred_lat"], values["pred_lon"]])
    rows = int(truth.shape[0])

    bad_truth = np.isnan(truth).any(axis=1)
    if bad_truth.any():
        i = int(np.flatnonzero(bad_truth)[0])
        raise ValueError(
            f"{file}: row {i} has no ground truth ({mapping['gt_lat']}, {mapping['gt_lon']} = "
            f"{float(truth[i, 0])!r}, {float(truth[i, 1])!r}); every row needs one"
        )
    missing = np.isnan(pred).any(axis=1)
    if denominator is not None and not isinstance(denominator, bool) and denominator < rows:
        raise ValueError(f"{file}: denominator {denominator} is smaller than the {rows} rows of the file")
    report = summarize(
        truth[~missing],
        pred[~missing],
        convention=convention,
        radius_km=radius_km,
        denominator=rows if denominator is None else denominator,
    )
    id_col = _find_id_column(list(frame.columns))
    if id_col is None:
        missing_ids: list[Any] = [int(i) for i in np.flatnonzero(missing)]
    else:
        missing_ids = [_plain(v) for v in frame[id_col].to_numpy()[missing]]
    report.update(
        file=str(file),
        rows=rows,
        columns=dict(mapping),
        missing_predictions=int(missing.sum()),
        missing_ids=missing_ids,
        stored_summary=stored,
    )
    return report


def resolve_columns(found: list[str], columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each of `ROLES` to one of the ``found`` column names (explicit ``columns`` first).

    Raises:
        ValueError: an unknown role in ``columns``, a named column absent from ``found``, no spelling of a
            role or several, or one column used for two roles. The message lists the columns found.
    """
    given = dict(columns or {})
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown keys in columns=: {unknown}; use {list(ROLES)}")
    shown = ", ".join(map(repr, found))
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for role in ROLES:
        if role in given:
            name = given[role]
            if name in found:
                mapping[role] = name
                continue
            folded = [c for c in found if c.lower() == str(name).lower()]
            if len(folded) == 1:
                mapping[role] = folded[0]
            else:
                problems.append(f"{role}: column {name!r} is not in the file")
            continue
        spellings = COLUMN_SPELLINGS[role]
        hits = [c for c in found if c.strip().lower() in spellings]
        if len(hits) == 1:
            mapping[role] = hits[0]
        elif not hits:
            problems.append(f"{role}: no column spelled like {', '.join(spellings[:4])}, …")
        else:
            problems.append(f"{role}: ambiguous, several columns match ({', '.join(map(repr, hits))})")
    used: dict[str, str] = {}
    for role, col in mapping.items():
        if col in used:
            problems.append(f"column {col!r} is used for both {used[col]} and {role}")
        used[col] = role
    if problems:
        raise ValueError(
            "cannot tell which columns hold the coordinates: "
            + "; ".join(problems)
            + f". Columns found: {shown}. Name them with columns={{'gt_lat': …, 'gt_lon': …, 'pred_lat': …, "
            "'pred_lon': …}}"
        )
    return mapping


def stored_summary_mismatches(report: Mapping[str, Any]) -> list[str]:
    """Compare a `score_predictions` report with its file's stored summary at the stored precision.

    Each stored number is compared with ours rounded to as many decimals as the file writes for it
    (Python's exact ``round``). Returns one line per difference; empty when everything agrees or there is
    no stored summary.
    """
    stored = report.get("stored_summary")
    if not stored:
        return []
    out = []
    written: dict[str, str] = stored["as_written"]
    for key, text in written.items():
        ours = report.get(key) if key in ("mean_km", "median_km") else report.get("accuracy", {}).get(key)
        if ours is None:
            out.append(f"{key}: stored {text}, not in our report")
            continue
        decimals = len(text.split(".", 1)[1]) if "." in text else 0
        if round(float(ours), decimals) != float(text):
            out.append(f"{key}: stored {text}, ours {ours!r} (rounds to {round(float(ours), decimals)!r})")
    return out


def _read_table(file: Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"cannot read predictions file {file}: {exc}") from exc
    suffix = file.suffix.lower()
    is_jsonl = suffix in _JSONL_SUFFIXES or (suffix not in (".csv", ".tsv") and text.lstrip().startswith("{"))
    if is_jsonl:
        return _read_jsonl(text, file), None
    return _read_csv(text, file, "\t" if suffix == ".tsv" else ",")


def _read_jsonl(text: str, file: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{number}: not a JSON object ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise ValueError(f"{file}: no records")
    return pd.DataFrame.from_records(records)


def _read_csv(text: str, file: Path, sep: str) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None:
        raise ValueError(f"{file}: empty file")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    tail = [(i + 1, lines[i]) for i in range(end, len(lines)) if lines[i].strip()]
    stored = _parse_summary(tail, file, sep) if tail else None
    body = "\n".join(lines[start:end]) + "\n"
    try:
        # Read text and convert with Python's correctly rounded float() (see `_numeric`): pandas' own float
        # parser is not guaranteed to round correctly, and its ``float_precision`` switch is deprecated.
        frame = pd.read_csv(io.StringIO(body), sep=sep, dtype=str)
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValueError(f"{file}: cannot parse as CSV ({exc})") from exc
    return frame, stored


def _parse_summary(tail: list[tuple[int, str]], file: Path, sep: str) -> dict[str, Any]:
    """GeoEstimation's summary: a header line of names like 'city acc (25km)' and a line of numbers."""
    where = f"{file}:{tail[0][0]}"
    if len(tail) != 2:
        raise ValueError(
            f"{where}: {len(tail)} non-empty lines follow the blank line after the data; expected a two-line "
            "summary (names, then numbers). Remove blank lines inside the data."
        )
    header, values = (next(csv.reader([line], delimiter=sep)) for _, line in tail)
    if len(header) != len(values):
        raise ValueError(f"{where}: summary has {len(header)} names but {len(values)} values")
    parsed: dict[str, Any] = {"accuracy": {}, "other": {}, "as_written": {}, "fields": list(header)}
    for name, raw in zip(header, values, strict=True):
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where}: summary value {raw!r} for {name!r} is not a number") from None
        lower = name.lower()
        km = _KM_IN_NAME.search(name)
        if "acc" in lower and km:
            key = threshold_key(float(km.group(1)))
            parsed["accuracy"][key] = value
            parsed["as_written"][key] = text
        elif "mean" in lower or "median" in lower:
            key = "mean_km" if "mean" in lower else "median_km"
            parsed[key] = value
            parsed["as_written"][key] = text
        else:
            parsed["other"][name] = value
    return parsed


def _numeric(column: pd.Series, name: str, file: Path) -> np.ndarray:
    """float64 values of a column of text (CSV) or JSON values; empty cells and nulls become NaN.

    Casting an object array to float64 calls Python's ``float`` on each value: correctly rounded.
    """
    raw = column.to_numpy(dtype=object, na_value=np.nan)
    try:
        return raw.astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{file}: column {name!r} holds a value that is not a number ({exc})") from exc


def _find_id_column(found: list[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in reversed(found)}
    return next((lowered[s] for s in ID_SPELLINGS if s in lowered), None)


def _plain(value: object) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
