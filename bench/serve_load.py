"""Load on `g3 serve`: N concurrent clients for a bounded time on loopback.

Starts `g3 serve` (tiny offline setting by default) as a child process, drives it with ``--clients``
concurrent clients sending a real photo for ``--seconds``, and prints throughput, latency p50/p99,
answers by HTTP status (429s are the bounded queue doing its job) and the server's peak memory.

    python bench/serve_load.py [--clients 16] [--seconds 30] [--config configs/tiny.yaml] [--max-concurrent 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "im2gps3k" / "images_cc_subset500"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo_body() -> dict:
    photos = sorted(PHOTOS.glob("*.jpg"))
    if photos:
        data = photos[0].read_bytes()
    else:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
        data = buffer.getvalue()
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return {
        "model": "g3",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }


async def client_loop(
    url: str, body: dict, stop_at: float, latencies: list[float], statuses: collections.Counter
) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/chat/completions", json=body)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                elif response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 10)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1


def watch_memory(pid: int, peak: list[int], done: threading.Event) -> None:
    process = psutil.Process(pid)
    while not done.is_set():
        try:
            rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.Error:
            break
        peak[0] = max(peak[0], rss)
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--max-waiting", type=int, default=8)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    g3 = str(Path(sys.executable).with_name("g3"))
    server = subprocess.Popen(
        [g3, "serve", "--config", args.config, "--port", str(port), "--max-concurrent", str(args.max_concurrent),
         "--max-waiting", str(args.max_waiting)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    peak = [0]
    done = threading.Event()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")
        body = photo_body()
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)  # warm-up
        idle_rss = psutil.Process(server.pid).memory_info().rss
        threading.Thread(target=watch_memory, args=(server.pid, peak, done), daemon=True).start()
        latencies: list[float] = []
        statuses: collections.Counter = collections.Counter()
        start = time.monotonic()

        async def drive() -> None:
            stop_at = time.monotonic() + args.seconds
            await asyncio.gather(*(client_loop(url, body, stop_at, latencies, statuses) for _ in range(args.clients)))

        asyncio.run(drive())
        elapsed = time.monotonic() - start
    finally:
        done.set()
        server.terminate()
        server.wait(timeout=60)

    ok = len(latencies)
    print(f"{args.clients} clients for {args.seconds:.0f} s against {Path(args.config).name} "
          f"(max_concurrent {args.max_concurrent}, max_waiting {args.max_waiting})")  # fmt: skip
    print(f"throughput: {ok / elapsed:.2f} located photos/s ({ok} in {elapsed:.1f} s)")
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"latency of 200s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print("answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))
    print(f"server memory: {idle_rss / 2**20:.0f} MiB after warm-up, peak {peak[0] / 2**20:.0f} MiB under load")


if __name__ == "__main__":
    main()
