"""Micro-batching of concurrent LMM calls, and a timeout guard around one call.

The graph runs one worker per prompt, each awaiting ``agenerate([request])``; in-process backends (vLLM,
transformers) are much faster when all those prompts arrive in one call. `BatchingBackend` sits between the
workers and such a backend: requests enqueued within ``max_wait_ms`` of the first pending one (or until
``max_batch`` of them) go to the inner backend as one ``agenerate`` call, and each caller gets back its own
responses. `generate_with_timeout` bounds one call and turns every failure (timeout, exception, malformed
answer) into error responses, so that a misbehaving backend cannot crash or hang the graph.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from g3.lmm.base import ErrorKind, LMMBackend, LMMRequest, LMMResponse, Usage


@dataclass(eq=False)
class _Caller:
    """One ``agenerate`` call waiting for its responses."""

    requests: list[LMMRequest]
    future: asyncio.Future[list[LMMResponse]]
    responses: list[LMMResponse | None] = field(init=False)
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        self.responses = [None] * len(self.requests)
        self.missing = len(self.requests)

    def fill(self, index: int, response: LMMResponse) -> None:
        """Store one response; resolve the future once all are here (dropped if the caller was cancelled)."""
        if self.future.done() or self.responses[index] is not None:
            return
        self.responses[index] = response
        self.missing -= 1
        if self.missing == 0:
            self.future.set_result([r for r in self.responses if r is not None])


@dataclass(eq=False)
class _Entry:
    """One request of a caller, queued for a batch."""

    caller: _Caller
    index: int
    enqueued_at: float  # loop time


class _LoopState:
    """The queue, flusher and in-flight calls of one event loop (never used from another loop)."""

    def __init__(self, max_concurrent_calls: int) -> None:
        self.queue: collections.deque[_Entry] = collections.deque()
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(max_concurrent_calls)
        self.flusher: asyncio.Task[None] | None = None
        self.dispatches: set[asyncio.Task[None]] = set()

    def drop(self, caller: _Caller) -> None:
        """Remove a caller's requests that are not sent yet."""
        self.queue = collections.deque(e for e in self.queue if e.caller is not caller)


