"""Index kinds on realistic retrieval keys: memory and disk per row, recall@20 against exact search, latency.

G3's keys are three L2-normalised 768-d views of a photo (CLIP, text-aligned, GPS-aligned), 2304-d in all.
Real embeddings are not isotropic: their variance sits in a few hundred directions (an uneven, power-law
spectrum around a common mean direction) and photos gather by place, in clusters of very uneven size. Keys
made that way are generated here (`realistic_chunks`; `--keys isotropic` for the misleading comparison),
written as a FAISS flat file like G3's ``g3.index`` with a CSV in MP16-Pro's layout, imported with
`g3 index import` and converted with `g3 index convert` to each kind, each step in its own process so that
its peak memory is its own. Queries are held-out keys of the same distribution. Prints a table and writes
``results.json`` in the work folder; asserts nothing.

    python bench/index.py --n 500000                     # ~5 GB per exact pass; one such process at a time
    python bench/index.py --n 100000 --keys isotropic --kinds two-stage "IVF1024,PQ96"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

THIRD = 768


def realistic_chunks(n: int, *, seed: int, chunk: int = 20_000, alpha: float = 1.0) -> Iterator[np.ndarray]:
    """``n`` keys (2304-d, three unit-norm thirds) in chunks, resembling CLIP-based embeddings of geotagged photos.

    A 768-d base vector per photo = a common mean direction + its region's centre + its place's centre +
    its own noise, each drawn with a power-law spectrum (variance of direction i ∝ i^-alpha, in a random
    basis); 300 regions × 30 places, place sizes Pareto-distributed (a few places hold many photos). The
    text- and GPS-aligned thirds are fixed nonlinear maps of the base plus a little noise, as G3's heads
    are functions of the same CLIP vector. Same seed, same keys, whatever the chunking of the caller.
    """
    rng = np.random.default_rng(seed)
    lam = np.arange(1, THIRD + 1, dtype=np.float64) ** -alpha
    scale = np.sqrt(lam / lam.sum()).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((THIRD, THIRD)))[0].astype(np.float32)

    def draw(m: int, s: float) -> np.ndarray:
        return (rng.standard_normal((m, THIRD), dtype=np.float32) * (scale * s)) @ basis

    mean = rng.standard_normal(THIRD).astype(np.float32)
    mean /= np.linalg.norm(mean)
    regions, per_region = 300, 30
    places = np.repeat(draw(regions, 1.0), per_region, axis=0) + draw(regions * per_region, 0.7)
    weights = rng.pareto(1.2, len(places)) + 0.05
    weights /= weights.sum()
    taper = np.sqrt(np.linspace(1.5, 0.3, THIRD)).astype(np.float32)
    heads = [np.linalg.qr(rng.standard_normal((THIRD, THIRD)))[0].astype(np.float32) * taper for _ in range(2)]
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = 0.9 * mean + places[rng.choice(len(places), m, p=weights)] + draw(m, 0.6)
        views = [x, np.tanh(x @ heads[0]) + draw(m, 0.15), np.tanh(x @ heads[1]) + draw(m, 0.15)]
        yield np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True) for v in views], axis=1)


def isotropic_chunks(n: int, *, seed: int, chunk: int = 20_000) -> Iterator[np.ndarray]:
    """``n`` keys whose thirds are uniform on the sphere: no structure, every neighbour nearly as far as any row."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), 3, THIRD), dtype=np.float32)
        yield (x / np.linalg.norm(x, axis=2, keepdims=True)).reshape(len(x), 3 * THIRD)


