"""Side-by-side tables and plots of evaluation runs (their ``metrics.json``), optionally with the paper's rows.

Runs whose numbers are not the configured method's are marked: degraded photos (with their share) and
the tiny setting's random models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from g3.agent.tiny import SCHEME as TINY_SCHEME
from g3.evaluation.runner import EvaluationError

#: G3's published accuracies (%, GPT-4V as LMM) within 1 / 25 / 200 / 750 / 2500 km (geodesic, <).
PAPER_ROWS: dict[str, dict[str, float]] = {
    "im2gps3k": {"1km": 16.65, "25km": 40.94, "200km": 55.56, "750km": 71.24, "2500km": 84.68},
    "yfcc4k": {"1km": 23.99, "25km": 35.89, "200km": 46.98, "750km": 64.26, "2500km": 78.15},
}
COLUMNS = ("1km", "25km", "200km", "750km", "2500km")


def load_run(path: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of a run folder (or the file itself)."""
    file = Path(path)
    file = file / "metrics.json" if file.is_dir() else file
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"cannot read {file}: {exc}; is it a finished g3 evaluation run?") from exc


def run_flags(metrics: dict[str, Any]) -> list[str]:
    """Marks of a run that its numbers alone do not show: degraded photos (with their share and reasons),
    the tiny setting (random models: meaningless answers), a run from before degradations were recorded."""
    flags = []
    config = metrics.get("config") or {}
    degraded = metrics.get("degraded")
    if degraded is None:
        if (config.get("pipeline") or {}).get("mode", "full") == "full":
            flags.append("degradation not recorded (older run)")
    elif degraded.get("photos"):
        reasons = ", ".join(f"{k} {v}" for k, v in (degraded.get("by_reason") or {}).items())
        flags.append(f"DEGRADED {100 * float(degraded.get('share', 0.0)):.1f}% ({reasons})")
    if is_tiny_run(metrics):
        flags.append("tiny setting")
    elif config.get("note"):
        flags.append(f"note: {config['note']}")
    return flags


def is_tiny_run(metrics: dict[str, Any]) -> bool:
    """Whether a run used the tiny setting's random models (``tiny://`` assets)."""
    config = metrics.get("config") or {}
    names = [config.get("aligner"), config.get("index"), (config.get("lmm") or {}).get("model")]
    return any(isinstance(n, str) and n.startswith(TINY_SCHEME) for n in names)


def run_label(path: Path, metrics: dict[str, Any]) -> str:
    """The run's name for plots: its folder, with short marks (``[DEGRADED 100%]``, ``[tiny]``)."""
    marks = []
    degraded = metrics.get("degraded") or {}
    if degraded.get("photos"):
        marks.append(f"[DEGRADED {100 * float(degraded.get('share', 0.0)):.0f}%]")
    if is_tiny_run(metrics):
        marks.append("[tiny]")
    return " ".join([_run_name(path), *marks])


def _run_name(path: Path) -> str:
    return path.parent.name if path.name == "metrics.json" else path.name


def _convention(loaded: list[tuple[Path, dict[str, Any]]]) -> str:
    conventions = {m["metrics"]["convention"] for _, m in loaded}
    if len(conventions) > 1:
        raise EvaluationError(f"these runs use different distance conventions ({sorted(conventions)}); rescore them")
    return conventions.pop() if conventions else "geodesic-lt"


def compare_table(runs: list[str | Path], *, paper: str | None = None) -> str:
    """A Markdown table: one row per run (accuracy % within each threshold, median km, GeoScore, n/denominator,
    and flags: degraded photos, the tiny setting).

    Runs scored under different conventions are refused: their numbers are not comparable.
    """
    loaded = [(Path(r), load_run(r)) for r in runs]
    convention = _convention(loaded)
    header = "| run | dataset | " + " | ".join(f"≤{c}" if convention.endswith("le") else f"<{c}" for c in COLUMNS)
    lines = [
        header + " | median km | GeoScore | scored / denominator | flags |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 3) + "---|",
    ]
    flagged = False
    for path, m in loaded:
        acc = m["metrics"]["accuracy"]
        cells = " | ".join(f"{100 * acc[c]:.2f}" for c in COLUMNS)
        flags = run_flags(m)
        flagged = flagged or bool(flags)
        lines.append(
            f"| {_run_name(path)} | {m['dataset']} | {cells} | {m['metrics']['median_km']:.1f} | "
            f"{m['metrics']['geoscore']:.1f} | {m['metrics']['n']} / {m['metrics']['denominator']} | "
            f"{'; '.join(flags) or '–'} |"
        )
    if paper:
        row = PAPER_ROWS.get(paper.lower())
        if row is None:
            raise EvaluationError(f"no paper row for {paper!r}; known: {', '.join(PAPER_ROWS)}")
        cells = " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
        lines.append(f"| G3 paper (GPT-4V) | {paper} | {cells} | – | – | – | – |")
    note = f"Accuracy in % of the denominator; distances: {convention}."
    if paper and convention != "geodesic-lt":
        note += " The paper's row uses geodesic-lt: rescore with that convention before comparing closely."
    if flagged:
        note += (
            " Flagged runs are not the configured method's numbers: DEGRADED gives the share of located photos "
            "answered without the full pipeline (e.g. retrieval only because the LMM failed; see each run's "
            "report.md), tiny setting means random models whose answers are meaningless."
        )
    return "\n".join(lines) + "\n\n" + note


def compare_plots(runs: list[str | Path], folder: str | Path) -> dict[str, Path]:
    """Error CDFs and Recall vs Area curves of several runs in one figure each (``compare_error_cdf.png``,
    ``compare_recall_vs_area.png`` in ``folder``), each run labelled with its marks (`run_label`).

    The CDFs are computed from each run's ``predictions.jsonl`` under the runs' common convention.
    """
    from g3.evaluation.metrics import distances_km
    from g3.evaluation.plots import error_cdf, recall_area_curve
    from g3.evaluation.runner import PREDICTIONS, read_predictions

    loaded = [(Path(r), load_run(r)) for r in runs]
    convention = _convention(loaded)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    distances: dict[str, np.ndarray] = {}
    denominators: dict[str, int] = {}
    curves: dict[str, Any] = {}
    for path, m in loaded:
        label = run_label(path, m)
        if label in distances:
            raise EvaluationError(f"two runs are both named {label!r} in the plots; give their folders distinct names")
        run_dir = path.parent if path.name == "metrics.json" else path
        located = [r for r in read_predictions(run_dir / PREDICTIONS) if r.get("error") is None]
        truth = np.array([[r["gt_lat"], r["gt_lon"]] for r in located], dtype=np.float64).reshape(-1, 2)
        pred = np.array([[r["pred_lat"], r["pred_lon"]] for r in located], dtype=np.float64).reshape(-1, 2)
        distances[label] = distances_km(truth, pred, convention) if len(located) else np.zeros(0)  # type: ignore[arg-type]
        denominators[label] = int(m["metrics"]["denominator"])
        curve = (m.get("recall_vs_area") or {}).get("curve")
        if curve:
            curves[label] = curve
    plots = {"error_cdf": error_cdf(distances, out / "compare_error_cdf.png", denominators=denominators)}
    if curves:
        plots["recall_vs_area"] = recall_area_curve(curves, out / "compare_recall_vs_area.png")
    return plots
