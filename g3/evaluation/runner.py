"""The evaluation runner: locate every image of a benchmark with a `G3` pipeline, resumably, then report.

A run folder holds::

    config.yaml         the resolved G3Config (a resumed run must use the same one)
    predictions.jsonl   one line per image, appended and flushed as results arrive (with whether and
                        why its prediction degraded)
    pools.jsonl         each located image's candidate pool with its truth, for `g3 verify fit`
                        (`g3.evaluation.pools`)
    metrics.json        scores, counts, degraded photos by reason, convention, config, git SHA (at the end)
    report.md           degraded photos first, then tables, per-continent / country / scene breakdowns, plots
    error_cdf.png  world_map.png  recall_vs_area.png
    reliability.png  risk_coverage.png   when the predictions carry a confidence (a fitted ranker)

An interrupted run started again with the same folder skips every image already in
``predictions.jsonl``. Images missing from disk and images that fail count as wrong: the denominator
is the whole dataset (or, with ``limit``, the first images found on disk). A run stops early when the
LMM fails for each of its first photos, and a finished run with too many degraded photos raises
(`g3.evaluation.degraded`).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import yaml

from g3 import __version__
from g3.agent import G3, G3Config, GeoPrediction
from g3.agent.degradation import LMM_FAILURES
from g3.errors import EvaluationError, G3Error
from g3.evaluation.datasets import EvalDataset
from g3.evaluation.degraded import (
    DEFAULT_FAIL_FAST,
    FailFast,
    check_degraded_share,
    degraded_summary,
    fail_fast_reasons,
)
from g3.evaluation.metrics import DEFAULT_CONVENTION, THRESHOLDS_KM, Convention, distances_km, recall_vs_area, summarize
from g3.evaluation.pools import POOL_FIELD, POOLS, PoolAppender, reconcile_pools
from g3.io import atomic_write_text, drop_partial_line

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
CONFIG = "config.yaml"
#: Breakdowns list at least this many of the largest groups, however small (a short run's groups all are).
BREAKDOWN_MIN_LISTED = 8

#: One photo to locate: ``(img_id, image path, truth (lat, lon) or None)``.
Item = tuple[str, Path, tuple[float, float] | None]
#: ``done(b, records)``: a `Locator` hands back batch ``b``'s records.
BatchDone = Callable[[int, list[dict[str, Any]]], None]


def git_sha() -> str | None:
    """The commit of the g3 checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def prediction_record(
    img_id: str, truth: tuple[float, float] | None, result: GeoPrediction | BaseException
) -> dict[str, Any]:
    """The JSONL line of one image (ground truth None when unknown)."""
    record: dict[str, Any] = {
        "img_id": img_id,
        "gt_lat": truth[0] if truth else None,
        "gt_lon": truth[1] if truth else None,
    }
    if isinstance(result, BaseException):
        return record | {"pred_lat": None, "pred_lon": None, "error": f"{type(result).__name__}: {result}",
                         "degraded": False, "degradations": []}  # fmt: skip
    return record | {
        "pred_lat": result.lat,
        "pred_lon": result.lon,
        "score": result.score,
        "source": result.source,
        "candidates": [[c.lat, c.lon, c.score] for c in result.candidates],
        "warnings": result.warnings,
        "timings": result.timings,
        "error": None,
        "degraded": result.degraded,
        "degradations": [d.model_dump(mode="json") for d in result.degradations],
        "confidence": result.confidence,
    }


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Records of a predictions file; a truncated last line (an interrupted write) is dropped."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                log.warning("%s: dropping a truncated last line (interrupted write)", path)
                continue
            raise EvaluationError(f"{path} line {number} is not JSON ({exc}); the file is corrupt") from exc
    return records


def _check_config(run_dir: Path, config: G3Config) -> None:
    path = run_dir / CONFIG
    current = config.model_dump(mode="json")
    if path.is_file():
        saved = _own_lmm_settings(yaml.safe_load(path.read_text(encoding="utf-8")))
        if saved != current:
            differs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise EvaluationError(
                f"{run_dir} holds a run with another configuration (differs in: {', '.join(differs)}); "
                "use another run folder"
            )
    else:
        atomic_write_text(path, yaml.safe_dump(current, sort_keys=True))


