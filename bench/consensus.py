"""Consensus selection vs taking the first candidate, on simulated candidate sets over real IM2GPS3k locations.

For every IM2GPS3k image, a candidate set mixes ``near`` points around the true location (each moved by a
distance drawn from an exponential of mean ``--mean-km`` in a uniform random direction, on the sphere)
with ``distractors``: the true locations of other random IM2GPS3k images. The set is shuffled, so the first
candidate is a near point with probability near / (near + distractors). Strategies compared, by the share
of images whose chosen candidate lies within 1 / 25 / 200 / 750 / 2500 km (haversine, ≤) of the truth:

* ``top-1``: the first candidate (rank 0);
* ``consensus S km``: `g3.verify.consensus_select` at kernel scale S;
* ``oracle``: the candidate closest to the truth (the ceiling of any selection).

Seeded; prints a table per mix; asserts nothing.

    python bench/consensus.py
    python bench/consensus.py --mixes 3:7 5:5 2:8 --scales 25 100 500 --kernel exponential
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from g3.geo import EARTH_RADIUS_KM, haversine_km, validate_latlon, wrap_longitude
from g3.verify import Kernel, consensus_select

THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
CSV = Path("im2gps3k") / "im2gps3k_places365.csv"


def shared_data_dir(arg: str | None) -> Path:
    """``--data``, else $G3_SHARED_DATA, else ``<repo>/../shared/data``."""
    if arg:
        return Path(arg)
    if os.environ.get("G3_SHARED_DATA"):
        return Path(os.environ["G3_SHARED_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_coordinates(data_dir: Path) -> np.ndarray:
    """IM2GPS3k true locations ``(N, 2)`` (lat, lon) in degrees."""
    path = data_dir / CSV
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data or set G3_SHARED_DATA to the shared data folder")
    frame = pd.read_csv(path, usecols=["IMG_ID", "LAT", "LON"])
    return validate_latlon(frame[["LAT", "LON"]].to_numpy(), what=str(path))


def destination(lat: np.ndarray, lon: np.ndarray, distance_km: np.ndarray, bearing_deg: np.ndarray) -> np.ndarray:
    """Points ``distance_km`` from (lat, lon) along ``bearing_deg`` on the sphere; broadcast, ``(..., 2)`` out."""
    phi, lmb = np.radians(lat), np.radians(lon)
    delta, theta = distance_km / EARTH_RADIUS_KM, np.radians(bearing_deg)
    phi2 = np.arcsin(np.clip(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(theta), -1.0, 1.0))
    lmb2 = lmb + np.arctan2(np.sin(theta) * np.sin(delta) * np.cos(phi), np.cos(delta) - np.sin(phi) * np.sin(phi2))
    return np.stack([np.degrees(phi2), wrap_longitude(np.degrees(lmb2))], axis=-1)


def candidate_sets(truth: np.ndarray, near: int, distractors: int, mean_km: float, seed: int) -> np.ndarray:
    """Shuffled candidate sets ``(N, near + distractors, 2)``: jittered truths mixed with other images' truths."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    dist = rng.exponential(mean_km, (n, near))
    bearing = rng.uniform(0.0, 360.0, (n, near))
    near_pts = destination(truth[:, None, 0], truth[:, None, 1], dist, bearing)
    # other images: draw from the n - 1 others by skipping the image itself
    others = rng.integers(0, n - 1, (n, distractors))
    others += others >= np.arange(n)[:, None]
    sets = np.concatenate([near_pts, truth[others]], axis=1)
    order = rng.permuted(np.tile(np.arange(near + distractors), (n, 1)), axis=1)
    return np.take_along_axis(sets, order[..., None], axis=1)


def accuracy(chosen: np.ndarray, truth: np.ndarray) -> list[float]:
    """Percent of rows of ``chosen`` (N, 2) within each of `THRESHOLDS_KM` of ``truth`` (N, 2)."""
    err = haversine_km(chosen[:, 0], chosen[:, 1], truth[:, 0], truth[:, 1])
    return [100.0 * float(np.mean(err <= t)) for t in THRESHOLDS_KM]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="shared data folder (default: $G3_SHARED_DATA or ../shared/data)")
    parser.add_argument("--mixes", nargs="+", default=["3:7", "5:5", "2:8"], help="near:distractors pairs")
    parser.add_argument("--scales", nargs="+", type=float, default=[25.0, 100.0, 500.0], help="kernel scales, km")
    parser.add_argument("--kernel", choices=["gaussian", "exponential"], default="gaussian")
    parser.add_argument("--mean-km", type=float, default=30.0, help="mean jitter of the near points, km")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kernel: Kernel = args.kernel

    truth = load_coordinates(shared_data_dir(args.data))
    print(f"IM2GPS3k: {len(truth)} images; near points jittered by Exp(mean {args.mean_km:g} km); "
          f"kernel {kernel}; seed {args.seed}")  # fmt: skip
    header = f"{'strategy':<20}" + "".join(f"{f'{t:g} km':>10}" for t in THRESHOLDS_KM)
    for mix_index, mix in enumerate(args.mixes):
        near, distractors = (int(x) for x in mix.split(":"))
        if near < 0 or distractors < 0 or near + distractors == 0:
            raise SystemExit(f"bad mix {mix!r}: expected near:distractors with non-negative counts, not both 0")
        sets = candidate_sets(truth, near, distractors, args.mean_km, args.seed + mix_index)
        rows = {"top-1 (rank 0)": sets[:, 0]}
        timings = []
        for scale in args.scales:
            start = time.perf_counter()
            picks = np.array([consensus_select(s, scale_km=scale, kernel=kernel) for s in sets])
            timings.append(time.perf_counter() - start)
            rows[f"consensus {scale:g} km"] = sets[np.arange(len(sets)), picks]
        errors = haversine_km(sets[..., 0], sets[..., 1], truth[:, None, 0], truth[:, None, 1])
        rows["oracle"] = sets[np.arange(len(sets)), errors.argmin(axis=1)]

        print(f"\nnear={near} distractors={distractors}  (% of images within; "
              f"consensus_select {1e6 * np.mean(timings) / len(sets):.0f} µs/set)")  # fmt: skip
        print(header)
        for name, chosen in rows.items():
            print(f"{name:<20}" + "".join(f"{a:>10.2f}" for a in accuracy(chosen, truth)))


if __name__ == "__main__":
    main()
