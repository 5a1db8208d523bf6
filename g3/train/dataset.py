"""Torch datasets and samplers for geo-alignment training: augmented images, captions, coordinates."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from g3.data import CorpusImages, GeoCorpus
from g3.train.augment import AugmentConfig, augment

#: A dataset key: (row index, epoch). The epoch travels with the index so that worker processes,
#: which hold their own copy of the dataset, seed each sample's augmentation identically.
SampleKey = tuple[int, int]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 64-bit seed for one sample's augmentation (independent of worker and process)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class AlignmentDataset(Dataset[dict[str, Any]]):
    """Rows of a corpus as (augmented pixel values, caption, lat/lon), keyed by `SampleKey`.

    An unreadable image gives ``{"skipped": IMG_ID}`` (see `g3.data.CorpusImages`).
    """

    def __init__(self, corpus: GeoCorpus, image_processor: Any, augment_config: AugmentConfig, seed: int) -> None:
        self.augment_config = augment_config
        self.seed = seed
        self.images = CorpusImages(corpus, image_processor, transform=self._augment)
        self.coordinates = corpus.coordinates().astype(np.float32)
        self.captions = corpus.captions()

    def _augment(self, image: Image.Image, row: int, key: Any) -> Image.Image:
        epoch = key[1]
        return augment(image, random.Random(sample_seed(self.seed, epoch, row)), self.augment_config)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        item = self.images[key]
        if "skipped" in item:
            return item
        row = item["row"]
        return {"pixel_values": item["pixel_values"], "caption": self.captions[row], "latlon": self.coordinates[row]}


@dataclass
class Collator:
    """Stack a batch, tokenise its captions, and list the images that could not be read."""

    tokenizer: Any
    max_length: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "skipped" not in it]
        skipped = [it["skipped"] for it in items if "skipped" in it]
        if not good:
            return {"skipped": skipped, "size": 0}
        enc = self.tokenizer(
            [it["caption"] for it in good],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in good]),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "latlon": torch.from_numpy(np.stack([it["latlon"] for it in good])),
            "skipped": skipped,
            "size": len(good),
        }


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """Shuffled batches of one epoch, deterministic in (seed, epoch), resumable at any batch.

    The permutation of the epoch is cut into global batches of ``batch_size``; process ``rank`` of
    ``world_size`` takes its contiguous share of each global batch. A trailing partial batch is dropped
    (contrastive losses want full batches). ``start_batch`` skips batches already trained on.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    @staticmethod
    def batches_per_epoch(n: int, batch_size: int) -> int:
        return n // batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.n, self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch(self.n, self.batch_size)):
            start = b * self.batch_size + self.rank * local
            yield [(i, self.epoch) for i in order[start : start + local]]
