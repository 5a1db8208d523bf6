"""The search backend behind `GeoIndex`: one protocol, a FAISS implementation (CPU or GPU).

`GeoIndex` only needs ``search(queries, k) -> (scores, rows)`` and ``ntotal``/``dim``; a sharded or
remote backend (several FAISS shards, a vector database) plugs in by implementing `SearchBackend`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from g3.errors import GeoIndexError, MissingDependencyError

log = logging.getLogger(__name__)

#: FAISS search parameters g3 sets by default (applied only where the index kind has them).
DEFAULT_SEARCH_PARAMS: dict[str, int] = {"nprobe": 32, "efSearch": 128}


def import_faiss() -> Any:
    """The ``faiss`` module, or a `MissingDependencyError` naming the extras that provide it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            "FAISS is not installed: `pip install 'g3[cpu]'` (faiss-cpu) or `pip install 'g3[gpu]'` (faiss-gpu)"
        ) from exc
    return faiss


@runtime_checkable
class SearchBackend(Protocol):
    """Maximum-inner-product search over ``ntotal`` vectors of width ``dim``."""

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(Q, k)``; best first; row ``-1`` where fewer than k exist."""
        ...


class FaissBackend:
    """A FAISS index, moved to every visible GPU when asked (``use_gpu=None``: when faiss sees a GPU)."""

    def __init__(self, index: Any, *, use_gpu: bool | None = None, search_params: dict[str, int] | None = None):
        faiss = import_faiss()
        self.cpu_index = index
        self.kind = type(index).__name__
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if use_gpu and gpus == 0:
            raise GeoIndexError("use_gpu=True but FAISS sees no GPU (is faiss-gpu installed and a GPU visible?)")
        self.index = index
        if (use_gpu is None and gpus > 0) or use_gpu:
            try:
                self.index = faiss.index_cpu_to_all_gpus(index)
                log.info("FAISS index on %d GPU(s)", gpus)
            except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU version
                if use_gpu:
                    raise GeoIndexError(f"this index kind cannot run on a GPU: {exc}") from exc
                log.info("FAISS %s stays on the CPU (%s)", self.kind, str(exc).splitlines()[0])
        self.set_search_params({**DEFAULT_SEARCH_PARAMS, **(search_params or {})})

    def set_search_params(self, params: dict[str, int]) -> None:
        """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW); parameters the index kind lacks are ignored."""
        faiss = import_faiss()
        space = faiss.GpuParameterSpace() if self.index is not self.cpu_index else faiss.ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError:
                continue  # not a parameter of this index kind

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(queries, k)
        return scores, rows

    def write(self, path: Path) -> None:
        """Write the CPU copy of the index to ``path`` (not atomic by itself)."""
        import_faiss().write_index(self.cpu_index, str(path))


def mmap_flags(kind: str) -> int:
    """FAISS read flags that memory-map an index of this factory kind instead of reading it into RAM."""
    faiss = import_faiss()
    # Inverted lists map with IO_FLAG_MMAP; flat code storage (Flat, HNSW's storage) with IO_FLAG_MMAP_IFC.
    return int(faiss.IO_FLAG_MMAP if "IVF" in kind.upper() else faiss.IO_FLAG_MMAP_IFC)


def read_faiss_index(path: Path, *, kind: str, mmap: bool) -> Any:
    """Read an index file, memory-mapped where FAISS allows; errors name the file."""
    faiss = import_faiss()
    try:
        return faiss.read_index(str(path), mmap_flags(kind) if mmap else 0)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise GeoIndexError(
            f"{path} cannot be read by FAISS ({first[-1] if first else exc}); the file is truncated or corrupt — "
            "rebuild the index"
        ) from exc
