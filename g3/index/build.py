"""Building a `GeoIndex` from a corpus: encode in shards (resumable), then assemble the FAISS index.

Encoding writes one shard per ``shard_size`` corpus rows into a work folder beside the output
(``.NAME.build/``); an interrupted build started again with the same aligner and corpus skips the
shards already written. Images that cannot be read are skipped, counted and listed in
``build_report.json``; they never silently change the row count.

The steps are public so that `g3.index.distributed` runs the same build with the encoding on Ray workers:
`plan_build` (work folder, state check), `encode_shard` / `write_shard`, `finish_build` (assembly).

Reproducibility: a CPU matmul's last bits depend on how many threads split it, so every build fixes its
encoding threads (``IndexBuildConfig.threads``, resolved once when the build is planned), applies them
wherever it encodes (this process or a Ray worker), keeps them across resumes and records them in the
manifest. Two builds with the same aligner, corpus, batch size and threads, on the same kind of processor
with the same library versions, write the same keys bit for bit; with other threads they differ in float32
rounding only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from g3.data import CorpusImages, GeoCorpus, fill_location_text
from g3.errors import GeoIndexError
from g3.index.backend import FaissBackend
from g3.index.geo_index import GeoIndex, metadata_table, new_faiss_index, new_manifest, train_faiss_index
from g3.io import atomic_open, atomic_write_json
from g3.models import GeoAligner

log = logging.getLogger(__name__)

BUILD_REPORT = "build_report.json"


class IndexBuildConfig(BaseModel):
    """Knobs of `build_index`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(default="Flat", description="FAISS factory string: 'Flat' (exact, G3), 'IVF4096,PQ64', 'HNSW32'")
    batch_size: int = Field(default=256, ge=1, description="images per encoding batch")
    shard_size: int = Field(default=65_536, ge=1, description="corpus rows per resumable shard")
    num_workers: int = Field(default=4, ge=0, description="image-decoding worker processes")
    train_size: int | None = Field(default=None, ge=1, description="training sample for IVF/PQ (default ≤200k)")
    seed: int = 0
    search_params: dict[str, int] = Field(default_factory=dict, description="e.g. nprobe, efSearch")
    keep_shards: bool = Field(default=False, description="keep the encoded shards after assembling")
    fill_location_text: bool = Field(
        default=True, description="rows without a country get city/state/country offline from GeoNames"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads (torch intra-op) that encode, in this process or in each Ray worker; the keys' "
        "last bits depend on it. None: this process's torch threads (Ray: the CPUs reserved per worker); a "
        "resumed build keeps the number it started with. Recorded in the manifest",
    )
    tf32: bool = Field(
        default=False,
        description="CUDA: encode with TF32 matmuls (2x faster builds measured on an H200; keys differ from "
        "float32 by about 1e-3). No effect on a CPU",
    )


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if "pixel_values" in it]
    return {
        "rows": [it["row"] for it in good],
        "pixel_values": torch.stack([it["pixel_values"] for it in good]) if good else None,
        "skipped": [it["skipped"] for it in items if "skipped" in it],
    }


def _work_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.build")


def _corpus_digest(corpus: GeoCorpus) -> str:
    ids = "\n".join(corpus.frame["IMG_ID"].astype(str)).encode()
    return hashlib.sha256(ids).hexdigest()


def _shard_paths(work: Path, s: int) -> tuple[Path, Path, Path]:
    stem = work / f"shard-{s:05d}"
    return stem.with_suffix(".keys.npy"), stem.with_suffix(".rows.npy"), stem.with_suffix(".json")


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """CUDA matmuls and convolutions in TF32 inside the block (when ``enabled``); the previous setting after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (unchanged when None); restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def corpus_loader(aligner: GeoAligner, corpus: GeoCorpus, rows: range, config: IndexBuildConfig) -> DataLoader:
    """Batches of decoded, preprocessed corpus images (``rows``, ``pixel_values``, ``skipped``) for ``aligner``.

    Each of the ``config.num_workers`` processes decodes whole batches, so a shard needs several batches per
    worker to keep them all busy.
    """
    return DataLoader(
        CorpusImages(corpus, aligner.image_processor),
        batch_size=config.batch_size,
        sampler=list(rows),
        num_workers=config.num_workers,
        collate_fn=_collate,
        pin_memory=aligner.device.type == "cuda",
    )


@torch.inference_mode()
def encode_shard(
    aligner: GeoAligner, corpus: GeoCorpus, rows: range, config: IndexBuildConfig, bar: Any = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Encode the images of ``rows``: ``(keys (n, key_dim) float32, corpus rows kept (n,), skipped IMG_IDs)``.

    The one encoding step of every build, in one process or on Ray workers, with ``config.threads`` CPU
    threads (as set, when None); ``bar`` (a tqdm) is advanced per batch when given.
    """
    keys, kept, skipped = [], [], []
    with matmul_tf32(config.tf32), intra_op_threads(config.threads):
        for batch in corpus_loader(aligner, corpus, rows, config):
            skipped.extend(batch["skipped"])
            if batch["pixel_values"] is not None:
                key = aligner.encode_image(batch["pixel_values"].to(aligner.device, non_blocking=True)).key
                keys.append(key.float().cpu().numpy())
                kept.extend(batch["rows"])
            if bar is not None:
                bar.update(len(batch["rows"]) + len(batch["skipped"]))
    dim = aligner.key_dim
    return (
        np.concatenate(keys) if keys else np.zeros((0, dim), np.float32),
        np.asarray(kept, dtype=np.int64),
        skipped,
    )


