"""The run report (``report.md``) and the metrics file (``metrics.json``) of an evaluation, written atomically.

The report opens with the degraded predictions by reason (when any) and the configuration's note, then
states the dataset, the denominator (every image of the benchmark: missing and failed images count as
wrong; or the first images found on disk of a limited run) and the distance convention next to every
table, so that its numbers can be compared with published ones. When the predictions carry a calibrated
confidence (a fitted ranker), a section compares the stated probabilities with what happened: expected
calibration error, reliability diagram and risk–coverage (`g3.evaluation.selective`). Tables use fixed
decimals: percentages 2, kilometres and GeoScore 1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

import numpy as np
import pandas as pd

from g3.evaluation.datasets import EvalDataset
from g3.evaluation.metrics import THRESHOLD_NAMES
from g3.io import atomic_write_text

#: File names inside a run folder.
REPORT_NAME = "report.md"
METRICS_NAME = "metrics.json"
#: What each known convention means, for the report.
CONVENTION_TEXT: dict[str, str] = {
    "geodesic-lt": (
        "ellipsoidal WGS-84 distance (geopy geodesic); an image is correct at t km when its error is **< t** "
        "(G3's evaluation)"
    ),
    "haversine-le": (
        "great-circle (haversine) distance on a sphere; an image is correct at t km when its error is **≤ t** "
        "(GeoEstimation / GeoCLIP)"
    ),
}
#: Headings of known breakdowns; others are headed "By <column>".
BREAKDOWN_TITLES: dict[str, str] = {
    "continent": "By continent (of the ground truth)",
    "country": "By country (of the ground truth)",
    "S3_Label": "By scene (S3_Label: indoor / natural / urban)",
}
#: Headings of known plots; others are headed by their key.
PLOT_TITLES: dict[str, str] = {
    "error_cdf": "Error distribution",
    "world_map": "Ground truth and predictions",
    "recall_vs_area": "Recall vs Area",
    "reliability": "Reliability diagram (stated probability vs observed accuracy)",
    "risk_coverage": "Risk–coverage (accuracy of the answers kept vs share kept)",
}
#: Groups of a breakdown's *other* row named below its table.
OTHER_NAMED = 12
_DASH = "—"


# --- formatting ------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, inf, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt_percent(fraction: Any) -> str:
    """A fraction as a percentage with 2 decimals (``0.10511 → "10.51"``); ``—`` when missing."""
    x = _number(fraction)
    return _DASH if x is None else f"{100.0 * x:.2f}"


def fmt_km(value: Any) -> str:
    """Kilometres with 1 decimal and thousands separators (``1234.56 → "1,234.6"``); ``—`` when missing."""
    x = _number(value)
    return _DASH if x is None else f"{x:,.1f}"


def fmt_count(value: Any) -> str:
    """An integer count as digits (``2997``); ``—`` when missing."""
    x = _number(value)
    return _DASH if x is None else str(round(x))


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """A Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column (default: first left, rest right)."""
    align = align or ["l", *["r"] * (len(header) - 1)]
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _threshold_km(key: str) -> float | None:
    """``"25km" → 25.0``."""
    return _number(key[:-2]) if key.endswith("km") else None


def _threshold_label(key: str, op: str) -> str:
    t = _threshold_km(key)
    if t is None:
        return key
    name = THRESHOLD_NAMES.get(t)
    return f"{op} {t:g} km" + (f" ({name})" if name else "")


def _comparison(convention: str) -> str:
    return "<" if convention.endswith("-lt") else "≤" if convention.endswith("-le") else "within"


def describe_convention(metrics: Mapping[str, Any]) -> str:
    """One sentence naming the convention of a `summarize` report and what it means."""
    convention = str(metrics.get("convention", "unknown"))
    text = CONVENTION_TEXT.get(convention, "as named by the metrics module")
    radius = _number(metrics.get("radius_km"))
    if radius is not None:
        text += f", sphere radius {radius!r} km"
    return f"`{convention}`: {text}."


# --- sections --------------------------------------------------------------------------------------


def _degraded_section(degraded: Mapping[str, Any] | None, note: str | None) -> list[str]:
    """The first lines of a report: degraded photos by reason (loud when any), the configuration's note."""
    lines: list[str] = []
    if degraded is not None:
        mode, photos, located = str(degraded.get("mode", "full")), degraded.get("photos", 0), degraded.get("located")
        if mode != "full":
            lines.append(f"**Degraded predictions**: none possible: mode `{mode}` calls no LMM.")
        elif not photos:
            lines.append(f"**Degraded predictions**: none: all {fmt_count(located)} located photos got the answer "
                         "of the configured pipeline.")  # fmt: skip
        else:
            share = fmt_percent(degraded.get("share"))
            lines += [
                f"## DEGRADED RUN: {fmt_count(photos)} of {fmt_count(located)} located photos ({share}%) did not "
                "get the configured pipeline's answer",
                "",
                "These numbers are not those of the configured method. Degraded photos by reason (a photo with two "
                "reasons counts under both):",
                "",
            ]
            by_reason: Mapping[str, Any] = degraded.get("by_reason") or {}
            meanings: Mapping[str, Any] = degraded.get("meanings") or {}
            examples: Mapping[str, Any] = degraded.get("examples") or {}
            rows = [
                [f"`{reason}`", fmt_count(count), fmt_percent(count / located if located else None),
                 meanings.get(reason, ""), examples.get(reason, "")]
                for reason, count in by_reason.items()
            ]  # fmt: skip
            lines += _table(["reason", "photos", "% of located", "meaning", "example"], rows,
                            align=["l", "r", "r", "l", "l"])  # fmt: skip
        if degraded.get("unchecked"):
            lines += ["", f"{fmt_count(degraded['unchecked'])} predictions were written before g3 recorded "
                      "degradations and count as not degraded."]  # fmt: skip
    if note:
        lines += ["", f"**Note of the configuration**: {note}"]
    return lines


