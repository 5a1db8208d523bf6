"""Calibration and selective prediction of an evaluation run whose predictions carry a confidence.

For each radius r of `GeoPrediction.confidence` ("25", "200", "750" km) the stated probability
P(answer within r km) is compared with what happened:

- a **reliability diagram**: predictions binned by stated probability (equal-width bins on [0, 1]), each
  bin's mean probability against the share of its answers really within r km;
- the **expected calibration error** (ECE): Σ_b (n_b / N) · |hits_b − probability_b| over those bins
  (`g3.verify.calibration.bin_sums` and `binned_ece`, as the ranker's cross-validation measures it);
- a **risk–coverage curve**: answers sorted by stated probability, most confident first; keeping the top
  share c of them (the coverage) gives the accuracy of the kept answers at each c — what a user asking
  ``--min-confidence r=p`` trades (fewer answers, right more often).

Only located photos with a known truth and a confidence count (failed photos have no confidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from g3.agent.abstention import RADII
from g3.evaluation.metrics import Convention, distances_km
from g3.verify.calibration import bin_sums, binned_ece

#: Bins of the reliability diagram and the ECE.
BINS = 10
#: Coverages listed in the report's risk–coverage table.
COVERAGES: tuple[float, ...] = (1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1)


def reliability(probs: object, hits: object, bins: int = BINS) -> dict[str, Any]:
    """Reliability bins of stated probabilities ``probs`` against outcomes ``hits`` (booleans), and the ECE.

    Returns ``{"bins": [{"low", "high", "n", "probability", "accuracy"}], "ece": float, "n": int}``; a bin
    without predictions has ``n`` 0 and None for its means.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    h = np.asarray(hits, dtype=np.float64).reshape(-1)
    if p.size != h.size or p.size == 0:
        raise ValueError(f"reliability needs as many outcomes as probabilities (got {p.size} and {h.size}), not none")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("stated probabilities must be finite and in [0, 1]")
    count, prob_sum, hit_sum = bin_sums(p, h, bins)
    rows = [
        {"low": b / bins, "high": (b + 1) / bins, "n": int(count[b]),
         "probability": float(prob_sum[b] / count[b]) if count[b] else None,
         "accuracy": float(hit_sum[b] / count[b]) if count[b] else None}
        for b in range(bins)
    ]  # fmt: skip
    return {"bins": rows, "ece": binned_ece(count, prob_sum, hit_sum), "n": int(p.size)}


def risk_coverage(probs: object, hits: object) -> dict[str, Any]:
    """The accuracy of the answers kept when keeping the most confident share c of them, for every c.

    Returns ``{"coverage": [k/N for k = 1..N], "accuracy": [...], "threshold": [the k-th probability],
    "table": [{"min_probability", "kept", "coverage", "accuracy"}]}``. The table has one row per share of
    `COVERAGES` that a minimum probability can give: ``min_probability`` (3 decimals, rounded down) keeps
    exactly ``kept`` answers (every answer at or above it: ties are kept together); shares that the same
    minimum gives appear once.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    h = np.asarray(hits, dtype=np.float64).reshape(-1)
    if p.size != h.size or p.size == 0:
        raise ValueError(f"risk-coverage needs as many outcomes as probabilities (got {p.size} and {h.size})")
    order = np.argsort(-p, kind="stable")
    sorted_p, sorted_h = p[order], h[order]
    kept = np.arange(1, p.size + 1)
    accuracy = np.cumsum(sorted_h) / kept
    table: list[dict[str, Any]] = []
    for share in COVERAGES:
        k = max(1, int(np.ceil(share * p.size)))
        minimum = float(np.floor(1000 * sorted_p[k - 1]) / 1000)  # as a user would type it
        k = int(np.count_nonzero(p >= minimum))
        if table and table[-1]["kept"] == k:
            continue
        table.append({"min_probability": minimum, "kept": k, "coverage": k / p.size,
                      "accuracy": float(accuracy[k - 1])})  # fmt: skip
    return {"coverage": (kept / p.size).tolist(), "accuracy": accuracy.tolist(), "threshold": sorted_p.tolist(),
            "table": table}  # fmt: skip


def confidence_summary(records: Sequence[Mapping[str, Any]], convention: Convention) -> dict[str, Any] | None:
    """Per radius, the reliability (with ECE) and the risk–coverage of a run's located photos that carry a
    confidence (``predictions.jsonl`` records); None when none does (a run without a fitted ranker).

    A hit at r km follows the run's ``convention`` (``d < r`` for geodesic-lt, ``d ≤ r`` for haversine-le).
    """
    rows = [r for r in records if r.get("error") is None and r.get("confidence") and r.get("gt_lat") is not None]
    if not rows:
        return None
    truth = np.array([[r["gt_lat"], r["gt_lon"]] for r in rows], dtype=np.float64)
    pred = np.array([[r["pred_lat"], r["pred_lon"]] for r in rows], dtype=np.float64)
    distances = distances_km(truth, pred, convention)
    summary: dict[str, Any] = {"photos": len(rows), "convention": convention, "radii": {}}
    for radius in RADII:
        given = [(i, r["confidence"][radius]) for i, r in enumerate(rows) if r["confidence"].get(radius) is not None]
        if not given:
            continue
        index = np.array([i for i, _ in given])
        probs = np.array([p for _, p in given], dtype=np.float64)
        d = distances[index]
        hits = d < float(radius) if convention.endswith("-lt") else d <= float(radius)
        summary["radii"][radius] = {
            "reliability": reliability(probs, hits),
            "risk_coverage": risk_coverage(probs, hits),
            "mean_probability": float(probs.mean()),
            "accuracy": float(hits.mean()),
        }
    return summary
