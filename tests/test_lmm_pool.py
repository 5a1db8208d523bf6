"""The server pool (`OpenAIPoolBackend`) against real HTTP servers on 127.0.0.1 that fail on purpose.

Each fake server speaks enough of the chat-completions API (``POST /v1/chat/completions``, ``GET /health``,
``GET /v1/models``) and can answer 500, refuse connections (stopped, then restarted on the same port), or
lack ``/health``. (The pool over real vLLM servers is in test_vllm.py.)
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from g3.agent.config import ConfigError, G3Config, LMMConfig
from g3.agent.g3 import make_backend
from g3.lmm.base import LMMRequest, encode_image
from g3.lmm.batching import BatchingBackend
from g3.lmm.openai_backend import OpenAIBackend
from g3.lmm.pool import OpenAIPoolBackend

IMAGE = encode_image(Image.new("RGB", (40, 30), (10, 120, 200)))


class FakeServer:
    """A chat-completions server in a thread; ``mode`` 'ok' or '500', ``health`` 'ok', '503' or 'missing'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.health = "ok"
        self.delay_s = 0.0
        self.completions = 0
        self.health_hits = 0
        self.models_hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status: int, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    fake.health_hits += 1
                    if fake.health == "missing":
                        self.reply(404, {"detail": "Not Found"})
                    else:
                        self.reply(200 if fake.health == "ok" else 503, {})
                elif self.path == "/v1/models":
                    fake.models_hits += 1
                    ok = fake.health != "503"
                    self.reply(200 if ok else 503, {"object": "list", "data": [{"id": "m", "object": "model"}]})
                else:
                    self.reply(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.completions += 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                time.sleep(fake.delay_s)
                with fake.lock:
                    fake.in_flight -= 1
                if fake.mode == "500":
                    self.reply(500, {"error": {"message": "engine died"}})
                elif fake.mode == "400":
                    self.reply(400, {"error": {"message": "image too large"}})
                else:
                    text = json.dumps({"latitude": 1.5, "longitude": 2.5, "server": fake.name})
                    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                               for i in range(body["n"])]  # fmt: skip
                    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                    self.reply(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                     "choices": choices, "usage": usage})  # fmt: skip

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start` again."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture()
def servers() -> Iterator[list[FakeServer]]:
    fakes = [FakeServer(name).start() for name in ("a", "b", "c")]
    yield fakes
    for fake in fakes:
        fake.stop()


def pool_of(fakes: list[FakeServer], **kwargs: object) -> OpenAIPoolBackend:
    """A pool whose periodic checks are rare (requests find failures first) and whose backoff is short."""
    settings: dict[str, object] = {"health_interval_s": 30, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return OpenAIPoolBackend([f.url for f in fakes], "m", **{**settings, **kwargs})  # type: ignore[arg-type]


def started(pool: OpenAIPoolBackend) -> OpenAIPoolBackend:
    """``pool`` with its health thread running and its first round of checks done."""
    pool.start()
    wait_until(lambda: all(s.health_checks >= 1 for s in pool.stats()))
    return pool


def requests(count: int, n: int = 1) -> list[LMMRequest]:
    return [LMMRequest(prompt=f"prompt {i}", image=IMAGE, n=n, tag=f"p{i}") for i in range(count)]


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_round_robin_is_even_and_answers_keep_their_order(servers: list[FakeServer]) -> None:
    with pool_of(servers) as pool:
        out = pool.generate(requests(30, n=2))
        assert [r.tag for r in out] == [f"p{i}" for i in range(30)]
        assert all(r.ok and len(r.texts) == 2 and r.usage.completion_tokens == 7 for r in out)
        assert [f.completions for f in servers] == [10, 10, 10]
        names = [json.loads(r.texts[0])["server"] for r in out[:6]]
        assert names == ["a", "b", "c", "a", "b", "c"]  # strict rotation
        stats = pool.stats()
        assert [(s.requests, s.successes, s.failures, s.state) for s in stats] == [(10, 10, 0, "up")] * 3


def test_server_answering_500_is_taken_out_and_comes_back(
    servers: list[FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = servers
    caplog.set_level(logging.INFO, logger="g3.lmm.pool")
    with started(pool_of(servers)) as pool:
        b.mode, b.health = "500", "503"
        out = pool.generate(requests(12))
        assert all(r.ok for r in out), [r.error for r in out]  # b's requests were retried on a and c
        b_stats = pool.stats()[1]  # its share (4) was sent before the first 500 came back; all 4 failed over
        assert b_stats.state == "down" and b_stats.failures == 4 and "HTTP 500" in (b_stats.last_error or "")
        assert b.completions == 4 and a.completions + c.completions == 12
        assert all(r.ok for r in pool.generate(requests(4))) and b.completions == 4  # out of rotation
        assert any("out of rotation" in m and b.url in m for m in caplog.messages)
        assert pool.healthy_urls() == [a.url, c.url]

        b.mode, b.health = "ok", "ok"  # repaired: its health check passes, it returns
        wait_until(lambda: pool.stats()[1].state == "up")
        assert any("back in rotation" in m and b.url in m for m in caplog.messages)
        before = b.completions
        assert all(r.ok for r in pool.generate(requests(9)))
        assert b.completions - before == 3  # even share again


def test_refused_connections_fail_over_and_the_restarted_server_returns(servers: list[FakeServer]) -> None:
    c = servers[2]
    with started(pool_of(servers)) as pool:
        assert all(r.ok for r in pool.generate(requests(3)))
        c.stop()
        start = time.perf_counter()
        out = pool.generate(requests(9))
        assert all(r.ok for r in out) and time.perf_counter() - start < 3
        stats = pool.stats()  # c's share (3) was sent before the first refusal; all 3 failed over
        assert stats[2].state == "down" and stats[2].failures == 3 and stats[2].requests == 4
        assert "APIConnectionError" in (stats[2].last_error or "") and stats[2].next_check_s <= 0.05
        wait_until(lambda: pool.stats()[2].failed_health_checks >= 2)  # probed again and again, with backoff
        assert pool.stats()[2].state == "down" and "Connection refused" in (pool.stats()[2].last_error or "")

        c.start()  # same port
        wait_until(lambda: pool.stats()[2].state == "up")
        before = c.completions
        assert all(r.ok for r in pool.generate(requests(6)))
        assert c.completions - before == 2
        assert pool.stats()[2].successes >= 3


def test_a_hung_server_fails_over_within_the_attempt_timeout(servers: list[FakeServer]) -> None:
    a = servers[0]
    a.delay_s = 5.0  # accepts the request, then says nothing for longer than the attempt may take
    with started(pool_of(servers, timeout_s=60, attempt_timeout_s=0.5)) as pool:
        start = time.perf_counter()
        out = pool.generate(requests(3))
        took = time.perf_counter() - start
        assert all(r.ok for r in out) and 0.5 <= took < 3
        assert {json.loads(r.texts[0])["server"] for r in out} == {"b", "c"}
        stats = pool.stats()
        assert stats[0].failures == 1 and "Timeout" in (stats[0].last_error or "")
    with pytest.raises(ValueError, match="attempt_timeout_s must be > 0"):
        pool_of(servers, attempt_timeout_s=0)


def test_every_server_down_gives_error_responses_not_exceptions(servers: list[FakeServer]) -> None:
    for fake in servers:
        fake.stop()
    with pool_of(servers) as pool:
        start = time.perf_counter()
        out = pool.generate(requests(4))
        assert time.perf_counter() - start < 3
        assert [r.tag for r in out] == ["p0", "p1", "p2", "p3"]
        assert all(not r.ok and r.texts == () for r in out)
        message = out[0].error or ""
        assert message.startswith("no LMM server could answer (3 of 3 out of rotation)")
        assert all(f.url in message for f in servers) and "APIConnectionError" in message
        assert message.endswith(f"(model {pool.model})") and all(r.error_kind == "unreachable" for r in out)
        # later requests fail at once too, naming why each server is out of rotation
        again = pool.generate(requests(1))[0]
        assert not again.ok and "out of rotation" in (again.error or "") and "next health check" in (again.error or "")
        assert again.error_kind == "unreachable"


def test_request_errors_are_not_server_failures(servers: list[FakeServer]) -> None:
    a = servers[0]
    a.mode = "400"
    with pool_of(servers) as pool:
        out = pool.generate(requests(3))
        assert not out[0].ok and "image too large" in (out[0].error or "") and out[1].ok and out[2].ok
        assert out[0].error_kind == "error" and (out[0].error or "").startswith(f"{a.url} (model {pool.model}): ")
        assert a.completions == 1  # not retried elsewhere: the request itself is at fault
        stats = pool.stats()[0]
        assert stats.state == "up" and stats.rejected == 1 and stats.failures == 0


def test_health_falls_back_to_models_endpoint(servers: list[FakeServer]) -> None:
    a = servers[0]
    a.health = "missing"
    with pool_of([a]) as pool:
        assert pool.check_health() == [True]
        assert a.health_hits == 1 and a.models_hits == 1
        assert pool.check_health() == [True]
        assert a.health_hits == 1 and a.models_hits == 2  # remembered: /health is not asked again
        a.stop()
        assert pool.check_health() == [False] and pool.stats()[0].state == "down"


def test_a_server_that_does_not_speak_http_is_kept_out(servers: list[FakeServer]) -> None:
    junk = socketserver.ThreadingTCPServer(("127.0.0.1", 0), JunkHandler)
    threading.Thread(target=junk.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{junk.server_address[1]}/v1"
        with OpenAIPoolBackend([servers[0].url, url], "m", backoff_initial_s=0.05) as pool:
            assert pool.check_health() == [True, False]  # a failed check, not an exception
            assert pool.healthy_urls() == [servers[0].url] and "failed" in (pool.stats()[1].last_error or "")
            assert all(r.ok for r in pool.generate(requests(4)))
            wait_until(lambda: pool.stats()[1].failed_health_checks >= 3)  # the checking thread lives on
    finally:
        junk.shutdown()
        junk.server_close()


class JunkHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"this is not HTTP\r\n\r\n")


def test_concurrency_is_bounded_per_server(servers: list[FakeServer]) -> None:
    a, b, _ = servers
    for fake in (a, b):
        fake.delay_s = 0.1
    with pool_of([a, b], max_concurrency=2) as pool:
        start = time.perf_counter()
        out = pool.generate(requests(12))
        elapsed = time.perf_counter() - start
    assert all(r.ok for r in out)
    assert a.max_in_flight == 2 and b.max_in_flight == 2
    assert 0.25 < elapsed < 12 * 0.1  # 3 rounds of 4 concurrent requests, not sequential


def test_config_takes_a_list_of_urls_and_builds_a_pool(servers: list[FakeServer]) -> None:
    urls = [f.url for f in servers]
    config = G3Config.load({"pipeline": {"mode": "full"}, "lmm": {"backend": "openai", "model": "m", "base_url": urls}})
    assert config.lmm.base_urls == tuple(urls)
    backend = make_backend(config.lmm)
    assert isinstance(backend, BatchingBackend) and isinstance(backend.inner, OpenAIPoolBackend)
    assert backend.inner.base_urls == urls and backend.name == "openai-pool+batching"
    assert backend.max_concurrent_calls == 3 * config.lmm.max_concurrency
    with backend:
        assert all(r.ok for r in backend.generate(requests(3)))
    assert [f.completions for f in servers] == [1, 1, 1]
    single = make_backend(LMMConfig(backend="openai", base_url=urls[0]))
    assert isinstance(single, BatchingBackend) and isinstance(single.inner, OpenAIBackend)  # unchanged
    one_item = make_backend(LMMConfig(backend="openai", base_url=[urls[0]]))
    assert isinstance(one_item, BatchingBackend) and isinstance(one_item.inner, OpenAIBackend)
    bounded = make_backend(LMMConfig(backend="openai", base_url=urls, timeout_s=60, attempt_timeout_s=20))
    assert isinstance(bounded, BatchingBackend) and isinstance(bounded.inner, OpenAIPoolBackend)
    assert [s.backend.timeout_s for s in bounded.inner._servers] == [20, 20, 20]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "empty list"),
        (["http://a:1/v1", "http://a:1/v1/"], "more than once"),
        (["http://a:1/v1", "a:2/v1"], "'a:2/v1' is not an http"),
        ("localhost:8000/v1", "is not an http"),
        ([8000], "must be URL strings"),
        ({"url": "http://a/v1"}, "a URL or a list of URLs"),
    ],
)
def test_config_rejects_bad_url_lists(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        G3Config.load({"lmm": {"backend": "openai", "base_url": value}})


def test_pool_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        OpenAIPoolBackend([], "m")
    with pytest.raises(ValueError, match="twice"):
        OpenAIPoolBackend(["http://a/v1", "http://a/v1/"], "m")
    with pytest.raises(ValueError, match="health_interval_s"):
        OpenAIPoolBackend(["http://a/v1"], "m", health_interval_s=0)
