"""`g3 index convert`: an index folder turned into another FAISS kind without re-encoding.

The vectors are streamed out of the source (`g3.index.sources`: a flat file or a two-stage index's vectors
read with ``pread``, other kinds reconstructed by FAISS) in chunks of ``chunk_rows``; the new index is
trained on a random sample of ``train_size`` rows and filled chunk by chunk, so memory holds the sample,
one chunk and the new index, never the source. The work folder ``.NAME.convert/`` beside the output keeps
the trained index, the filled index every ``checkpoint_rows`` rows and (two-stage) the vectors file, so
an interrupted conversion resumes where its last checkpoint stopped (a conversion with other settings is
refused unless restarted).

``convert_report.json`` records recall@k of the new index against exact inner-product search over the
source's vectors, on held-out queries: ``queries`` rows outside the training sample, each searched for
its ``k`` best rows other than itself. The exact answers are computed while the chunks stream by.

Two-stage kind (``two-stage``, or ``two-stage:FACTORY``): the FACTORY index (default
`default_first_stage`) holds compressed codes in memory and proposes ``candidates`` rows a query, which
are re-scored exactly from the full vectors kept on disk in ``vectors.npy`` (float32 by default, float16
on request), memory-mapped (`g3.index.two_stage`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from g3.errors import GeoIndexError
from g3.index.backend import FaissBackend, import_faiss
from g3.index.geo_index import GeoIndex, new_faiss_index, new_manifest
from g3.index.manifest import (
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    RerankSpec,
    check_files,
    file_entry,
    read_manifest,
)
from g3.index.sources import NpySource, VectorSource, npy_layout, open_vector_source
from g3.index.two_stage import DEFAULT_CANDIDATES, TwoStageBackend, open_vectors
from g3.io import atomic_folder, atomic_open, atomic_write_json

log = logging.getLogger(__name__)

CONVERT_REPORT = "convert_report.json"
VECTORS_FILE = "vectors.npy"
TWO_STAGE = "two-stage"
_QUERY_BLOCK = 8192  # rows scored against the queries at a time (bounds the score matrix)


class ConvertConfig(BaseModel):
    """Knobs of `convert_index`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="FAISS factory string, 'two-stage' or 'two-stage:FACTORY'")
    chunk_rows: int = Field(default=65_536, ge=1, description="rows read and added at a time")
    checkpoint_rows: int = Field(default=262_144, ge=1, description="rows between saved (resumable) states")
    train_size: int | None = Field(default=None, ge=1, description="training sample (default: ≤100,000 rows)")
    seed: int = 0
    search_params: dict[str, int] = Field(default_factory=dict, description="stored defaults: nprobe, efSearch")
    candidates: int = Field(default=DEFAULT_CANDIDATES, ge=1, description="two-stage: rows re-scored a query")
    rerank_dtype: Literal["float16", "float32"] = Field(
        default="float32",
        description="two-stage vectors on disk: float16 halves the disk but converting 1024 rows costs ~4.5 ms a query",
    )
    queries: int = Field(default=500, ge=0, description="held-out queries for the recall in the report")
    k: int = Field(default=20, ge=1, description="the k of recall@k")


def default_first_stage(rows: int, dim: int) -> str:
    """The compressed first stage of the two-stage kind for ``rows`` vectors of width ``dim``:
    a PCA rotation to at most 256 dimensions, an inverted file of about 4·√rows lists and 4-bit
    fast-scan PQ codes, one per 2 dimensions (64 bytes a row for 256 dimensions; bench/index.py measures it)."""
    reduced = min(256, dim - dim % 4)
    nlist = 1 << max(4, int(np.log2(max(16, 4 * np.sqrt(rows)))))
    while nlist > 16 and nlist * 39 > rows:  # FAISS wants ~39 training rows a list
        nlist //= 2
    pca = f"PCAR{reduced}," if reduced != dim else ""
    return f"{pca}IVF{nlist},PQ{reduced // 2}x4fs"


def parse_kind(kind: str, *, rows: int, dim: int) -> tuple[str, bool]:
    """``(FAISS factory string, two-stage?)`` of a ``--kind`` value."""
    if kind == TWO_STAGE:
        return default_first_stage(rows, dim), True
    if kind.startswith(TWO_STAGE + ":"):
        first = kind[len(TWO_STAGE) + 1 :].strip()
        if not first:
            raise GeoIndexError(f"--kind {kind!r}: name the first stage after the colon, e.g. two-stage:IVF1024,PQ32")
        return first, True
    return kind, False


