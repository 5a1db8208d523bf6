"""g3's LMM backends against the real vLLM (its CPU build, in its own venv) serving a tiny random LLaVA.

The server runs on 127.0.0.1 for the whole session (start-up ≈ 35 s). Skipped, with the reason, only
where no vLLM venv exists (`bash scripts/vllm_cpu_venv.sh` builds it; `scripts/install.sh` does too).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from g3.lmm.base import LMMRequest, encode_image
from g3.lmm.openai_backend import OpenAIBackend
from g3.lmm.parse import parse_answers
from g3.lmm.prompts import EnsembleConfig, Evidence, build_requests
from g3.lmm.tiny import build_tiny_llava, export_for_vllm
from g3.lmm.vllm_server import VLLMServer, default_vllm_python

pytestmark = pytest.mark.slow

VLLM_PYTHON = default_vllm_python()
needs_vllm = pytest.mark.skipif(
    VLLM_PYTHON is None, reason="no vLLM venv: run `bash scripts/vllm_cpu_venv.sh` (or set G3_VLLM_PYTHON)"
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-llava")
    return export_for_vllm(build_tiny_llava(root / "hf"), root / "vllm")


@pytest.fixture(scope="session")
def vllm_server(vllm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    if VLLM_PYTHON is None:
        pytest.skip("no vLLM venv")
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with VLLMServer(vllm_model, python=VLLM_PYTHON, log_path=log) as server:
        yield server


def photo() -> bytes:
    rng = np.random.default_rng(0)
    return encode_image(Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))


EVIDENCE = Evidence(
    similar=np.array([[48.85 + i * 0.01, 2.35] for i in range(15)]),
    dissimilar=np.array([[-33.87, 151.21 + i * 0.01] for i in range(15)]),
    similar_places=["Paris, Ile-de-France, France"] * 15,
)


@needs_vllm
def test_prompt_ensemble_with_structured_output(vllm_server: VLLMServer, vllm_model: Path) -> None:
    config = EnsembleConfig(max_tokens=96, seed=3)
    requests = build_requests(config, photo(), EVIDENCE)
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
    requests = build_requests(EnsembleConfig(max_tokens=48, seed=7), photo(), EVIDENCE)
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
