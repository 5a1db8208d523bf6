"""Offline "tiny" assets named ``tiny://…`` in configurations: random tiny models and a small real index.

On first use they are built into ``<cache>/tiny-v1/`` (atomically: a half-built folder is never used):

* ``tiny://aligner`` — a GeoAligner on a tiny random CLIP with a small location encoder;
* ``tiny://index``   — a FAISS index built by the real pipeline from 2,000 points of GeoCLIP's GPS gallery,
  each with a synthetic 32×32 picture, with location text from GeoNames;
* ``tiny://llava``   — a tiny random LLaVA for the transformers backend.

Everything runs on a CPU with no network. The answers are meaningless: the models are random.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from g3.io import atomic_folder, default_cache_dir

log = logging.getLogger(__name__)

SCHEME = "tiny://"
VERSION = "tiny-v1"
ASSETS = ("aligner", "index", "llava")
GALLERY_POINTS = 2000


def is_tiny(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SCHEME)


def resolve(value: str, cache_dir: Path | None = None) -> str:
    """The local path of ``tiny://NAME`` (building the assets if needed); other values pass through."""
    if not is_tiny(value):
        return value
    name = value[len(SCHEME) :]
    if name not in ASSETS:
        raise ValueError(f"unknown tiny asset {value!r}; available: {', '.join(SCHEME + a for a in ASSETS)}")
    return str(ensure_tiny_assets(cache_dir) / name)


def ensure_tiny_assets(cache_dir: Path | None = None) -> Path:
    """The folder holding the tiny assets, built on first use."""
    folder = (cache_dir or default_cache_dir()) / VERSION
    if all((folder / a).exists() for a in ASSETS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny offline assets in %s (once)", folder)
    with atomic_folder(folder) as staging:
        _build(staging)
    return folder


def _build(out: Path) -> None:
    import pandas as pd
    from PIL import Image

    from g3.data import GeoCorpus
    from g3.index import IndexBuildConfig, build_index
    from g3.lmm.tiny import build_tiny_llava
    from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
    from g3.models.geoclip_weights import load_geoclip_gallery
    from g3.models.tiny import build_tiny_clip

    clip = build_tiny_clip(out / "clip-src")
    config = AlignerConfig(clip=str(clip), location_encoder=RFFEncoderConfig(rff_features=64, hidden_dim=128))
    aligner = GeoAligner.from_clip(config, seed=0)
    aligner.save_pretrained(str(out / "aligner"))
    shutil.rmtree(clip)

    rng = np.random.default_rng(0)
    gallery = load_geoclip_gallery()
    points = gallery[np.sort(rng.choice(len(gallery), GALLERY_POINTS, replace=False))]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        ids = [f"tiny/{i:05d}.png" for i in range(len(points))]
        for img_id, (lat, lon) in zip(ids, points, strict=True):
            Image.fromarray(_picture(lat, lon)).save(images / img_id.replace("/", "_"))
        frame = pd.DataFrame({"IMG_ID": ids, "LAT": points[:, 0], "LON": points[:, 1]})
        corpus = GeoCorpus.load(_write_csv(frame, Path(tmp)), images, min_image_bytes=0, require_country=False,
                                progress=False)  # fmt: skip
        build_index(aligner, corpus, out / "index", IndexBuildConfig(batch_size=256, num_workers=0), progress=False)
    build_tiny_llava(out / "llava")


def _picture(lat: float, lon: float) -> np.ndarray:
    """A 32×32 picture whose colours follow the coordinates (so nearby points look alike)."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    r = 127 + 120 * np.sin(np.radians(lat) * 3 + xx)
    g = 127 + 120 * np.cos(np.radians(lon) + yy)
    b = 127 + 120 * np.sin(np.radians(lat + lon) + xx * yy)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _write_csv(frame: object, folder: Path) -> Path:
    path = folder / "corpus.csv"
    frame.to_csv(path, index=False)  # type: ignore[attr-defined]
    return path