def write_shard(work: Path, s: int, keys: np.ndarray, rows: np.ndarray, skipped: list[str]) -> None:
    """Write shard ``s`` atomically; its ``.json`` (written last) marks it complete."""
    keys_path, rows_path, done_path = _shard_paths(work, s)
    with atomic_open(keys_path) as fh:
        np.save(fh, keys)
    with atomic_open(rows_path) as fh:
        np.save(fh, rows)
    atomic_write_json(done_path, {"rows": len(rows), "skipped": skipped})  # written last: marks completion


def _saved_state(work: Path) -> dict[str, Any] | None:
    state_file = work / "state.json"
    return json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else None


def _prepare_work_dir(work: Path, state: dict[str, Any], restart: bool) -> None:
    state_file = work / "state.json"
    if restart and work.exists():
        shutil.rmtree(work)
    saved = _saved_state(work)
    if saved is not None:
        if "threads" not in saved:  # left unfinished before the threads were recorded: adopt them
            saved = saved | {"threads": state["threads"]}
        if saved != state:
            differs = sorted(k for k in state.keys() | saved.keys() if saved.get(k) != state.get(k))
            raise GeoIndexError(
                f"{work} holds an unfinished build with a different {', '.join(differs)}; "
                "pass restart=True (`--restart`) to discard it"
            )
        log.info("resuming the build in %s", work)
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(state_file, state)