class BatchingBackend(LMMBackend):
    """Gathers concurrent ``agenerate`` calls into batched calls of an inner backend.

    A batch is sent ``max_wait_ms`` after its first request was enqueued, or as soon as ``max_batch`` requests
    are pending; one caller's requests may be split over several batches. At most ``max_concurrent_calls``
    inner calls run at once per event loop (1 suits in-process backends, which run one call at a time anyway:
    requests arriving meanwhile gather into the next batch). A failing inner call gives error responses to
    its batch only; a cancelled caller's responses are dropped. State is kept per running event loop, so one
    object may serve several ``asyncio.run`` calls in sequence (or several loops in threads).
    ``calls`` and ``batched_requests`` count the inner calls made and the requests sent through them.
    """

    def __init__(
        self,
        inner: LMMBackend,
        *,
        max_wait_ms: float = 5.0,
        max_batch: int = 64,
        max_concurrent_calls: int = 1,
    ) -> None:
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be at least 1, got {max_concurrent_calls}")
        self.inner = inner
        self.name = f"{inner.name}+batching"
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch = max_batch
        self.max_concurrent_calls = max_concurrent_calls
        self.calls = 0
        self.batched_requests = 0
        self._lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        """The state of ``loop`` (created on first use); states of closed loops are dropped."""
        with self._lock:
            for old in [old for old in self._states if old.is_closed()]:
                del self._states[old]  # its tasks, event and semaphore refer to the loop: free them
            state = self._states.get(loop)
            if state is None:
                state = self._states[loop] = _LoopState(self.max_concurrent_calls)
            return state

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        """Queue the requests for the next batch and wait for their responses (in order)."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        caller = _Caller(list(requests), loop.create_future())
        now = loop.time()
        was_empty = not state.queue
        state.queue.extend(_Entry(caller, i, now) for i in range(len(caller.requests)))
        if state.flusher is None or state.flusher.done():
            state.flusher = loop.create_task(self._flush(state), name=f"{self.name}-flusher")
        elif was_empty or len(state.queue) >= self.max_batch:
            state.wake.set()
        try:
            return await caller.future
        except asyncio.CancelledError:
            state.drop(caller)
            raise

    async def _flush(self, state: _LoopState) -> None:
        """Send the queued requests in batches until the queue is empty."""
        loop = asyncio.get_running_loop()
        try:
            while state.queue:
                deadline = state.queue[0].enqueued_at + self.max_wait_s
                while state.queue and len(state.queue) < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    state.wake.clear()
                    try:
                        await asyncio.wait_for(state.wake.wait(), remaining)
                    except TimeoutError:
                        break
                await state.slots.acquire()  # requests keep gathering while the previous call runs
                if not state.queue:  # every waiting caller was cancelled
                    state.slots.release()
                    continue
                batch = [state.queue.popleft() for _ in range(min(self.max_batch, len(state.queue)))]
                task = loop.create_task(self._dispatch(state, batch), name=f"{self.name}-call")
                state.dispatches.add(task)
                task.add_done_callback(state.dispatches.discard)
        except BaseException as exc:  # never leave a caller waiting on a dead flusher
            entries, state.queue = list(state.queue), collections.deque()
            _fail(entries, f"the batching flusher stopped: {type(exc).__name__}: {exc}", 0.0)
            raise

    async def _dispatch(self, state: _LoopState, batch: list[_Entry]) -> None:
        """Run one inner call for ``batch`` and hand each response to its caller."""
        requests = [e.caller.requests[e.index] for e in batch]
        with self._lock:
            self.calls += 1
            self.batched_requests += len(requests)
        start = time.perf_counter()
        try:
            try:
                responses = await self.inner.agenerate(requests)
            except Exception as exc:
                _fail(batch, _raised(self.inner, exc), time.perf_counter() - start, _kind(exc))
                return
            problem = _mismatch(requests, responses)
            if problem is not None:
                _fail(batch, f"{self.inner.name} {problem}", time.perf_counter() - start)
                return
            for entry, response in zip(batch, responses, strict=True):
                entry.caller.fill(entry.index, response)
        except BaseException as exc:  # cancelled (loop shutting down) or worse: no caller may hang
            _fail(batch, f"the batched call was interrupted: {type(exc).__name__}", time.perf_counter() - start)
            raise
        finally:
            state.slots.release()


async def generate_with_timeout(
    backend: LMMBackend, requests: Sequence[LMMRequest], timeout_s: float | None
) -> list[LMMResponse]:
    """``backend.agenerate(requests)`` bounded by ``timeout_s`` (None: no bound), never raising.

    A timeout, an exception of the backend, or a wrong number or order of responses gives every request an
    error response instead.
    """
    requests = list(requests)
    if not requests:
        return []
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s) as scope:
            responses = await backend.agenerate(requests)
    except TimeoutError as exc:
        if scope.expired():
            message = f"timeout after {timeout_s:g} s (LMM {backend.endpoint})"
            return [_error(r, message, float(timeout_s or 0.0), "timeout") for r in requests]
        return _errors(requests, _raised(backend, exc), time.perf_counter() - start, "timeout")
    except Exception as exc:
        return _errors(requests, _raised(backend, exc), time.perf_counter() - start, _kind(exc))
    problem = _mismatch(requests, responses)
    if problem is not None:
        return _errors(requests, f"{backend.name} {problem}", time.perf_counter() - start)
    return list(responses)


def _mismatch(requests: Sequence[LMMRequest], responses: object) -> str | None:
    """Why ``responses`` is not one response per request with the same tags in order, or None."""
    if not isinstance(responses, list | tuple) or not all(isinstance(r, LMMResponse) for r in responses):
        return f"returned {type(responses).__name__}, not a list of LMMResponse"
    if len(responses) != len(requests):
        return f"returned {len(responses)} responses for {len(requests)} requests"
    want, got = [q.tag for q in requests], [r.tag for r in responses]
    if want != got:
        return f"returned responses tagged {got} for requests tagged {want}"
    return None


def _raised(backend: LMMBackend, exc: BaseException) -> str:
    """``"<backend> raised <type>: <message> (LMM <endpoint>)"``."""
    return f"{backend.name} raised {type(exc).__name__}: {exc} (LMM {backend.endpoint})"


def _kind(exc: BaseException) -> ErrorKind:
    """A backend's exception classified: connection failures, timeouts, anything else."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "unreachable" if isinstance(exc, ConnectionError) else "error"


def _error(request: LMMRequest, message: str, latency: float, kind: ErrorKind = "error") -> LMMResponse:
    return LMMResponse(request.tag, (), Usage(), latency, error=message, error_kind=kind)


def _errors(
    requests: Sequence[LMMRequest], message: str, latency: float, kind: ErrorKind = "error"
) -> list[LMMResponse]:
    return [_error(r, message, latency, kind) for r in requests]


def _fail(entries: Sequence[_Entry], message: str, latency: float, kind: ErrorKind = "error") -> None:
    for entry in entries:
        entry.caller.fill(entry.index, _error(entry.caller.requests[entry.index], message, latency, kind))
