"""The geo-alignment training loop (G3 §3.1): AdamW on the heads and location encoder, CLIP frozen.

Runs on one CPU, one GPU, or several GPUs with DDP through accelerate (``accelerate launch -m g3.cli
train …``). Every ``save_every_steps`` optimizer steps (and at each epoch's end, and on Ctrl-C) the
run folder gets a checkpoint; ``resume=True`` continues from the newest one and yields exactly the
weights an uninterrupted run would have (per-sample augmentation and the epoch's shuffle are pure
functions of the seed, the epoch and the index).

Run folder::

    train_config.json  aligner_config.json  corpus_report.json  val_ids.txt
    metrics.jsonl       one JSON object per log line (train loss) or validation
    checkpoints/step-NNNNNNNN/
    final/              the trained aligner (GeoAligner.from_pretrained)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from g3 import __version__
from g3.data import GeoCorpus
from g3.errors import TrainingError
from g3.io import atomic_write_json, atomic_write_text
from g3.models import GeoAligner, RFFEncoderConfig
from g3.models.checkpoint import load_checked
from g3.train.checkpoints import LoopState, list_checkpoints, load_latest_checkpoint, save_checkpoint
from g3.train.config import TrainConfig
from g3.train.dataset import AlignmentDataset, Collator, EpochBatchSampler
from g3.train.validation import gps_retrieval_accuracy

log = logging.getLogger(__name__)

FINAL = "final"


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    state: LoopState
    final_checkpoint: Path | None
    validations: list[dict[str, Any]] = field(default_factory=list)


def init_location_encoder_from_geoclip(aligner: GeoAligner) -> None:
    """Copy GeoCLIP's pretrained location-encoder weights into ``aligner`` (G3's initialisation)."""
    from g3.models.geoclip_weights import load_geoclip_location_encoder

    spec = aligner.config.location_encoder
    if not isinstance(spec, RFFEncoderConfig) or (
        spec.sigmas,
        spec.rff_features,
        spec.hidden_dim,
        spec.hidden_layers,
        spec.out_dim,
    ) != ((1.0, 16.0, 256.0), 256, 1024, 3, 512):
        raise TrainingError(
            "init_location_encoder='geoclip' needs the default GeoCLIP-sized RFF location encoder; "
            "use init_location_encoder='keep' for other encoders"
        )
    pretrained = load_geoclip_location_encoder(projection=spec.projection)
    aligner.location_encoder.load_state_dict(pretrained.state_dict())


class _MetricsLog:
    """Append-only JSONL, flushed per line, written by the main process only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")


