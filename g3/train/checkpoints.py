"""Resumable training checkpoints: trainable weights, optimizer state and loop position, written atomically.

A run folder holds ``checkpoints/step-NNNNNNNN/`` folders, each with ``trainable.safetensors``
(everything but the frozen CLIP), ``optimizer.pt`` and ``state.json``. A checkpoint folder appears
only once complete (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from g3.errors import TrainingError
from g3.io import atomic_folder, atomic_write_json

CHECKPOINTS = "checkpoints"
_PREFIX = "step-"


@dataclass
class LoopState:
    """Where the training loop stands: after ``step`` optimizer steps, at batch ``batch_in_epoch`` of ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_images: int = 0


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def save_checkpoint(
    run_dir: Path,
    state: LoopState,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Write a checkpoint for ``state.step`` and prune all but the newest ``keep``."""
    from safetensors.torch import save_file

    folder = run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_PREFIX}{state.step:08d}"
    with atomic_folder(target) as staging:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(staging / "trainable.safetensors")
        )
        torch.save(optimizer_state, staging / "optimizer.pt")
        atomic_write_json(staging / "state.json", {"loop": asdict(state), **meta})
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass
class LoadedCheckpoint:
    path: Path
    state: LoopState
    meta: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]


def load_latest_checkpoint(run_dir: Path) -> LoadedCheckpoint:
    """Read the newest complete checkpoint of a run, or raise `TrainingError` saying what is missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = list_checkpoints(run_dir)
    if not found:
        raise TrainingError(f"cannot resume: {run_dir / CHECKPOINTS} holds no complete checkpoint")
    path = found[-1]
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        trainable = load_file(str(path / "trainable.safetensors"))
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = LoopState(**meta.pop("loop"))
    except (OSError, json.JSONDecodeError, SafetensorError, RuntimeError, KeyError, TypeError) as exc:
        raise TrainingError(f"cannot resume from {path}: the checkpoint is unreadable ({exc})") from exc
    return LoadedCheckpoint(path, state, meta, trainable, optimizer_state)
