"""Geographic distribution of predictions for images without ground truth.

"Inspecting the Geographical Representativeness of Images from Text-to-Image Models" asks where a set
of images (e.g. generated ones) appears to be from. `run_distribution` locates every image of a folder
(resumably), then reports the distribution of predicted countries and continents, its Shannon entropy
(bits, and normalised by the largest possible entropy), its coverage (distinct countries), and a map.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from g3.agent import G3
from g3.data import photo_files
from g3.data.photo_files import IMAGE_SUFFIXES
from g3.evaluation.runner import PREDICTIONS, EvaluationError, _check_config, locate_into, read_predictions
from g3.io import atomic_write_text


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (by suffix, as `g3 locate` lists a folder), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationError(f"{root} is not a folder of images")
    return photo_files.image_files(root)


def entropy_bits(counts: pd.Series) -> float:
    """Shannon entropy (bits) of a count distribution."""
    p = counts.to_numpy(dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def distribution_summary(pred: np.ndarray, *, known_countries: int) -> dict[str, Any]:
    """Countries and continents of predicted points ``(N, 2)``: counts, entropy, coverage."""
    from g3.evaluation.breakdown import locate_truth

    located = locate_truth(pd.DataFrame({"LAT": pred[:, 0], "LON": pred[:, 1]}))
    country = located["country"].replace("", "Unknown")
    continent = located["continent"]
    countries = country.value_counts()
    continents = continent.value_counts()
    named = countries.drop("Unknown", errors="ignore")
    return {
        "n": len(pred),
        "countries": {str(k): int(v) for k, v in countries.items()},
        "continents": {str(k): int(v) for k, v in continents.items()},
        "country_entropy_bits": entropy_bits(named),
        "country_entropy_normalised": entropy_bits(named) / math.log2(known_countries) if known_countries > 1 else 0.0,
        "continent_entropy_bits": entropy_bits(continents.drop("Unknown", errors="ignore")),
        "distinct_countries": len(named),
        "country_coverage": len(named) / known_countries,
    }


def run_distribution(
    g3: G3,
    folder: str | Path,
    run_dir: str | Path,
    *,
    batch_size: int = 16,
    concurrency: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Locate every image of ``folder`` into ``run_dir`` (resuming), then write the distribution report."""
    from g3.evaluation.breakdown import continent_table
    from g3.evaluation.plots import world_map
    from g3.evaluation.report import write_metrics_json

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _check_config(run, g3.config)
    files = image_files(folder)
    if not files:
        raise EvaluationError(f"{folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    done = {r["img_id"] for r in read_predictions(run / PREDICTIONS)}
    items: list[tuple[str, Path, tuple[float, float] | None]] = [(p.name, p, None) for p in files if p.name not in done]
    locate_into(g3, items, run / PREDICTIONS, batch_size=batch_size, concurrency=concurrency, progress=progress,
                desc=Path(folder).name, total=len(files))  # fmt: skip

    records = pd.DataFrame(read_predictions(run / PREDICTIONS))
    ok = records[records["error"].isna()]
    pred = ok[["pred_lat", "pred_lon"]].to_numpy(dtype=np.float64)
    summary = distribution_summary(pred, known_countries=len(continent_table()))
    summary["failed"] = int(records["error"].notna().sum())
    write_metrics_json(
        run, {"folder": str(folder), "distribution": summary, "config": g3.config.model_dump(mode="json")}
    )
    world_map(pred, pred, run / "world_map.png")
    _write_markdown(run, folder, summary)
    return summary


def _write_markdown(run: Path, folder: str | Path, s: dict[str, Any]) -> None:
    lines = [
        f"# Where do the images of `{folder}` appear to be from?",
        "",
        f"{s['n']} images located ({s['failed']} failed). Countries by offline reverse geocoding of the predictions.",
        "",
        f"- distinct countries: {s['distinct_countries']} (coverage {100 * s['country_coverage']:.1f} % of "
        "the countries known to the continent table)",
        f"- country entropy: {s['country_entropy_bits']:.3f} bits "
        f"(normalised {s['country_entropy_normalised']:.3f}; 1 = uniform over all countries)",
        f"- continent entropy: {s['continent_entropy_bits']:.3f} bits",
        "",
        "| continent | images | share |",
        "|---|---:|---:|",
        *[f"| {k} | {v} | {100 * v / max(s['n'], 1):.1f} % |" for k, v in s["continents"].items()],
        "",
        "| country | images | share |",
        "|---|---:|---:|",
        *[f"| {k} | {v} | {100 * v / max(s['n'], 1):.1f} % |" for k, v in list(s["countries"].items())[:30]],
        "",
        "![predicted locations](world_map.png)",
        "",
    ]
    atomic_write_text(run / "report.md", "\n".join(lines))
