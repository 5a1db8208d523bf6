"""Image-encoding throughput of the geo-aligner on one device: the encoder alone, one query, an index build.

- the encoder alone: batches of pixels already on the device, images/s per batch size, in float32 as g3
  runs it and, side by side, under bfloat16 autocast (what a lower precision would give);
- one query: decode + preprocess + encode of one photo, as `G3.locate` does before retrieval;
- an index build: `build_index` over a corpus of real photos (decode, resize, encode, write the FAISS
  shards, assemble), images/s with ``--loader-workers`` decoding processes.

The CLIP weights are random with a real model's shape (``--model vit-l14``: G3's ViT-L/14 at 224 px), so the
compute per image is the real one. Photos come from ``$G3_SHARED_DATA`` (default ``../shared/data``),
repeated up to ``--images``. Prints figures; asserts nothing.

    python bench/encode.py [--model vit-l14] [--device cuda] [--images 4800] [--batch-size 64] [--loader-workers 8]

Each loader process decodes whole batches: give it several batches per worker (images ≥ 4 × batch × workers).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ray_build import MODELS, SHARED, make_corpus
from timing import median_seconds

from g3.data import GeoCorpus
from g3.index import IndexBuildConfig, build_index
from g3.index.build import corpus_loader, matmul_tf32
from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
from g3.models.tiny import build_tiny_clip


def seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call, each call waiting for the device to finish."""

    def synced() -> None:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    synced()
    return median_seconds(synced, repeats)


def encoder_alone(aligner: GeoAligner, device: str, batches: list[int], repeats: int) -> None:
    size = aligner.clip.config.vision_config.image_size
    autocast = device.startswith("cuda")
    print(f"{'batch':>6}{'float32 img/s':>15}{'TF32 img/s':>12}{'bf16 autocast img/s':>21}{'bf16 / fp32':>13}")
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, device=device)
        with torch.inference_mode():
            fp32 = seconds(lambda p=pixels: aligner.encode_image(p), device, repeats)
            if autocast:
                with matmul_tf32(True):
                    tf32 = seconds(lambda p=pixels: aligner.encode_image(p), device, repeats)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    bf16 = seconds(lambda p=pixels: aligner.encode_image(p), device, repeats)
        if autocast:
            low = f"{batch / tf32:>12,.0f}{batch / bf16:>21,.0f}{fp32 / bf16:>12.2f}x"
        else:
            low = f"{'(cuda only)':>33}"
        print(f"{batch:>6}{batch / fp32:>15,.0f}{low}")


def one_query(aligner: GeoAligner, corpus: GeoCorpus, device: str, repeats: int) -> None:
    def run() -> object:
        pixels = aligner.preprocess([corpus.read_image(0)])
        with torch.inference_mode():
            return aligner.encode_image(pixels.to(device)).key.cpu()

    print(f"one query (decode + preprocess + encode one photo): {seconds(run, device, repeats) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-l14")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4800, help="corpus size of the index build")
    parser.add_argument("--batch-size", type=int, default=64, help="index build: images per encoding batch")
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="encoder-alone batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        clip = build_tiny_clip(root / "clip", **MODELS[args.model])
        aligner = GeoAligner.from_clip(AlignerConfig(clip=str(clip), location_encoder=RFFEncoderConfig()), seed=0)
        aligner = aligner.to(args.device).eval()
        params = sum(p.numel() for p in aligner.clip.vision_model.parameters()) / 1e6
        print(f"{args.model}-shaped random aligner ({params:.0f} M vision parameters) on {args.device} "
              f"in {time.perf_counter() - start:.1f} s; torch {torch.__version__}, {os.cpu_count()} CPUs")  # fmt: skip
        if args.device.startswith("cuda"):
            print(f"GPU {torch.cuda.get_device_name()}; TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}")

        print("\n== the encoder alone (pixels already on the device)")
        encoder_alone(aligner, args.device, args.batches, args.repeats)

        corpus = make_corpus(root / "corpus", args.images)
        print("\n== one query")
        one_query(aligner, corpus, args.device, args.repeats)

        print(f"\n== index build: {args.images} photos ({SHARED}), batch {args.batch_size}, "
              f"{args.loader_workers} loader workers")  # fmt: skip
        config = IndexBuildConfig(batch_size=args.batch_size, shard_size=args.images,
                                  num_workers=args.loader_workers, fill_location_text=False)  # fmt: skip
        start = time.perf_counter()
        decoded = sum(len(b["rows"]) for b in corpus_loader(aligner, corpus, range(len(corpus)), config))
        took = time.perf_counter() - start
        print(f"decoding + preprocessing alone (no encoding): {decoded / took:,.0f} images/s")
        variants = [("float32", False)] + ([("TF32", True)] if args.device.startswith("cuda") else [])
        for name, tf32 in variants:
            start = time.perf_counter()
            build = config.model_copy(update={"tf32": tf32})
            index = build_index(aligner, corpus, root / f"index-{name}", build, progress=False)
            took = time.perf_counter() - start
            print(f"{name}: {len(index)} rows in {took:.1f} s: {args.images / took:,.0f} images/s end to end")


if __name__ == "__main__":
    main()
