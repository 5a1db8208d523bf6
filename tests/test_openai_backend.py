"""The OpenAI-compatible backend against real HTTP servers on 127.0.0.1 that misbehave on purpose.

(The same backend against a real vLLM server is in test_vllm.py.)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from g3.lmm.base import LMMRequest, encode_image
from g3.lmm.openai_backend import OpenAIBackend

IMAGE = encode_image(Image.new("RGB", (40, 30), (10, 120, 200)))


class Script:
    """What the fake server answers: a function of the request number and the JSON body."""

    def __init__(self, reply: Callable[[int, dict[str, Any]], tuple[int, dict[str, Any], dict[str, str]]]):
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay_s = 0.0


def completion(texts: list[str]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7 * len(texts), "total_tokens": 11 + 7 * len(texts)},
    }


@pytest.fixture()
def server() -> Iterator[tuple[str, Script]]:
    script = Script(lambda i, body: (200, completion(['{"latitude": 1, "longitude": 2}'] * body["n"]), {}))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                number = len(script.bodies)
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            time.sleep(script.delay_s)
            status, payload, headers = script.reply(number, body)
            with script.lock:
                script.in_flight -= 1
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()


def requests(count: int, n: int = 3) -> list[LMMRequest]:
    return [LMMRequest(prompt=f"prompt {i}", image=IMAGE, n=n, tag=f"p{i}", seed=i) for i in range(count)]


def test_payload_usage_and_order(server: tuple[str, Script]) -> None:
    url, script = server
    out = OpenAIBackend(url, "fake-model").generate(requests(3, n=4))
    assert [r.tag for r in out] == ["p0", "p1", "p2"] and all(r.ok for r in out)
    assert all(len(r.texts) == 4 for r in out) and out[0].usage.completion_tokens == 28
    body = script.bodies[0]
    assert body["model"] == "fake-model" and body["n"] == 4 and body["temperature"] == 1.2 and "seed" in body
    image_part, text_part = body["messages"][0]["content"]
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert text_part["text"].startswith("prompt ")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["latitude", "longitude"]


def test_retries_429_and_5xx_then_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.reply = lambda i, body: (
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if i == 1
        else (503, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        if i == 2
        else (200, completion(["ok"] * body["n"]), {})
    )
    out = OpenAIBackend(url, "m", max_retries=3).generate(requests(1))
    assert out[0].ok and out[0].texts == ("ok", "ok", "ok") and len(script.bodies) == 3


def test_persistent_failure_becomes_an_error_response_not_an_exception(server: tuple[str, Script]) -> None:
    url, script = server
    script.reply = lambda i, body: (500, {"error": {"message": "broken"}}, {"Retry-After": "0"})
    out = OpenAIBackend(url, "m", max_retries=2).generate(requests(2))
    assert all(not r.ok and r.texts == () for r in out)
    assert "InternalServerError" in (out[0].error or "") and "HTTP 500" in (out[0].error or "")
    assert f"(LMM server {url} (model m))" in (out[0].error or "") and out[0].error_kind == "error"
    assert len(script.bodies) == 2 * 3  # first try + 2 retries, for each request


def test_unreachable_server_is_named_in_the_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    out = OpenAIBackend(url, "some-model", max_retries=0).generate(requests(1))
    assert out[0].error_kind == "unreachable"
    assert out[0].error == f"APIConnectionError: Connection error. (LMM server {url} (model some-model))"


def test_timeout_is_an_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.delay_s = 1.0
    out = OpenAIBackend(url, "m", timeout_s=0.2, max_retries=0).generate(requests(1))
    assert not out[0].ok and "Timeout" in (out[0].error or "") and out[0].error_kind == "timeout"


def test_server_without_json_schema_support_falls_back_once(server: tuple[str, Script]) -> None:
    url, script = server
    script.reply = lambda i, body: (
        (400, {"error": {"message": "response_format json_schema is not supported"}}, {})
        if "response_format" in body
        else (200, completion(['{"latitude": 5, "longitude": 6}'] * body["n"]), {})
    )
    backend = OpenAIBackend(url, "m")
    assert all(r.ok for r in backend.generate(requests(1)))
    sent = len(script.bodies)
    assert all(r.ok for r in backend.generate(requests(2)))
    assert all("response_format" not in b for b in script.bodies[sent:])  # remembered


def test_other_bad_requests_are_reported(server: tuple[str, Script]) -> None:
    url, script = server
    script.reply = lambda i, body: (400, {"error": {"message": "image too large"}}, {})
    out = OpenAIBackend(url, "m").generate(requests(1))
    assert not out[0].ok and "image too large" in (out[0].error or "") and len(script.bodies) == 1


def test_concurrency_is_bounded(server: tuple[str, Script]) -> None:
    url, script = server
    script.delay_s = 0.1
    start = time.perf_counter()
    out = OpenAIBackend(url, "m", max_concurrency=3).generate(requests(9, n=1))
    assert all(r.ok for r in out)
    assert script.max_in_flight == 3
    assert time.perf_counter() - start < 9 * 0.1  # concurrent, not sequential


def test_no_schema_when_disabled(server: tuple[str, Script]) -> None:
    url, script = server
    OpenAIBackend(url, "m", structured_output="none").generate(requests(1))
    assert "response_format" not in script.bodies[0]
