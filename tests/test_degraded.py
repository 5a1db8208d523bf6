"""Degraded runs are loud: an LMM that cannot be reached (an OpenAI backend pointed at a closed port on
127.0.0.1) marks every prediction degraded with the reason and the URL; `g3 eval run` stops early naming
them and exits non-zero; a finished run over --max-degraded writes everything, counts the degraded photos
at the top of its report and exits non-zero; `g3 eval compare` marks degraded and tiny runs. A run whose
(scripted) LMM answers is not marked. Real tiny aligner and FAISS index, real IM2GPS3k photos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA
from scripted import ScriptedLMM
from typer.testing import CliRunner

from g3.agent import G3, G3Config
from g3.agent.degradation import LMM_FAILURES, REASONS, assess
from g3.agent.tiny import ensure_tiny_assets
from g3.cli import app
from g3.errors import DegradedRunError, LMMUnavailableError
from g3.evaluation.compare import compare_table, load_run, run_label
from g3.evaluation.datasets import load_im2gps3k
from g3.evaluation.degraded import FailFast, degraded_summary, fail_fast_reasons
from g3.evaluation.report import render_report
from g3.evaluation.runner import PREDICTIONS, batch_bounds, read_predictions, run_evaluation
from g3.index import GeoIndex
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage
from g3.lmm.batching import BatchingBackend
from g3.models import GeoAligner
from g3.serve.responses import answer_text

IM2GPS3K = SHARED_DATA / "im2gps3k"
IMAGES = IM2GPS3K / "images_cc_subset500"
needs_data = pytest.mark.skipif(not IMAGES.is_dir(), reason="shared IM2GPS3k data absent")
G3_BIN = shutil.which("g3") or str(Path(sys.executable).with_name("g3"))


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the tiny assets (``<cache>/tiny-v1/{aligner,index,llava}``)."""
    folder = tmp_path_factory.mktemp("g3-cache")
    ensure_tiny_assets(folder)
    return folder


