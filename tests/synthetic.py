"""Synthetic geotagged corpora whose images carry a location signal, generated on the fly for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

#: (city, state, country, lat, lon, rgb) — far apart, each with its own colour and stripe direction.
REGIONS = [
    ("Paris", "Ile-de-France", "France", 48.86, 2.35, (200, 40, 40)),
    ("Tokyo", "Tokyo", "Japan", 35.68, 139.69, (40, 200, 40)),
    ("Sydney", "New South Wales", "Australia", -33.87, 151.21, (40, 40, 200)),
    ("Lima", "Lima", "Peru", -12.05, -77.04, (200, 200, 40)),
    ("Toronto", "Ontario", "Canada", 43.65, -79.38, (200, 40, 200)),
    ("Nairobi", "Nairobi County", "Kenya", -1.29, 36.82, (40, 200, 200)),
]


def region_image(region: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A noisy picture in the region's colour with stripes at the region's angle."""
    *_, rgb = REGIONS[region]
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * region / len(REGIONS)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.6 + rng.uniform(0, 6.3))
    base = np.array(rgb, dtype=np.float64)[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    pixels = base + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_corpus(root: Path, per_region: int = 50, seed: int = 0, jitter_deg: float = 2.0) -> tuple[Path, Path]:
    """Write ``images/`` and ``corpus.csv`` under ``root``; return (csv path, image folder)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for r, (city, state, country, lat, lon, _) in enumerate(REGIONS):
        for k in range(per_region):
            img_id = f"{r:02d}/{k:04d}.png"
            region_image(r, rng).save(images / img_id.replace("/", "_"))
            rows.append(
                {
                    "IMG_ID": img_id,
                    "LAT": lat + rng.uniform(-jitter_deg, jitter_deg),
                    "LON": lon + rng.uniform(-jitter_deg, jitter_deg),
                    "city": city,
                    "state": state,
                    "country": country,
                }
            )
    csv = root / "corpus.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, images
