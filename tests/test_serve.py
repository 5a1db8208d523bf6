"""The OpenAI-compatible server, for real: uvicorn on 127.0.0.1, the official `openai` client, raw HTTP for
the error paths. The pipeline is the tiny offline one (real aligner, real FAISS index) with a scripted LMM
(the real LMM backends have their own tests)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from scripted import ScriptedLMM
from vllm_server import free_port

from g3.agent import G3, G3Config, GeoPrediction
from g3.index import GeoIndex
from g3.models import GeoAligner
from g3.serve.app import ServeSettings, create_app


def jpeg_bytes(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "jpeg") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def photo_message(url: str, text: str | None = "Where was this taken?") -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def parts(tiny_assets: Path) -> tuple[GeoAligner, GeoIndex]:
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    return aligner, GeoIndex.load(tiny_assets / "index", aligner=aligner)


def make_g3(parts: tuple[GeoAligner, GeoIndex], backend: ScriptedLMM | None = None, **overrides: object) -> G3:
    config = G3Config.model_validate({"aligner": "x", "index": "x", "lmm": {"backend": "vllm"}, **overrides})
    return G3(config, aligner=parts[0], index=parts[1], backend=backend or ScriptedLMM())


@contextmanager
def serving(g3: G3, settings: ServeSettings | None = None) -> Iterator[tuple[str, object]]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(g3, settings), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def server(parts: tuple[GeoAligner, GeoIndex]) -> Iterator[str]:
    settings = ServeSettings(max_body_bytes=2_000_000, max_image_bytes=1_000_000, max_text_chars=200)
    with serving(make_g3(parts), settings) as (url, _):
        yield url


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and "Traceback" not in response.text
    return body["error"]


def test_models_health_and_a_photo(server: str) -> None:
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["g3"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == "g3"
    response = c.chat.completions.create(
        model="g3", messages=photo_message(data_url(jpeg_bytes())), max_tokens=5, temperature=0.1
    )  # ignored gracefully
    assert response.id.startswith("chatcmpl-") and len(response.choices) == 1
    text = response.choices[0].message.content or ""
    assert "latitude" in text and "longitude" in text and response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.total_tokens == 4 * 100 + 40 * 10


def test_json_response_format_and_n(server: str) -> None:
    c = client(server)
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "geo", "schema": {}}}):
        r = c.chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())), response_format=fmt)
        prediction = GeoPrediction.model_validate_json(r.choices[0].message.content or "")
        assert prediction.candidates[0].rank == 0 and (prediction.lat, prediction.lon) == (
            prediction.candidates[0].lat,
            prediction.candidates[0].lon,
        )
    r = c.chat.completions.create(
        model="g3", messages=photo_message(data_url(jpeg_bytes())), n=3, response_format={"type": "json_object"}
    )
    answers = [GeoPrediction.model_validate_json(ch.message.content or "") for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [(a.lat, a.lon) for a in answers] == [(c.lat, c.lon) for c in answers[0].candidates[:3]]


def test_streaming_reports_every_step(server: str) -> None:
    stream = client(server).chat.completions.create(
        model="g3",
        messages=photo_message(data_url(jpeg_bytes())),
        stream=True,
        stream_options={"include_usage": True},
    )
    steps, content, finished, usage = [], "", False, None
    for chunk in stream:
        extra = chunk.model_extra or {}
        if extra.get("g3"):
            steps.append(extra["g3"]["step"])
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finished = finished or choice.finish_reason == "stop"
        usage = chunk.usage or usage
    assert steps[:3] == ["encode", "retrieve", "render"] and steps.count("generate") == 4
    assert steps[-3:] == ["parse", "verify", "describe"]
    assert "latitude" in content and finished and usage is not None and usage.total_tokens > 0
    raw = httpx.post(
        f"{server}/v1/chat/completions",
        timeout=60,
        json={"model": "g3", "messages": photo_message(data_url(jpeg_bytes())), "stream": True},
    )
    events = [line for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and raw.headers["content-type"].startswith("text/event-stream")
    retrieve = next(json.loads(e[6:]) for e in events[:-1] if '"retrieve"' in e)
    assert len(retrieve["g3"]["data"]["similar"]) == 15


def test_auth(parts: tuple[GeoAligner, GeoIndex]) -> None:
    with serving(make_g3(parts), ServeSettings(api_keys=("k1", "k2"))) as (url, _):
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").models.list()
        assert_error(httpx.get(f"{url}/v1/models"), 401, "invalid_api_key")
        assert [m.id for m in client(url, key="k2").models.list().data] == ["g3"]
        r = client(url, key="k1").chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())))
        assert r.choices
        assert httpx.get(f"{url}/health").status_code == 200  # health stays open


def post(url: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, **kw)  # type: ignore[arg-type]


def test_each_limit_and_error(server: str, tmp_path: Path) -> None:
    good = {"model": "g3", "messages": photo_message(data_url(jpeg_bytes()))}
    assert post(server, good).status_code == 200
    assert_error(post(server, {"model": "g3", "messages": [{"role": "user", "content": "hi"}]}), 400, "no_image")
    two = photo_message(data_url(jpeg_bytes()))
    two[0]["content"].append({"type": "image_url", "image_url": {"url": data_url(jpeg_bytes())}})
    assert_error(post(server, {"model": "g3", "messages": two}), 400, "too_many_images")
    long_text = {"model": "g3", "messages": photo_message(data_url(jpeg_bytes()), text="x" * 500)}
    assert_error(post(server, long_text), 400, "text_too_long")
    assert_error(post(server, {**good, "model": "gpt-4"}), 404, "model_not_found")
    huge_image = {"model": "g3", "messages": photo_message(data_url(b"\xff\xd8" + b"0" * 1_200_000))}
    assert_error(post(server, huge_image), 413, "image_too_large")
    assert_error(post(server, {"model": "g3", "messages": photo_message("x" * 2_100_000)}), 413, "body_too_large")
    pixels = Image.new("1", (8000, 6000))  # 48 Mpx but a tiny PNG: refused from its header
    png = io.BytesIO()
    pixels.save(png, format="PNG")
    assert_error(
        post(server, {"model": "g3", "messages": photo_message(data_url(png.getvalue(), "png"))}),
        413,
        "image_too_large",
    )
    assert_error(
        post(server, {"model": "g3", "messages": photo_message(data_url(b"not an image at all"))}), 400, "invalid_image"
    )
    text_plain = {"model": "g3", "messages": photo_message("data:text/plain;base64,aGVsbG8=")}
    assert_error(post(server, text_plain), 415, "unsupported_media_type")
    assert_error(
        httpx.post(
            f"{server}/v1/chat/completions",
            content=b"model=g3",
            timeout=30,
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported_media_type",
    )
    assert_error(
        httpx.post(
            f"{server}/v1/chat/completions",
            content=b"{not json",
            timeout=30,
            headers={"content-type": "application/json"},
        ),
        422,
        "invalid_request",
    )
    assert_error(post(server, {"model": "g3", "messages": []}), 422, "invalid_request")
    assert_error(
        post(server, {"model": "g3", "messages": photo_message("https://example.org/a.jpg")}), 400, "url_not_allowed"
    )
    assert_error(
        post(server, {"model": "g3", "messages": photo_message(f"file://{tmp_path}/x.jpg")}), 403, "file_urls_disabled"
    )
    assert_error(httpx.get(f"{server}/v1/nothing-here"), 404, "http_error")


def test_file_urls_under_the_root(parts: tuple[GeoAligner, GeoIndex], tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes())
    with serving(make_g3(parts), ServeSettings(file_root=tmp_path / "photos")) as (url, _):
        ok = post(url, {"model": "g3", "messages": photo_message(f"file://{tmp_path}/photos/a.jpg")})
        assert ok.status_code == 200, ok.text
        outside = post(url, {"model": "g3", "messages": photo_message(f"file://{tmp_path}/photos/../secret.jpg")})
        assert_error(outside, 403, "file_outside_root")


def test_queue_full_timeout_and_graceful_shutdown(parts: tuple[GeoAligner, GeoIndex]) -> None:
    slow = make_g3(parts, ScriptedLMM(delay_s=1.5), lmm={"backend": "vllm", "timeout_s": 30})
    settings = ServeSettings(max_concurrent=1, max_waiting=0, request_timeout_s=10)
    body = {"model": "g3", "messages": photo_message(data_url(jpeg_bytes()))}
    with serving(slow, settings) as (url, server):
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(post(url, body))) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses[0] == 200 and 429 in statuses
        refused = next(r for r in results if r.status_code == 429)
        assert_error(refused, 429, "queue_full") and int(refused.headers["retry-after"]) > 0

        # graceful shutdown: a request in flight when the server is told to stop still completes
        inflight: list[httpx.Response] = []
        t = threading.Thread(target=lambda: inflight.append(post(url, body)))
        t.start()
        time.sleep(0.5)
        server.should_exit = True  # type: ignore[attr-defined]
        t.join()
        assert inflight[0].status_code == 200

    with serving(slow, ServeSettings(request_timeout_s=0.3)) as (url, _):
        assert_error(post(url, body), 504, "timeout")
        raw = post(url, {**body, "stream": True})
        events = [line for line in raw.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["code"] == "timeout"


def test_openapi_is_fuzzed_without_server_errors(server: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures: list[str] = []
    statuses: list[int] = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case: object) -> None:
            body = getattr(case, "body", None)
            if isinstance(body, dict) and "model" in body:
                body["model"] = "g3"  # past the model check, into message validation and the pipeline
            response = case.call(base_url=server, timeout=60)  # type: ignore[attr-defined]
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")  # type: ignore[attr-defined]

        check()
    assert not failures, failures
    assert {400, 422} & set(statuses)  # the fuzzer reached request validation


def test_fewer_choices_than_n_are_announced(parts: tuple[GeoAligner, GeoIndex]) -> None:
    """n counts choices in OpenAI-style clients: when the photo has fewer candidates than n, the response
    says so (extension field "g3"; in a stream, a "choices" step) instead of silently returning fewer."""
    with serving(make_g3(parts, ScriptedLMM("garbage"))) as (url, _):  # no parsable answer: one candidate
        c = client(url)
        r = c.chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())), n=3)
        info = (r.model_extra or {})["g3"]
        assert len(r.choices) == 1 and info["choices_requested"] == 3 and info["choices_returned"] == 1
        assert "only 1" in info["note"] and "1 candidate" in info["note"]
        one = c.chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())))
        assert (one.model_extra or {})["g3"] == {"choices_requested": 1, "choices_returned": 1, "note": None}
        stream = c.chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())), n=3,
                                           stream=True)  # fmt: skip
        notes = [(ch.model_extra or {})["g3"] for ch in stream if (ch.model_extra or {}).get("g3")]
        choices = [n for n in notes if n["step"] == "choices"]
        assert len(choices) == 1 and choices[0]["data"]["choices_returned"] == 1
        assert "only 1" in choices[0]["data"]["note"]
