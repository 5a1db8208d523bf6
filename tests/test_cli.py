"""The `g3` console script, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from synthetic import make_corpus

from g3.models import GeoAligner

G3 = shutil.which("g3") or str(Path(sys.executable).with_name("g3"))


def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([G3, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"g3 {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_and_version() -> None:
    out = run("--help").stdout
    for command in ("train", "aligner", "corpus", "version"):
        assert command in out
    assert run("version").stdout.strip() == "0.1.0"


@pytest.mark.slow
def test_train_then_resume_from_the_command_line(tmp_path: Path, tiny_clip_dir: Path) -> None:
    csv, images = make_corpus(tmp_path / "data", per_region=8)
    config = tmp_path / "train.yaml"
    config.write_text(
        "aligner:\n"
        f"  clip: {tiny_clip_dir}\n"
        "  location_encoder: {kind: rff, rff_features: 16, hidden_dim: 32, out_dim: 32}\n"
        "train:\n"
        "  batch_size: 8\n  lr: 0.001\n  val_fraction: 0.25\n  num_workers: 1\n"
        "  init_location_encoder: keep\n  log_every_steps: 2\n"
    )
    run_dir = tmp_path / "run"
    common = ["--min-image-bytes", "0", "--save-every", "3", "--no-progress"]
    run("train", "--corpus", str(csv), "--images", str(images), "--config", str(config), "--out", str(run_dir),
        "--max-steps", "4", *common)  # fmt: skip
    assert (run_dir / "final" / "model.safetensors").is_file()
    first = GeoAligner.from_pretrained(str(run_dir / "final"))
    again = run("train", "--corpus", str(csv), "--images", str(images), "--config", str(config), "--out",
                str(run_dir), *common, check=False)  # fmt: skip
    assert again.returncode == 2 and "already holds a training run" in again.stderr
    assert "Traceback" not in again.stderr

    proc = run("train", "--out", str(run_dir), "--resume", "--max-steps", "9", *common)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 9 and '"val"' in proc.stdout
    resumed = GeoAligner.from_pretrained(str(run_dir / "final"))
    assert not torch.equal(first.image_gps_head[0].weight, resumed.image_gps_head[0].weight)
    report = json.loads((run_dir / "corpus_report.json").read_text())
    assert report["total_rows"] == 48 and report["kept"] == 48


def test_convert_official_checkpoint(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from test_official_checkpoint import REPLICA  # the official layout, reproduced

    pytest.importorskip("pyproj")
    pkg = tmp_path / "src" / "official_g3_replica.py"
    pkg.parent.mkdir()
    pkg.write_text(REPLICA)
    sys.path.insert(0, str(pkg.parent))
    try:
        import official_g3_replica

        model = official_g3_replica.G3(str(tiny_clip_dir))
    finally:
        sys.path.remove(str(pkg.parent))
    torch.save(model.state_dict(), tmp_path / "g3.pth")
    run("aligner", "convert", str(tmp_path / "g3.pth"), str(tmp_path / "converted"), "--clip", str(tiny_clip_dir))
    info = json.loads(run("aligner", "info", str(tmp_path / "converted")).stdout)
    assert info["aligner"]["location_encoder"]["projection"] == "mercator"
    assert info["trained_parameters"] > 9_000_000  # GeoCLIP-sized location encoder + heads
    ours = GeoAligner.from_pretrained(str(tmp_path / "converted"))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(px).gps_aligned, model.gps_image_embeds(px))

    bad = run("aligner", "convert", str(tmp_path / "absent.pth"), str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_corpus_check_on_real_im2gps3k_metadata(tmp_path: Path) -> None:
    csv = SHARED_DATA / "im2gps3k" / "images_cc_subset500.csv"
    images = SHARED_DATA / "im2gps3k" / "images_cc_subset500"
    if not images.is_dir():
        pytest.skip(f"{images} is not available")
    proc = run("corpus", "check", str(csv), "--images", str(images), "--no-require-country",
               "--report", str(tmp_path / "report.json"))  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["total_rows"] == 500 and report["kept"] == 500
    assert "500" in proc.stdout
    missing_country = run("corpus", "check", str(csv), "--images", str(images), check=False)
    assert missing_country.returncode == 2 and "require_country" in missing_country.stderr.replace("-", "_")


@pytest.mark.slow
def test_distributed_training_on_two_cpu_processes(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """DDP through accelerate (gloo on CPU): batches sharded, only the main process writes."""
    csv, images = make_corpus(tmp_path / "data", per_region=8)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"aligner:\n  clip: {tiny_clip_dir}\n"
        "  location_encoder: {kind: rff, rff_features: 16, hidden_dim: 32, out_dim: 32}\n"
        "train: {batch_size: 8, lr: 0.001, val_fraction: 0.25, num_workers: 0, init_location_encoder: keep}\n"
    )
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--standalone", "-m", "g3.cli", "train", "--corpus", str(csv),
         "--images", str(images), "--config", str(config), "--out", str(tmp_path / "run"), "--max-steps", "6",
         "--min-image-bytes", "0", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("training on 2 process(es)") == 2
    assert proc.stderr.count("trained aligner saved to") == 1  # the main process alone writes
    # 36 training images / 8 = 4 steps an epoch: the epoch end and the last step
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert GeoAligner.from_pretrained(str(tmp_path / "run" / "final")).config.location_encoder.hidden_dim == 32


def test_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    csv, images = make_corpus(tmp_path / "data", per_region=1)
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  batch_sise: 8\n")
    proc = run("train", "--corpus", str(csv), "--images", str(images), "--config", str(config),
               "--out", str(tmp_path / "run"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "invalid configuration" in proc.stderr and "batch_sise" in proc.stderr
    assert "Traceback" not in proc.stderr
    config.write_text("train: [unclosed\n")
    proc = run("train", "--corpus", str(csv), "--images", str(images), "--config", str(config),
               "--out", str(tmp_path / "run"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "cannot parse the YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_index_build_info_search(tmp_path: Path, tiny_aligner: GeoAligner) -> None:
    pytest.importorskip("faiss")
    csv, images = make_corpus(tmp_path / "data", per_region=4)
    tiny_aligner.save_pretrained(str(tmp_path / "aligner"))
    out = tmp_path / "indices" / "tiny"
    run("index", "build", "--corpus", str(csv), "--images", str(images), "--checkpoint", str(tmp_path / "aligner"),
        "--out", str(out), "--min-image-bytes", "0", "--batch-size", "8", "--shard-size", "10", "--workers", "0",
        "--no-progress", "--tf32")  # fmt: skip
    info = json.loads(run("index", "info", str(out)).stdout)
    assert info["rows"] == 24 and info["dim"] == 96 and info["kind"] == "Flat"
    query = images / "03_0002.png"
    found = json.loads(
        run(
            "index",
            "search",
            str(out),
            str(query),
            "--checkpoint",
            str(tmp_path / "aligner"),
            "-k",
            "3",
            "--dissimilar",
            "2",
        ).stdout
    )
    assert found[0]["similar"][0]["img_id"] == "03/0002.png" and found[0]["similar"][0]["score"] > 2.99
    assert found[0]["similar"][0]["place"] == "Lima, Lima, Peru"
    assert len(found[0]["dissimilar"]) == 2 and found[0]["dissimilar"][0]["score"] < found[0]["similar"][-1]["score"]
    other = tmp_path / "other"
    GeoAligner.from_clip(tiny_aligner.config, seed=9).save_pretrained(str(other))
    mismatch = run("index", "search", str(out), str(query), "--checkpoint", str(other), check=False)
    assert mismatch.returncode == 2 and "not with the aligner given" in mismatch.stderr


def test_gallery_search_from_the_command_line(tmp_path: Path, tiny_aligner: GeoAligner) -> None:
    csv = tmp_path / "gallery.csv"
    csv.write_text("LAT,LON\n48.85,2.35\n35.68,139.69\n-33.87,151.21\n")
    tiny_aligner.save_pretrained(str(tmp_path / "aligner"))
    _, images = make_corpus(tmp_path / "data", per_region=1)
    out = json.loads(
        run(
            "index", "gallery", str(csv), str(images / "00_0000.png"), "--checkpoint", str(tmp_path / "aligner"),
            "-k", "2", env={"G3_CACHE_DIR": str(tmp_path / "cache")},
        ).stdout
    )  # fmt: skip
    points = out[0]["points"]
    assert len(points) == 2 and points[0]["score"] >= points[1]["score"]
    assert {(p["lat"], p["lon"]) for p in points} <= {(48.85, 2.35), (35.68, 139.69), (-33.87, 151.21)}
    assert len(list((tmp_path / "cache" / "galleries").glob("*.npy"))) == 1  # embeddings cached for the next call


@pytest.mark.slow
def test_locate_from_the_command_line(tmp_path: Path) -> None:
    photos = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))[:2]
    if not photos:
        pytest.skip("the shared IM2GPS3k photos are not available")
    env = {"G3_CACHE_DIR": str(tmp_path / "cache")}
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    out = run("locate", "--config", config, *map(str, photos), "--explain", env=env).stdout
    assert out.count("(relative score ") == 2 and "candidates (best first)" in out and "meaningless" in out
    data = json.loads(run("locate", "--config", config, str(photos[0]), "--json", env=env).stdout)
    assert -90 <= data["lat"] <= 90 and data["candidates"][0]["rank"] == 0 and data["mode"] == "full"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:500])
    proc = run("locate", "--config", config, str(bad), str(photos[0]), env=env, check=False)
    assert proc.returncode == 1 and proc.stdout.count("(relative score ") == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "Traceback" not in proc.stderr


def test_eval_score_and_compare_from_the_command_line(tmp_path: Path) -> None:
    baseline = SHARED_DATA / "im2gps3k" / "baselines_geoestimation" / "ISNs_M-fstar-S3.csv"
    if not baseline.is_file():
        pytest.skip("the shared GeoEstimation result files are not available")
    out = run("eval", "score", str(baseline), "--convention", "haversine-le", "--radius-km", "6371.0").stdout
    assert "≤25km: 27.99%" in out and "reproduced exactly" in out
    data = json.loads(run("eval", "score", str(baseline), "--json").stdout)
    assert data["convention"] == "geodesic-lt" and data["n"] == 2997
    bad = run("eval", "score", str(baseline), "--convention", "manhattan", check=False)
    assert bad.returncode != 0 and "unknown convention" in bad.stderr
    missing = run("eval", "compare", str(tmp_path), check=False)
    assert missing.returncode == 2 and "finished g3 evaluation run" in missing.stderr
