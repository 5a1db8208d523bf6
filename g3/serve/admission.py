"""A bounded queue in front of the agent: at most ``max_concurrent`` photos located at once and
``max_waiting`` requests waiting; past that the server answers 429 with ``Retry-After`` instead of
letting memory grow. During shutdown new requests get 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from g3.serve.errors import APIError


class Admission:
    """Admit, queue or refuse requests. Bound to the event loop that serves (created in the app's lifespan)."""

    def __init__(self, max_concurrent: int, max_waiting: int, *, retry_after_s: int = 2) -> None:
        if max_concurrent < 1 or max_waiting < 0:
            raise ValueError("max_concurrent must be ≥ 1 and max_waiting ≥ 0")
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self.in_flight = 0
        self.waiting = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_concurrent`` slots for the duration of a request."""
        if self.closing:
            raise APIError(503, "the server is shutting down; retry on another instance", code="shutting_down",
                           headers={"Retry-After": str(self.retry_after_s)})  # fmt: skip
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise APIError(
                429,
                f"too many requests: {self.in_flight} being located and {self.waiting} waiting; retry later",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait up to ``timeout_s`` for the in-flight ones; True if all finished."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
