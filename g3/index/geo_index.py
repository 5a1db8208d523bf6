"""`GeoIndex`: retrieval keys of geotagged images in FAISS, with their metadata in the same row order.

G3 retrieves, for a query image, the k most similar database images (maximum inner product of the
2304-d keys) and k dissimilar ones (the same search with the negated query) and shows their
coordinates to the LMM. On disk an index is a folder::

    manifest.json      format, rows, dim, FAISS kind, aligner fingerprint, checksums, build info
    index.faiss        the FAISS index (memory-mapped on load where FAISS allows)
    metadata.parquet   row-aligned IMG_ID, LAT, LON and location text columns
    vectors.npy        two-stage kinds only (`g3 index convert`): the full vectors that re-score candidates
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from g3 import __version__
from g3.errors import GeoIndexError
from g3.index.backend import FaissBackend, SearchBackend, import_faiss, read_faiss_index
from g3.index.manifest import (
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    IndexManifest,
    check_files,
    file_entry,
    read_manifest,
)
from g3.io import atomic_folder, atomic_write_json
from g3.neighbours import Neighbours

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from g3.models import GeoAligner

log = logging.getLogger(__name__)

#: Location text columns carried in the metadata when the corpus has them.
TEXT_COLUMNS = ("neighbourhood", "city", "county", "state", "region", "country", "continent")


@dataclass(frozen=True)
class SearchHits:
    """k neighbours of each of Q queries; every array is ``(Q, k)``, best first. `neighbours` gives one
    query's as the `g3.neighbours.Neighbours` the rest of g3 uses.

    ``rows`` index the database (−1 where the index holds fewer than k rows; there lat/lon are NaN);
    ``scores`` are inner products with the query (for dissimilar neighbours: the lowest ones, lowest
    first); ``lat``/``lon`` in degrees. ``ids`` (IMG_IDs) are looked up on access.
    """

    rows: np.ndarray
    scores: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    _index: GeoIndex = field(repr=False)

    @property
    def ids(self) -> np.ndarray:
        """IMG_IDs, ``(Q, k)`` object array (None where the row is −1)."""
        return self._index.column(self.rows, "IMG_ID")

    @property
    def coordinates(self) -> np.ndarray:
        """``(Q, k, 2)`` (lat, lon) degrees."""
        return np.stack([self.lat, self.lon], axis=-1)

    def neighbours(self, query: int = 0) -> Neighbours:
        """Query ``query``'s neighbours, with their IMG_IDs, place names and rows (rows −1 left out)."""
        keep = self.rows[query] >= 0
        rows = self.rows[query][keep]
        return Neighbours(
            coordinates=np.stack([self.lat[query][keep], self.lon[query][keep]], axis=-1),
            scores=self.scores[query][keep],
            ids=[None if i is None else str(i) for i in self._index.column(rows, "IMG_ID")],
            places=[str(p) for p in self._index.place_names(rows)],
            index_rows=rows,
        )


@dataclass(frozen=True)
class SearchResult:
    """Similar neighbours, and dissimilar ones when asked for."""

    similar: SearchHits
    dissimilar: SearchHits | None = None


