"""The learned verification ranker vs the fixed rules, on simulated pools over real photo locations.

Pools come from `g3.verify.simulate` (true locations of a benchmark's photos, neighbours drawn from real
photo locations and GeoCLIP's gallery, LMM answers with city snapping and country confusion; see its
docstring for what it models and what it cannot). For each setting the script prints:

* the grouped K-fold cross-validation table of `g3.verify.ranker.cross_validate` (% within 1 / 25 / 200 /
  750 / 2500 km for the ranker and every rule of `g3.verify.baselines.RULES`, on the same folds), the
  oracle (the candidate closest to the truth, the ceiling of any choice among candidates), and the
  expected calibration error of the out-of-fold confidence at 25 / 200 / 750 km;
* with ``--transfer``: a ranker fitted on the settings ``--fit-on`` applied to each setting's pools of
  *other* photos (a setting it was not fitted on unless listed), against every rule on those pools, and
  the ECE of its stated probabilities there.

Photos are drawn in a seeded random order (benchmark CSVs list an author's photos together, so blocks of
rows are not i.i.d.). Data paths are arguments (``--truths``, ``--gallery``), defaulting to $G3_SHARED_DATA (else
``<repo>/../shared/data``): IM2GPS3k's metadata and GeoCLIP's 100K gallery. Seeded; asserts nothing.

    python bench/verify.py                                  # every setting, 1,000 photos each, 5 folds
    python bench/verify.py --settings weak_lmm strong_lmm --photos 2000 --transfer --fit-on paper
    python bench/verify.py --write-pools /tmp/pools         # also writes SETTING.jsonl for g3 verify fit
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from g3.geo import haversine_km
from g3.verify.baselines import RULES, rule_answers
from g3.verify.calibration import expected_calibration_error
from g3.verify.pools import Pool, write_pools
from g3.verify.ranker import cross_validate, fit_ranker
from g3.verify.simulate import SETTINGS, PoolSimulator, load_gallery, load_truths

THRESHOLDS = ("1", "25", "200", "750", "2500")
RADII = ("25", "200", "750")


def shared_data_dir() -> Path:
    """$G3_SHARED_DATA, else ``<repo>/../shared/data``."""
    if os.environ.get("G3_SHARED_DATA"):
        return Path(os.environ["G3_SHARED_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def accuracy(points: np.ndarray, pools: Sequence[Pool]) -> dict[str, float]:
    """Share of pools whose answer ``points[i]`` lies within each threshold of the truth."""
    truth = np.array([p.truth for p in pools], dtype=np.float64)
    error = haversine_km(points[:, 0], points[:, 1], truth[:, 0], truth[:, 1])
    return {t: float(np.mean(error <= float(t))) for t in THRESHOLDS}


def oracle(pools: Sequence[Pool]) -> dict[str, float]:
    """The ceiling of a choice among candidates: each pool's candidate closest to its truth."""
    points = np.empty((len(pools), 2))
    for i, pool in enumerate(pools):
        coords = np.array([[c.lat, c.lon] for c in pool.candidates])
        truth = np.array(pool.truth, dtype=np.float64)
        error = haversine_km(coords[:, 0], coords[:, 1], truth[0], truth[1])
        points[i] = coords[int(np.argmin(error))]
    return accuracy(points, pools)


def by_radius(values: object) -> dict[str, np.ndarray]:
    """Confidences or hits per radius, from a mapping radius → (N,) or an (N, 3) array in `RADII` order."""
    if isinstance(values, dict):
        return {r: np.asarray(values[r], dtype=np.float64) for r in RADII}
    array = np.asarray(values, dtype=np.float64)
    return {r: array[:, j] for j, r in enumerate(RADII)}


def ece(confidence: object, hits: object) -> dict[str, float]:
    """Expected calibration error per radius."""
    probs, outcome = by_radius(confidence), by_radius(hits)
    return {r: expected_calibration_error(probs[r], outcome[r]) for r in RADII}


