"""Running work on Ray: a session (local or a cluster), actors sized to the cluster, and pull scheduling.

The generic pieces of g3's Ray runs: `g3.index.distributed` encodes index shards with them and
`g3.evaluation.distributed` locates the photos of a benchmark. `ray_session` starts (or joins) Ray for a
block, `worker_count` and `start_actors` size and start the actors, `call_all` runs one method on each and
`run_jobs` feeds jobs to the next free actor; a worker's failure becomes a `RayWorkerError` that names the
work and the worker's own exception.

Ray is an optional dependency (``pip install 'g3[ray]'``), imported on first use.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from g3.errors import MissingDependencyError, RayWorkerError

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
    """Kill ``actors``; one that is already gone (its worker died) is passed over."""
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
