"""Geo-alignment training: augmentation, datasets, the resumable loop and its validation."""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.train.augment import AugmentConfig
    from g3.train.config import TrainConfig
    from g3.train.trainer import TrainResult, train_aligner
    from g3.train.validation import THRESHOLDS_KM, gps_retrieval_accuracy

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.train.augment": ("AugmentConfig",),
    "g3.train.config": ("TrainConfig",),
    "g3.train.trainer": ("TrainResult", "train_aligner"),
    "g3.train.validation": ("THRESHOLDS_KM", "gps_retrieval_accuracy"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "THRESHOLDS_KM",
    "AugmentConfig",
    "TrainConfig",
    "TrainResult",
    "gps_retrieval_accuracy",
    "train_aligner",
]
