"""Calibration of the ranker's probabilities: an isotonic (monotone) map per radius, stored as plain numbers.

The ranker's raw probability that its chosen answer lies within r km is biased (the chosen candidate is
the one that scored highest, so its raw score is optimistic). `fit_isotonic` learns, from out-of-fold
choices, the non-decreasing step function that maps a raw score to the observed hit rate (pool adjacent
violators: the exact least-squares isotonic fit, no iterative optimiser), each step's rate shrunk by half a
hit and half a miss so that no stated probability is exactly 0 or 1 (a few dozen misses do not prove
impossibility); `Isotonic` applies it by linear interpolation between its thresholds.
`expected_calibration_error` measures the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from g3.errors import RankerError


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing map from raw scores to probabilities: ``y`` at thresholds ``x`` (both ascending),
    linearly interpolated between them and constant beyond them."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
        if len(x) == 0 or x.shape != y.shape:
            raise RankerError(f"calibration: needs as many thresholds as values (≥ 1), got {len(x)} and {len(y)}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise RankerError("calibration: thresholds and values must be finite numbers")
        if (np.diff(x) < 0).any() or (np.diff(y) < 0).any() or y.min() < 0 or y.max() > 1:
            raise RankerError("calibration: thresholds and values must be ascending, values within [0, 1]")

    def __call__(self, raw: object) -> np.ndarray:
        """Calibrated probabilities of raw scores (any shape)."""
        return np.interp(np.asarray(raw, dtype=np.float64), self.x, self.y)

    def to_json(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_json(cls, data: Any) -> Isotonic:
        try:
            return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RankerError(f"calibration: expected {{'x': [numbers], 'y': [numbers]}}, got {data!r:.80}") from exc


def fit_isotonic(raw: object, hits: object, *, prior: float = 0.5) -> Isotonic:
    """The least-squares non-decreasing fit of ``hits`` (0/1) on ``raw`` scores (pool adjacent violators).

    Equal raw scores form one block. Each block of ``w`` outcomes with ``h`` hits states
    ``(h + prior) / (w + 2·prior)`` (then a running maximum keeps the map non-decreasing): never exactly 0
    or 1. Raises `RankerError` when there is nothing to fit.
    """
    x = np.asarray(raw, dtype=np.float64).ravel()
    h = np.asarray(hits, dtype=np.float64).ravel()
    if len(x) == 0 or x.shape != h.shape:
        raise RankerError(f"calibration: needs as many scores as outcomes (≥ 1), got {len(x)} and {len(h)}")
    if not (np.isfinite(x).all() and np.isfinite(h).all()):
        raise RankerError("calibration: scores and outcomes must be finite")
    xs, inverse = np.unique(x, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    mean = np.bincount(inverse, weights=h) / weight
    # pool adjacent violators over the distinct scores: a stack of blocks (value, weight, last index)
    values: list[float] = []
    weights: list[float] = []
    ends: list[int] = []
    for i in range(len(xs)):
        value, w = float(mean[i]), float(weight[i])
        while values and values[-1] >= value:
            value = (values[-1] * weights[-1] + value * w) / (weights[-1] + w)
            w += weights[-1]
            values.pop()
            weights.pop()
            ends.pop()
        values.append(value)
        weights.append(w)
        ends.append(i)
    shrunk = np.maximum.accumulate([(v * w + prior) / (w + 2 * prior) for v, w in zip(values, weights, strict=True)])
    # each block becomes its first and last threshold at its value (a step, interpolated between blocks)
    out_x: list[float] = []
    out_y: list[float] = []
    start = 0
    for value, end in zip(shrunk, ends, strict=True):
        for edge in sorted({start, end}):
            out_x.append(float(xs[edge]))
            out_y.append(float(np.clip(value, 0.0, 1.0)))
        start = end + 1
    return Isotonic(tuple(out_x), tuple(out_y))


def bin_sums(probs: np.ndarray, hits: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin on [0, 1] (a probability of 1 falls in the last): the number of
    predictions, the sum of their probabilities and the sum of their outcomes, each ``(bins,)``."""
    which = np.clip((probs * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    return count, np.bincount(which, weights=probs, minlength=bins), np.bincount(which, weights=hits, minlength=bins)


def binned_ece(count: np.ndarray, prob_sum: np.ndarray, hit_sum: np.ndarray) -> float:
    """The expected calibration error from `bin_sums`: Σ_b (n_b / N) · |mean(hits_b) − mean(probs_b)|."""
    return float(np.abs(hit_sum - prob_sum).sum() / count.sum())


def expected_calibration_error(probs: object, hits: object, bins: int = 10) -> float:
    """Expected calibration error: Σ_b (n_b / N) · |mean(hits_b) − mean(probs_b)| over ``bins`` equal-width
    probability bins on [0, 1]. Raises `RankerError` for empty or mismatched inputs."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    h = np.asarray(hits, dtype=np.float64).ravel()
    if len(p) == 0 or p.shape != h.shape:
        raise RankerError(f"ECE: needs as many probabilities as outcomes (≥ 1), got {len(p)} and {len(h)}")
    if bins < 1:
        raise RankerError(f"ECE: bins must be ≥ 1, got {bins}")
    return binned_ece(*bin_sums(p, h, bins))
