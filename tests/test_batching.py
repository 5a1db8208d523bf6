"""Micro-batching of concurrent LMM calls (`BatchingBackend`) and the timeout guard (`generate_with_timeout`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage, encode_image
from g3.lmm.batching import BatchingBackend, generate_with_timeout
from g3.lmm.tiny import build_tiny_llava
from g3.lmm.transformers_backend import TransformersBackend


class RecordingBackend(LMMBackend):
    """Records the tags of each call; answers ``n`` texts ``"{tag}-{i}"`` per request."""

    name = "recording"

    def __init__(self, *, delay_s: float = 0.0, fail_calls: Sequence[int] = ()) -> None:
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_calls = set(fail_calls)
        self.closed = False

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        call = len(self.calls)
        self.calls.append([r.tag for r in requests])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if call in self.fail_calls:
            raise RuntimeError(f"call {call} broke")
        return [LMMResponse(r.tag, tuple(f"{r.tag}-{i}" for i in range(r.n)), Usage(1, r.n), 0.01) for r in requests]

    def close(self) -> None:
        self.closed = True


class WrongCountBackend(LMMBackend):
    name = "wrong-count"

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        return [LMMResponse("x", ("a",), Usage(), 0.0)]


IMAGE = b"\xff\xd8 not really a jpeg, the recording backend never decodes it"


def req(tag: str, n: int = 1, **kwargs: object) -> LMMRequest:
    return LMMRequest(prompt=f"prompt {tag}", image=IMAGE, n=n, tag=tag, **kwargs)  # type: ignore[arg-type]


def expected(request: LMMRequest) -> tuple[str, ...]:
    return tuple(f"{request.tag}-{i}" for i in range(request.n))


# --- BatchingBackend ----------------------------------------------------------------------------------------------


def test_concurrent_single_calls_become_one_inner_call() -> None:
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_wait_ms=20)
    requests = [req(f"p{k}", n=k % 3 + 1) for k in range(8)]

    async def main() -> list[list[LMMResponse]]:
        return list(await asyncio.gather(*(backend.agenerate([r]) for r in requests)))

    results = asyncio.run(main())
    assert inner.calls == [[r.tag for r in requests]]
    assert (backend.calls, backend.batched_requests) == (1, 8)
    for request, responses in zip(requests, results, strict=True):
        assert len(responses) == 1
        assert responses[0].ok and responses[0].tag == request.tag
        assert responses[0].texts == expected(request)
    assert backend.name == "recording+batching"


def test_multi_request_callers_keep_their_order() -> None:
    inner = RecordingBackend()
    backend = BatchingBackend(inner)
    groups = [[req(f"a{k}") for k in range(3)], [req("b0", n=2)], [req(f"c{k}") for k in range(4)]]

    async def main() -> list[list[LMMResponse]]:
        return list(await asyncio.gather(*(backend.agenerate(g) for g in groups)))

    results = asyncio.run(main())
    assert len(inner.calls) == 1 and len(inner.calls[0]) == 8
    for group, responses in zip(groups, results, strict=True):
        assert [r.tag for r in responses] == [q.tag for q in group]
        assert [r.texts for r in responses] == [expected(q) for q in group]


def test_max_batch_splits_batches() -> None:
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_wait_ms=50, max_batch=4)
    requests = [req(f"p{k}") for k in range(10)]

    async def singles() -> list[list[LMMResponse]]:
        return list(await asyncio.gather(*(backend.agenerate([r]) for r in requests)))

    results = asyncio.run(singles())
    assert [len(c) for c in inner.calls] == [4, 4, 2]
    assert [t for c in inner.calls for t in c] == [r.tag for r in requests]
    assert [r[0].texts for r in results] == [expected(q) for q in requests]

    # one caller's 10 requests are split too, and come back whole and in order
    inner.calls.clear()
    start = time.perf_counter()
    responses = backend.generate(requests)
    assert [len(c) for c in inner.calls] == [4, 4, 2]
    assert [r.tag for r in responses] == [q.tag for q in requests]
    assert time.perf_counter() - start < 1.0  # full batches do not wait for the window
    assert (backend.calls, backend.batched_requests) == (6, 20)


def test_requests_after_the_window_go_in_a_later_call() -> None:
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_wait_ms=5)

    async def later(request: LMMRequest, delay_s: float) -> list[LMMResponse]:
        await asyncio.sleep(delay_s)
        return await backend.agenerate([request])

    async def main() -> list[list[LMMResponse]]:
        return list(await asyncio.gather(later(req("a"), 0), later(req("b"), 0), later(req("c"), 0.2)))

    results = asyncio.run(main())
    assert inner.calls == [["a", "b"], ["c"]]
    assert [r[0].texts for r in results] == [("a-0",), ("b-0",), ("c-0",)]


def test_inner_exception_fails_only_its_batch() -> None:
    inner = RecordingBackend(fail_calls=[0])
    backend = BatchingBackend(inner, max_wait_ms=5)

    async def main() -> tuple[list[list[LMMResponse]], list[list[LMMResponse]]]:
        first = list(await asyncio.gather(*(backend.agenerate([req(f"x{k}")]) for k in range(3))))
        second = list(await asyncio.gather(*(backend.agenerate([req(f"y{k}")]) for k in range(3))))
        return first, second

    first, second = asyncio.run(main())
    assert len(inner.calls) == 2
    for responses in first:
        assert not responses[0].ok and responses[0].texts == ()
        assert "RuntimeError" in (responses[0].error or "") and "call 0 broke" in (responses[0].error or "")
    assert [r[0].texts for r in second] == [("y0-0",), ("y1-0",), ("y2-0",)]
    assert all(r[0].ok for r in second)


def test_malformed_inner_answer_gives_error_responses() -> None:
    backend = BatchingBackend(WrongCountBackend())
    responses = backend.generate([req("a"), req("b")])
    assert [r.tag for r in responses] == ["a", "b"]
    assert all(not r.ok and "1 responses for 2 requests" in (r.error or "") for r in responses)


def test_cancelled_caller_does_not_break_the_others() -> None:
    inner = RecordingBackend(delay_s=0.1)
    backend = BatchingBackend(inner, max_wait_ms=30)

    async def main() -> tuple[list[LMMResponse], list[LMMResponse], list[LMMResponse]]:
        # cancelled while its batch is in the inner call: its responses are dropped
        tasks = [asyncio.create_task(backend.agenerate([req(t)])) for t in ("a", "b", "c")]
        await asyncio.sleep(0.06)
        assert len(inner.calls) == 1
        tasks[1].cancel()
        a, c = await tasks[0], await tasks[2]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        # cancelled before its batch is sent: its request never reaches the inner backend
        early = [asyncio.create_task(backend.agenerate([req(t)])) for t in ("d", "e")]
        await asyncio.sleep(0)
        early[0].cancel()
        e = await early[1]
        assert early[0].cancelled()
        return a, c, e

    a, c, e = asyncio.run(main())
    assert [a[0].texts, c[0].texts, e[0].texts] == [("a-0",), ("c-0",), ("e-0",)]
    assert inner.calls == [["a", "b", "c"], ["e"]]


def test_one_backend_serves_several_event_loops_and_sync_generate() -> None:
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_wait_ms=5)

    async def main(prefix: str) -> list[list[LMMResponse]]:
        return list(await asyncio.gather(*(backend.agenerate([req(f"{prefix}{k}")]) for k in range(4))))

    first = asyncio.run(main("r"))
    second = asyncio.run(main("s"))
    assert [r[0].texts for r in first] == [(f"r{k}-0",) for k in range(4)]
    assert [r[0].texts for r in second] == [(f"s{k}-0",) for k in range(4)]
    synced = backend.generate([req("g0", n=2), req("g1")])
    assert [r.texts for r in synced] == [("g0-0", "g0-1"), ("g1-0",)]
    assert inner.calls == [[f"r{k}" for k in range(4)], [f"s{k}" for k in range(4)], ["g0", "g1"]]
    assert backend.generate([]) == []
    backend.close()
    assert inner.closed


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingBackend(RecordingBackend(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchingBackend(RecordingBackend(), max_wait_ms=-1)


# --- generate_with_timeout ----------------------------------------------------------------------------------------


def test_timeout_gives_error_responses_quickly() -> None:
    requests = [req("a"), req("b")]
    start = time.perf_counter()
    responses = asyncio.run(generate_with_timeout(RecordingBackend(delay_s=10), requests, 0.2))
    assert time.perf_counter() - start < 2.0
    assert [r.tag for r in responses] == ["a", "b"]
    assert all(r.error == "timeout after 0.2 s (LMM recording)" and r.texts == () and r.latency_s == 0.2
               for r in responses)  # fmt: skip
    assert all(r.error_kind == "timeout" for r in responses)


def test_timeout_through_the_batcher_does_not_hang() -> None:
    backend = BatchingBackend(RecordingBackend(delay_s=10), max_wait_ms=5)

    async def main() -> list[list[LMMResponse]]:
        return list(await asyncio.gather(*(generate_with_timeout(backend, [req(f"p{k}")], 0.2) for k in range(3))))

    start = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - start < 2.0
    assert all(r[0].error == "timeout after 0.2 s (LMM recording)" for r in results)


def test_raising_backend_gives_error_responses() -> None:
    responses = asyncio.run(generate_with_timeout(RecordingBackend(fail_calls=[0]), [req("a"), req("b")], 5))
    assert [r.tag for r in responses] == ["a", "b"]
    assert all(not r.ok and "RuntimeError: call 0 broke" in (r.error or "") for r in responses)


def test_wrong_number_of_responses_gives_error_responses() -> None:
    responses = asyncio.run(generate_with_timeout(WrongCountBackend(), [req("a"), req("b")], 5))
    assert [r.tag for r in responses] == ["a", "b"]
    assert all(not r.ok and "1 responses for 2 requests" in (r.error or "") for r in responses)


def test_normal_answers_pass_through_unchanged() -> None:
    requests = [req("a", n=2), req("b")]
    direct = RecordingBackend().generate(requests)
    for timeout in (5.0, None):
        assert asyncio.run(generate_with_timeout(RecordingBackend(), requests, timeout)) == direct
    assert asyncio.run(generate_with_timeout(RecordingBackend(), [], 1.0)) == []


# --- with the real transformers backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-batching"))


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels))


def test_batched_transformers_answers_match_a_direct_batched_call(tiny_llava: Path) -> None:
    photo, other = jpeg(0), jpeg(1)
    requests = [
        LMMRequest("Where was this photo taken?", photo, n=2, temperature=1.0, max_tokens=8, seed=1, tag="zs"),
        LMMRequest("Guess the GPS coordinates.", photo, n=2, temperature=1.0, max_tokens=8, seed=2, tag="gps"),
        LMMRequest("Where was this photo taken?", other, n=2, temperature=1.0, max_tokens=8, seed=3, tag="other"),
        LMMRequest("Candidates: (48.85, 2.35)", photo, n=2, temperature=1.0, max_tokens=8, seed=4, tag="rag"),
    ]
    with TransformersBackend(str(tiny_llava), batch_size=8) as inner:
        direct = inner.generate(requests)
        backend = BatchingBackend(inner, max_wait_ms=20)

        async def main() -> list[list[LMMResponse]]:
            return list(await asyncio.gather(*(backend.agenerate([r]) for r in requests)))

        batched = asyncio.run(main())
    assert backend.calls == 1 and backend.batched_requests == 4
    assert all(r.ok for r in direct)
    assert [r[0].tag for r in batched] == [q.tag for q in requests]
    assert [r[0].texts for r in batched] == [r.texts for r in direct]
    assert [r[0].usage for r in batched] == [r.usage for r in direct]