def make_data(work: Path, n: int, keys: str, queries: int) -> dict[str, Any]:
    """Write ``keys.index`` (FAISS flat, like g3.index), ``metadata.csv`` (MP16-Pro layout), ``queries.npy``
    (held-out keys) and the exact top-20 of each query (``truth.npz``); reused when present."""
    from g3.index.flatfile import FlatFile, write_flat_file

    stamp = {"n": n, "keys": keys, "queries": queries}
    if (work / "data.json").is_file() and json.loads((work / "data.json").read_text())["stamp"] == stamp:
        return json.loads((work / "data.json").read_text())
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gen = realistic_chunks if keys == "realistic" else isotropic_chunks
    chunks = gen(n + queries, seed=0)
    held: list[np.ndarray] = []

    def rows() -> Iterator[np.ndarray]:  # the last `queries` generated keys are held out
        left = n
        for c in chunks:
            take = min(left, len(c))
            if take:
                yield c[:take]
            held.append(c[take:])
            left -= take

    write_flat_file(work / "keys.index", 3 * THIRD, rows(), n)
    query_keys = np.ascontiguousarray(np.concatenate(held)[:queries])
    np.save(work / "queries.npy", query_keys)
    rng = np.random.default_rng(1)
    with (work / "metadata.csv").open("w", encoding="utf-8") as fh:
        fh.write("IMG_ID,AUTHOR,LAT,LON,neighbourhood,city,county,state,region,country,continent\n")
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            lat, lon = rng.uniform(-60, 70, m), rng.uniform(-180, 180, m)
            fh.writelines(f"{i:09d}.jpg,a,{la:.5f},{lo:.5f},,City{i % 997},,,,Country{i % 53},\n"
                          for i, la, lo in zip(range(start, start + m), lat, lon, strict=True))  # fmt: skip
    generated = time.perf_counter() - started
    flat = FlatFile.open(work / "keys.index")
    best_scores = np.full((queries, 20), -np.inf, np.float32)
    best_rows = np.full((queries, 20), -1, np.int64)
    for first, block in flat.chunks(20_000):
        s = query_keys @ block.T
        all_s = np.concatenate([best_scores, s], 1)
        all_r = np.concatenate([best_rows, np.broadcast_to(np.arange(first, first + len(block)), s.shape)], 1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :20]
        best_scores, best_rows = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_r, top, 1)
    np.savez(work / "truth.npz", rows=best_rows, scores=best_scores)
    sample = flat.read(0, 20_000)
    centred = sample - sample.mean(0)
    spectrum = np.linalg.svd(centred[:, :THIRD], compute_uv=False) ** 2
    spectrum /= spectrum.sum()
    random_pairs = (sample[:2000] * sample[2000:4000]).sum(1)
    info = {
        "stamp": stamp,
        "generate_seconds": round(generated, 1),
        "stats": {
            "score_top1": float(best_scores[:, 0].mean()),
            "score_top20": float(best_scores[:, 19].mean()),
            "score_random_pair": float(np.median(random_pairs)),
            "variance_share_first_third_top64": float(spectrum[:64].sum()),
            "variance_share_first_third_top256": float(spectrum[:256].sum()),
        },
    }
    (work / "data.json").write_text(json.dumps(info, indent=2))
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ``ru_maxrss``, not inherited from the parent), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def rss_mb() -> dict[str, float]:
    """Resident memory of this process now: anonymous (heap) and file-backed (mapped files) pages, MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            fields[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"anon": round(fields.get("RssAnon", 0.0), 1), "file": round(fields.get("RssFile", 0.0), 1)}


def child_import(work: Path) -> dict[str, Any]:
    """`import_faiss_index` of the flat file with a random aligner of G3's key width (only the width is checked)."""
    import shutil

    from g3.index.importer import import_faiss_index
    from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
    from g3.models.tiny import build_tiny_clip

    clip = build_tiny_clip(work / "clip-768", projection_dim=THIRD)
    aligner = GeoAligner.from_clip(AlignerConfig(clip=str(clip), location_encoder=RFFEncoderConfig(
        rff_features=32, hidden_dim=64, out_dim=64)), seed=0).eval()  # fmt: skip
    shutil.rmtree(work / "Flat", ignore_errors=True)
    before = rss_mb()
    started = time.perf_counter()
    import_faiss_index(work / "keys.index", work / "metadata.csv", aligner, work / "Flat", progress=False)
    return {"seconds": round(time.perf_counter() - started, 1), "rss_before_mb": before, "peak_rss_mb": peak_rss_mb()}