def _dataset_section(dataset: str | EvalDataset, metrics: Mapping[str, Any]) -> list[str]:
    name = dataset.name if isinstance(dataset, EvalDataset) else str(dataset)
    denominator = _number(metrics.get("denominator"))
    scored = _number(metrics.get("n"))
    lines = [f"- **Dataset**: {name}"]
    if isinstance(dataset, EvalDataset):
        if dataset.source is not None:
            lines.append(f"- **Metadata**: `{dataset.source}` ({len(dataset.frame)} rows)")
        if dataset.image_dir is not None:
            lines.append(f"- **Images**: `{dataset.image_dir}`, {len(dataset.missing)} of {len(dataset.frame)} missing")
    size = len(dataset.frame) if isinstance(dataset, EvalDataset) else None
    whole = size is None or denominator is None or denominator >= size
    if whole:
        lines.append(
            f"- **Denominator**: {fmt_count(denominator)} images: every image of the benchmark. Missing and failed "
            "images count as wrong."
        )
    else:
        lines.append(
            f"- **Denominator**: {fmt_count(denominator)} images: only the first {fmt_count(denominator)} images "
            f"found on disk (a run limited with --limit), not the benchmark's {size}; failed images "
            "count as wrong. These numbers are not comparable with published ones."
        )
    if denominator is not None and scored is not None:
        unscored = round(denominator - scored)
        detail = ""
        if (
            whole
            and isinstance(dataset, EvalDataset)
            and dataset.image_dir is not None
            and unscored >= len(dataset.missing)
        ):
            detail = f" ({len(dataset.missing)} images missing from disk, {unscored - len(dataset.missing)} failed)"
        lines.append(f"- **Scored**: {fmt_count(scored)} images with a prediction; {unscored} without{detail}.")
    lines.append(f"- **Convention**: {describe_convention(metrics)}")
    return lines


