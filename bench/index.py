"""Geo index benchmark on synthetic clustered retrieval keys (2304-d, like G3's).

For each FAISS kind: build time, bytes per row, search latency p50/p99 for k=20 at batch 1 and 64,
recall@20 against the exact index, and the overhead of `GeoIndex.search` (metadata, coordinates) over
the raw FAISS call, measured side by side in one run (target ≤ 1.10). Also the overhead of the
llama-index `GeoRetriever` over `GeoIndex.search`. Prints figures; asserts nothing.

    python bench/index.py                       # 1M keys (needs ~25 GB of RAM for all kinds)
    python bench/index.py --n 100000 --kinds Flat "IVF1024,PQ96" HNSW32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from g3.index import GeoIndex


def synthetic_keys(n: int, dim: int, clusters: int, seed: int, chunk: int = 50_000) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (geotagged photos cluster by place)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, clusters, m)] + 0.8 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latencies_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray, batch: int, repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        q = queries[(i * batch) % len(queries) :][:batch]
        start = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def overhead(raw: Callable[[np.ndarray], object], wrapped: Callable[[np.ndarray], object], queries: np.ndarray,
             repeats: int) -> float:  # fmt: skip
    """Median of per-query time ratios wrapped/raw: both calls on the same query, which goes first alternating."""
    ratios = []
    for i in range(repeats):
        q = queries[i % len(queries)][None]
        times = {}
        for name in ("raw", "wrapped") if i % 2 else ("wrapped", "raw"):
            start = time.perf_counter()
            (raw if name == "raw" else wrapped)(q)
            times[name] = time.perf_counter() - start
        ratios.append(times["wrapped"] / times["raw"])
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument(
        "--kinds", nargs="+", default=None, help="FAISS factory strings (default: Flat, IVF…,PQ96, HNSW32)"
    )
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--nprobe", type=int, default=32)
    args = parser.parse_args()
    nlist = 1 << int(np.log2(4 * np.sqrt(args.n)))
    kinds = args.kinds or ["Flat", f"IVF{nlist},PQ96", "HNSW32"]

    t = time.perf_counter()
    generated = synthetic_keys(args.n + args.queries, args.dim, args.clusters, seed=0)
    keys, queries = generated[: args.n], np.ascontiguousarray(generated[args.n :])  # held-out queries
    rng = np.random.default_rng(1)
    meta = pd.DataFrame(
        {"IMG_ID": [f"{i:08d}.jpg" for i in range(args.n)], "LAT": rng.uniform(-90, 90, args.n),
         "LON": rng.uniform(-180, 180, args.n), "country": ["Somewhere"] * args.n}
    )  # fmt: skip
    print(
        f"{args.n:,} keys of width {args.dim} in {args.clusters} clusters generated in {time.perf_counter() - t:.1f} s"
    )

    rows = []
    truth = None
    retriever_ratio = None
    for kind in kinds:
        t = time.perf_counter()
        index = GeoIndex.create(keys, meta, kind=kind, search_params={"nprobe": args.nprobe, "efSearch": 128})
        build_s = time.perf_counter() - t
        import faiss

        bytes_per_row = faiss.serialize_index(index.backend.cpu_index).nbytes / args.n  # type: ignore[attr-defined]
        raw = index.backend.index  # type: ignore[attr-defined]
        found = index.search(queries, args.k).similar.rows
        if truth is None:
            truth = (
                found
                if kind == "Flat"
                else GeoIndex.create(keys, meta, kind="Flat").search(queries, args.k).similar.rows
            )
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(truth, found, strict=True)])
        lat1 = latencies_ms(lambda q, ix=index: ix.search(q, args.k), queries, 1, args.repeats)
        lat64 = latencies_ms(lambda q, ix=index: ix.search(q, args.k), queries, 64, max(10, args.repeats // 10))
        ratio = overhead(lambda q, r=raw: r.search(q, args.k), lambda q, ix=index: ix.search(q, args.k), queries,
                         args.repeats)  # fmt: skip
        rows.append((kind, build_s, bytes_per_row, lat1, lat64, recall, ratio))
        if kind == "Flat" and retriever_ratio is None:
            retriever_ratio = _retriever_overhead(index, queries, args.k, args.repeats)
        del index

    print(f"\nk={args.k}, nprobe={args.nprobe}, efSearch=128; latencies in ms; overhead = GeoIndex.search / raw FAISS")
    header = f"{'kind':<18}{'build s':>9}{'bytes/row':>11}{'b1 p50':>9}{'b1 p99':>9}{'b64 p50':>9}{'b64 p99':>9}"
    print(header + f"{'recall@20':>11}{'overhead':>10}")
    for kind, build_s, bpr, lat1, lat64, recall, ratio in rows:
        print(
            f"{kind:<18}{build_s:>9.1f}{bpr:>11,.0f}{percentile(lat1, 50):>9.2f}{percentile(lat1, 99):>9.2f}"
            f"{percentile(lat64, 50):>9.2f}{percentile(lat64, 99):>9.2f}{recall:>11.3f}{ratio:>9.3f}x"
        )
    if retriever_ratio is not None:
        print(f"\nllama-index GeoRetriever.retrieve / GeoIndex.search (Flat, batch 1): {retriever_ratio:.3f}x")


def _retriever_overhead(index: GeoIndex, queries: np.ndarray, k: int, repeats: int) -> float | None:
    try:
        from llama_index.core.schema import QueryBundle

        from g3.index.retriever import GeoRetriever
    except ImportError:
        return None
    retriever = GeoRetriever(index, similar_k=k)
    return overhead(
        lambda q: index.search(q, k),
        lambda q: retriever.retrieve(QueryBundle(query_str="", embedding=q[0].tolist())),
        queries,
        repeats,
    )


if __name__ == "__main__":
    main()