def table(title: str, rows: dict[str, dict[str, float]], eces: dict[str, float] | None) -> str:
    """A Markdown table of % within each threshold, best value per column in bold."""
    best = {t: max(row[t] for name, row in rows.items() if name != "oracle") for t in THRESHOLDS}
    lines = [f"### {title}", "", "| method | " + " | ".join(f"{t} km" for t in THRESHOLDS) + " |"]
    lines.append("|---|" + "---:|" * len(THRESHOLDS))
    for name, row in rows.items():
        cells = [f"**{100 * row[t]:.1f}**" if row[t] == best[t] and name != "oracle" else f"{100 * row[t]:.1f}"
                 for t in THRESHOLDS]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if eces is not None:
        lines += ["", "ECE of the ranker's confidence: " + ", ".join(f"{r} km {eces[r]:.3f}" for r in RADII)]
    return "\n".join(lines)


def simulate(name: str, args: argparse.Namespace, offset: int) -> list[Pool]:
    truths = load_truths(args.truths)
    gallery = load_gallery(args.gallery) if args.gallery else None
    simulator = PoolSimulator(SETTINGS[name], truths, gallery, seed=args.seed)
    return list(simulator.pools(args.photos, offset=offset, shuffle=args.seed))


def main() -> None:
    data = shared_data_dir()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--truths", type=Path, default=data / "im2gps3k" / "im2gps3k_places365.csv")
    parser.add_argument("--gallery", type=Path, default=data / "geoclip_gps_gallery" / "coordinates_100K.csv")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--photos", type=int, default=1000, help="photos (pools) per setting")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", action="store_true", help="also apply a ranker fitted on --fit-on")
    parser.add_argument("--fit-on", nargs="+", default=["weak_lmm", "strong_lmm"], choices=list(SETTINGS))
    parser.add_argument("--write-pools", type=Path, help="write each setting's pools to DIR/SETTING.jsonl")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    report: dict[str, object] = {}
    for name in args.settings:
        start = time.perf_counter()
        pools = simulate(name, args, offset=0)
        simulated = time.perf_counter() - start
        if args.write_pools:
            args.write_pools.mkdir(parents=True, exist_ok=True)
            write_pools(args.write_pools / f"{name}.jsonl", pools)
        start = time.perf_counter()
        result = cross_validate(pools, folds=args.folds, seed=args.seed)
        fitted = time.perf_counter() - start
        rows = {**result.accuracy, "oracle": oracle(pools)}
        eces = ece(result.confidence, result.hits)
        report[name] = {"accuracy": rows, "ece": eces, "simulate_s": simulated, "cv_s": fitted}
        if not args.json:
            title = (
                f"{name}: {len(pools)} photos, {args.folds}-fold CV (simulated {simulated:.1f} s, CV {fitted:.1f} s)"
            )
            print(table(title, rows, eces), end="\n\n", flush=True)

    if args.transfer:
        # fit on the first --photos photos (in a seeded random order) of each --fit-on setting, test on the next
        fit_pools = [pool for name in args.fit_on for pool in simulate(name, args, offset=0)]
        ranker = fit_ranker(fit_pools, seed=args.seed)
        transfer: dict[str, object] = {}
        for name in args.settings:
            pools = simulate(name, args, offset=args.photos)
            chosen = [ranker.choose(pool) for pool in pools]
            choices = np.array([[p.candidates[i].lat, p.candidates[i].lon] for p, i in zip(pools, chosen, strict=True)])
            rows = {"ranker": accuracy(choices, pools)}
            for rule, function in RULES.items():
                rows[rule] = accuracy(rule_answers(function, pools)[0], pools)
            rows["oracle"] = oracle(pools)
            stated = [ranker.confidence(p, i) for p, i in zip(pools, chosen, strict=True)]
            confidence = np.array([[s[r] for r in RADII] for s in stated])
            truth = np.array([p.truth for p in pools])
            error = haversine_km(choices[:, 0], choices[:, 1], truth[:, 0], truth[:, 1])
            hits = np.stack([error <= float(r) for r in RADII], axis=1)
            eces = ece(confidence, hits)
            transfer[name] = {"accuracy": rows, "ece": eces}
            if not args.json:
                held = "held-out setting" if name not in args.fit_on else "fitted setting, other photos"
                title = f"{name} ({held}): ranker fitted on {' + '.join(args.fit_on)}, {len(pools)} other photos"
                print(table(title, rows, eces), end="\n\n", flush=True)
        report["transfer"] = {"fit_on": args.fit_on, "settings": transfer}
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