def _own_lmm_settings(dump: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration with only its LMM backend's own settings: runs written before each backend had
    a config type of its own saved every backend's settings, which had no effect on theirs."""
    from g3.lmm.registry import BACKENDS, carry_over

    lmm = dump.get("lmm") if isinstance(dump, dict) else None
    if not isinstance(lmm, dict) or lmm.get("backend") not in BACKENDS:
        return dump
    return {**dump, "lmm": carry_over(lmm, lmm["backend"])}


def locate_chunk(g3: G3, chunk: list[Item], *, concurrency: int = 4, pools: bool = False) -> list[dict[str, Any]]:
    """Locate ``(img_id, image path, truth or None)`` items together; their JSONL records, in order.

    An image that cannot be read or located (a `G3Error` or `OSError`) gives a record with its error; any
    other exception is a bug, not a bad image, and is raised. With ``pools`` each located image's record
    also carries its candidate pool line (id = img_id, with the truth) under `POOL_FIELD`, which
    `PredictionWriter` writes to the pools file.
    """
    from g3.verify import pool_line

    results = g3.locate_batch([p for _, p, _ in chunk], concurrency=concurrency, return_exceptions=True,
                              with_pools=pools)  # fmt: skip
    records = []
    for (img_id, _, truth), result in zip(chunk, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, G3Error | OSError):
            raise result  # a bug, not a bad image: stop rather than record it as a miss
        if pools and not isinstance(result, BaseException):
            result, pool = result
            record = prediction_record(img_id, truth, result)
            record[POOL_FIELD] = pool_line(pool.model_copy(update={"id": img_id, "truth": truth}))
            records.append(record)
        else:
            records.append(prediction_record(img_id, truth, result))
    return records


class PredictionWriter:
    """Appends records to a predictions file, flushed and fsynced per `write`, with a progress bar that shows
    the running accuracy when truth is known. Use as a context manager.

    With ``fail_fast`` N > 0 the first records are held back until one shows a working LMM, and `write`
    raises `LMMUnavailableError` (without writing them) when the LMM failed for each of the first N located
    photos (`g3.evaluation.degraded.FailFast`). With ``pools`` (a path) the records' pool lines are appended
    there, each batch's just before its predictions (`g3.evaluation.pools`)."""

    def __init__(
        self, path: Path, *, total: int, initial: int, progress: bool = True, desc: str = "locate", fail_fast: int = 0,
        fail_reasons: frozenset[str] = LMM_FAILURES, pools: Path | None = None,
    ) -> None:  # fmt: skip
        self.path, self.total, self.initial, self.progress, self.desc = path, total, initial, progress, desc
        self.pools_path = pools
        self.pools: PoolAppender | None = None
        self.hits = {25.0: 0, 2500.0: 0}
        self.located = 0
        self.watch = FailFast(fail_fast, fail_reasons)

    def __enter__(self) -> PredictionWriter:
        from tqdm.auto import tqdm

        if drop_partial_line(self.path):
            log.warning(
                "%s: removed an unfinished last line (interrupted write); that image is located again", self.path
            )
        if self.pools_path is not None:
            reconcile_pools(self.pools_path, read_predictions(self.path))
            self.pools = PoolAppender(self.pools_path).__enter__()
        self.out = self.path.open("a", encoding="utf-8")
        self.bar = tqdm(total=self.total, initial=self.initial, unit="img", disable=not self.progress, desc=self.desc)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:  # a run shorter than the fail-fast probe: write what is held
                self._append(self.watch.release(), shown=0)  # counted on the bar when fed
        finally:
            self.bar.close()
            self.out.close()
            if self.pools is not None:
                self.pools.__exit__()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (or hold them while probing the LMM; see the class); raises
        `LMMUnavailableError` when the probe fails."""
        self._append(self.watch.feed(records), shown=len(records))

    def _append(self, records: list[dict[str, Any]], shown: int | None = None) -> None:
        lines = [line for record in records if (line := record.pop(POOL_FIELD, None)) is not None]
        if self.pools is not None:  # before the predictions: a photo in predictions.jsonl has its pool
            self.pools.append(lines)
        for record in records:
            self.out.write(json.dumps(record) + "\n")
            truth = (record["gt_lat"], record["gt_lon"])
            if record["error"] is None and truth[0] is not None:
                self.located += 1
                d = float(distances_km(np.array([truth]), np.array([[record["pred_lat"], record["pred_lon"]]]),
                                       "haversine-le")[0])  # fmt: skip
                self.hits = {t: self.hits[t] + (d <= t) for t in self.hits}
        self.out.flush()
        os.fsync(self.out.fileno())
        self.bar.update(len(records) if shown is None else shown)
        if self.located:
            self.bar.set_postfix({f"≤{t:g}km": f"{100 * h / self.located:.1f}%" for t, h in self.hits.items()})


class Locator(abc.ABC):
    """Where a run's photos are located: `InProcess` (one `G3` here) or on Ray workers
    (`g3.evaluation.distributed.RayLocator`). The runner around it is the same."""

    #: the configuration the photos are located with (saved in the run folder, checked on resume)
    config: G3Config
    #: added to the progress bar's label
    label: str = ""

    @abc.abstractmethod
    def locate(self, batches: list[list[Item]], done: BatchDone, *, concurrency: int, pools: bool) -> None:
        """Locate every batch (`locate_chunk`'s records), calling ``done(b, records)`` as batch ``b`` finishes,
        in any order; a failure stops the run (the batches already done are kept)."""


class InProcess(Locator):
    """Batches located one after the other by a `G3` in this process."""

    def __init__(self, g3: G3) -> None:
        self.g3, self.config = g3, g3.config

    def locate(self, batches: list[list[Item]], done: BatchDone, *, concurrency: int, pools: bool) -> None:
        for number, batch in enumerate(batches):
            done(number, locate_chunk(self.g3, batch, concurrency=concurrency, pools=pools))


def locate_into(
    g3: G3 | Locator,
    items: list[Item],
    path: Path,
    *,
    batch_size: int = 16,
    concurrency: int = 4,
    progress: bool = True,
    desc: str = "locate",
    total: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    fail_fast: int = 0,
    pools: Path | None = None,
) -> None:
    """Locate ``(img_id, image path, truth or None)`` items, appending one JSONL line each to ``path``
    (flushed and fsynced after every batch, in the order of ``items`` whatever order the batches finish in);
    the progress bar shows running accuracy when truth is known. ``fail_fast``: see `PredictionWriter` (the
    first batch then holds that many photos); ``pools``: the file that gets each located image's candidate
    pool; ``on_batch(b)``: called after batch ``b`` is written."""
    locator = g3 if isinstance(g3, Locator) else InProcess(g3)
    total = len(items) if total is None else total
    reasons = fail_fast_reasons(locator.config.pipeline.mode, locator.config.verify.mode)
    batches = [items[start:stop] for start, stop in batch_bounds(len(items), batch_size, first=fail_fast)]
    with PredictionWriter(path, total=total, initial=total - len(items), progress=progress, desc=desc + locator.label,
                          fail_fast=fail_fast, fail_reasons=reasons, pools=pools) as writer:  # fmt: skip
        finished: dict[int, list[dict[str, Any]]] = {}
        next_batch = 0

        def done(number: int, records: list[dict[str, Any]]) -> None:
            nonlocal next_batch
            finished[number] = records
            while next_batch in finished:
                writer.write(finished.pop(next_batch))
                if on_batch is not None:
                    on_batch(next_batch)
                next_batch += 1

        if batches:
            locator.locate(batches, done, concurrency=concurrency, pools=pools is not None)


def batch_bounds(count: int, batch_size: int, *, first: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` of the batches of ``count`` items: a first batch of ``first`` items when 0 < ``first``
    < ``batch_size`` (a quick probe of the LMM), then batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bounds, start = [], 0
    while start < count:
        size = first if start == 0 and 0 < first < batch_size else batch_size
        bounds.append((start, min(start + size, count)))
        start += size
    return bounds


def pending_items(
    run: Path, dataset: EvalDataset, config: G3Config, *, limit: int | None = None
) -> tuple[int, list[Item]]:
    """Prepare the run folder (a resumed run must have the same configuration): the number of images the
    run covers, and ``(img_id, path, truth)`` of those not in its ``predictions.jsonl`` yet, in dataset order."""
    run.mkdir(parents=True, exist_ok=True)
    _check_config(run, config)
    todo_frame = dataset.present()
    if limit is not None:
        todo_frame = todo_frame.head(limit)
    done = {r["img_id"] for r in read_predictions(run / PREDICTIONS)}
    items: list[Item] = [
        (str(row.IMG_ID), dataset.image_path(str(row.IMG_ID)), (float(row.LAT), float(row.LON)))  # type: ignore[arg-type]
        for row in todo_frame.itertuples(index=False)
        if str(row.IMG_ID) not in done
    ]
    log.info("%s: %d images, %d done, %d to locate, %d missing from disk", dataset.name, len(todo_frame),
             len(done), len(items), len(dataset.missing))  # fmt: skip
    return len(todo_frame), items


def run_evaluation(
    g3: G3 | Locator,
    dataset: EvalDataset,
    run_dir: str | Path,
    *,
    batch_size: int = 16,
    concurrency: int = 4,
    limit: int | None = None,
    progress: bool = True,
    convention: Convention = DEFAULT_CONVENTION,
    on_batch: Callable[[int], None] | None = None,
    fail_fast: int = DEFAULT_FAIL_FAST,
    max_degraded: float | None = None,
) -> dict[str, Any]:
    """Locate the dataset's images (resuming) with ``g3`` (or another `Locator`), then write metrics, report and
    plots; returns the metrics. ``on_batch(b)`` is called after batch ``b`` is written (in order).

    Raises `LMMUnavailableError` (nothing of those photos written) when the LMM failed for each of the first
    ``fail_fast`` photos located (0: never stop), and `DegradedRunError` after writing everything when more
    than ``max_degraded`` (a fraction; None: no limit) of the located photos are degraded.
    `g3.evaluation.distributed.run_evaluation_ray` does the same on Ray workers.
    """
    locator = g3 if isinstance(g3, Locator) else InProcess(g3)
    run = Path(run_dir)
    total, items = pending_items(run, dataset, locator.config, limit=limit)
    locate_into(locator, items, run / PREDICTIONS, batch_size=batch_size, concurrency=concurrency, progress=progress,
                desc=dataset.name, total=total, on_batch=on_batch, fail_fast=fail_fast, pools=run / POOLS)  # fmt: skip
    payload = finalize(run, dataset, locator.config, convention=convention, limit=limit)
    check_degraded_share(payload, max_degraded)
    return payload


class EvalSettings(TypedDict, total=False):
    """The keyword arguments of `run_evaluation` after the dataset and run folder (for the callers that pass
    them on, as `g3.evaluation.distributed.run_evaluation_ray` does)."""

    batch_size: int
    concurrency: int
    limit: int | None
    progress: bool
    convention: Convention
    on_batch: Callable[[int], None] | None
    fail_fast: int
    max_degraded: float | None


def finalize(
    run: Path, dataset: EvalDataset, config: G3Config, *, convention: Convention, limit: int | None = None
) -> dict[str, Any]:
    """Score ``predictions.jsonl`` and write metrics.json, report.md and the plots."""
    from g3.evaluation.breakdown import breakdown, locate_truth
    from g3.evaluation.plots import error_cdf, recall_area_curve, reliability_diagram, risk_coverage_curve, world_map
    from g3.evaluation.report import write_metrics_json, write_report
    from g3.evaluation.selective import confidence_summary

    raw = read_predictions(run / PREDICTIONS)
    records = pd.DataFrame(raw)
    if records.empty:
        raise EvaluationError(f"{run / PREDICTIONS} holds no prediction")
    degraded = degraded_summary(raw, config.pipeline.mode)
    denominator = len(dataset.frame) if limit is None else min(limit, len(dataset.frame))
    ok = records[records["error"].isna()].reset_index(drop=True)
    truth = ok[["gt_lat", "gt_lon"]].to_numpy(dtype=np.float64)
    pred = ok[["pred_lat", "pred_lon"]].to_numpy(dtype=np.float64)
    metrics = summarize(truth, pred, convention=convention, thresholds=THRESHOLDS_KM, denominator=denominator)
    candidates = [np.asarray(c, dtype=np.float64).reshape(-1, 3)[:, :2] for c in ok["candidates"]]
    rva = recall_vs_area(truth, candidates, thresholds=THRESHOLDS_KM, denominator=denominator) if len(ok) else None

    # breakdowns over every located-or-failed image (a failure counts as wrong in its group)
    meta_cols = [c for c in dataset.frame.columns if c not in ("LAT", "LON")]
    frame = dataset.frame[meta_cols].astype({"IMG_ID": str})
    joined = records.merge(frame, left_on="img_id", right_on="IMG_ID", how="left")
    joined[["pred_lat", "pred_lon"]] = joined[["pred_lat", "pred_lon"]].astype(np.float64)
    located = locate_truth(joined.rename(columns={"gt_lat": "LAT", "gt_lon": "LON"}))
    joined[["country", "continent"]] = located[["country", "continent"]].to_numpy()
    groups = ["continent", "country"] + [c for c in ("S3_Label",) if c in joined.columns]
    breakdowns = {g: breakdown(joined, g, convention=convention, min_listed=BREAKDOWN_MIN_LISTED) for g in groups}

    distances = distances_km(truth, pred, convention)
    plots = {
        "error_cdf": error_cdf({config.pipeline.mode: distances}, run / "error_cdf.png"),
        "world_map": world_map(truth, pred, run / "world_map.png"),
    }
    if rva is not None:
        plots["recall_vs_area"] = recall_area_curve({config.pipeline.mode: rva["curve"]}, run / "recall_vs_area.png")
    confidence = confidence_summary(raw, convention)
    if confidence is not None and confidence["radii"]:
        radii = confidence["radii"]
        plots["reliability"] = reliability_diagram({r: d["reliability"] for r, d in radii.items()},
                                                   run / "reliability.png")  # fmt: skip
        plots["risk_coverage"] = risk_coverage_curve({r: d["risk_coverage"] for r, d in radii.items()},
                                                     run / "risk_coverage.png")  # fmt: skip
    sha = git_sha()
    failures = records[records["error"].notna()]
    if denominator < len(dataset.frame):
        notes = [
            f"smoke run: limited to the first {denominator} images found on disk (--limit {limit}); the "
            f"{len(dataset.frame) - denominator} other images of the benchmark, {len(dataset.missing)} of them "
            "missing from disk, are not part of this run's denominator",
        ]
    else:
        notes = [f"{len(dataset.missing)} images of the dataset are missing from disk and count as wrong"]
    notes.append(f"{len(failures)} images failed (recorded in predictions.jsonl) and count as wrong")
    payload = {
        "dataset": dataset.name,
        "metrics": metrics,
        "recall_vs_area": rva,
        "counts": {
            "dataset": len(dataset.frame),
            "scored": len(ok),
            "failed": len(failures),
            "missing_images": len(dataset.missing),
            "denominator": denominator,
            "degraded": degraded["photos"],
        },
        "degraded": degraded,
        "confidence": _compact(confidence),
        "note": config.note,
        "config": config.model_dump(mode="json"),
        "g3_version": __version__,
        "git_sha": sha,
    }
    write_metrics_json(run, payload)
    write_report(
        run,
        title=f"G3 evaluation on {dataset.name}",
        dataset=dataset,
        metrics=metrics,
        rvA=rva,
        breakdowns=breakdowns,
        plots=plots,
        config_summary={
            "mode": config.pipeline.mode,
            "lmm": config.lmm.backend,
            "model": config.lmm.model,
            "aligner": config.aligner,
            "index": config.index,
        },
        git_sha=sha,
        notes=notes,
        degraded=degraded,
        note=config.note,
        confidence=confidence,
    )
    return payload


def _compact(confidence: dict[str, Any] | None) -> dict[str, Any] | None:
    """The confidence summary for metrics.json: reliability bins, ECE and the risk–coverage table, without
    the per-photo curves (in the plot)."""
    if confidence is None:
        return None
    curve = ("coverage", "accuracy", "threshold")
    return confidence | {"radii": {
        radius: data | {"risk_coverage": {k: v for k, v in data["risk_coverage"].items() if k not in curve}}
        for radius, data in confidence["radii"].items()
    }}  # fmt: skip
