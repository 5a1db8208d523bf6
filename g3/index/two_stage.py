"""Two-stage search: compressed codes in memory find candidates, full vectors on disk re-score them exactly.

A compressed FAISS index (e.g. ``PCAR256,IVF4096,PQ64x4fs``: a few dozen bytes a row) returns the
``candidates`` best rows of each query; their full vectors, memory-mapped from ``vectors.npy`` (float16
or float32, ``rows × dim``), are read and scored by exact inner product, and the best ``k`` are kept.
Memory holds the codes only; the vectors stay on disk and are paged in per query (a few hundred rows).

Dissimilar search (the negated query) works unchanged: every stage ranks by inner product, so ``-q``
finds the rows least similar to ``q`` — including a PCA first stage, whose centring shifts every score
of one query by the same amount.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from g3.errors import GeoIndexError
from g3.index.backend import FaissBackend

log = logging.getLogger(__name__)

#: Default candidates re-scored per query.
DEFAULT_CANDIDATES = 1024  # recall@20 0.966 at 500k realistic keys (512: 0.928; bench/index.py)
_FEW = 4  # batches up to this size are scored without BLAS
_GROUP = 8  # queries re-ranked together
_MISSING_SCORE = np.finfo(np.float32).min  # what FAISS reports for a missing inner-product neighbour


def open_vectors(path: Path, *, rows: int, dim: int) -> np.ndarray:
    """Memory-map ``vectors.npy`` read-only and check its shape and dtype (`GeoIndexError` naming the file)."""
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise GeoIndexError(f"{path} cannot be read as a vector file ({exc}); convert the index again") from exc
    if vectors.shape != (rows, dim) or vectors.dtype not in (np.float16, np.float32):
        raise GeoIndexError(
            f"{path} holds {vectors.dtype} {vectors.shape}, expected float16/float32 ({rows}, {dim}); convert again"
        )
    raw = getattr(vectors, "_mmap", None)
    if isinstance(raw, mmap.mmap) and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)  # rows are read a few at a time: no read-ahead of their neighbours
    return vectors


class TwoStageBackend:
    """A `SearchBackend`: ``first`` proposes ``candidates`` rows a query, ``vectors`` (rows × dim) score them.

    ``vectors`` is a (memory-mapped) array, or anything with ``shape`` that returns the rows of a sorted
    index array as an array."""

    def __init__(self, first: FaissBackend, vectors: Any, *, candidates: int = DEFAULT_CANDIDATES) -> None:
        if vectors.shape != (first.ntotal, first.dim):
            raise GeoIndexError(
                f"the re-ranking vectors are {vectors.shape}, the first-stage index {first.ntotal} × {first.dim}"
            )
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        self.first = first
        self.vectors = vectors
        self.candidates = candidates

    @property
    def kind(self) -> str:
        return f"two-stage({self.first.kind})"

    @property
    def ntotal(self) -> int:
        return self.first.ntotal

    @property
    def dim(self) -> int:
        return self.first.dim

    def set_search_params(self, params: dict[str, int]) -> None:
        """``candidates`` for this stage; the rest (``nprobe``, ``efSearch``) go to the first stage."""
        rest = dict(params)
        if "candidates" in rest:
            self.candidates = int(rest.pop("candidates"))
        self.first.set_search_params(rest)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` ``(Q, k)``: exact inner products with the full vectors, best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if len(q) > _GROUP:  # bounds the gathered rows (a group of 8 × 1024 candidates: 75 MB as float32)
            parts = [self.search(q[i : i + _GROUP], k) for i in range(0, len(q), _GROUP)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        _, found = self.first.search(q, max(k, self.candidates))
        rows_needed = np.unique(found[found >= 0])  # sorted: reads go through the file in order
        scores = np.full((len(q), k), _MISSING_SCORE, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if not len(rows_needed):
            return scores, rows
        block = np.asarray(self.vectors[rows_needed], dtype=np.float32)  # (U, D), each row read once
        position = np.searchsorted(rows_needed, np.maximum(found, 0))
        # a few queries: einsum, not BLAS; a multi-threaded BLAS call this small costs milliseconds of thread
        # wake-ups on a busy machine (measured: 6.5 ms against 0.1 ms); a batch: one matrix product
        exact = block @ q.T if len(q) > _FEW else None  # (U, Q)
        for i in range(len(q)):
            valid = found[i] >= 0
            column = exact[:, i] if exact is not None else np.einsum("ud,d->u", block, q[i])
            cand, cand_scores = found[i][valid], column[position[i][valid]]
            top = min(k, len(cand))
            best = np.argpartition(-cand_scores, top - 1)[:top] if top < len(cand) else np.arange(len(cand))
            best = best[np.lexsort((cand[best], -cand_scores[best]))]  # by score, then by row (stable ties)
            scores[i, :top], rows[i, :top] = cand_scores[best], cand[best]
        return scores, rows
