"""GPS-encoding throughput: g3's vectorised torch projection vs the official G3 per-point pyproj loop.

Both sides run the same GeoCLIP-sized location encoder (same weights) on the same 100k random points;
only the projection step differs. The official G3 code (``utils/G3.py``) projects with pyproj, then
rebuilds the points in a Python loop (``for coord in zip(...)``) before making a tensor. Figures are
measured side by side in one run and printed; nothing is asserted.

    python bench/encoders.py [--points 100000] [--batch 10000] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from g3.geo import WEB_MERCATOR_EXTENT_M, mercator_projection
from g3.models import LocationEncoder, RFFEncoderConfig


def official_style_projection(latlon: torch.Tensor, transformer: object) -> torch.Tensor:
    """pyproj on the arrays, then a per-point Python loop, as the official G3 code does (via the CPU)."""
    lat = latlon[:, 0].double().cpu().numpy()
    lon = latlon[:, 1].double().cpu().numpy()
    projected = transformer.transform(lon, lat)  # type: ignore[attr-defined]
    points = []
    for x, y in zip(*projected, strict=True):
        points.append([y, x])
    return (torch.Tensor(points) / WEB_MERCATOR_EXTENT_M).to(latlon.device)


def encode_from_projection(encoder: LocationEncoder, projected: torch.Tensor) -> torch.Tensor:
    out = encoder.get_submodule("LocEnc0")(projected)
    for i in range(1, len(encoder.config.sigmas)):
        out = out + encoder.get_submodule(f"LocEnc{i}")(projected)
    return out


def timed(fn, repeats: int = 3) -> tuple[float, torch.Tensor]:  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if result.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pyproj import Proj, Transformer

    transformer = Transformer.from_proj(Proj("epsg:4326"), Proj("epsg:3857"), always_xy=True)
    rng = np.random.default_rng(0)
    points = torch.tensor(
        np.stack([rng.uniform(-85, 85, args.points), rng.uniform(-180, 180, args.points)], 1),
        dtype=torch.float32,
        device=args.device,
    )
    batches = list(points.split(args.batch))
    encoder = LocationEncoder(RFFEncoderConfig(projection="mercator")).to(args.device).eval()

    with torch.no_grad():
        t_proj_ours, proj_ours = timed(lambda: torch.cat([mercator_projection(b) for b in batches]), args.repeats)
        t_proj_off, proj_off = timed(
            lambda: torch.cat([official_style_projection(b, transformer) for b in batches]), args.repeats
        )
        t_ours, emb_ours = timed(lambda: torch.cat([encoder(b) for b in batches]), args.repeats)
        t_off, emb_off = timed(
            lambda: torch.cat(
                [encode_from_projection(encoder, official_style_projection(b, transformer)) for b in batches]
            ),
            args.repeats,
        )

    n = args.points
    print(
        f"GPS encoding of {n:,} points on {args.device}, batches of {args.batch:,}, {args.threads} CPU threads, "
        f"best of {args.repeats}"
    )
    print(f"{'step':<34}{'g3 (torch)':>14}{'official (pyproj loop)':>26}{'ratio':>9}")
    for label, ours, official in (
        ("projection only (points/s)", t_proj_ours, t_proj_off),
        ("projection + encoder (points/s)", t_ours, t_off),
    ):
        print(f"{label:<34}{n / ours:>14,.0f}{n / official:>26,.0f}{official / ours:>8.1f}x")
    print(f"max |projection difference|: {(proj_ours - proj_off).abs().max().item():.2e} (float32 rounding)")
    print(f"max |embedding difference|:  {(emb_ours - emb_off).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