def convert_index(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ConvertConfig,
    *,
    restart: bool = False,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> GeoIndex:
    """Write the index folder ``out``: the vectors of index folder ``src`` in ``config.kind``; return it loaded.

    ``on_checkpoint(rows)`` is called after each saved state (rows added so far). Raises `GeoIndexError`
    for a source that is not a whole index, a kind FAISS cannot build, or an unfinished conversion of
    ``out`` with other settings (``restart`` discards it).
    """
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise GeoIndexError(f"--out {out} is the source index itself; write the converted index elsewhere")
    manifest = read_manifest(src)
    check_files(src, manifest, verify_checksums=False)
    source = open_vector_source(src, manifest)
    first, two_stage = parse_kind(config.kind, rows=source.rows, dim=source.dim)
    new_faiss_index(first, source.dim)  # a bad factory string fails here, before any work
    work = out.with_name(f".{out.name}.convert")
    state = {
        "source": str(src.resolve()),
        "source_files": {name: entry.sha256 for name, entry in manifest.files.items()},
        "rows": source.rows,
        "dim": source.dim,
        "kind": first,
        "two_stage": two_stage,
        "rerank_dtype": config.rerank_dtype if two_stage else None,
        "train_size": config.train_size,
        "seed": config.seed,
        "queries": config.queries,
        "k": config.k,
    }
    _prepare_work(work, state, restart)
    query_rows, train_rows = _sample_rows(source.rows, config)
    queries = source.take(query_rows)
    index = _trained(work, first, source, train_rows)
    job = _Fill(work, source, index, queries, query_rows, config, two_stage)
    job.run(progress=progress, on_checkpoint=on_checkpoint)
    spec = RerankSpec(file=VECTORS_FILE, dtype=config.rerank_dtype, candidates=config.candidates) if two_stage else None
    with atomic_folder(out) as staging:
        import_faiss().write_index(job.index, str(staging / INDEX_FILE))
        _place(src / METADATA_FILE, staging / METADATA_FILE)
        if spec is not None:
            _place(work / VECTORS_FILE, staging / VECTORS_FILE)
        files = {p.name: file_entry(p) for p in sorted(staging.iterdir())}
        recall = _recall(staging, job, spec, config)
        new = new_manifest(
            rows=source.rows,
            dim=source.dim,
            kind=first,
            fingerprint=manifest.aligner_fingerprint,
            aligner_config=manifest.aligner_config,
            search_params=config.search_params,
            build_seconds=round(time.perf_counter() - started, 3),
            build={"converted": True, "train_rows": len(train_rows)},
        ).model_copy(
            update={
                "key": manifest.key,
                "keys_built_by": manifest.keys_built_by,
                "sources": manifest.sources,
                "files": files,
                "rerank": spec,
                "converted_from": {
                    "path": str(src.resolve()),
                    "kind": manifest.kind,
                    "two_stage": manifest.rerank is not None,
                    "vectors": source.description,
                    "lossless": source.lossless,
                },
            }
        )
        atomic_write_json(staging / MANIFEST_FILE, new.with_version().model_dump(mode="json"))
        index_bytes = files[INDEX_FILE].bytes
        total = sum(f.bytes for f in files.values())
        report = {
            "source": str(src.resolve()),
            "source_kind": manifest.kind + (" (two-stage)" if manifest.rerank is not None else ""),
            "kind": config.kind,
            "faiss_kind": first,
            "two_stage": two_stage,
            "rows": source.rows,
            "dim": source.dim,
            "train_rows": len(train_rows),
            "recall": recall,
            "memory_bytes_per_row": round(index_bytes / max(1, source.rows), 2),
            "disk_bytes_per_row": round(total / max(1, source.rows), 2),
            "files": {name: f.bytes for name, f in files.items()},
            "seconds": round(time.perf_counter() - started, 3),
            "resumed_from_rows": job.resumed_from,
        }
        atomic_write_json(staging / CONVERT_REPORT, report)
    shutil.rmtree(work, ignore_errors=True)
    log.info("converted %s to %s (%s): recall@%d %.3f", src, out, config.kind, config.k, recall.get("recall", 1.0))
    return GeoIndex.load(out)


def _prepare_work(work: Path, state: dict[str, Any], restart: bool) -> None:
    state_file = work / "state.json"
    if restart and work.exists():
        shutil.rmtree(work)
    if state_file.is_file():
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        if saved != state:
            differs = sorted(k for k in state.keys() | saved.keys() if saved.get(k) != state.get(k))
            raise GeoIndexError(
                f"{work} holds an unfinished conversion with a different {', '.join(differs)}; pass --restart "
                "(restart=True) to discard it"
            )
        log.info("resuming the conversion in %s", work)
        return
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.iterdir():  # a work folder without state: left by a run stopped before writing it
        stale.unlink()
    atomic_write_json(state_file, state)


def _sample_rows(rows: int, config: ConvertConfig) -> tuple[np.ndarray, np.ndarray]:
    """Held-out query rows and training rows (disjoint, sorted), the same on every run with the same seed."""
    order = np.random.default_rng(config.seed).permutation(rows)
    n_queries = min(config.queries, rows // 10)
    train = min(rows - n_queries, config.train_size or 100_000)
    return np.sort(order[:n_queries]), np.sort(order[n_queries : n_queries + train])


def _trained(work: Path, kind: str, source: VectorSource, train_rows: np.ndarray) -> Any:
    """The trained, empty index: read back from the work folder, or trained on the sample and saved there."""
    faiss = import_faiss()
    path = work / "trained.faiss"
    if path.is_file():
        return faiss.read_index(str(path))
    index = new_faiss_index(kind, source.dim)
    if not index.is_trained:
        started = time.perf_counter()
        index.train(source.take(train_rows))
        log.info("trained %s on %d rows in %.1f s", kind, len(train_rows), time.perf_counter() - started)
        _drop_pca_matrix(index)
    _write_index(index, path)
    return index


def _drop_pca_matrix(index: Any) -> None:
    """Free the full d×d eigenvector matrix a trained PCA keeps (21 MB at width 2304, written with the index
    and held in memory): applying the PCA needs only its projection, which stays."""
    faiss = import_faiss()
    if not isinstance(index, faiss.IndexPreTransform):
        return
    for i in range(index.chain.size()):
        transform = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(transform, faiss.PCAMatrix):
            transform.PCAMat.clear()


def _write_index(index: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    import_faiss().write_index(index, str(tmp))
    os.replace(tmp, path)


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` where the file system allows, else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class _Fill:
    """Adds the source's rows chunk by chunk, writes the two-stage vectors and keeps the exact top-k of
    the queries; saves its state every ``checkpoint_rows`` rows and resumes from the last one."""

    def __init__(
        self,
        work: Path,
        source: VectorSource,
        index: Any,
        queries: np.ndarray,
        query_rows: np.ndarray,
        config: ConvertConfig,
        two_stage: bool,
    ) -> None:
        self.work, self.source, self.index, self.config = work, source, index, config
        self.queries, self.query_rows = queries, query_rows
        self.vectors = work / VECTORS_FILE if two_stage else None
        self.resumed_from = 0
        n = len(queries)
        self.best_scores = np.full((n, config.k), -np.inf, dtype=np.float32)
        self.best_rows = np.full((n, config.k), -1, dtype=np.int64)
        progress_file = work / "progress.json"
        if progress_file.is_file():
            self.resumed_from = int(json.loads(progress_file.read_text(encoding="utf-8"))["rows"])
            self.index = import_faiss().read_index(str(work / "partial.faiss"))
            with np.load(work / "truth.npz") as saved:
                self.best_scores, self.best_rows = saved["scores"], saved["rows"]
            if int(self.index.ntotal) != self.resumed_from:
                raise GeoIndexError(f"{work}: the saved index holds {self.index.ntotal} rows, its state says "
                                    f"{self.resumed_from}; pass --restart")  # fmt: skip
        if self.vectors is not None and not self.vectors.is_file():
            dtype = np.dtype(config.rerank_dtype)
            np.lib.format.open_memmap(self.vectors, mode="w+", dtype=dtype, shape=(source.rows, source.dim)).flush()

    def run(self, *, progress: bool, on_checkpoint: Callable[[int], None] | None) -> None:
        from tqdm.auto import tqdm

        rows, chunk = self.source.rows, self.config.chunk_rows
        saved = self.resumed_from
        fd = os.open(self.vectors, os.O_WRONLY) if self.vectors is not None else None
        offset = npy_layout(self.vectors)[0] if self.vectors is not None else 0
        row_bytes = self.source.dim * np.dtype(self.config.rerank_dtype).itemsize
        try:
            with tqdm(total=rows, initial=saved, unit="row", desc="convert", disable=not progress) as bar:
                for start in range(saved, rows, chunk):
                    block = self.source.read(start, start + chunk)
                    self.index.add(block)
                    if fd is not None:
                        os.pwrite(fd, block.astype(self.config.rerank_dtype).tobytes(), offset + start * row_bytes)
                    self._score(block, start)
                    bar.update(len(block))
                    stop = start + len(block)
                    if stop - saved >= self.config.checkpoint_rows or stop == rows:
                        if fd is not None:
                            os.fsync(fd)
                        self._save(stop)
                        saved = stop
                        if on_checkpoint is not None:
                            on_checkpoint(stop)
        finally:
            if fd is not None:
                os.close(fd)

    def _score(self, block: np.ndarray, start: int) -> None:
        """Merge the block's rows into the queries' exact top-k (each query's own row left out)."""
        k = self.config.k
        for s in range(0, len(block), _QUERY_BLOCK):
            part = block[s : s + _QUERY_BLOCK]
            first = start + s
            scores = self.queries @ part.T
            own = (self.query_rows >= first) & (self.query_rows < first + len(part))
            scores[np.flatnonzero(own), self.query_rows[own] - first] = -np.inf
            rows = np.broadcast_to(np.arange(first, first + len(part)), scores.shape)
            all_scores = np.concatenate([self.best_scores, scores], axis=1)
            all_rows = np.concatenate([self.best_rows, rows], axis=1)
            # by score, then by row, so that ties resolve as FAISS's flat search does
            order = np.lexsort((all_rows, -all_scores), axis=1)[:, :k] if all_scores.size else np.zeros((0, k), int)
            self.best_scores = np.take_along_axis(all_scores, order, 1)
            self.best_rows = np.take_along_axis(all_rows, order, 1)

    def _save(self, rows: int) -> None:
        _write_index(self.index, self.work / "partial.faiss")
        with atomic_open(self.work / "truth.npz") as fh:
            np.savez(fh, scores=self.best_scores, rows=self.best_rows)
        atomic_write_json(self.work / "progress.json", {"rows": rows})  # written last: marks the state whole


class _PreadRows:
    """Rows of a vectors file read with ``pread`` (what `TwoStageBackend` needs of an array): the recall check
    reads a few thousand rows, which a memory map would leave counted in this process's resident memory."""

    def __init__(self, source: NpySource) -> None:
        self.source = source
        self.shape = (source.rows, source.dim)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.source.take(rows)


def _recall(folder: Path, job: _Fill, spec: RerankSpec | None, config: ConvertConfig) -> dict[str, Any]:
    """Recall@k of the written index against the exact top-k kept by ``job``."""
    if not len(job.queries):
        return {"k": config.k, "queries": 0, "recall": None, "note": "too few rows for held-out queries"}
    first = FaissBackend(job.index, use_gpu=False, search_params=config.search_params)
    backend: FaissBackend | TwoStageBackend = first
    if spec is not None:
        open_vectors(folder / spec.file, rows=job.source.rows, dim=job.source.dim)  # checks the file as a load does
        backend = TwoStageBackend(first, _PreadRows(NpySource(folder / spec.file)), candidates=spec.candidates)
    started = time.perf_counter()
    _, found = backend.search(job.queries, config.k + 1)
    seconds = time.perf_counter() - started
    hits = []
    for q, row in enumerate(job.query_rows):
        mine = [r for r in found[q] if r != row][: config.k]
        hits.append(len(set(mine) & set(job.best_rows[q].tolist())) / config.k)
    return {
        "k": config.k,
        "queries": len(job.queries),
        "recall": round(float(np.mean(hits)), 4),
        "truth": "exact inner product over the source's vectors, each query's own row left out",
        "source_vectors_lossless": job.source.lossless,
        "search_params": {**config.search_params, **({"candidates": spec.candidates} if spec else {})},
        "search_ms_per_query": round(1000 * seconds / len(job.queries), 3),
    }