def child_convert(work: Path, kind: str, name: str, threads: int) -> dict[str, Any]:
    import faiss

    from g3.index.convert import CONVERT_REPORT, ConvertConfig, convert_index

    faiss.omp_set_num_threads(threads)
    out = work / name
    before = rss_mb()
    started = time.perf_counter()
    config = ConvertConfig(kind=kind, queries=200, checkpoint_rows=1 << 40, search_params={"efSearch": 128})
    convert_index(work / "Flat", out, config, restart=True, progress=False)
    report = json.loads((out / CONVERT_REPORT).read_text())
    return {"seconds": round(time.perf_counter() - started, 1), "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "report": report}  # fmt: skip


def child_measure(work: Path, name: str, params: dict[str, int], threads: int, repeats: int) -> dict[str, Any]:
    """Load an index folder as g3 does (memory-mapped) and time `GeoIndex.search` (k=20) at batch 1 and 64."""
    import faiss

    from g3.index import GeoIndex

    faiss.omp_set_num_threads(threads)
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npz")["rows"]
    index = GeoIndex.load(work / name, search_params=params)
    folder = work / name
    index_bytes = (folder / "index.faiss").stat().st_size
    disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    found = index.search(queries[:200], 20).similar.rows  # warms caches too
    found = np.concatenate([found, index.search(queries[200:], 20).similar.rows])
    recall = float(np.mean([len(set(t) & set(f)) / 20 for t, f in zip(truth, found, strict=True)]))
    lat1, lat64 = [], []
    for i in range(repeats):
        q = queries[i % len(queries)][None]
        t = time.perf_counter()
        index.search(q, 20)
        lat1.append(1000 * (time.perf_counter() - t))
    for i in range(max(3, repeats // 20)):
        q = queries[(64 * i) % (len(queries) - 64) :][:64]
        t = time.perf_counter()
        index.search(q, 20)
        lat64.append(1000 * (time.perf_counter() - t))
    rows = len(index)
    return {
        "recall@20": round(recall, 4),
        "memory_bytes_per_row": round(index_bytes / rows, 1),
        "disk_bytes_per_row": round(disk / rows, 1),
        "b1_p50_ms": round(float(np.percentile(lat1, 50)), 2),
        "b1_p99_ms": round(float(np.percentile(lat1, 99)), 2),
        "b64_p50_ms": round(float(np.percentile(lat64, 50)), 2),
        "b64_p99_ms": round(float(np.percentile(lat64, 99)), 2),
        "rss_after_mb": rss_mb(),
        "repeats": [len(lat1), len(lat64)],
    }


def run_child(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--keys", choices=["realistic", "isotropic"], default="realistic")
    parser.add_argument("--work", type=Path, default=Path("/tmp/g3-bench-index"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads (OpenMP)")
    parser.add_argument("--repeats", type=int, default=400, help="batch-1 searches timed (batch 64: a 20th)")
    parser.add_argument("--kinds", nargs="+", default=None, help="default: two-stage, IVF-PQ, Flat, HNSW32")
    parser.add_argument("--candidates", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work / f"{args.keys}-{args.n}"
    if args.child:
        step, *rest = args.child
        if step == "import":
            out = child_import(work)
        elif step == "convert":
            out = child_convert(work, rest[0], rest[1], args.threads)
        else:
            out = child_measure(work, rest[0], json.loads(rest[1]), args.threads, args.repeats)
        print(json.dumps(out))
        return

    nlist = 1 << int(np.log2(4 * np.sqrt(args.n)))
    kinds = args.kinds or ["two-stage", f"IVF{nlist},PQ96", "Flat", "HNSW32"]
    base = ["--n", str(args.n), "--keys", args.keys, "--work", str(args.work), "--threads", str(args.threads),
            "--repeats", str(args.repeats)]  # fmt: skip
    info = make_data(work, args.n, args.keys, args.queries)
    print(f"{args.n:,} {args.keys} keys; data made in {info['generate_seconds']} s; {json.dumps(info['stats'])}",
          flush=True)  # fmt: skip
    results: dict[str, Any] = {"data": info, "import": run_child([*base, "--child", "import"]), "kinds": {}}
    print(f"import: {json.dumps(results['import'])}", flush=True)
    for kind in kinds:
        name = kind.replace(",", "_").replace(":", "_")
        entry: dict[str, Any] = {}
        if kind != "Flat":
            entry["convert"] = run_child([*base, "--child", "convert", kind, name])
            print(f"convert {kind}: {json.dumps(entry['convert'])}", flush=True)
        settings = [{"candidates": c, "nprobe": 32} for c in args.candidates] if kind.startswith("two-stage") else [
            {"nprobe": 32, "efSearch": 128}]  # fmt: skip
        entry["search"] = []
        for params in settings:
            repeats = args.repeats if kind != "Flat" else 20
            measured = run_child([*base[:-1], str(repeats), "--child", "measure", "Flat" if kind == "Flat" else name,
                                  json.dumps(params)])  # fmt: skip
            entry["search"].append({"params": params, **measured})
            print(f"search {kind} {params}: {json.dumps(measured)}", flush=True)
        results["kinds"][kind] = entry
        (work / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'kind':<34}{'params':<16}{'mem B/row':>10}{'disk B/row':>11}{'recall@20':>10}{'b1 p50':>8}"
          f"{'b1 p99':>8}{'b64 p50':>9}{'b64 p99':>9}{'convert s':>10}{'peak MB':>9}")  # fmt: skip
    for kind, entry in results["kinds"].items():
        conv = entry.get("convert", results["import"])
        for s in entry["search"]:
            if "error" in s:
                print(f"{kind:<34}{s['error']}")
                continue
            p = ",".join(f"{k[:4]}={v}" for k, v in s["params"].items() if kind.startswith("two") or k != "candidates")
            print(f"{kind:<34}{p:<16}{s['memory_bytes_per_row']:>10,.0f}{s['disk_bytes_per_row']:>11,.0f}"
                  f"{s['recall@20']:>10.3f}{s['b1_p50_ms']:>8.2f}{s['b1_p99_ms']:>8.2f}{s['b64_p50_ms']:>9.1f}"
                  f"{s['b64_p99_ms']:>9.1f}{conv.get('seconds', float('nan')):>10}"
                  f"{conv.get('peak_rss_mb', 0):>9,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