@pytest.fixture(scope="module")
def closed_url() -> Iterator[str]:
    """An LMM URL on 127.0.0.1 that refuses connections: a port bound (so nothing else takes it) but not
    listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def unreachable_config(cache: Path, closed_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny aligner and index with an OpenAI-compatible LMM at the closed URL, as a YAML file."""
    path = tmp_path_factory.mktemp("config") / "unreachable.yaml"
    data = {
        "aligner": "tiny://aligner",
        "index": "tiny://index",
        "cache_dir": str(cache),
        "lmm": {"backend": "openai", "base_url": closed_url, "model": "some-model", "max_retries": 0},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IM2GPS3k CSV holding the rows of 6 photos of the shared subset."""
    csv = tmp_path_factory.mktemp("bench") / "small.csv"
    names = {p.name for p in sorted(IMAGES.glob("*.jpg"))[:6]}
    rows = (IM2GPS3K / "im2gps3k_places365.csv").read_text().splitlines()
    csv.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in names]) + "\n")
    return csv


def scripted_g3(cache: Path, backend: LMMBackend, config: G3Config | None = None) -> G3:
    """A full-mode G3 on the tiny assets with ``backend`` as its LMM; its configuration names the assets by
    path (not tiny://) unless ``config`` is given."""
    assets = cache / "tiny-v1"
    aligner = GeoAligner.from_pretrained(str(assets / "aligner"))
    index = GeoIndex.load(assets / "index", aligner=aligner)
    config = config or G3Config.model_validate(
        {"aligner": str(assets / "aligner"), "index": str(assets / "index"), "lmm": {"backend": "vllm"}}
    )
    return G3(config, aligner=aligner, index=index, backend=BatchingBackend(backend))


class OneInThreeUnreachable(LMMBackend):
    """Answers like `ScriptedLMM`, except for the photos whose bytes hash to 0 mod 3: for those every prompt
    fails as an unreachable server does."""

    name = "flaky"

    def __init__(self) -> None:
        self.answers = ScriptedLMM()

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        answered = await self.answers.agenerate(requests)
        return [
            LMMResponse(r.tag, (), Usage(), 0.0, error="ConnectionError: refused (LMM http://flaky/v1)",
                        error_kind="unreachable")
            if zlib.crc32(r.image) % 3 == 0 else a
            for r, a in zip(requests, answered, strict=True)
        ]  # fmt: skip


def g3_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([G3_BIN, *args], capture_output=True, text=True, env=env, timeout=600)


# --- units -------------------------------------------------------------------------------------------


def _response(tag: str, error: str | None = None, kind: str | None = None, texts: int = 0) -> LMMResponse:
    return LMMResponse(tag, ("x",) * texts, Usage(), 0.0, error=error, error_kind=kind)  # type: ignore[arg-type]


def test_reasons_by_pipeline_mode_and_failure() -> None:
    down = _response("a", "APIConnectionError: refused (LMM server http://h:1/v1 (model m))", "unreachable")
    slow = _response("b", "timeout after 5 s (LMM vllm (model m))", "timeout")
    odd = _response("c", "HTTP 500", "error")
    fine = _response("d", texts=3)
    assert assess("retrieval", [down], 0, None, "e") == [] and assess("gallery", [], 0, None, "e") == []
    assert [d.reason for d in assess("full", [down, slow, odd], 0, None, "e")] == ["lmm_unreachable"]
    assert [d.reason for d in assess("full", [slow, odd], 0, None, "e")] == ["lmm_timeout"]
    (error,) = assess("full", [odd, _response("e", "HTTP 500")], 0, None, "http://h:2/v1 (model m)")
    assert error.reason == "lmm_error" and error.message == (
        "every prompt of the ensemble failed — c, e: HTTP 500 (LMM http://h:2/v1 (model m)); "
        "the answer comes from retrieval only"
    )
    (partial,) = assess("full", [down, fine], 3, None, "http://h:1/v1 (model m)")
    assert partial.reason == "prompts_failed" and partial.message.startswith("1 of 2 prompts failed — a: APIConn")
    assert "(LMM http" not in partial.message  # the error names the server already
    assert [d.reason for d in assess("full", [down, fine], 0, None, "e")] == ["prompts_failed", "no_parseable_answer"]
    assert assess("full", [fine], 1, None, "e") == []
    assert set(REASONS) == {"lmm_unreachable", "lmm_timeout", "lmm_error", "no_parseable_answer", "prompts_failed",
                            "rerank_failed"}  # fmt: skip


def _record(img_id: str, *reasons: str, error: str | None = None) -> dict[str, object]:
    degradations = [{"reason": r, "message": f"{r} at http://x/v1"} for r in reasons]
    return {"img_id": img_id, "error": error, "degraded": bool(reasons), "degradations": degradations}


def test_fail_fast_holds_the_probe_and_stops_only_when_the_lmm_never_answered() -> None:
    watch = FailFast(3)
    assert watch.feed([_record("a", "lmm_unreachable"), _record("b", error="InvalidImageError: x")]) == []
    with pytest.raises(LMMUnavailableError, match=r"first 3 photos \(lmm_unreachable: 2, lmm_timeout: 1\).*a: "):
        watch.feed([_record("c", "lmm_unreachable"), _record("d", "lmm_timeout")])
    mixed = FailFast(3)
    held = [_record("a", "lmm_unreachable"), _record("b", "no_parseable_answer")]
    assert mixed.feed(held) == held and mixed.feed([_record("c", "lmm_error")]) == [_record("c", "lmm_error")]
    short = FailFast(4)
    assert short.feed([_record("a", "lmm_unreachable")]) == [] and short.release() == [_record("a", "lmm_unreachable")]
    assert FailFast(0).feed([_record("a", "lmm_unreachable")]) == [_record("a", "lmm_unreachable")]
    assert batch_bounds(10, 4, first=2) == [(0, 2), (2, 6), (6, 10)] and batch_bounds(5, 4) == [(0, 4), (4, 5)]


def test_degraded_summary_counts_photos_by_reason() -> None:
    records: list[dict[str, object]] = [
        _record("a", "prompts_failed", "no_parseable_answer"),
        _record("b", "no_parseable_answer"),
        _record("c"),
        _record("d", error="OSError: gone"),
        {"img_id": "e", "error": None},  # written before degradations were recorded
    ]
    summary = degraded_summary(records, "full")
    assert summary["located"] == 4 and summary["photos"] == 2 and summary["share"] == 0.5
    assert summary["by_reason"] == {"no_parseable_answer": 2, "prompts_failed": 1} and summary["unchecked"] == 1
    assert summary["examples"]["prompts_failed"] == "a: prompts_failed at http://x/v1"


def test_report_top_for_modes_without_an_lmm_and_notes(tmp_path: Path) -> None:
    metrics = {"accuracy": {}, "convention": "geodesic-lt", "n": 2, "denominator": 2}
    summary = degraded_summary([_record("a"), _record("b")], "retrieval")
    text = render_report(tmp_path, title="t", dataset="d", metrics=metrics, degraded=summary, note="tiny: random")
    top = text.split("**Dataset**")[0]
    assert "**Degraded predictions**: none possible: mode `retrieval` calls no LMM." in top
    assert "**Note of the configuration**: tiny: random" in top and "DEGRADED" not in text


# --- end to end --------------------------------------------------------------------------------------


@needs_data
def test_unreachable_lmm_degrades_every_prediction_naming_the_url(unreachable_config: Path, closed_url: str) -> None:
    photo = sorted(IMAGES.glob("*.jpg"))[0]
    with G3.from_config(unreachable_config) as g3:
        p = g3.locate(photo)
    assert p.degraded and [d.reason for d in p.degradations] == ["lmm_unreachable"]
    message = p.degradations[0].message
    assert closed_url in message and "some-model" in message and "APIConnectionError" in message
    assert "zero_shot, rag_5, rag_10, rag_15" in message and "retrieval only" in message
    assert [c.source for c in p.candidates] == ["retrieval"]
    assert all(closed_url in w for w in p.warnings if w.startswith("prompt "))  # the warnings name the URL
    dumped = json.loads(p.model_dump_json())
    assert dumped["degraded"] is True and dumped["degradations"][0]["reason"] == "lmm_unreachable"
    text = answer_text(p, 0)  # what `g3 serve` answers in plain text
    assert text.startswith("DEGRADED (lmm_unreachable): ") and closed_url in text

    proc = g3_command("locate", "-c", str(unreachable_config), str(photo))
    assert proc.returncode == 0, proc.stderr
    assert f"DEGRADED (lmm_unreachable): {photo}: every prompt of the ensemble failed" in proc.stderr
    assert closed_url in proc.stderr


@needs_data
def test_eval_run_with_an_unreachable_lmm_stops_early_then_exits_3_over_max_degraded(
    unreachable_config: Path, closed_url: str, small_bench: Path, tmp_path: Path
) -> None:
    common = ["eval", "run", "--dataset", "im2gps3k", "--metadata", str(small_bench), "--images", str(IMAGES),
              "-c", str(unreachable_config), "--no-progress"]  # fmt: skip
    stopped = g3_command(*common, "--out", str(tmp_path / "stopped"))
    assert stopped.returncode == 2, stopped.stderr
    assert "stopped early: the LMM failed for each of the first 4 photos (lmm_unreachable: 4)" in stopped.stderr
    assert closed_url in stopped.stderr and "Traceback" not in stopped.stderr
    assert read_predictions(tmp_path / "stopped" / PREDICTIONS) == []  # nothing of the probe was written
    assert not (tmp_path / "stopped" / "report.md").exists()

    # without the early stop the run finishes, writes everything and fails on the degraded share
    run = tmp_path / "degraded"
    result = CliRunner().invoke(app, [*common, "--out", str(run), "--fail-fast", "0"])
    assert result.exit_code == 3, result.output
    assert "6 of 6 located photos (100.00%) are degraded (lmm_unreachable: 6), over the limit of 2.00%" in (
        result.stderr
    )
    records = read_predictions(run / PREDICTIONS)
    assert len(records) == 6 and all(r["degraded"] for r in records)
    assert all(r["degradations"][0]["reason"] == "lmm_unreachable" for r in records)
    assert all(closed_url in r["degradations"][0]["message"] for r in records)
    report = (run / "report.md").read_text()
    head = report.split("**Dataset**")[0]  # everything above the dataset section
    assert "## DEGRADED RUN: 6 of 6 located photos (100.00%)" in head
    assert "| `lmm_unreachable` | 6 | 100.00 |" in head and closed_url in head
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["degraded"]["by_reason"] == {"lmm_unreachable": 6} and metrics["counts"]["degraded"] == 6

    assert "--max-degraded" in CliRunner().invoke(app, ["eval", "run", "--help"]).output


def test_fail_fast_counts_a_failed_rerank_when_it_is_the_only_lmm_request() -> None:
    assert fail_fast_reasons("full", "lmm_rerank") == fail_fast_reasons("retrieval", "fused") == LMM_FAILURES
    watch = FailFast(2, fail_fast_reasons("retrieval", "lmm_rerank"))
    with pytest.raises(LMMUnavailableError, match=r"first 2 photos \(rerank_failed: 2\).*a: rerank_failed"):
        watch.feed([_record("a", "rerank_failed"), _record("b", "rerank_failed")])


@needs_data
def test_eval_run_in_retrieval_mode_with_an_unreachable_rerank_stops_early(
    unreachable_config: Path, small_bench: Path, tmp_path: Path
) -> None:
    """Retrieval mode with verify.mode lmm_rerank: the rerank is the only LMM request, so its failure on
    every probe photo stops the run as a dead LMM does in full mode."""
    config = tmp_path / "rerank.yaml"
    config.write_text(yaml.safe_dump({"extends": str(unreachable_config), "pipeline": {"mode": "retrieval"},
                                      "verify": {"mode": "lmm_rerank"}}))  # fmt: skip
    result = CliRunner().invoke(app, ["eval", "run", "--dataset", "im2gps3k", "--metadata", str(small_bench),
                                      "--images", str(IMAGES), "-c", str(config), "--no-progress",
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    assert isinstance(result.exception, LMMUnavailableError), result.output  # `g3` prints it, exits 2
    assert "the LMM failed for each of the first 4 photos (rerank_failed: 4)" in str(result.exception)
    assert read_predictions(tmp_path / "run" / PREDICTIONS) == []


@needs_data
def test_clean_partial_and_compare(cache: Path, tmp_path: Path, small_bench: Path, unreachable_config: Path) -> None:
    full = load_im2gps3k(IM2GPS3K / "im2gps3k_places365.csv", IMAGES)  # 2997 rows, 2497 missing
    clean = tmp_path / "clean"
    payload = run_evaluation(scripted_g3(cache, ScriptedLMM()), full, clean, limit=6, progress=False,
                             max_degraded=0.0)  # fmt: skip
    assert payload["degraded"]["photos"] == 0 and payload["counts"]["degraded"] == 0
    assert all(r["degraded"] is False and r["degradations"] == [] for r in read_predictions(clean / PREDICTIONS))
    report = (clean / "report.md").read_text()
    assert "**Degraded predictions**: none: all 6 located photos" in report and "DEGRADED" not in report
    # a limited run says what its denominator is, without claiming the whole benchmark
    assert "**Denominator**: 6 images: only the first 6 images found on disk" in report
    assert "every image of the benchmark" not in report and "count as wrong" in report
    assert "2497 images of the dataset are missing from disk and count as wrong" not in report
    # a short run's breakdowns list its groups rather than one "other" row
    continents = report.split("### By continent")[1].split("###")[0]
    assert "| other |" not in continents and continents.count("\n| ") >= 3

    flaky = tmp_path / "flaky"
    dataset = load_im2gps3k(small_bench, IMAGES)
    with pytest.raises(DegradedRunError, match=r"of 6 located photos .* degraded \(lmm_unreachable: \d\)") as caught:
        run_evaluation(scripted_g3(cache, OneInThreeUnreachable()), dataset, flaky, progress=False, max_degraded=0.02)
    share = caught.value.payload["degraded"]["share"]  # type: ignore[index]
    assert 0 < share < 1 and len(read_predictions(flaky / PREDICTIONS)) == 6  # no early stop: some photos answered
    assert (flaky / "report.md").read_text().split("**Dataset**")[0].count("DEGRADED RUN") == 1

    tiny = tmp_path / "tiny"  # the tiny setting with a working (scripted) LMM: flagged, not degraded
    tiny_config = G3Config.load(unreachable_config)
    run_evaluation(scripted_g3(cache, ScriptedLMM(), tiny_config), dataset, tiny, progress=False, max_degraded=0.0)

    table = compare_table([clean, flaky, tiny])
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["clean"].endswith("| – |")
    assert f"DEGRADED {100 * share:.1f}% (lmm_unreachable " in rows["flaky"] and "tiny" not in rows["flaky"]
    assert rows["tiny"].endswith("| tiny setting |")
    assert "Flagged runs are not the configured method's numbers" in table
    labels = [run_label(r, load_run(r)) for r in (clean, flaky, tiny)]  # the plots' legend
    assert labels == ["clean", f"flaky [DEGRADED {100 * share:.0f}%]", "tiny [tiny]"]
    result = CliRunner().invoke(app, ["eval", "compare", str(clean), str(flaky), str(tiny), "--plots",
                                      str(tmp_path / "plots")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "DEGRADED" in result.stdout and "tiny setting" in result.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "compare_error_cdf.png",
        "compare_recall_vs_area.png",
    ]
