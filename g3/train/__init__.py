"""Geo-alignment training: augmentation, datasets, the resumable loop and its validation."""

from g3.train.augment import AugmentConfig
from g3.train.config import TrainConfig
from g3.train.trainer import TrainResult, train_aligner
from g3.train.validation import THRESHOLDS_KM, gps_retrieval_accuracy

__all__ = ["THRESHOLDS_KM", "AugmentConfig", "TrainConfig", "TrainResult", "gps_retrieval_accuracy", "train_aligner"]
