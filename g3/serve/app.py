"""The OpenAI-compatible HTTP server: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``;
and a web page at ``GET /`` (routes in `g3.serve.web`).

`create_app` only assembles: settings (`g3.serve.settings`), middleware (`g3.serve.middleware`), exception
handlers (`g3.serve.errors`), routes (`g3.serve.router`, thin) over the serving layer (`g3.serve.serving`:
checks in `g3.serve.requests`, image fetching in `g3.serve.fetch`, the bounded queue in
`g3.serve.admission`, answers in `g3.serve.responses`). Every non-2xx answer has the body ``{"error":
{message, type, param, code}}``; a stream that fails ends with such an error chunk and ``data: [DONE]``.
No stack trace ever reaches a client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from g3.agent import G3
from g3.serve.errors import EXCEPTION_HANDLERS
from g3.serve.middleware import BodyLimit, JSONOnly
from g3.serve.router import check_key, router
from g3.serve.serving import ChatService
from g3.serve.settings import ServeSettings
from g3.serve.web import mount_web

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger(__name__)


def create_app(g3: G3, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``g3`` (which is not loaded or closed here: the caller owns it)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="g3", version=_version(), lifespan=_lifespan,
                  description="Worldwide image geolocalization (G3) behind an OpenAI-compatible API.")  # fmt: skip
    app.state.service = ChatService(g3, settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(JSONOnly)  # outside BodyLimit: a body that is not JSON is refused unread
    for exc_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    app.include_router(router)
    mount_web(app, image_root=settings.image_root, max_image_bytes=settings.max_image_bytes, auth=check_key,
              map_settings=settings.map_settings())  # fmt: skip
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: ChatService = app.state.service
    service.start()
    yield
    drained = await service.stop()
    log.info("shutdown: %s", "all requests finished" if drained else "gave up waiting for in-flight requests")


def _version() -> str:
    from g3 import __version__

    return __version__
