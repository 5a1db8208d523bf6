"""Configuration of a geo-alignment training run. Defaults are the paper's (G3, NeurIPS 2024)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from g3.errors import TrainingError
from g3.train.augment import AugmentConfig

#: Fields that may differ between a run and its resumption (they do not change what was computed).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_steps", "save_every_steps", "keep_checkpoints", "log_every_steps", "num_workers", "progress"}
)


class TrainConfig(BaseModel):
    """Knobs of `g3.train.train_aligner`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=2, description="global batch (split across processes)")
    lr: float = Field(default=3e-5, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    lr_decay: float = Field(default=0.87, gt=0, le=1, description="learning-rate factor applied every epoch")
    seed: int = 0
    val_fraction: float = Field(default=0.01, gt=0, lt=1, description="held-out share of the corpus")
    val_max_images: int = Field(default=10_000, ge=2, description="cap on validation images")
    val_every_steps: int | None = Field(default=None, ge=1, description="None: validate after every epoch")
    save_every_steps: int = Field(default=1000, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every_steps: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    num_workers: int = Field(default=4, ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    init_location_encoder: Literal["geoclip", "keep"] = Field(
        default="geoclip",
        description="'geoclip': start the location encoder from GeoCLIP's pretrained weights, as G3 does; "
        "'keep': train the aligner's weights as given",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    export_clip: bool = Field(default=True, description="include the CLIP folder in the final checkpoint")
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML mapping of these fields (a ``train:`` section is accepted too)."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingError(f"cannot read training config {path}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = data["train"]
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TrainingError(f"invalid training config {path}:\n{exc}") from exc

    def resume_conflicts(self, saved: TrainConfig) -> list[str]:
        """Fields whose change would make a resumed run differ from an uninterrupted one."""
        mine, theirs = self.model_dump(), saved.model_dump()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]