def train_aligner(
    aligner: GeoAligner,
    corpus: GeoCorpus,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[LoopState, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``aligner`` on ``corpus`` into ``run_dir`` (created); see the module docstring.

    ``on_step`` is called after every optimizer step with the loop state and the step's losses.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    run = Path(run_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    main = accelerator.is_main_process
    state = LoopState()

    if resume:
        loaded = load_latest_checkpoint(run)
        saved_cfg = TrainConfig.model_validate(loaded.meta["train_config"])
        conflicts = config.resume_conflicts(saved_cfg)
        if conflicts:
            raise TrainingError(
                f"cannot resume {run}: these settings differ from the saved run: {', '.join(conflicts)}; "
                "only " + ", ".join(sorted(("epochs", "max_steps", "save_every_steps", "num_workers"))) + " may change"
            )
        if loaded.meta["aligner_config"] != aligner.config.model_dump(mode="json"):
            raise TrainingError(f"cannot resume {run}: the aligner configuration differs from the saved run's")
        load_checked(
            aligner, loaded.trainable, source=str(loaded.path), expected_keys=set(aligner.trainable_state_dict())
        )
        state = loaded.state
        log.info("resuming %s from %s (step %d, epoch %d)", run, loaded.path.name, state.step, state.epoch)
    else:
        if list_checkpoints(run) or (run / FINAL).exists():
            raise TrainingError(f"{run} already holds a training run; pass resume=True (--resume) or another folder")
        if config.init_location_encoder == "geoclip":
            init_location_encoder_from_geoclip(aligner)

    train_set, val_set = corpus.split(config.val_fraction, config.seed)
    if len(val_set) > config.val_max_images:
        val_set = val_set.subset(range(config.val_max_images))
    batches_per_epoch = EpochBatchSampler.batches_per_epoch(len(train_set), config.batch_size)
    if batches_per_epoch == 0:
        raise TrainingError(
            f"the training split has {len(train_set)} images, fewer than one batch of {config.batch_size}; "
            "lower the batch size or add data"
        )
    if main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "train_config.json", config.model_dump(mode="json"))
        atomic_write_json(run / "aligner_config.json", aligner.config.model_dump(mode="json"))
        corpus.report.save(run / "corpus_report.json")
        atomic_write_text(run / "val_ids.txt", "\n".join(val_set.frame["IMG_ID"].astype(str)) + "\n")
    metrics = _MetricsLog(run / "metrics.jsonl", main)
    log.info(
        "training on %d process(es) (%s): %d train / %d validation images, %d steps an epoch of batch %d",
        accelerator.num_processes,
        accelerator.device,
        len(train_set),
        len(val_set),
        batches_per_epoch,
        config.batch_size,
    )

    params = [p for p in aligner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if resume:
        optimizer.load_state_dict(loaded.optimizer_state)
    model, optimizer = accelerator.prepare(aligner, optimizer)
    unwrapped: GeoAligner = accelerator.unwrap_model(model)
    dataset = AlignmentDataset(train_set, aligner.image_processor, config.augment, config.seed)
    collate = Collator(aligner.tokenizer, aligner.text_max_length)
    total_steps = config.epochs * batches_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    meta = {
        "train_config": config.model_dump(mode="json"),
        "aligner_config": aligner.config.model_dump(mode="json"),
        "g3_version": __version__,
    }
    validations: list[dict[str, Any]] = []

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(
                run, state, unwrapped.trainable_state_dict(), optimizer.state_dict(), meta, keep=config.keep_checkpoints
            )

    last_validated = -1

    def validate() -> None:
        nonlocal last_validated
        last_validated = state.step
        accelerator.wait_for_everyone()
        if main:
            result = gps_retrieval_accuracy(unwrapped, val_set)
            record = {"step": state.step, "epoch": state.epoch, "val": result}
            validations.append(record)
            metrics.write(record)
            log.info("validation at step %d: %s", state.step, result)
        model.train()

    bar = tqdm(total=total_steps, initial=state.step, disable=not (main and config.progress), desc="train", unit="step")
    saved_step = state.step
    model.train()
    try:
        while state.epoch < config.epochs and state.step < total_steps:
            lr = config.lr * config.lr_decay**state.epoch
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampler = EpochBatchSampler(
                len(train_set),
                config.batch_size,
                seed=config.seed,
                epoch=state.epoch,
                start_batch=state.batch_in_epoch,
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
            )
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=config.num_workers,
                collate_fn=collate,
                pin_memory=accelerator.device.type == "cuda",
            )
            window_start, window_images = time.perf_counter(), 0
            for batch in loader:
                state.skipped_images += len(batch["skipped"])
                state.batch_in_epoch += 1
                if batch["size"] < 2:  # a contrastive loss needs at least two pairs
                    continue
                loss = model(
                    batch["pixel_values"].to(accelerator.device),
                    batch["input_ids"].to(accelerator.device),
                    batch["attention_mask"].to(accelerator.device),
                    batch["latlon"].to(accelerator.device),
                )
                accelerator.backward(loss.total)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                window_images += batch["size"]
                losses = {
                    "loss": loss.total.item(),
                    "image_text": loss.image_text.item(),
                    "image_gps": loss.image_gps.item(),
                }
                bar.update(1)
                if state.step % config.log_every_steps == 0:
                    rate = window_images * accelerator.num_processes / (time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                    metrics.write({"step": state.step, "epoch": state.epoch, "lr": lr, "images_per_s": rate, **losses})
                    window_start, window_images = time.perf_counter(), 0
                if on_step is not None:
                    on_step(state, losses)
                if config.val_every_steps and state.step % config.val_every_steps == 0:
                    validate()
                if state.step % config.save_every_steps == 0:
                    checkpoint()
                    saved_step = state.step
                if state.step >= total_steps:
                    break
            if state.batch_in_epoch >= batches_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if config.val_every_steps is None:
                    validate()
            if saved_step != state.step or state.batch_in_epoch == 0:
                checkpoint()
                saved_step = state.step
    except KeyboardInterrupt:
        if saved_step != state.step:
            log.warning("interrupted at step %d: saving a checkpoint to resume from", state.step)
            checkpoint()
        raise
    finally:
        bar.close()

    if state.skipped_images:
        log.warning("%d training images could not be read and were skipped", state.skipped_images)
    final = None
    finished = state.epoch >= config.epochs or (config.max_steps is not None and state.step >= config.max_steps)
    if finished and last_validated != state.step:
        validate()  # the final model always gets a validation
    if finished and main:
        final = run / FINAL
        unwrapped.save_pretrained(str(final), include_clip=config.export_clip)
        log.info("trained aligner saved to %s", final)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir=run, state=state, final_checkpoint=final, validations=validations)
