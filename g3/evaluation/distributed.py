"""Evaluation runs on Ray: the benchmark's photos split across Ray actors, each holding its own `G3`.

`run_evaluation_ray` is `g3.evaluation.runner.run_evaluation` with a `RayLocator`: the locating is handed
to Ray actors, the rest is the runner's code: the same run folder and configuration check, the same batches
(`batch_bounds`: a first small batch probing the LMM, then ``batch_size`` photos) located by `locate_chunk`,
the same records appended (flushed and fsynced per batch) to ``predictions.jsonl`` in dataset order, their
candidate pools to ``pools.jsonl``, the same resume (photos already in the file are skipped), the same early
stop and degraded-share check, the same metrics, report and plots. Batches finish on the actors in any order;
the runner writes each one as soon as every batch before it is written, so the file is the single-process file
and any prefix of it is a valid interrupted run.

Each actor builds `G3.from_config` once from the configuration (a mapping: paths travel, models do not).
The models, index and images it names must be readable at the same paths on every node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Unpack

from g3.agent import G3Config
from g3.errors import RayWorkerError
from g3.evaluation.datasets import EvalDataset
from g3.evaluation.runner import BatchDone, EvalSettings, Item, Locator, locate_chunk, run_evaluation
from g3.ray_support import RayOptions, call_all, ray_session, run_jobs, start_actors, stop_actors, worker_count

log = logging.getLogger(__name__)


class _Worker:
    """A Ray actor: one `G3` built from the configuration, locating batches of photos."""

    def __init__(self, config: dict[str, Any], concurrency: int, use_gpu: bool) -> None:
        if not use_gpu:  # Ray leaves the GPUs visible to a worker given none: keep this one off them
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.config, self.concurrency = config, concurrency
        self.g3: Any = None

    def setup(self) -> str:
        from g3.agent import G3

        self.g3 = G3.from_config(self.config)
        return str(self.g3.config.pipeline.mode)

    def locate(self, chunk: list[Item], pools: bool) -> list[dict[str, Any]]:
        return locate_chunk(self.g3, chunk, concurrency=self.concurrency, pools=pools)

    def close(self) -> None:
        if self.g3 is not None:
            self.g3.close()


class RayLocator(Locator):
    """Batches located by Ray actors, each holding a `G3` built from ``config``; this process loads no model."""

    label = " (ray)"

    def __init__(self, config: G3Config, options: RayOptions | None = None) -> None:
        self.config, self.options = config, options or RayOptions()

    def locate(self, batches: list[list[Item]], done: BatchDone, *, concurrency: int, pools: bool) -> None:
        options, config = self.options, self.config.model_dump(mode="json")
        with ray_session(options) as ray:
            actors = start_actors(ray, _Worker, options, worker_count(ray, options, len(batches)), config, concurrency,
                                  options.gpus_per_worker > 0)  # fmt: skip
            try:
                call_all(ray, actors, "setup", "building G3 from the configuration")
                log.info("locating %d images in %d batches on %d Ray workers", sum(map(len, batches)), len(batches),
                         len(actors))  # fmt: skip

                def jobs() -> Iterator[tuple[int, tuple[Any, ...]]]:
                    yield from ((b, (batch, pools)) for b, batch in enumerate(batches))

                run_jobs(ray, actors, "locate", jobs(), done, describe=lambda b: f"locating batch {b}")
                try:  # every batch is located: a worker that fails to close must not cost the run its records
                    call_all(ray, actors, "close", "closing G3")
                except RayWorkerError as exc:
                    log.warning("a Ray worker failed to close its G3 after locating every batch: %s", exc)
            finally:
                stop_actors(ray, actors)


def run_evaluation_ray(
    config: G3Config | str | Path | dict[str, Any],
    dataset: EvalDataset,
    run_dir: str | Path,
    *,
    options: RayOptions | None = None,
    **settings: Unpack[EvalSettings],
) -> dict[str, Any]:
    """`run_evaluation` (same ``settings``) with the photos located by Ray actors, each holding a `G3` built from
    ``config`` (a `G3Config`, YAML path or mapping). Same predictions file (dataset order), same resume, same
    metrics; ``on_batch(b)`` is called after batch ``b`` is written (in order). This process loads no model.

    Raises `g3.errors.RayWorkerError` when a worker fails (the batches written so far are kept:
    run again to resume) and `MissingDependencyError` without Ray; `LMMUnavailableError` and
    `DegradedRunError` as `run_evaluation` (``fail_fast``, ``max_degraded``).
    """
    return run_evaluation(RayLocator(G3Config.load(config), options), dataset, run_dir, **settings)
