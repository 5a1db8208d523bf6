"""Per-query time of the G3 agent, split by step, and the graph's orchestration overhead.

Runs the tiny offline setting (configs/tiny.yaml: random tiny models, a real 2,000-row FAISS index, the
real transformers backend on a tiny LLaVA) on real IM2GPS3k photos:

1. per-step wall time (median over the photos, one photo at a time) and batch throughput;
2. the same query through the compiled LangGraph graph vs the same step functions called directly in
   sequence (`g3.agent.steps`), as a ratio — once with the tiny LLaVA, and once with an instant
   in-process LMM stub that isolates the orchestration cost (labelled as such).

    python bench/agent.py [--photos 8] [--repeats 3] [--config configs/tiny.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from timing import median_seconds

from g3.agent import G3
from g3.agent import steps as st
from g3.data.query_image import load_query_image
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage
from g3.lmm.batching import generate_with_timeout

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "im2gps3k" / "images_cc_subset500"


class InstantLMM(LMMBackend):
    """Answers at once with fixed JSON: a stub that makes LMM time zero, to expose orchestration cost."""

    name = "instant-stub"

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        return [LMMResponse(r.tag, ('{"latitude": 48.85, "longitude": 2.35}',) * r.n, Usage(), 0.0) for r in requests]


async def direct(g3: G3, photo: Path) -> None:
    """The query as plain function calls, no graph (what the nodes call, in order)."""
    ctx, config = g3.runtime, g3.config
    ensemble = config.effective_ensemble
    image = load_query_image(
        photo, max_pixels=config.pipeline.max_image_pixels, max_side=config.pipeline.max_image_side
    )
    views = await asyncio.to_thread(st.encode_query, ctx.aligner, image)
    assert ctx.index is not None and ctx.backend is not None
    similar, dissimilar = await asyncio.to_thread(
        st.retrieve, ctx.index, views, k_similar=ensemble.max_k_similar, k_dissimilar=ensemble.max_k_dissimilar
    )
    requests = st.render_requests(ensemble, image, similar, dissimilar)
    responses = await generate_with_timeout(ctx.backend, requests, config.lmm.timeout_s)
    collected = st.collect_candidates(responses, similar, ensemble)
    ranked = await asyncio.to_thread(
        st.verify_candidates, collected.candidates, views, ctx.aligner, similar, config.verify
    )
    await asyncio.to_thread(st.describe_location, ranked[0].candidate.lat, ranked[0].candidate.lon)


def overhead(g3: G3, photos: list[Path], repeats: int) -> tuple[float, float]:
    graph = median_seconds(lambda: [g3.locate(p) for p in photos], repeats)
    plain = median_seconds(lambda: [asyncio.run(direct(g3, p)) for p in photos], repeats)
    return graph / len(photos), plain / len(photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    photos = sorted(PHOTOS.glob("*.jpg"))[: args.photos]
    if not photos:
        raise SystemExit(f"no photos in {PHOTOS}")

    g3 = G3.from_config(args.config)
    g3.locate(photos[0])  # warm-up (model loading, first-call costs)
    per_step: dict[str, list[float]] = {}
    for photo in photos:
        for step, seconds in g3.locate(photo).timings.items():
            if not step.startswith("generate:"):
                per_step.setdefault(step, []).append(seconds)
    start = time.perf_counter()
    g3.locate_batch(photos, concurrency=args.concurrency)
    batch_s = time.perf_counter() - start

    lmm = g3.runtime.backend.name if g3.runtime.backend else "none"
    print(f"{len(photos)} IM2GPS3k photos, config {Path(args.config).name}, LMM {lmm}")
    print(f"{'step':<12}{'median ms':>12}")
    for step, values in per_step.items():
        print(f"{step:<12}{statistics.median(values) * 1000:>12.1f}")
    rate = len(photos) / batch_s
    print(f"batch of {len(photos)} with concurrency {args.concurrency}: {batch_s:.2f} s ({rate:.2f} photos/s)")

    graph_s, plain_s = overhead(g3, photos, args.repeats)
    print(f"\nper query, tiny LLaVA:    graph {graph_s * 1000:7.1f} ms   direct calls {plain_s * 1000:7.1f} ms   "
          f"ratio {graph_s / plain_s:.3f}")  # fmt: skip
    stub = G3(g3.config, aligner=g3.runtime.aligner, index=g3.runtime.index, backend=InstantLMM())
    graph_s, plain_s = overhead(stub, photos, args.repeats)
    print(f"per query, instant stub:  graph {graph_s * 1000:7.1f} ms   direct calls {plain_s * 1000:7.1f} ms   "
          f"ratio {graph_s / plain_s:.3f}")  # fmt: skip
    print("(the stub isolates orchestration: LangGraph supersteps, Send fan-out, state merging, timing wrappers)")


if __name__ == "__main__":
    main()
