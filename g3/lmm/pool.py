"""Several OpenAI-compatible servers behind one backend: round-robin, health checks, failover.

`OpenAIPoolBackend` spreads requests over N servers (e.g. one ``vllm serve`` per GPU or per machine). Each
server is an `OpenAIBackend` (its request code, payloads and structured-output fallback are reused as is);
the pool adds:

* **round-robin** — each request goes to the next server in rotation; at most ``max_concurrency`` requests
  are in flight per server (per event loop);
* **failover** — a connection error, a timeout or a 5xx answer takes that server out of rotation at once
  and the request is sent to the next healthy server; busy answers (408, 409, 429) move the request on
  without taking the server out; other 4xx answers are the request's fault and are returned as they are;
* **health checks** — a daemon thread probes ``GET {root}/health`` (vLLM; ``root`` is the base URL without
  ``/v1``), falling back to ``GET {base_url}/models`` where ``/health`` does not exist: servers in
  rotation every ``health_interval_s``, servers out of rotation after an exponential backoff
  (``backoff_initial_s`` doubling per consecutive failure up to ``backoff_max_s``). A passing check puts
  a server back in rotation; its first successful request resets the backoff;
* **no invented answers** — when no server can answer, each request gets an `LMMResponse` whose ``error``
  names every server and why it failed (never an exception), so the agent degrades to retrieval with
  a warning.

State changes are logged (warning when a server leaves the rotation, info when it returns); `stats`
reports requests, successes, failures and state per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from g3.lmm.base import ErrorKind, LMMBackend, LMMRequest, LMMResponse, Usage
from g3.lmm.openai_backend import OpenAIBackend, describe_error, error_kind

log = logging.getLogger(__name__)

#: HTTP statuses meaning "busy, ask again": the request moves on, the server stays in rotation.
BUSY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ServerStats:
    """One server of a pool: its counters and state at the time `OpenAIPoolBackend.stats` was called.

    ``requests`` counts attempts sent to it; ``failures`` the ones that took it out of rotation (connection
    error, timeout, 5xx); ``rejected`` the other errors it answered (4xx: the request's fault, or busy).
    ``next_check_s`` is the time until its next health check (seconds, ≥ 0).
    """

    url: str
    state: Literal["up", "down"]
    requests: int
    successes: int
    failures: int
    rejected: int
    in_flight: int
    health_checks: int
    failed_health_checks: int
    last_error: str | None
    next_check_s: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(eq=False)
class _Server:
    """Mutable state of one server (guarded by the pool's lock)."""

    backend: OpenAIBackend
    health_url: str
    models_url: str
    use_models: bool = False  # /health is missing: probe /v1/models
    up: bool = True
    requests: int = 0
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    in_flight: int = 0
    health_checks: int = 0
    failed_health_checks: int = 0
    streak: int = 0  # consecutive failures (requests or checks) since the last successful request
    last_error: str | None = None
    down_since: float = 0.0
    next_check: float = 0.0  # time.monotonic() of the next health check

    @property
    def url(self) -> str:
        return self.backend.base_url


@dataclass(eq=False)
class _LoopState:
    """Per event loop: one semaphore per server bounding its requests in flight."""

    slots: list[asyncio.Semaphore] = field(default_factory=list)


def _root(base_url: str) -> str:
    """``http://host:port`` of ``http://host:port/v1`` (a URL not ending in ``/v1`` is its own root)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class OpenAIPoolBackend(LMMBackend):
    """Chat completions spread round-robin over several OpenAI-compatible servers, with failover.

    ``base_urls`` are the servers' roots ending in ``/v1`` (all serving ``model``); the other arguments are
    those of `OpenAIBackend`, ``max_concurrency`` per server. One attempt is one HTTP call (the client's own
    retries are off: the pool retries). A request gets up to ``max_retries + len(base_urls)`` attempts:
    each goes to a healthy server it has not tried yet; a server is asked again only when every healthy
    one was tried (after a short backoff). With no healthy server left, the request fails at once with an
    error response — the pool never waits for a server to come back. ``attempt_timeout_s`` (default
    ``timeout_s``) limits one attempt, so that a server that hangs is left for the next one while the
    photo's ``timeout_s`` still runs; a timed-out attempt takes its server out of rotation like a refused
    connection.
    """

    name = "openai-pool"

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        attempt_timeout_s: float | None = None,
        max_retries: int = 3,
        structured_output: Literal["auto", "json_schema", "none"] = "auto",
        image_detail: Literal["low", "high", "auto"] | None = None,
        health_interval_s: float = 10.0,
        health_timeout_s: float = 2.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        urls = [str(u).rstrip("/") for u in base_urls]
        if not urls:
            raise ValueError("a server pool needs at least one base URL")
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise ValueError(f"a server pool lists the same base URL twice: {', '.join(duplicates)}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be ≥ 0, got {max_retries}")
        for label, value in (
            ("timeout_s", timeout_s),
            ("attempt_timeout_s", timeout_s if attempt_timeout_s is None else attempt_timeout_s),
            ("health_interval_s", health_interval_s),
            ("health_timeout_s", health_timeout_s),
            ("backoff_initial_s", backoff_initial_s),
            ("backoff_max_s", backoff_max_s),
        ):
            if value <= 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self._servers = [
            _Server(
                backend=OpenAIBackend(
                    url,
                    model,
                    api_key=api_key,
                    max_concurrency=max_concurrency,
                    timeout_s=min(timeout_s, attempt_timeout_s or timeout_s),
                    max_retries=0,
                    structured_output=structured_output,
                    image_detail=image_detail,
                ),
                health_url=f"{_root(url)}/health",
                models_url=f"{url}/models",
            )
            for url in urls
        ]
        self._cursor = 0
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    @property
    def base_urls(self) -> list[str]:
        return [s.url for s in self._servers]

    @property
    def endpoint(self) -> str:
        """``"url1, url2 (model NAME)"``: named in errors."""
        return f"{', '.join(self.base_urls)} (model {self.model})"

    # -- public state -------------------------------------------------------------------------------

    def stats(self) -> list[ServerStats]:
        """Counters and state of every server, in the order of ``base_urls``."""
        now = time.monotonic()
        with self._lock:
            return [
                ServerStats(
                    url=s.url,
                    state="up" if s.up else "down",
                    requests=s.requests,
                    successes=s.successes,
                    failures=s.failures,
                    rejected=s.rejected,
                    in_flight=s.in_flight,
                    health_checks=s.health_checks,
                    failed_health_checks=s.failed_health_checks,
                    last_error=s.last_error,
                    next_check_s=max(0.0, s.next_check - now),
                )
                for s in self._servers
            ]

    def healthy_urls(self) -> list[str]:
        """The servers in rotation now."""
        with self._lock:
            return [s.url for s in self._servers if s.up]

    # -- health checks ------------------------------------------------------------------------------

    def start(self) -> OpenAIPoolBackend:
        """Start the health-check thread (done by the first `agenerate`; stopped by `close`)."""
        with self._lock:
            if self._monitor is not None and self._monitor.is_alive():
                return self
            self._stop.clear()
            self._monitor = threading.Thread(target=self._monitor_loop, name="g3-lmm-pool-health", daemon=True)
            self._monitor.start()
        return self

    def close(self) -> None:
        """Stop the health-check thread."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            self._stop.set()
            self._wake.set()
            monitor.join(timeout=self.health_timeout_s * 2 + 1)

    def check_health(self) -> list[bool]:
        """Probe every server now (blocking) and update the rotation; whether each one is healthy."""
        return [self._check(server) for server in self._servers]

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # a server failing from now on wakes the loop
            now = time.monotonic()
            with self._lock:
                due = [s for s in self._servers if s.next_check <= now]
            for server in due:
                if self._stop.is_set():
                    return
                try:
                    self._check(server)
                except Exception:  # never let the checks stop: a server would stay out for good
                    log.exception("health check of %s failed unexpectedly", server.url)
            with self._lock:
                wait = min(s.next_check for s in self._servers) - time.monotonic()
            self._wake.wait(timeout=min(max(wait, 0.01), 1.0))

    def _probe(self, server: _Server) -> str | None:
        """None when the server answers its health endpoint with 200, else why not."""
        if not server.use_models:
            try:
                with urllib.request.urlopen(server.health_url, timeout=self.health_timeout_s) as resp:
                    if resp.status == 200:
                        return None
                    return f"GET {server.health_url} answered HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                if exc.code not in (404, 405):
                    return f"GET {server.health_url} answered HTTP {exc.code}"
                server.use_models = True  # no /health here: ask for the model list instead
            except Exception as exc:  # refused, reset, timed out, not HTTP at all …
                return f"GET {server.health_url} failed: {getattr(exc, 'reason', None) or exc!r}"
        request = urllib.request.Request(
            server.models_url, headers={"Authorization": f"Bearer {server.backend.api_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.health_timeout_s) as resp:
                return None if resp.status == 200 else f"GET {server.models_url} answered HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"GET {server.models_url} answered HTTP {exc.code}"
        except Exception as exc:
            return f"GET {server.models_url} failed: {getattr(exc, 'reason', None) or exc!r}"

    def _check(self, server: _Server) -> bool:
        problem = self._probe(server)
        now = time.monotonic()
        with self._lock:
            server.health_checks += 1
            if problem is None:
                server.next_check = now + self.health_interval_s
                if not server.up:
                    server.up = True
                    log.info(
                        "LMM server %s is back in rotation (health check passed after %.1f s out)",
                        server.url,
                        now - server.down_since,
                    )
                return True
            server.failed_health_checks += 1
            self._mark_failed(server, f"health check: {problem}", now, check=True)
            return False

    def _backoff(self, streak: int) -> float:
        return float(min(self.backoff_initial_s * 2 ** max(streak - 1, 0), self.backoff_max_s))

    def _mark_failed(self, server: _Server, problem: str, now: float, *, check: bool = False) -> None:
        """Take ``server`` out of rotation (lock held) and schedule its next health check after a backoff.

        Requests that were in flight when the server went down fail too: they do not lengthen the backoff.
        """
        server.last_error = problem
        if not server.up and not check:
            return
        server.streak += 1
        delay = self._backoff(server.streak)
        server.next_check = now + delay
        if server.up:
            server.up = False
            server.down_since = now
            log.warning(
                "LMM server %s is out of rotation: %s (next health check in %.1f s)", server.url, problem, delay
            )
        self._wake.set()

    # -- requests -----------------------------------------------------------------------------------

    def _pick(self, tried: set[int]) -> int | None:
        """The next server in rotation, preferring one not in ``tried``; None when none is up."""
        with self._lock:
            count = len(self._servers)
            fallback = None
            for step in range(count):
                index = (self._cursor + step) % count
                if not self._servers[index].up:
                    continue
                if index not in tried:
                    self._cursor = index + 1
                    return index
                if fallback is None:
                    fallback = index
            if fallback is not None:
                self._cursor = fallback + 1
            return fallback

    def _slots(self) -> list[asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [old for old in self._loops if old.is_closed()]:
                del self._loops[old]
            state = self._loops.get(loop)
            if state is None:
                state = self._loops[loop] = _LoopState([asyncio.Semaphore(self.max_concurrency) for _ in self._servers])
            return state.slots

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        """Answer every request on the servers in rotation; one response per request, in order."""
        if not requests:
            return []
        self.start()
        slots = self._slots()
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[int, Any] = {}  # one client per server and call: its connections belong to this loop

            def client(index: int) -> Any:
                if index not in clients:
                    clients[index] = self._servers[index].backend.new_client(max_retries=0)
                    stack.push_async_callback(clients[index].close)
                return clients[index]

            async def one(request: LMMRequest) -> LMMResponse:
                return await self._one(request, slots, client)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _one(self, request: LMMRequest, slots: list[asyncio.Semaphore], client: Any) -> LMMResponse:
        import openai

        start = time.perf_counter()
        tried: set[int] = set()
        errors: list[str] = []
        kinds: list[ErrorKind] = []
        repeats = 0
        for _ in range(self.max_retries + len(self._servers)):
            index = self._pick(tried)
            if index is None:
                break
            if index in tried:  # every healthy server was asked: wait a little before asking again
                repeats += 1
                await asyncio.sleep(min(0.5 * 2 ** (repeats - 1), 8.0))
            tried.add(index)
            server = self._servers[index]
            async with slots[index]:
                with self._lock:
                    server.requests += 1
                    server.in_flight += 1
                try:
                    response = await server.backend.complete(client(index), request)
                except openai.OpenAIError as exc:
                    problem = describe_error(exc)
                    errors.append(f"{server.url}: {problem}")
                    kinds.append(error_kind(exc))
                    status = getattr(exc, "status_code", None)
                    down = isinstance(exc, openai.APIConnectionError) or (status is not None and status >= 500)
                    with self._lock:
                        if down:
                            server.failures += 1
                            self._mark_failed(server, problem, time.monotonic())
                        else:
                            server.rejected += 1
                    if down or status in BUSY_STATUSES:
                        continue
                    return self._error(request, f"{server.url} (model {self.model}): {problem}", start, kinds[-1])
                finally:
                    with self._lock:
                        server.in_flight -= 1
            with self._lock:
                server.successes += 1
                server.streak = 0
            return response
        # no attempt at all: every server is out of rotation, i.e. it refused, timed out or failed (5xx) lately
        kind: ErrorKind = "unreachable" if all(k == "unreachable" for k in kinds) else (
            "timeout" if all(k in ("unreachable", "timeout") for k in kinds) else "error")  # fmt: skip
        return self._error(request, self._all_failed(errors), start, kind)

    def _all_failed(self, errors: list[str]) -> str:
        now = time.monotonic()
        with self._lock:
            down = [s for s in self._servers if not s.up]
            out = [
                f"{s.url}: out of rotation ({s.last_error}; next health check in {max(0.0, s.next_check - now):.1f} s)"
                for s in down
                if not any(e.startswith(f"{s.url}: ") for e in errors)
            ]
        head = f"no LMM server could answer ({len(down)} of {len(self._servers)} out of rotation)"
        return head + ": " + "; ".join(errors + out) + f" (model {self.model})"

    @staticmethod
    def _error(request: LMMRequest, message: str, start: float, kind: ErrorKind) -> LMMResponse:
        return LMMResponse(request.tag, (), Usage(), time.perf_counter() - start, error=message, error_kind=kind)
