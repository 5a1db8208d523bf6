"""Running a coroutine from synchronous code, also where an event loop is already running (a notebook)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion and return its result.

    With no running event loop this is ``asyncio.run``. Inside a running loop (Jupyter, an async web
    framework) ``asyncio.run`` is refused, so the coroutine runs on a fresh loop in a worker thread while
    the caller waits: the caller's loop is blocked meanwhile, as by any synchronous call (``await`` the
    async method instead to keep it free). g3's LMM backends and micro-batcher keep their state per event
    loop, so both loops may use the same `G3`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    log.debug("an event loop is running in this thread: running the call on its own loop in a worker thread")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="g3-sync") as pool:
        return pool.submit(asyncio.run, coroutine).result()
