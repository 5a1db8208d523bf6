"""Side-by-side tables of evaluation runs (their ``metrics.json``), optionally with the paper's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def compare_table(runs: list[str | Path], *, paper: str | None = None) -> str:
    """A Markdown table: one row per run (accuracy % within each threshold, median km, GeoScore, n/denominator).

    Runs scored under different conventions are refused: their numbers are not comparable.
    """
    loaded = [(Path(r), load_run(r)) for r in runs]
    conventions = {m["metrics"]["convention"] for _, m in loaded}
    if len(conventions) > 1:
        raise EvaluationError(f"these runs use different distance conventions ({sorted(conventions)}); rescore them")
    convention = conventions.pop() if conventions else "geodesic-lt"
    header = "| run | dataset | " + " | ".join(f"≤{c}" if convention.endswith("le") else f"<{c}" for c in COLUMNS)
    lines = [header + " | median km | GeoScore | scored / denominator |", "|---|---|" + "---:|" * (len(COLUMNS) + 3)]
    for path, m in loaded:
        acc = m["metrics"]["accuracy"]
        cells = " | ".join(f"{100 * acc[c]:.2f}" for c in COLUMNS)
        lines.append(
            f"| {path.name} | {m['dataset']} | {cells} | {m['metrics']['median_km']:.1f} | "
            f"{m['metrics']['geoscore']:.1f} | {m['metrics']['n']} / {m['metrics']['denominator']} |"
        )
    if paper:
        row = PAPER_ROWS.get(paper.lower())
        if row is None:
            raise EvaluationError(f"no paper row for {paper!r}; known: {', '.join(PAPER_ROWS)}")
        cells = " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
        lines.append(f"| G3 paper (GPT-4V) | {paper} | {cells} | – | – | – |")
    note = f"Accuracy in % of the denominator; distances: {convention}."
    if paper and convention != "geodesic-lt":
        note += " The paper's row uses geodesic-lt: rescore with that convention before comparing closely."
    return "\n".join(lines) + "\n\n" + note
