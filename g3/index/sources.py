"""The vectors of an index folder, read back in chunks or by row, for `g3 index convert`.

Three sources, chosen from the folder's manifest: a flat FAISS file (``Flat``, built or imported: read
with ``pread``, never mapped), the ``vectors.npy`` of a two-stage index (also ``pread``), or any other
FAISS kind through ``reconstruct_n`` (lossy for compressed kinds: PQ, SQ, PCA). Memory stays bounded by
the rows asked for at a time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from g3.errors import GeoIndexError
from g3.index.backend import read_faiss_index
from g3.index.flatfile import FlatFile
from g3.index.manifest import INDEX_FILE, IndexManifest


class VectorSource(Protocol):
    """``rows`` vectors of width ``dim``; ``lossless``: they are the keys the index was made from."""

    rows: int
    dim: int
    lossless: bool
    description: str

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32."""
        ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted, unique) as float32."""
        ...


class FlatSource:
    """A FAISS flat file (``IndexFlatIP`` as written by FAISS), read with ``pread``."""

    lossless = True

    def __init__(self, path: Path) -> None:
        self.flat = FlatFile.open(path)
        self.rows, self.dim = self.flat.rows, self.flat.dim
        self.description = f"flat file {path}"

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.flat.read(start, stop)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.flat.take(rows)


class NpySource:
    """A C-ordered float16/float32 ``.npy`` matrix (a two-stage index's vectors), read with ``pread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset, shape, self.dtype = npy_layout(path)
        if len(shape) != 2:
            raise GeoIndexError(f"{path} holds an array of shape {shape}, not a (rows, dim) matrix")
        self.rows, self.dim = shape
        self.lossless = self.dtype == np.float32
        self.description = f"{self.dtype.name} vectors {path}"

    def _pread(self, fd: int, first: int, count: int) -> np.ndarray:
        nbytes = count * self.dim * self.dtype.itemsize
        data = os.pread(fd, nbytes, self.offset + first * self.dim * self.dtype.itemsize)
        if len(data) != nbytes:
            raise GeoIndexError(f"{self.path} ended early (row {first}); the file is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.dim).astype(np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(self.rows, stop)
        if stop <= start:
            return np.zeros((0, self.dim), np.float32)
        with self.path.open("rb") as fh:
            return self._pread(fh.fileno(), start, stop - start)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), np.float32)
        with self.path.open("rb") as fh:
            for i, row in enumerate(np.asarray(rows, dtype=np.int64)):
                out[i] = self._pread(fh.fileno(), int(row), 1)[0]
        return out


class FaissSource:
    """Any FAISS index through ``reconstruct_n`` (IVF kinds get a direct map first)."""

    def __init__(self, path: Path, kind: str) -> None:
        import faiss

        if any(part.endswith("fs") or "fsr" in part for part in kind.split(",")):  # FAISS crashes reconstructing these
            raise GeoIndexError(
                f"{path}: a {kind} index (fast-scan codes) cannot give back its vectors; convert from the Flat (built "
                "or imported) index, or from a two-stage index, instead"
            )
        self.index: Any = read_faiss_index(path, kind=kind, mmap=False)
        self.rows, self.dim = int(self.index.ntotal), int(self.index.d)
        self.lossless = is_lossless_kind(kind)
        self.description = f"FAISS {kind} {path} (reconstructed{'' if self.lossless else ', lossy'})"
        with contextlib.suppress(RuntimeError):  # not an IVF index: reconstruct works without a map
            faiss.extract_index_ivf(self.index).make_direct_map()
        try:
            self.index.reconstruct_n(0, min(1, self.rows))
        except RuntimeError as exc:
            raise GeoIndexError(
                f"{path}: FAISS cannot give back the vectors of a {kind} index ({str(exc).strip().splitlines()[-1]});"
                " convert from the Flat (built or imported) index instead"
            ) from exc

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(self.rows, stop)
        if stop <= start:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(self.index.reconstruct_n(start, stop - start), dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(int(r)) for r in rows]).astype(np.float32)


def is_lossless_kind(kind: str) -> bool:
    """Whether a FAISS factory kind stores its vectors as given (Flat, HNSW…Flat, IVF…,Flat)."""
    parts = [p.strip() for p in kind.split(",")]
    if len(parts) == 1:
        return parts[0] == "Flat" or (parts[0].startswith("HNSW") and parts[0][4:].isdigit())
    return len(parts) == 2 and parts[0].startswith("IVF") and parts[1] == "Flat"


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype[Any]]:
    """``(data offset, shape, dtype)`` of a C-ordered ``.npy`` file of float16/float32."""
    fmt = np.lib.format
    try:
        with path.open("rb") as fh:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (OSError, ValueError) as exc:
        raise GeoIndexError(f"{path} cannot be read as a vector file ({exc}); convert the index again") from exc
    if fortran or dtype not in (np.float16, np.float32):
        raise GeoIndexError(f"{path} holds {dtype} {'Fortran' if fortran else 'C'}-ordered data, not float16/32 rows")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise GeoIndexError(f"{path} has {path.stat().st_size:,} bytes, its header announces {expected:,}; truncated")
    return offset, tuple(int(s) for s in shape), dtype


def open_vector_source(folder: Path, manifest: IndexManifest) -> VectorSource:
    """The vectors of the index folder ``folder``: its re-ranking vectors, flat file, or FAISS reconstruction."""
    if manifest.rerank is not None:
        return NpySource(folder / manifest.rerank.file)
    if manifest.kind == "Flat":
        return FlatSource(folder / INDEX_FILE)
    return FaissSource(folder / INDEX_FILE, manifest.kind)
