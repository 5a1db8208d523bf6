"""Ray scale-out on a local Ray (2 CPUs): a distributed index build is the single-process index bit for bit and
resumes like it; a distributed evaluation run writes the single-process predictions file; failures are clear."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from g3.agent import G3, G3Config
from g3.agent.tiny import ensure_tiny_assets
from g3.data import GeoCorpus
from g3.errors import MissingDependencyError, RayWorkerError
from g3.index import GeoIndex, IndexBuildConfig, build_index
from g3.index.distributed import RayOptions, build_index_ray, check_reachable, import_ray, ray_session
from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

IM2GPS3K = SHARED_DATA / "im2gps3k"
PHOTOS = IM2GPS3K / "images_cc_subset500"
needs_data = pytest.mark.skipif(not PHOTOS.is_dir(), reason="shared IM2GPS3k photos absent")
ROOT = Path(__file__).resolve().parents[1]
# 40 rows: 4 shards, the last one short. 2 threads, not the 1 CPU a Ray worker reserves: the build's threads must
# travel to the workers (Ray sets OMP_NUM_THREADS=1 there) for the keys to be the same bit for bit.
CONFIG = IndexBuildConfig(batch_size=8, shard_size=12, num_workers=0, threads=2)
BROKEN = (5, 26)  # rows whose image is corrupt: skipped and reported by both builds


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'g3\[ray\]'"):
        import_ray()


def test_an_unreachable_cluster_fails_fast_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once the socket is closed
    for address in (f"127.0.0.1:{closed}", f"ray://127.0.0.1:{closed}"):
        start = time.monotonic()
        refused = pytest.raises(RayWorkerError, match=rf"cannot reach the Ray cluster at {address}: .*refused")
        with refused, ray_session(RayOptions(address=address)):
            pass
        assert time.monotonic() - start < 5  # ray.init alone retries for minutes
    with socket.socket() as listening:  # a reachable address passes the check and goes on to Ray
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}", 1.0)
    check_reachable("auto", 1.0)  # not HOST:PORT: left to Ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, small_rff: RFFEncoderConfig) -> Path:
    folder = tmp_path_factory.mktemp("aligner") / "aligner"
    GeoAligner.from_clip(AlignerConfig(clip=str(tiny_clip_dir), location_encoder=small_rff), seed=0).save_pretrained(
        str(folder)
    )
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> GeoCorpus:
    """40 real IM2GPS3k photos (coordinates only: location text is filled offline), two of them corrupt."""
    if not PHOTOS.is_dir():
        pytest.skip("shared IM2GPS3k photos absent")
    root = tmp_path_factory.mktemp("corpus")
    frame = pd.read_csv(IM2GPS3K / "images_cc_subset500.csv")[["IMG_ID", "LAT", "LON"]].head(40)
    (root / "images").mkdir()
    for i, name in enumerate(frame["IMG_ID"]):
        if i in BROKEN:
            (root / "images" / name).write_bytes(b"not a jpeg")
        else:
            (root / "images" / name).symlink_to(PHOTOS / name)
    frame.to_csv(root / "corpus.csv", index=False)
    return GeoCorpus.load(root / "corpus.csv", root / "images", min_image_bytes=0, require_country=False,
                          progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def straight(checkpoint: Path, corpus: GeoCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process build (the reference)."""
    out = tmp_path_factory.mktemp("single") / "idx"
    build_index(GeoAligner.from_pretrained(str(checkpoint)), corpus, out, CONFIG, progress=False)
    return out


def vectors(folder: Path) -> np.ndarray:
    index = GeoIndex.load(folder).backend.cpu_index  # type: ignore[attr-defined]
    return index.reconstruct_n(0, index.ntotal)