def _accuracy_section(metrics: Mapping[str, Any]) -> list[str]:
    op = _comparison(str(metrics.get("convention", "")))
    accuracy: Mapping[str, Any] = metrics.get("accuracy") or {}
    keys = list(accuracy)
    lines = ["## Accuracy", ""]
    lines += _table(
        ["", *[_threshold_label(k, op) for k in keys]],
        [["accuracy (%)", *[fmt_percent(accuracy[k]) for k in keys]]],
    )
    lines += ["", f"Percent of the {fmt_count(metrics.get('denominator'))} images of the denominator.", ""]
    lines += _table(
        ["median error (km)", "mean error (km)", "GeoScore (mean, max 5000)", "scored", "denominator"],
        [
            [
                fmt_km(metrics.get("median_km")),
                fmt_km(metrics.get("mean_km")),
                fmt_km(metrics.get("geoscore")),
                fmt_count(metrics.get("n")),
                fmt_count(metrics.get("denominator")),
            ]
        ],
        align=["r"] * 5,
    )
    lines += ["", "Median error, mean error and GeoScore are over the scored images only."]
    return lines


def _area(value: Any) -> str:
    x = _number(value)
    if x is None:
        return "∞" if value is not None and _is_inf(value) else _DASH
    return f"{x:,.1f}"


def _is_inf(value: Any) -> bool:
    try:
        return math.isinf(float(value))
    except (TypeError, ValueError):
        return False


def _rva_section(rva: Mapping[str, Any]) -> list[str]:
    recall: Mapping[str, Any] = rva.get("recall") or {}
    areas: Mapping[str, Any] = rva.get("areas_km2") or {}
    lines = ["## Recall vs Area", ""]
    if recall:
        rows = [
            [f"{k[:-2] if k.endswith('km') else k} km disk", _area(areas.get(k)), fmt_percent(v)]
            for k, v in recall.items()
        ]
        lines += _table(["area of", "area (km²)", "recall (%)"], rows)
        lines.append("")
    extra = []
    if "median_area_km2" in rva:
        extra.append(f"median area needed: {_area(rva.get('median_area_km2'))} km²")
    if "n" in rva or "denominator" in rva:
        extra.append(
            f"{fmt_count(rva.get('n'))} images with candidates, denominator {fmt_count(rva.get('denominator'))}"
        )
    if extra:
        lines.append("; ".join(extra) + ".")
    return lines


def _confidence_section(confidence: Mapping[str, Any]) -> list[str]:
    """Calibration of the stated probabilities (a `g3.evaluation.selective.confidence_summary`)."""
    op = _comparison(str(confidence.get("convention", "")))
    radii: Mapping[str, Any] = confidence.get("radii") or {}
    lines = [
        "## Calibrated confidence",
        "",
        f"{fmt_count(confidence.get('photos'))} located photos carry P(answer {op} r km) from the fitted ranker. "
        "A calibrated probability p is right p of the time: ECE is the mean gap between stated and observed "
        "(10 equal-width bins; 0 is perfect).",
        "",
    ]
    rows = [
        [f"{op} {radius} km", fmt_count(data["reliability"]["n"]), fmt_percent(data["mean_probability"]),
         fmt_percent(data["accuracy"]), f"{float(data['reliability']['ece']):.3f}"]
        for radius, data in radii.items()
    ]  # fmt: skip
    lines += _table(["answer within", "photos", "mean stated (%)", "observed (%)", "ECE"], rows)
    rows = [
        [f"{op} {radius} km", f"`{radius}={float(level['min_probability']):.3f}`", fmt_count(level["kept"]),
         fmt_percent(level["coverage"]), fmt_percent(level["accuracy"])]
        for radius, data in radii.items()
        for level in data["risk_coverage"]["table"]
    ]  # fmt: skip
    if rows:
        lines += [
            "",
            "### Risk–coverage",
            "",
            "Only the most confident answers given (`g3 locate --min-confidence R=P`, the server's `min_confidence`): "
            "the share of answers kept and their accuracy. Answers with equal probabilities are kept or withheld "
            "together, so the shares are those the stated probabilities allow.",
            "",
        ]
        lines += _table(["answer within", "--min-confidence", "kept", "kept (%)", "accuracy of the kept (%)"], rows)
    return lines


