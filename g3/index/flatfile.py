"""Reading the vectors of a FAISS flat index file (``faiss.write_index`` of an ``IndexFlat``) without FAISS.

G3's published ``g3.index`` is such a file: a 45-byte header, then ``ntotal × d`` float32 values, row
after row. `FlatFile` reads its header, checks that the file is whole, and reads rows with ``pread``
(a chunk, or scattered rows), so a 38 GB file is checked and streamed without being mapped or held in
memory. `write_flat_file` writes the same layout chunk by chunk (for benchmarks and tests of large files).

Layout (faiss/impl/index_write.cpp): fourcc ``IxFI`` (inner product), ``IxF2`` (L2) or ``IxFl`` (other
metrics); ``d`` int32; ``ntotal`` int64; two int64 placeholders; ``is_trained`` uint8; ``metric_type``
int32; ``metric_arg`` float32 only when ``metric_type > 1``; the number of float32 values (uint64);
the values.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g3.errors import GeoIndexError

FLAT_FOURCCS = {b"IxFI": "inner_product", b"IxF2": "l2", b"IxFl": "other"}
#: FAISS ``MetricType`` values (faiss/MetricType.h) and their names.
METRIC_NAMES = {0: "inner_product", 1: "l2", 2: "l1", 3: "linf", 4: "lp", 20: "canberra", 21: "braycurtis",
                22: "jensenshannon", 23: "jaccard", 24: "nan_euclidean", 25: "gower"}  # fmt: skip
_HEAD = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, 2 placeholders, is_trained, metric_type
_PLACEHOLDER = 1 << 20


@dataclass(frozen=True)
class FlatFile:
    """The header of a FAISS flat index file and where its vectors start."""

    path: Path
    dim: int
    rows: int
    metric: str
    offset: int

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FlatFile:
        """Read and check the header; `GeoIndexError` for another FAISS kind, another format or a cut file."""
        path = Path(path)
        if not path.is_file():
            raise GeoIndexError(f"{path} does not exist or is not a file")
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD.size + 4 + 8)
        if len(head) < 4:
            raise GeoIndexError(f"{path} is not a FAISS index file ({size} bytes)")
        fourcc = head[:4]
        if fourcc not in FLAT_FOURCCS:
            shown = fourcc.decode("latin-1") if fourcc.isascii() and fourcc.isalnum() else fourcc.hex()
            raise GeoIndexError(
                f"{path} is not a FAISS flat index (its header starts with {shown!r}, not IxFI): g3 index import "
                "adopts exact flat files such as G3's g3.index (faiss.IndexFlatIP). Other kinds: build the index "
                "with `g3 index build`, or `g3 index convert` an imported flat index"
            )
        if len(head) < _HEAD.size + 8:
            raise GeoIndexError(f"{path} is cut short: {size} bytes, not even a whole FAISS header")
        _, dim, rows, _, _, _, metric_type = _HEAD.unpack_from(head)
        offset = _HEAD.size + (4 if metric_type > 1 else 0)
        (values,) = struct.unpack_from("<Q", head, offset)
        offset += 8
        if dim <= 0 or rows < 0 or values != rows * dim:
            raise GeoIndexError(
                f"{path}: inconsistent FAISS flat header (d={dim}, ntotal={rows}, {values} values); the file is corrupt"
            )
        expected = offset + 4 * values
        if size != expected:
            raise GeoIndexError(
                f"{path} has {size:,} bytes but its header announces {rows:,} vectors of width {dim} "
                f"({expected:,} bytes): the file is {'truncated' if size < expected else 'longer than it should be'}"
                " — download or copy it again"
            )
        return cls(path=path, dim=dim, rows=rows, metric=METRIC_NAMES.get(metric_type, str(metric_type)),
                   offset=offset)  # fmt: skip

    @property
    def row_bytes(self) -> int:
        return 4 * self.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh float32 ``(stop - start, d)`` array (one ``pread``)."""
        start, stop = max(0, start), min(self.rows, stop)
        out = np.empty((max(0, stop - start), self.dim), dtype=np.float32)
        if len(out):
            with self.path.open("rb") as fh:
                _read_into(fh.fileno(), out, self.offset + start * self.row_bytes, self.path)
        return out

    def take(self, rows: Iterable[int]) -> np.ndarray:
        """The given rows (any order, repeats allowed) as float32 ``(n, d)``; one ``pread`` per row."""
        wanted = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).reshape(-1)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= self.rows):
            raise IndexError(f"rows out of range 0..{self.rows - 1}")
        out = np.empty((len(wanted), self.dim), dtype=np.float32)
        with self.path.open("rb") as fh:
            for i, row in enumerate(wanted):
                _read_into(fh.fileno(), out[i], self.offset + int(row) * self.row_bytes, self.path)
        return out

    def chunks(self, size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, rows)`` chunks of at most ``size`` rows from ``start`` on, read one at a time."""
        for first in range(start, self.rows, size):
            yield first, self.read(first, first + size)


def _read_into(fd: int, out: np.ndarray, offset: int, path: Path) -> None:
    view = memoryview(out.data).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise GeoIndexError(f"{path} ended early at byte {offset + done:,}; the file is truncated")
        done += n


def write_flat_file(path: str | os.PathLike[str], dim: int, chunks: Iterable[np.ndarray], rows: int) -> Path:
    """Write an ``IndexFlatIP`` file of ``rows`` vectors from float32 ``chunks`` without holding them all;
    `faiss.read_index` reads it as `faiss.write_index` would have written it."""
    path = Path(path)
    written = 0
    with path.open("wb") as fh:
        fh.write(_HEAD.pack(b"IxFI", dim, rows, _PLACEHOLDER, _PLACEHOLDER, 1, 0))
        fh.write(struct.pack("<Q", rows * dim))
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"chunk of shape {block.shape}, expected (n, {dim})")
            fh.write(block.tobytes())
            written += len(block)
    if written != rows:
        path.unlink()
        raise ValueError(f"{written} rows written, {rows} announced")
    return path
