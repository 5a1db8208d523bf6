"""Training-time image augmentation with PIL only (no torchvision), driven by an explicit RNG.

G3's official training code defines an augmentation pipeline but never applies it; here it is applied.
Every random choice comes from the ``random.Random`` passed in, so a sample's augmentation depends only
on (seed, epoch, index): a resumed run sees exactly the images an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Augmentation knobs. Defaults follow the pipeline defined in G3's training code, made milder where
    it would erase location evidence (crops keep at least half the picture)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    crop_scale: tuple[float, float] = Field(default=(0.5, 1.0), description="area fraction range of the crop")
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = Field(default=0.5, ge=0, le=1)
    color_jitter_p: float = Field(default=0.8, ge=0, le=1)
    brightness: float = Field(default=0.5, ge=0)
    contrast: float = Field(default=0.5, ge=0)
    saturation: float = Field(default=0.5, ge=0)
    hue: float = Field(default=0.1, ge=0, le=0.5)
    grayscale_p: float = Field(default=0.2, ge=0, le=1)
    blur_p: float = Field(default=0.5, ge=0, le=1)
    blur_radius: tuple[float, float] = (0.1, 2.0)


def random_resized_crop(
    image: Image.Image, rng: random.Random, scale: tuple[float, float], ratio: tuple[float, float]
) -> Image.Image:
    """Crop a random box of area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform)."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    return image  # degenerate sizes: keep the whole picture


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    h, s, v = image.convert("HSV").split()
    offset = round(shift * 255)
    h = h.point(lambda x: (x + offset) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: random.Random, config: AugmentConfig) -> Image.Image:
    """Brightness, contrast, saturation and hue changes in a random order."""
    ops = [
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ]
    order = list(range(4))
    rng.shuffle(order)
    for op in order:
        if op < 3:
            enhancer, strength = ops[op]
            if strength > 0:
                image = enhancer(image).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
        elif config.hue > 0:
            image = _shift_hue(image, rng.uniform(-config.hue, config.hue))
    return image


def augment(image: Image.Image, rng: random.Random, config: AugmentConfig) -> Image.Image:
    """Apply the configured augmentation to an RGB image; returns the image unchanged when disabled."""
    if not config.enabled:
        return image
    image = random_resized_crop(image, rng, config.crop_scale, config.crop_ratio)
    if rng.random() < config.hflip_p:
        image = ImageOps.mirror(image)
    if rng.random() < config.color_jitter_p:
        image = color_jitter(image, rng, config)
    if rng.random() < config.grayscale_p:
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < config.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*config.blur_radius)))
    return image