class GeoIndex:
    """Maximum-inner-product search over retrieval keys, returning neighbours with their coordinates.

    Build with `GeoIndex.create` (keys in memory) or `g3.index.build_index` (from a corpus, resumable);
    open with `GeoIndex.load`. The constructor does no I/O.
    """

    def __init__(self, backend: SearchBackend, metadata: pa.Table, manifest: IndexManifest) -> None:
        if backend.ntotal != metadata.num_rows:
            raise GeoIndexError(f"the index holds {backend.ntotal} vectors but the metadata {metadata.num_rows} rows")
        if backend.ntotal != manifest.rows or backend.dim != manifest.dim:
            raise GeoIndexError(
                f"the manifest says {manifest.rows} rows of width {manifest.dim}, the index has "
                f"{backend.ntotal} of width {backend.dim}"
            )
        self.backend = backend
        self.metadata = metadata
        self.manifest = manifest
        self._lat = metadata.column("LAT").to_numpy().astype(np.float64, copy=False)
        self._lon = metadata.column("LON").to_numpy().astype(np.float64, copy=False)

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        keys: np.ndarray,
        metadata: pd.DataFrame | pa.Table,
        *,
        kind: str = "Flat",
        train_size: int | None = None,
        seed: int = 0,
        aligner: GeoAligner | None = None,
        fingerprint: str | None = None,
        use_gpu: bool | None = None,
        search_params: dict[str, int] | None = None,
    ) -> GeoIndex:
        """An in-memory index of ``keys`` ``(N, D)`` with ``metadata`` rows (IMG_ID, LAT, LON, text…).

        ``kind`` is a FAISS factory string; trained kinds (IVF, PQ) are trained on ``train_size``
        random rows (default: all rows up to 200,000).
        """
        keys = as_float32_matrix(keys, "keys")
        table = metadata_table(metadata)
        if len(keys) != table.num_rows:
            raise GeoIndexError(f"{len(keys)} keys but {table.num_rows} metadata rows")
        index = new_faiss_index(kind, keys.shape[1])
        train_faiss_index(index, keys, train_size=train_size, seed=seed)
        index.add(keys)
        if aligner is not None:
            fingerprint = aligner.fingerprint()
        manifest = new_manifest(
            rows=len(keys),
            dim=keys.shape[1],
            kind=kind,
            fingerprint=fingerprint,
            aligner_config=aligner.config.model_dump(mode="json") if aligner is not None else None,
            search_params=search_params,
        )
        return cls(FaissBackend(index, use_gpu=use_gpu, search_params=search_params), table, manifest)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        aligner: GeoAligner | None = None,
        fingerprint: str | None = None,
        mmap: bool = True,
        use_gpu: bool | None = None,
        verify_checksums: bool = False,
        search_params: dict[str, int] | None = None,
    ) -> GeoIndex:
        """Open an index folder. With ``aligner`` (or ``fingerprint``) the index must have been built by it.

        Raises `GeoIndexError` naming the folder for a missing, truncated, corrupt or mismatched index.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(path)
        manifest = read_manifest(folder)
        check_files(folder, manifest, verify_checksums=verify_checksums)
        expected = aligner.fingerprint() if aligner is not None else fingerprint
        if expected is not None and manifest.aligner_fingerprint != expected:
            raise GeoIndexError(
                f"{folder} was built with aligner {str(manifest.aligner_fingerprint)[:12]}…, not with the aligner "
                f"given ({expected[:12]}…): its keys are not comparable. Rebuild the index with this aligner or "
                "load the aligner it was built with."
            )
        index = read_faiss_index(folder / INDEX_FILE, kind=manifest.kind, mmap=mmap)
        try:
            table = pq.read_table(folder / METADATA_FILE, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise GeoIndexError(f"{folder / METADATA_FILE} cannot be read ({exc}); rebuild the index") from exc
        params = {**manifest.search_params, **(search_params or {})}
        if manifest.rerank is None:
            return cls(FaissBackend(index, use_gpu=use_gpu, search_params=params), table, manifest)
        from g3.index.two_stage import TwoStageBackend, open_vectors

        candidates = params.pop("candidates", manifest.rerank.candidates)
        vectors = open_vectors(folder / manifest.rerank.file, rows=manifest.rows, dim=manifest.dim)
        first = FaissBackend(index, use_gpu=use_gpu, search_params=params)
        return cls(TwoStageBackend(first, vectors, candidates=candidates), table, manifest)

    def save(self, path: str | os.PathLike[str], *, extra_json: dict[str, Any] | None = None) -> Path:
        """Write the index folder atomically (an existing folder at ``path`` is replaced).

        ``extra_json`` maps file names to objects written beside the index as JSON (e.g. a build report).
        """
        import pyarrow.parquet as pq

        if not isinstance(self.backend, FaissBackend):
            raise GeoIndexError(f"saving is implemented for FAISS backends, not {type(self.backend).__name__}")
        target = Path(path)
        with atomic_folder(target) as staging:
            self.backend.write(staging / INDEX_FILE)
            pq.write_table(self.metadata, staging / METADATA_FILE)
            files = {name: file_entry(staging / name) for name in (INDEX_FILE, METADATA_FILE)}
            manifest = self.manifest.model_copy(update={"files": files}).with_version()
            atomic_write_json(staging / MANIFEST_FILE, manifest.model_dump(mode="json"))
            for name, obj in (extra_json or {}).items():
                atomic_write_json(staging / name, obj)
        self.manifest = manifest
        return target

    # -- queries ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.backend.ntotal

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def search(
        self, queries: np.ndarray, k: int = 20, *, dissimilar: bool = False, dissimilar_k: int | None = None
    ) -> SearchResult:
        """The ``k`` most similar rows of each query ``(Q, D)`` (or ``(D,)``), and optionally the
        ``dissimilar_k`` (default ``k``) least similar ones, found by searching with the negated query."""
        q = as_float32_matrix(queries, "queries", dim=self.dim)
        if k < 1 or (dissimilar_k is not None and dissimilar_k < 1):
            raise ValueError(f"k must be at least 1, got k={k}, dissimilar_k={dissimilar_k}")
        scores, rows = self.backend.search(q, k)
        similar = self._neighbours(rows, scores)
        if not dissimilar:
            return SearchResult(similar)
        neg_scores, neg_rows = self.backend.search(-q, dissimilar_k or k)
        return SearchResult(similar, self._neighbours(neg_rows, -neg_scores))

    def _neighbours(self, rows: np.ndarray, scores: np.ndarray) -> SearchHits:
        lat, lon = self._lat[rows], self._lon[rows]
        missing = rows < 0
        if missing.any():
            lat[missing] = np.nan
            lon[missing] = np.nan
        return SearchHits(rows=rows, scores=scores, lat=lat, lon=lon, _index=self)

    def column(self, rows: np.ndarray, name: str) -> np.ndarray:
        """Values of metadata column ``name`` at ``rows`` (any shape; −1 gives None), as an object array."""
        flat = np.asarray(rows).reshape(-1)
        valid = flat >= 0
        values = np.full(flat.shape, None, dtype=object)
        if valid.any():
            values[valid] = self.metadata.column(name).take(flat[valid]).to_numpy(zero_copy_only=False)
        return values.reshape(np.shape(rows))

    def place_names(self, rows: np.ndarray, fields: tuple[str, ...] = ("city", "state", "country")) -> np.ndarray:
        """ "City, State, Country" of ``rows`` (empty parts skipped; "" where unknown), as an object array."""
        columns = [self.column(rows, f).reshape(-1) for f in fields if f in self.metadata.column_names]
        if not columns:
            return np.full(np.shape(rows), "", dtype=object)
        names = [", ".join(v for v in parts if isinstance(v, str) and v) for parts in zip(*columns, strict=True)]
        return np.asarray(names, dtype=object).reshape(np.shape(rows))


# -- helpers shared with the build pipeline ----------------------------------------------------------


def as_float32_matrix(values: Any, what: str, *, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 ``(N, D)`` array (a single vector becomes ``(1, D)``), checked for NaN/inf."""
    import torch

    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.ascontiguousarray(values, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a (N, D) matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what}: vectors have width {arr.shape[1]}, the index has width {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return arr


def metadata_table(metadata: pd.DataFrame | pa.Table) -> pa.Table:
    """Metadata as an Arrow table with IMG_ID (string), LAT, LON (float64) and any text columns."""
    import pyarrow as pa

    table = metadata if isinstance(metadata, pa.Table) else pa.Table.from_pandas(metadata, preserve_index=False)
    missing = [c for c in ("IMG_ID", "LAT", "LON") if c not in table.column_names]
    if missing:
        raise GeoIndexError(f"index metadata lacks column(s) {missing}; it has {table.column_names}")
    keep = ["IMG_ID", "LAT", "LON", *[c for c in TEXT_COLUMNS if c in table.column_names]]
    table = table.select(keep)
    return table.cast(
        pa.schema(
            [
                pa.field("IMG_ID", pa.string()),
                pa.field("LAT", pa.float64()),
                pa.field("LON", pa.float64()),
                *[pa.field(c, pa.string()) for c in keep[3:]],
            ]
        )
    )


def new_faiss_index(kind: str, dim: int) -> Any:
    """An empty inner-product FAISS index from a factory string; a bad string is a `GeoIndexError`."""
    faiss = import_faiss()
    try:
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise GeoIndexError(
            f"FAISS cannot build index kind {kind!r} for width {dim}: {str(exc).strip().splitlines()[-1]}. "
            "Examples: 'Flat', 'IVF4096,PQ64' (PQ's sub-quantizers must divide the width), 'HNSW32'."
        ) from exc
    # Polysemous training (on by default for PQ) only serves polysemous filtering, which g3 does not use,
    # and costs ~20x the PQ training itself.
    for part in (index, _ivf_or_none(faiss, index)):
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    return index


def _ivf_or_none(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def train_faiss_index(index: Any, keys: np.ndarray, *, train_size: int | None, seed: int) -> None:
    """Train an untrained index on a random sample of ``keys`` (no-op for kinds that need no training)."""
    if index.is_trained:
        return
    n = len(keys)
    size = min(n, train_size or 200_000)
    sample = keys if size == n else keys[np.sort(np.random.default_rng(seed).choice(n, size, replace=False))]
    log.info("training the FAISS index on %d of %d rows", size, n)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def new_manifest(
    *,
    rows: int,
    dim: int,
    kind: str,
    fingerprint: str | None,
    aligner_config: dict[str, Any] | None,
    search_params: dict[str, int] | None = None,
    build_seconds: float | None = None,
    build: dict[str, Any] | None = None,
) -> IndexManifest:
    return IndexManifest(
        rows=rows,
        dim=dim,
        kind=kind,
        aligner_fingerprint=fingerprint,
        aligner_config=aligner_config,
        search_params=search_params or {},
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        build_seconds=build_seconds,
        g3_version=__version__,
        faiss_version=str(import_faiss().__version__),
        build=build or {},
    )