def assert_same_index(a: Path, b: Path) -> None:
    va, vb = vectors(a), vectors(b)
    assert va.shape == vb.shape == (38, 96) and va.dtype == vb.dtype == np.float32
    assert va.tobytes() == vb.tobytes()  # bit for bit, not merely close
    for name in ("index.faiss", "metadata.parquet", "build_report.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    assert {k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k)} <= {"built_at", "build_seconds"}
    assert ma["build"]["threads"] == CONFIG.threads


@pytest.mark.slow
@needs_data
def test_ray_build_is_the_single_process_index(
    ray_local: None, checkpoint: Path, corpus: GeoCorpus, straight: Path, tmp_path: Path
) -> None:
    written: list[int] = []
    index = build_index_ray(checkpoint, corpus, tmp_path / "idx", CONFIG, options=RayOptions(workers=2),
                            progress=False, on_shard=written.append)  # fmt: skip
    assert sorted(written) == [0, 1, 2, 3] and len(index) == 38
    assert_same_index(straight, tmp_path / "idx")
    report = json.loads((tmp_path / "idx" / "build_report.json").read_text())
    assert report["skipped"] == 2 and sorted(report["skipped_ids"]) == sorted(corpus.image_id(i) for i in BROKEN)
    assert not (tmp_path / ".idx.build").exists()


@pytest.mark.slow
@needs_data
def test_interrupted_builds_resume_across_modes(
    ray_local: None, checkpoint: Path, corpus: GeoCorpus, straight: Path, tmp_path: Path
) -> None:
    """Interrupted on Ray, resumed in one process and interrupted again, finished by `g3 index build --ray`:
    every shard is encoded exactly once and the index is the single-process one."""
    from typer.testing import CliRunner

    from g3.cli import app

    work = tmp_path / ".idx.build"

    def stop_at(n: int) -> Callable[[int], None]:
        def on_shard(s: int) -> None:
            if len(list(work.glob("shard-*.json"))) >= n:
                raise KeyboardInterrupt

        return on_shard

    with pytest.raises(KeyboardInterrupt):
        build_index_ray(checkpoint, corpus, tmp_path / "idx", CONFIG, options=RayOptions(workers=1), progress=False,
                        on_shard=stop_at(1))  # fmt: skip
    assert len(list(work.glob("shard-*.json"))) == 1 and not (tmp_path / "idx").exists()
    with pytest.raises(KeyboardInterrupt):
        build_index(GeoAligner.from_pretrained(str(checkpoint)), corpus, tmp_path / "idx", CONFIG, progress=False,
                    on_shard=stop_at(2))  # fmt: skip
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.glob("shard-*")}
    assert len(before) == 2 * 3  # two shards: keys, rows, completion marker

    root = Path(corpus.store.root).parent  # type: ignore[attr-defined]
    args = ["index", "build", "--corpus", str(root / "corpus.csv"), "--images", str(root / "images"),
            "--checkpoint", str(checkpoint), "--out", str(tmp_path / "idx"), "--min-image-bytes", "0",
            "--batch-size", "8", "--shard-size", "12", "--workers", "0", "--no-progress", "--keep-shards",
            "--ray", "--ray-workers", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "38 rows" in result.output
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.glob("shard-*")}
    assert len(after) == 4 * 3 and {k: after[k] for k in before} == before  # only the missing shards were encoded
    assert_same_index(straight, tmp_path / "idx")


@pytest.mark.slow
@needs_data
def test_worker_failure_is_a_clear_error(ray_local: None, corpus: GeoCorpus, checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"corrupt")
    with pytest.raises(RayWorkerError, match=r"loading the aligner from .*broken: CheckpointError"):
        build_index_ray(broken, corpus, tmp_path / "idx", CONFIG, options=RayOptions(workers=1), progress=False)
    assert not (tmp_path / "idx").exists()
    with pytest.raises(RayWorkerError, match="cannot hold one worker"):
        build_index_ray(checkpoint, corpus, tmp_path / "idx", CONFIG, options=RayOptions(gpus_per_worker=1),
                        progress=False)  # fmt: skip


@pytest.mark.slow
@needs_data
def test_ray_evaluation_writes_the_single_process_predictions(ray_local: None, tmp_path: Path) -> None:
    from g3.evaluation.datasets import load_im2gps3k
    from g3.evaluation.distributed import run_evaluation_ray
    from g3.evaluation.runner import PREDICTIONS, read_predictions, run_evaluation

    cache = Path(os.environ.get("G3_CACHE_DIR") or tmp_path / "cache")
    ensure_tiny_assets(cache)  # built once here, not by two workers at once
    config = G3Config.load(ROOT / "configs" / "tiny.yaml").model_copy(update={"cache_dir": str(cache)})
    dataset = load_im2gps3k(IM2GPS3K / "im2gps3k_places365.csv", PHOTOS)
    with G3.from_config(config) as g3:
        single = run_evaluation(g3, dataset, tmp_path / "single", batch_size=2, limit=6, progress=False)
    batches: list[int] = []
    distributed = run_evaluation_ray(config.model_dump(mode="json"), dataset, tmp_path / "ray", batch_size=2, limit=6,
                                     progress=False, on_batch=batches.append)  # fmt: skip
    assert batches == [0, 1, 2]  # written in order, whatever order the workers finished in

    def without_timings(run: Path) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k != "timings"} for r in read_predictions(run / PREDICTIONS)]

    records = without_timings(tmp_path / "ray")
    assert len(records) == 6 and all(r["error"] is None for r in records)
    assert all(isinstance(r["degraded"], bool) and "degradations" in r for r in records)  # recorded as in one process
    assert records == without_timings(tmp_path / "single")
    assert distributed["metrics"] == single["metrics"] and distributed["counts"] == single["counts"]
    assert (tmp_path / "ray" / "config.yaml").read_text() == (tmp_path / "single" / "config.yaml").read_text()
    # the candidate pools travel back from the workers too: the same pools.jsonl as one process writes
    assert (tmp_path / "ray" / "pools.jsonl").read_text() == (tmp_path / "single" / "pools.jsonl").read_text()