def _breakdown_table(name: str, frame: pd.DataFrame, op: str) -> list[str]:
    group = name if name in frame.columns else str(frame.columns[0])
    accuracy_keys = [c for c in frame.columns if isinstance(c, str) and _threshold_km(c) is not None]
    show_scored = "scored" in frame.columns and "n" in frame.columns and (frame["scored"] != frame["n"]).any()
    header = [
        group,
        "n",
        *(["scored"] if show_scored else []),
        *[f"{op} {_threshold_km(k):g} km (%)" for k in accuracy_keys],
    ]
    has_median = "median_km" in frame.columns
    if has_median:
        header.append("median (km)")
    rows = []
    for record in frame.to_dict("records"):
        row = [record[group], fmt_count(record.get("n"))]
        if show_scored:
            row.append(fmt_count(record.get("scored")))
        row += [fmt_percent(record[k]) for k in accuracy_keys]
        if has_median:
            row.append(fmt_km(record["median_km"]))
        rows.append(row)
    lines = _table(header, rows)
    other = frame.attrs.get("other_groups")
    if other:
        members = frame.attrs.get("other_members") or []
        shown = ", ".join(f"{name} ({count})" for name, count in members[:OTHER_NAMED])
        more = f" and {len(members) - OTHER_NAMED} more" if len(members) > OTHER_NAMED else ""
        lines += ["", f"*other* gathers {other} smaller groups" + (f": {shown}{more}." if shown else ".")]
    return lines


def _breakdown_section(breakdowns: Mapping[str, pd.DataFrame], op: str) -> list[str]:
    lines = ["## Breakdowns", "", "Per group, n is the group's denominator (its failed images count as wrong)."]
    for name, frame in breakdowns.items():
        lines += ["", f"### {BREAKDOWN_TITLES.get(name, f'By {name}')}", ""]
        lines += _breakdown_table(name, frame, op) if len(frame) else ["(no rows)"]
    return lines


def _plot_link(run_dir: Path, path: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), run_dir.resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()


def _plots_section(run_dir: Path, plots: Mapping[str, str | os.PathLike[str]]) -> list[str]:
    lines = ["## Plots"]
    for key, path in plots.items():
        title = PLOT_TITLES.get(key, key)
        lines += ["", f"### {title}", "", f"![{title}]({_plot_link(run_dir, Path(path))})"]
    return lines


def _config_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(_jsonable(value, "config"), sort_keys=True, ensure_ascii=False)
    except TypeError:
        return str(value)


def _config_section(config_summary: Mapping[str, Any], git_sha: str | None) -> list[str]:
    lines = ["## Configuration", ""]
    rows = [[key, f"`{_config_value(value)}`"] for key, value in config_summary.items()]
    rows.append(["git commit", f"`{git_sha}`" if git_sha else "unknown (not a git checkout)"])
    lines += _table(["setting", "value"], rows, align=["l", "l"])
    return lines


# --- writers ---------------------------------------------------------------------------------------


