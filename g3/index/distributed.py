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

Ray is an optional dependency (``pip install 'g3[ray]'``), imported on first use.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from g3.data import GeoCorpus
from g3.errors import MissingDependencyError, RayWorkerError
from g3.index.build import IndexBuildConfig, encode_shard, finish_build, plan_build, write_shard
from g3.index.geo_index import GeoIndex

log = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'g3[ray]'"
#: calls queued per actor: the next one is ready when the current one returns (no idle gap)
IN_FLIGHT_PER_WORKER = 2


class RayOptions(BaseModel):
    """Where and how wide to run on Ray."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        default=None,
        description="None: a local Ray started in this process; 'auto' (the cluster this machine belongs to), "
        "'HOST:6379' or 'ray://HOST:10001' (Ray client) for a cluster",
    )
    workers: int | None = Field(default=None, ge=1, description="actors; default: as many as the cluster holds")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs reserved per actor (its torch threads)")
    gpus_per_worker: float = Field(default=0.0, ge=0, description="GPUs per actor; > 0 runs the models on CUDA")
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray (default: all)")
    runtime_env: dict[str, Any] | None = Field(default=None, description="Ray runtime_env for the workers")
    log_to_driver: bool = Field(default=True, description="show the workers' warnings (unreadable images…) here")
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a HOST:PORT address must accept a connection within this (Ray retries for minutes)",
    )


def import_ray() -> ModuleType:
    """The ``ray`` module, or `MissingDependencyError` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"distributed runs need Ray: {RAY_INSTALL} (or 'ray[data]>=2.40')") from exc
    return ray


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise `RayWorkerError` unless a ``HOST:PORT`` (or ``ray://HOST:PORT``) address accepts a TCP connection.

    ``ray.init`` retries an unreachable address for minutes, logging; this fails in ``timeout_s`` with the
    reason. Other addresses (``auto``, ``local``) are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayWorkerError(
            f"cannot reach the Ray cluster at {address}: {exc or type(exc).__name__} (is `ray start --head` "
            "running there, and is the port open from this machine?)"
        ) from exc


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[ModuleType]:
    """Ray, initialised for the duration of the block: a local instance (``address`` None) or a connection
    to a cluster. A Ray already initialised in this process (a notebook, a test, a Ray job) is used as it
    is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"address": options.address or "local"}
    if options.runtime_env is not None:
        kwargs["runtime_env"] = options.runtime_env
    if not kwargs["address"].startswith("ray://"):  # a Ray client takes no driver-side options
        kwargs["log_to_driver"] = options.log_to_driver
    if options.address is None:
        kwargs |= {"num_cpus": options.num_cpus, "include_dashboard": False}
    where = "a local Ray" if options.address is None else f"the Ray cluster at {options.address}"
    if options.address is not None:
        check_reachable(options.address, options.connect_timeout_s)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayWorkerError(f"cannot start or reach {where}: {exc}") from exc
    log.info("Ray: %s, resources %s", where, ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_count(ray: ModuleType, options: RayOptions, jobs: int) -> int:
    """How many actors to start: as asked (default: as many as fit at once), at most ``jobs``, at least 1.

    Raises `RayWorkerError` when the cluster cannot hold a single actor of the requested size.
    """
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    fit = int(cpus // options.cpus_per_worker)
    if options.gpus_per_worker:
        fit = min(fit, int(gpus // options.gpus_per_worker))
    if fit < 1:
        raise RayWorkerError(
            f"the Ray cluster ({cpus:g} CPU, {gpus:g} GPU) cannot hold one worker of {options.cpus_per_worker:g} "
            f"CPU and {options.gpus_per_worker:g} GPU; lower --ray-cpus-per-worker / --ray-gpus-per-worker"
        )
    wanted = options.workers or fit
    if wanted > fit:
        log.warning("%d Ray workers asked for; the cluster holds %d at once: starting %d", wanted, fit, fit)
    return max(1, min(wanted, fit, jobs))


def start_actors(ray: ModuleType, cls: type, options: RayOptions, n: int, *args: Any) -> list[Any]:
    """``n`` actors of ``cls(*args)`` with the per-worker resources of ``options``."""
    remote = ray.remote(cls).options(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker)
    return [remote.remote(*args) for _ in range(n)]


def stop_actors(ray: ModuleType, actors: list[Any]) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)


def worker_failure(ray: ModuleType, exc: BaseException, what: str) -> RayWorkerError:
    """A `RayWorkerError` saying which work failed and why (the worker's own exception, not Ray's wrapper)."""
    cause: BaseException = exc
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
    if isinstance(cause, ray.exceptions.RayActorError):
        reason = f"the worker process died ({str(cause).strip().splitlines()[-1]})"
    else:
        reason = f"{type(cause).__name__}: {cause}"
    error = RayWorkerError(f"Ray worker failed while {what}: {reason}")
    error.__cause__ = cause
    return error


def call_all(ray: ModuleType, actors: list[Any], method: str, what: str) -> list[Any]:
    """``actor.method()`` on every actor (e.g. loading the models); a failure becomes `RayWorkerError`."""
    try:
        return list(ray.get([getattr(a, method).remote() for a in actors]))
    except ray.exceptions.RayError as exc:
        raise worker_failure(ray, exc, what) from None


def run_jobs(
    ray: ModuleType,
    actors: list[Any],
    method: str,
    jobs: Iterable[tuple[Any, tuple[Any, ...]]],
    on_result: Callable[[Any, Any], None],
    describe: Callable[[Any], str] = str,
) -> None:
    """Pull scheduling: each ``(key, args)`` job runs as ``actor.method(*args)`` on the next free actor
    (`IN_FLIGHT_PER_WORKER` queued per actor); ``on_result(key, result)`` is called in this process as results
    arrive (in completion order). The first failure stops everything with `RayWorkerError`."""
    queue = iter(jobs)
    pending: dict[Any, tuple[Any, Any]] = {}  # object ref → (actor, key)

    def submit(actor: Any) -> None:
        job = next(queue, None)
        if job is not None:
            key, args = job
            pending[getattr(actor, method).remote(*args)] = (actor, key)

    for actor in actors:
        for _ in range(IN_FLIGHT_PER_WORKER):
            submit(actor)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        actor, key = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise worker_failure(ray, exc, describe(key)) from None
        on_result(key, result)
        submit(actor)


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
