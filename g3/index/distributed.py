"""Index builds on Ray: the shards of `g3.index.build` encoded by Ray actors, on one machine or a cluster.

`build_index_ray` is `g3.index.build_index` with the encoding loop handed to Ray actors; everything else is
the same code: the same work folder (``.NAME.build/``) and shard files, the same state check (aligner
fingerprint, corpus, shard size), the same assembly, metadata, manifest and ``build_report.json``. The
result is the same index, and a build interrupted in one mode resumes in the other: shards already written
are skipped.

Each actor loads the aligner once from a checkpoint path (paths travel, tensors do not) and encodes whole
shards, pulling the next missing shard as it finishes one. It receives the shard's rows of the corpus (not
the whole table) and returns the keys; the driver writes each shard atomically as it arrives, so the work
folder only needs to exist on the driver's machine. The checkpoint and the corpus images must be readable
at the same paths on every node (shared storage), and g3 installed on every node.

The Ray plumbing (session, actors, pull scheduling) is `g3.ray_support`; Ray is an optional dependency
(``pip install 'g3[ray]'``), imported on first use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from g3.data import GeoCorpus
from g3.errors import RayWorkerError
from g3.index.build import IndexBuildConfig, encode_shard, finish_build, plan_build, write_shard
from g3.index.geo_index import GeoIndex
from g3.ray_support import (
    RayOptions,
    call_all,
    check_reachable,
    import_ray,
    ray_session,
    run_jobs,
    start_actors,
    stop_actors,
    worker_count,
)

log = logging.getLogger(__name__)

#: `RayOptions`, `ray_session`, `import_ray` and `check_reachable` live in `g3.ray_support`; named here too for
#: the code that imported them from this module.
__all__ = ["RayOptions", "build_index_ray", "check_reachable", "import_ray", "ray_session"]


class _ShardEncoder:
    """A Ray actor: the aligner loaded once from ``checkpoint``, encoding whole shards."""

    def __init__(self, checkpoint: str, config: dict[str, Any], device: str) -> None:
        self.checkpoint, self.device = checkpoint, device
        self.config = IndexBuildConfig.model_validate(config)
        self.aligner: Any = None

    def setup(self) -> dict[str, Any]:
        """Load the aligner; what the driver checks (every worker must load the same weights)."""
        import socket

        from g3.models import GeoAligner

        self.aligner = GeoAligner.from_pretrained(self.checkpoint).to(self.device).eval()
        return {
            "fingerprint": self.aligner.fingerprint(),
            "dim": self.aligner.key_dim,
            "aligner_config": self.aligner.config.model_dump(mode="json"),
            "host": socket.gethostname(),
        }

    def encode(self, corpus: GeoCorpus, start: int, threads: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Keys, corpus rows kept (offset by ``start``) and skipped IMG_IDs of a shard's rows, encoded with
        the build's ``threads``."""
        config = self.config.model_copy(update={"threads": threads})
        keys, kept, skipped = encode_shard(self.aligner, corpus, range(len(corpus)), config)
        return keys, kept + start, skipped


def build_index_ray(
    checkpoint: str | Path,
    corpus: GeoCorpus,
    out: str | Path,
    config: IndexBuildConfig | None = None,
    *,
    options: RayOptions | None = None,
    restart: bool = False,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> GeoIndex:
    """`g3.index.build_index` with the shards encoded by Ray actors, each holding the aligner loaded from
    ``checkpoint`` (a g3 aligner checkpoint folder readable on every node). Same shards, same resume, same
    index; ``on_shard(s)`` is called after shard ``s`` is written (shards finish in any order).

    Raises `MissingDependencyError` without Ray and `RayWorkerError` when a worker fails (the shards
    written so far are kept: run again to resume).
    """
    from tqdm.auto import tqdm

    config = config or IndexBuildConfig()
    options = options or RayOptions()
    started = time.perf_counter()
    local = Path(checkpoint).expanduser()
    path = str(local.resolve()) if local.exists() else str(checkpoint)  # absolute: workers may run elsewhere
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    n_shards = -(-len(corpus) // config.shard_size)
    with ray_session(options) as ray:
        actors = start_actors(ray, _ShardEncoder, options, worker_count(ray, options, n_shards), path,
                              config.model_dump(mode="json"), device)  # fmt: skip
        try:
            infos = call_all(ray, actors, "setup", f"loading the aligner from {path}")
            first = infos[0]
            for info in infos[1:]:
                if info["fingerprint"] != first["fingerprint"]:
                    raise RayWorkerError(
                        f"Ray workers on {first['host']} and {info['host']} loaded different weights from {path}; "
                        "every node must see the same checkpoint"
                    )
            plan = plan_build(corpus, out, config, fingerprint=first["fingerprint"], restart=restart,
                              default_threads=max(1, int(options.cpus_per_worker)))  # fmt: skip
            missing = plan.missing()
            threads = plan.config.threads
            log.info("encoding %d of %d shards (%d rows each) on %d Ray workers, %s threads each", len(missing),
                     plan.n_shards, config.shard_size, len(actors), threads)  # fmt: skip
            if device == "cpu" and threads and threads > options.cpus_per_worker:
                log.warning("each Ray worker encodes with %d threads (the build's) on %g reserved CPUs: pass "
                            "--ray-cpus-per-worker %d, or --threads to change the build's", threads,
                            options.cpus_per_worker, threads)  # fmt: skip
            with tqdm(total=plan.rows, initial=plan.done_rows(), unit="img", desc="encode (ray)",
                      disable=not progress, smoothing=0.05) as bar:  # fmt: skip

                def jobs() -> Iterator[tuple[int, tuple[Any, ...]]]:
                    for s in missing:
                        rows = plan.shard_rows(s)
                        yield s, (corpus.subset(np.arange(rows.start, rows.stop)), rows.start, threads)

                def written(s: int, result: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
                    keys, kept, skipped = result
                    write_shard(plan.work, s, keys, kept, skipped)
                    bar.update(len(plan.shard_rows(s)))
                    log.debug("shard %d written: %d keys, %d skipped", s, len(keys), len(skipped))
                    if on_shard is not None:
                        on_shard(s)

                run_jobs(ray, actors, "encode", jobs(), written, describe=lambda s: f"encoding shard {s}")
        finally:
            stop_actors(ray, actors)
    return finish_build(plan, corpus, fingerprint=first["fingerprint"], dim=first["dim"],
                        aligner_config=first["aligner_config"], started=started)  # fmt: skip
