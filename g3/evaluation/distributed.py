"""Evaluation runs on Ray: the benchmark's photos split across Ray actors, each holding its own `G3`.

`run_evaluation_ray` is `g3.evaluation.runner.run_evaluation` with the locating handed to Ray actors; the
rest is the runner's code: the same run folder and configuration check, the same batches (`batch_bounds`:
a first small batch probing the LMM, then ``batch_size`` photos) located by `locate_chunk`, the same records
appended (flushed and fsynced per batch) to ``predictions.jsonl`` in dataset order, their candidate pools to
``pools.jsonl``, the same resume (photos already in the file are skipped), the same early stop and
degraded-share check, the same metrics, report and plots. Batches finish on the actors in any order; the
driver writes each one as soon as every batch before it is written, so the file is the single-process file
and any prefix of it is a valid interrupted run.

Each actor builds `G3.from_config` once from the configuration (a mapping: paths travel, models do not).
The models, index and images it names must be readable at the same paths on every node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from g3.agent import G3Config
from g3.evaluation.datasets import EvalDataset
from g3.evaluation.degraded import DEFAULT_FAIL_FAST, check_degraded_share, fail_fast_reasons
from g3.evaluation.metrics import DEFAULT_CONVENTION, Convention
from g3.evaluation.pools import POOLS
from g3.evaluation.runner import PREDICTIONS, PredictionWriter, batch_bounds, finalize, locate_chunk, pending_items
from g3.index.distributed import RayOptions, call_all, ray_session, run_jobs, start_actors, stop_actors, worker_count

log = logging.getLogger(__name__)

Item = tuple[str, Path, tuple[float, float] | None]


class _Locator:
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

    def locate(self, chunk: list[Item]) -> list[dict[str, Any]]:
        return locate_chunk(self.g3, chunk, concurrency=self.concurrency, pools=True)

    def close(self) -> None:
        if self.g3 is not None:
            self.g3.close()


def run_evaluation_ray(
    config: G3Config | str | Path | dict[str, Any],
    dataset: EvalDataset,
    run_dir: str | Path,
    *,
    options: RayOptions | None = None,
    batch_size: int = 16,
    concurrency: int = 4,
    limit: int | None = None,
    progress: bool = True,
    convention: Convention = DEFAULT_CONVENTION,
    on_batch: Callable[[int], None] | None = None,
    fail_fast: int = DEFAULT_FAIL_FAST,
    max_degraded: float | None = None,
) -> dict[str, Any]:
    """`run_evaluation` with the photos located by Ray actors, each holding a `G3` built from ``config`` (a
    `G3Config`, YAML path or mapping). Same predictions file (dataset order), same resume, same metrics;
    ``on_batch(b)`` is called after batch ``b`` is written (in order). This process loads no model.

    Raises `g3.errors.RayWorkerError` when a worker fails (the batches written so far are kept:
    run again to resume) and `MissingDependencyError` without Ray; `LMMUnavailableError` and
    `DegradedRunError` as `run_evaluation` (``fail_fast``, ``max_degraded``).
    """
    options = options or RayOptions()
    config = G3Config.load(config)
    run = Path(run_dir)
    total, items = pending_items(run, dataset, config, limit=limit)
    chunks = [items[start:stop] for start, stop in batch_bounds(len(items), batch_size, first=fail_fast)]
    if chunks:
        with ray_session(options) as ray:
            actors = start_actors(ray, _Locator, options, worker_count(ray, options, len(chunks)),
                                  config.model_dump(mode="json"), concurrency, options.gpus_per_worker > 0)  # fmt: skip
            try:
                call_all(ray, actors, "setup", "building G3 from the configuration")
                log.info("%s: locating %d images in %d batches on %d Ray workers", dataset.name, len(items),
                         len(chunks), len(actors))  # fmt: skip
                with PredictionWriter(run / PREDICTIONS, total=total, initial=total - len(items), progress=progress,
                                      desc=f"{dataset.name} (ray)", fail_fast=fail_fast,
                                      fail_reasons=fail_fast_reasons(config.pipeline.mode, config.verify.mode),
                                      pools=run / POOLS) as writer:  # fmt: skip
                    finished: dict[int, list[dict[str, Any]]] = {}
                    next_batch = 0

                    def jobs() -> Iterator[tuple[int, tuple[Any, ...]]]:
                        yield from ((b, (chunk,)) for b, chunk in enumerate(chunks))

                    def arrived(b: int, records: list[dict[str, Any]]) -> None:
                        nonlocal next_batch
                        finished[b] = records
                        while next_batch in finished:  # write in dataset order, as the single-process runner
                            writer.write(finished.pop(next_batch))
                            if on_batch is not None:
                                on_batch(next_batch)
                            next_batch += 1

                    run_jobs(ray, actors, "locate", jobs(), arrived, describe=lambda b: f"locating batch {b}")
                call_all(ray, actors, "close", "closing G3")
            finally:
                stop_actors(ray, actors)
    payload = finalize(run, dataset, config, convention=convention, limit=limit)
    check_degraded_share(payload, max_degraded)
    return payload
