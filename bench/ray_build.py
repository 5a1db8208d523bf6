"""Index build time: one process (`build_index`) vs Ray workers (`build_index_ray`) on the same corpus.

The corpus is N real IM2GPS3k photos from the shared data (repeated under new ids past 500); the aligner
is random (no hub needed) at one of two sizes: ``tiny`` (32×32 images, the tests' model) or ``vit-b32``
(CLIP ViT-B/32-sized vision tower at 224×224: realistic compute per image). Both builds run side by side
in one run, on the same shards; the Ray figure includes starting the actors (each loads the aligner) and
is also given with starting the local Ray itself. Checks that both indexes hold the same vectors bit for
bit. Prints figures; asserts nothing.

    python bench/ray_build.py                               # 480 photos, vit-b32, 2 Ray workers
    python bench/ray_build.py --images 2000 --model tiny --workers 2 --shard-size 250
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from g3.data import GeoCorpus
from g3.index import GeoIndex, IndexBuildConfig, build_index
from g3.index.distributed import RayOptions, build_index_ray
from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
from g3.models.tiny import build_tiny_clip

SHARED = Path(os.environ.get("G3_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = {
    "tiny": {},
    "vit-b32": dict(image_size=224, patch_size=32, hidden_size=768, layers=12, heads=12, projection_dim=512),
    "vit-l14": dict(
        image_size=224, patch_size=14, hidden_size=1024, layers=24, heads=16, projection_dim=768, intermediate_size=4096
    ),
}


def make_corpus(root: Path, n: int) -> GeoCorpus:
    photos = SHARED / "im2gps3k" / "images_cc_subset500"
    frame = pd.read_csv(SHARED / "im2gps3k" / "images_cc_subset500.csv")[["IMG_ID", "LAT", "LON"]]
    rows = []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        src = frame.iloc[i % len(frame)]
        img_id = f"{i // len(frame)}_{src.IMG_ID}"
        (root / "images" / img_id).symlink_to(photos / src.IMG_ID)
        rows.append({"IMG_ID": img_id, "LAT": src.LAT, "LON": src.LON, "country": "x"})  # no geocoding: not timed
    pd.DataFrame(rows).to_csv(root / "corpus.csv", index=False)
    return GeoCorpus.load(root / "corpus.csv", root / "images", min_image_bytes=0, progress=False)


def vectors(folder: Path) -> np.ndarray:
    index = GeoIndex.load(folder).backend.cpu_index  # type: ignore[attr-defined]
    return index.reconstruct_n(0, index.ntotal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b32")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (1 CPU each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=60)
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader decoding processes per encoder")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING)

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = build_tiny_clip(root / "clip", **MODELS[args.model])
        aligner_config = AlignerConfig(clip=str(clip), location_encoder=RFFEncoderConfig())
        GeoAligner.from_clip(aligner_config, seed=0).save_pretrained(str(root / "aligner"))
        shutil.rmtree(clip)
        corpus = make_corpus(root / "corpus", args.images)
        config = IndexBuildConfig(batch_size=args.batch_size, shard_size=args.shard_size,
                                  num_workers=args.loader_workers, fill_location_text=False)  # fmt: skip

        start = time.perf_counter()
        aligner = GeoAligner.from_pretrained(str(root / "aligner"))
        build_index(aligner, corpus, root / "single", config, progress=False)
        single = time.perf_counter() - start
        del aligner

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, address="local")
        ray_init = time.perf_counter() - start
        start = time.perf_counter()
        build_index_ray(root / "aligner", corpus, root / "ray", config, options=RayOptions(workers=args.workers),
                        progress=False)  # fmt: skip
        distributed = time.perf_counter() - start
        ray.shutdown()
        same = vectors(root / "single").tobytes() == vectors(root / "ray").tobytes()

    shards = -(-args.images // args.shard_size)
    print(f"{args.images} images, model {args.model}, {shards} shards of {args.shard_size}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads in one process")  # fmt: skip
    rows = [
        ("one process (load + encode + save)", single),
        (f"Ray, {args.workers} workers (actors + encode)", distributed),
        ("  + starting a local Ray", distributed + ray_init),
    ]
    print(f"{'mode':<38}{'seconds':>9}{'images/s':>10}")
    for name, seconds in rows:
        print(f"{name:<38}{seconds:>9.1f}{args.images / seconds:>10.1f}")
    ratio, with_init = distributed / single, (distributed + ray_init) / single
    print(f"ratio Ray / one process: {ratio:.2f} ({with_init:.2f} counting the Ray start)")
    print(f"same vectors bit for bit: {same}")


if __name__ == "__main__":
    main()