def render_report(
    run_dir: str | os.PathLike[str],
    *,
    title: str,
    dataset: str | EvalDataset,
    metrics: Mapping[str, Any],
    rvA: Mapping[str, Any] | None = None,
    breakdowns: Mapping[str, pd.DataFrame] | None = None,
    plots: Mapping[str, str | os.PathLike[str]] | None = None,
    config_summary: Mapping[str, Any] | None = None,
    git_sha: str | None = None,
    notes: Sequence[str] | None = None,
    degraded: Mapping[str, Any] | None = None,
    note: str | None = None,
    confidence: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown text of a run's report (`write_report` writes it to ``report.md``).

    Args:
        run_dir: the run folder (`write_report` creates it if absent).
        title: the report's heading.
        dataset: the dataset's name, or the `EvalDataset` (its source, image folder and missing images
            are then reported too).
        metrics: a `g3.evaluation.metrics.summarize` report (accuracy fractions, convention, n, denominator).
        rvA: a `g3.evaluation.metrics.recall_vs_area` report, or None.
        breakdowns: group column → `g3.evaluation.breakdown.breakdown` frame (continent, country, scene…).
        plots: plot name → PNG path; linked relative to ``run_dir``.
        config_summary: settings worth printing (values that are not text are shown as JSON).
        git_sha: the commit of the code, or None.
        notes: free lines, e.g. how many images were missing or failed.
        degraded: a `g3.evaluation.degraded.degraded_summary`, reported first (loudly when any photo degraded).
        note: the configuration's note (e.g. the tiny setting's), shown at the top.
        confidence: a `g3.evaluation.selective.confidence_summary` (runs with a fitted ranker), or None.
    """
    run = Path(run_dir)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"Written {when}.", ""]
    top = _degraded_section(degraded, note)
    if top:
        lines += [*top, ""]
    lines += _dataset_section(dataset, metrics)
    lines += ["", *_accuracy_section(metrics)]
    if rvA:
        lines += ["", *_rva_section(rvA)]
    if confidence:
        lines += ["", *_confidence_section(confidence)]
    if breakdowns:
        lines += ["", *_breakdown_section(breakdowns, _comparison(str(metrics.get("convention", ""))))]
    if plots:
        lines += ["", *_plots_section(run, plots)]
    lines += ["", *_config_section(config_summary or {}, git_sha)]
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


class ReportParts(TypedDict, total=False):
    """What a report shows: the keyword arguments of `render_report`, which `write_report` passes on."""

    title: Required[str]
    dataset: Required[str | EvalDataset]
    metrics: Required[Mapping[str, Any]]
    rvA: Mapping[str, Any] | None
    breakdowns: Mapping[str, pd.DataFrame] | None
    plots: Mapping[str, str | os.PathLike[str]] | None
    config_summary: Mapping[str, Any] | None
    git_sha: str | None
    notes: Sequence[str] | None
    degraded: Mapping[str, Any] | None
    note: str | None
    confidence: Mapping[str, Any] | None


def write_report(run_dir: str | os.PathLike[str], **parts: Unpack[ReportParts]) -> Path:
    """Write `render_report`'s text (same arguments) to ``<run_dir>/report.md`` atomically; returns its path."""
    path = Path(run_dir) / REPORT_NAME
    atomic_write_text(path, render_report(run_dir, **parts))
    return path


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types; NaN and ±inf become None (JSON has no such numbers).

    Pydantic models and dataclasses are converted to their fields.
    """
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return [_jsonable(r, f"{where}[]") for r in value.to_dict("records")]
    if isinstance(value, np.ndarray | pd.Series):
        return [_jsonable(v, f"{where}[]") for v in value.tolist()]
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, f"{where}[]") for v in value]
    if callable(getattr(value, "model_dump", None)):  # a pydantic model
        return _jsonable(value.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metrics payload: {where} is a {type(value).__name__}, which JSON cannot hold")


def write_metrics_json(run_dir: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as ``<run_dir>/metrics.json`` atomically (keys in the given order) and return its path.

    numpy scalars and arrays, DataFrames (as lists of records), paths, pydantic models and dataclasses are
    converted; NaN and ±inf are written as ``null`` so that any JSON reader (a browser's included) can
    read the file.

    Raises:
        TypeError: a value JSON cannot represent.
    """
    path = Path(run_dir) / METRICS_NAME
    text = json.dumps(_jsonable(payload, "payload"), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path