@dataclass(frozen=True)
class BuildPlan:
    """The shards of a build (``shard_size`` corpus rows each), its work folder ``.NAME.build/`` and the
    build settings every shard is encoded with (``config``, its ``threads`` resolved)."""

    out: Path
    work: Path
    rows: int
    config: IndexBuildConfig

    @property
    def shard_size(self) -> int:
        return self.config.shard_size

    @property
    def n_shards(self) -> int:
        return -(-self.rows // self.shard_size)

    def shard_rows(self, s: int) -> range:
        """The corpus rows of shard ``s``."""
        return range(s * self.shard_size, min(self.rows, (s + 1) * self.shard_size))

    def missing(self) -> list[int]:
        """Shards not written yet (in order)."""
        return [s for s in range(self.n_shards) if not _shard_paths(self.work, s)[2].is_file()]

    def done_rows(self) -> int:
        """Corpus rows of the shards already written."""
        missing = set(self.missing())
        return sum(len(self.shard_rows(s)) for s in range(self.n_shards) if s not in missing)


def plan_build(
    corpus: GeoCorpus,
    out: str | Path,
    config: IndexBuildConfig,
    *,
    fingerprint: str,
    restart: bool = False,
    default_threads: int | None = None,
) -> BuildPlan:
    """Prepare (or resume) the work folder of a build of ``out``: an unfinished build made with another
    aligner, corpus, shard size or thread count is refused (`GeoIndexError`) unless ``restart`` discards it.

    ``config.threads`` None resolves to the unfinished build's threads when resuming, else to
    ``default_threads`` (default: this process's torch threads); the plan's ``config`` carries the number.
    """
    out = Path(out)
    work = _work_dir(out)
    threads = config.threads
    if threads is None:
        saved = None if restart else _saved_state(work)
        threads = (saved or {}).get("threads") or default_threads or torch.get_num_threads()
    config = config.model_copy(update={"threads": int(threads)})
    plan = BuildPlan(out=out, work=work, rows=len(corpus), config=config)
    state = {
        "aligner_fingerprint": fingerprint,
        "corpus": _corpus_digest(corpus),
        "rows": plan.rows,
        "shard_size": config.shard_size,
        "threads": config.threads,
    }
    if config.tf32:  # only when set, so that builds left unfinished before this knob still resume
        state["tf32"] = True
    _prepare_work_dir(plan.work, state, restart)
    return plan


def build_index(
    aligner: GeoAligner,
    corpus: GeoCorpus,
    out: str | Path,
    config: IndexBuildConfig | None = None,
    *,
    restart: bool = False,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> GeoIndex:
    """Encode every corpus image with ``aligner`` and write the index folder ``out``; return the index.

    Encoding runs on the aligner's device. ``on_shard(s)`` is called after shard ``s`` is written.
    `g3.index.distributed.build_index_ray` does the same on Ray workers (same shards, same index).
    """
    from tqdm.auto import tqdm

    config = config or IndexBuildConfig()
    started = time.perf_counter()
    fingerprint = aligner.fingerprint()
    plan = plan_build(corpus, out, config, fingerprint=fingerprint, restart=restart)
    aligner.eval()
    with tqdm(total=plan.rows, initial=plan.done_rows(), unit="img", desc="encode", disable=not progress,
              smoothing=0.05) as bar:  # fmt: skip
        for s in plan.missing():
            keys, kept, skipped = encode_shard(aligner, corpus, plan.shard_rows(s), plan.config, bar)
            write_shard(plan.work, s, keys, kept, skipped)
            if on_shard is not None:
                on_shard(s)
    return finish_build(plan, corpus, fingerprint=fingerprint, dim=aligner.key_dim,
                        aligner_config=aligner.config.model_dump(mode="json"), started=started)  # fmt: skip


def finish_build(
    plan: BuildPlan,
    corpus: GeoCorpus,
    *,
    fingerprint: str,
    dim: int,
    aligner_config: dict[str, Any],
    started: float,
) -> GeoIndex:
    """Assemble every shard of ``plan`` into the index folder (FAISS index, metadata, manifest, build
    report), remove the work folder unless ``keep_shards``; ``started`` is the build's `time.perf_counter`."""
    out, n, config = plan.out, plan.rows, plan.config
    index, kept_rows, skipped_ids = _assemble(plan.work, plan.n_shards, dim, config)
    frame = corpus.frame.iloc[kept_rows].drop(columns=["caption"], errors="ignore")
    location_text = None
    if config.fill_location_text:
        frame, location_text = fill_location_text(frame, only_without_country=True)
    report = {
        "corpus_rows": n,
        "indexed": len(kept_rows),
        "skipped": len(skipped_ids),
        "skipped_ids": skipped_ids,
        "corpus_report": corpus.report.to_dict(),
        "location_text": location_text,
    }
    manifest = new_manifest(
        rows=len(kept_rows),
        dim=dim,
        kind=config.kind,
        fingerprint=fingerprint,
        aligner_config=aligner_config,
        search_params=config.search_params,
        build_seconds=round(time.perf_counter() - started, 3),
        build={k: report[k] for k in ("corpus_rows", "indexed", "skipped")}
        | {"threads": config.threads, "tf32": config.tf32},
    )
    table = metadata_table(frame)
    geo_index = GeoIndex(FaissBackend(index, use_gpu=False, search_params=config.search_params), table, manifest)
    geo_index.save(out, extra_json={BUILD_REPORT: report})
    if skipped_ids:
        log.warning("%d of %d images could not be read and are not in the index (listed in %s)", len(skipped_ids), n,
                    out / BUILD_REPORT)  # fmt: skip
    if not config.keep_shards:
        shutil.rmtree(plan.work, ignore_errors=True)
    log.info("index %s: %d rows, kind %s, built in %.1f s", out, len(kept_rows), config.kind, manifest.build_seconds)
    return geo_index


def _assemble(work: Path, n_shards: int, dim: int, config: IndexBuildConfig) -> tuple[Any, np.ndarray, list[str]]:
    """The FAISS index over every shard, the corpus rows it holds (in order), and the skipped IMG_IDs."""
    keys = [np.load(_shard_paths(work, s)[0], mmap_mode="r") for s in range(n_shards)]
    rows = [np.load(_shard_paths(work, s)[1]) for s in range(n_shards)]
    skipped = [i for s in range(n_shards) for i in json.loads(_shard_paths(work, s)[2].read_text())["skipped"]]
    total = sum(len(k) for k in keys)
    if total == 0:
        raise GeoIndexError(f"no image of the corpus could be encoded ({len(skipped)} skipped); nothing to index")
    index = new_faiss_index(config.kind, dim)
    if not index.is_trained:
        size = min(total, config.train_size or 200_000)
        picks = np.sort(np.random.default_rng(config.seed).choice(total, size, replace=False))
        offsets = np.cumsum([0] + [len(k) for k in keys])
        shard_of = np.searchsorted(offsets, picks, side="right") - 1
        sample = np.concatenate([keys[s][picks[shard_of == s] - offsets[s]] for s in range(n_shards)])
        train_faiss_index(index, sample, train_size=size, seed=config.seed)
    for part in keys:
        if len(part):
            index.add(np.ascontiguousarray(part, dtype=np.float32))
    return index, np.concatenate(rows), skipped
