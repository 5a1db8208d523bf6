"""A torch ``Dataset`` over a corpus's images, for batch encoding and training with DataLoader workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from g3.data.corpus import GeoCorpus
from g3.errors import CorpusError

log = logging.getLogger(__name__)

#: ``(image, row index, key)`` → image; the key is what the sampler yielded (e.g. ``(row, epoch)``).
ImageTransform = Callable[[Image.Image, int, Any], Image.Image]


class CorpusImages(Dataset[dict[str, Any]]):
    """Item ``key`` (a row index, or a tuple whose first element is the row index) → preprocessed image.

    Returns ``{"row": i, "pixel_values": (3, H, W) tensor}``, or ``{"row": i, "skipped": IMG_ID}`` when the
    image cannot be read (logged): a failure never ends a long job and is always counted by the caller.
    ``transform`` (e.g. training augmentation) runs on the decoded RGB image before ``image_processor``.
    """

    def __init__(self, corpus: GeoCorpus, image_processor: Any, transform: ImageTransform | None = None) -> None:
        self.corpus = corpus
        self.image_processor = image_processor
        self.transform = transform

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, key: int | tuple[int, Any]) -> dict[str, Any]:
        row = int(key[0] if isinstance(key, tuple) else key)
        try:
            image = self.corpus.read_image(row)
        except CorpusError as exc:
            log.warning("skipping unreadable image: %s", exc)
            return {"row": row, "skipped": self.corpus.image_id(row)}
        if self.transform is not None:
            image = self.transform(image, row, key)
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return {"row": row, "pixel_values": pixels}
