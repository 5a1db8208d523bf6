"""The evaluation runner end to end: the tiny offline setting on the 500 real IM2GPS3k photos, interrupted and
resumed; reports, metrics and plots; comparing runs; the distribution of predictions for unlabelled images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image

from g3.agent import G3
from g3.evaluation.compare import compare_table
from g3.evaluation.datasets import load_im2gps3k
from g3.evaluation.distribution import run_distribution
from g3.evaluation.runner import PREDICTIONS, EvaluationError, read_predictions, run_evaluation

IM2GPS3K = SHARED_DATA / "im2gps3k"
needs_data = pytest.mark.skipif(not (IM2GPS3K / "images_cc_subset500").is_dir(), reason="shared IM2GPS3k data absent")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_data
def test_runner_on_500_real_photos_interrupted_and_resumed(tiny_g3: G3, tmp_path: Path) -> None:
    dataset = load_im2gps3k(IM2GPS3K / "im2gps3k_places365.csv", IM2GPS3K / "images_cc_subset500")
    assert dataset.denominator == 2997 and len(dataset.missing) == 2497
    run = tmp_path / "run"

    def stop_after_three(batch: int) -> None:
        if batch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_g3, dataset, run, batch_size=32, concurrency=4, progress=False, on_batch=stop_after_three)
    # three batches were flushed: the first holds the 4 photos that probe the LMM (fail_fast), then 32 each
    assert len(read_predictions(run / PREDICTIONS)) == 4 + 32 + 32
    first_lines = (run / PREDICTIONS).read_text().splitlines()

    result = run_evaluation(tiny_g3, dataset, run, batch_size=32, concurrency=4, progress=False)
    records = read_predictions(run / PREDICTIONS)
    assert len(records) == 500 and len({r["img_id"] for r in records}) == 500  # nothing redone, nothing lost
    assert (run / PREDICTIONS).read_text().splitlines()[:68] == first_lines
    m = result["metrics"]
    assert m["denominator"] == 2997 and m["n"] == 500 and m["convention"] == "geodesic-lt"
    assert all(0 <= v <= 500 / 2997 for v in m["accuracy"].values())  # missing images count as wrong
    assert result["counts"] == {
        "dataset": 2997,
        "scored": 500,
        "failed": 0,
        "missing_images": 2497,
        "denominator": 2997,
        "degraded": 0,  # the tiny LLaVA's answers are constrained to the coordinate schema: every prompt parses
    }

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 500 and metrics["config"]["aligner"] == "tiny://aligner"
    report = (run / "report.md").read_text()
    assert "geodesic" in report and "2,997" in report.replace("2997", "2,997") and "Europe" in report
    assert "S3_Label" in report or "scene" in report.lower()
    for name in ("error_cdf.png", "world_map.png", "recall_vs_area.png"):
        with Image.open(run / name) as image:
            assert image.size[0] > 400 and image.size[1] > 200, name

    # a run folder cannot be reused with another configuration
    other = G3(tiny_g3.config.model_copy(update={"note": "changed"}), aligner=tiny_g3.runtime.aligner,
               index=tiny_g3.runtime.index, backend=tiny_g3.runtime.backend)  # fmt: skip
    with pytest.raises(EvaluationError, match="another configuration"):
        run_evaluation(other, dataset, run, progress=False)

    table = compare_table([run, run], paper="im2gps3k")
    assert table.count("| run | dataset |") == 1 and table.count("| run | im2gps3k |") == 2
    assert "| G3 paper (GPT-4V) | im2gps3k | 16.65 | 40.94 | 55.56 | 71.24 | 84.68 |" in table


@needs_data
def test_truncated_last_line_is_dropped_and_resumed(tiny_g3: G3, tmp_path: Path) -> None:
    csv = tmp_path / "small.csv"
    photos = sorted((IM2GPS3K / "images_cc_subset500").glob("*.jpg"))[:6]
    meta = {p.name: p for p in photos}
    rows = [line for line in (IM2GPS3K / "im2gps3k_places365.csv").read_text().splitlines()]
    keep = [rows[0]] + [r for r in rows[1:] if r.split(",")[0] in meta]
    csv.write_text("\n".join(keep) + "\n")
    dataset = load_im2gps3k(csv, IM2GPS3K / "images_cc_subset500")
    run = tmp_path / "run"
    run_evaluation(tiny_g3, dataset, run, batch_size=4, progress=False)
    text = (run / PREDICTIONS).read_text().splitlines()
    (run / PREDICTIONS).write_text("\n".join(text[:-1]) + "\n" + text[-1][:20])  # a write cut short
    result = run_evaluation(tiny_g3, dataset, run, batch_size=4, progress=False)
    assert result["metrics"]["n"] == 6 and len(read_predictions(run / PREDICTIONS)) == 6


@needs_data
def test_distribution_of_unlabelled_images(tiny_g3: G3, tmp_path: Path) -> None:
    folder = tmp_path / "generated"
    folder.mkdir()
    for p in sorted((IM2GPS3K / "images_cc_subset500").glob("*.jpg"))[:8]:
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not an image")
    summary = run_distribution(tiny_g3, folder, tmp_path / "dist", progress=False)
    assert summary["n"] == 8 and summary["failed"] == 0
    assert sum(summary["countries"].values()) == 8 and sum(summary["continents"].values()) == 8
    assert 0 <= summary["country_entropy_normalised"] <= 1 and summary["distinct_countries"] >= 1
    report = (tmp_path / "dist" / "report.md").read_text()
    assert "entropy" in report and (tmp_path / "dist" / "world_map.png").is_file()
    with pytest.raises(EvaluationError, match="not a folder"):
        run_distribution(tiny_g3, tmp_path / "nope", tmp_path / "d2", progress=False)


def test_a_run_saved_with_every_backends_lmm_settings_resumes(tmp_path: Path) -> None:
    """Runs written before each LMM backend had its own config type saved all backends' settings: the ones of
    other backends had no effect, so such a run folder resumes; a difference in its own settings still refuses."""
    import yaml

    from g3.agent.config import G3Config
    from g3.evaluation.runner import CONFIG, _check_config

    config = G3Config.load("tiny")
    flat = {"base_url": None, "api_key_env": "OPENAI_API_KEY", "max_concurrency": 8, "max_retries": 3,
            "device": "auto", "engine_args": {}, "health_interval_s": 10.0, "backoff_max_s": 30.0,
            "attempt_timeout_s": None}  # fmt: skip
    saved = config.model_dump(mode="json")
    saved["lmm"] = {**flat, **saved["lmm"]}
    (tmp_path / CONFIG).write_text(yaml.safe_dump(saved))
    _check_config(tmp_path, config)  # accepted
    saved["lmm"]["model"] = "another/model"
    (tmp_path / CONFIG).write_text(yaml.safe_dump(saved))
    with pytest.raises(EvaluationError, match=r"differs in: lmm"):
        _check_config(tmp_path, config)
