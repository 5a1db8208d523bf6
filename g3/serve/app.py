"""The OpenAI-compatible HTTP server: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``;
and a web page at ``GET /`` (routes in `g3.serve.web`).

Routes are thin; request checks live in `g3.serve.requests`, image fetching in `g3.serve.fetch`, the
bounded queue in `g3.serve.admission`, response building in `g3.serve.responses`. Every non-2xx answer
has the body ``{"error": {message, type, param, code}}``; a stream that fails ends with such an error
chunk and ``data: [DONE]``. No stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from g3.agent import G3
from g3.errors import G3Error, ImageTooLargeError, InvalidImageError
from g3.serve.admission import Admission
from g3.serve.errors import APIError, error_body, error_response
from g3.serve.fetch import FetchError, FetchPolicy, fetch_image
from g3.serve.map_tiles import tile_origin
from g3.serve.protocol import ChatCompletionRequest, ChatCompletionResponse, Health, ModelCard, ModelList
from g3.serve.responses import chunk, completion, content_chunks, final_chunks, new_id, step_data
from g3.serve.web import MapSettings, mount_web

log = logging.getLogger(__name__)


class ServeSettings(BaseModel):
    """Limits and policies of the server. API keys come from the environment (see `g3 serve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = "g3"
    api_keys: tuple[str, ...] = Field(default=(), repr=False)
    max_body_bytes: int = Field(default=32 * 2**20, gt=0)
    max_image_bytes: int = Field(default=20 * 2**20, gt=0)
    max_images: int = Field(default=1, ge=1, description="photos per request (G3 locates one at a time)")
    max_text_chars: int = Field(default=8000, ge=0)
    max_concurrent: int = Field(default=4, ge=1, description="photos located at once")
    max_waiting: int = Field(default=32, ge=0, description="requests queued before 429")
    request_timeout_s: float = Field(default=300.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    allowed_url_hosts: tuple[str, ...] = ()
    file_root: Path | None = None
    allow_private_networks: bool = False
    image_root: Path | None = Field(default=None, description="folder of the index's images (web thumbnails)")
    map_tiles: str | None = Field(
        default=None,
        description="tile URL template of the web page's map, e.g. https://tile.example/{z}/{x}/{y}.png "
        "(None: the offline Natural Earth outlines only)",
    )
    map_attribution: str = Field(default="", max_length=500, description="credit line for the tiles (plain text)")
    map_max_zoom: int = Field(default=19, ge=1, le=24, description="deepest zoom the tile server has")

    @field_validator("map_tiles")
    @classmethod
    def _check_map_tiles(cls, value: str | None) -> str | None:
        if value is not None:
            tile_origin(value)  # raises ValueError naming what is wrong
        return value

    def map_settings(self) -> MapSettings:
        return MapSettings(tiles=self.map_tiles, attribution=self.map_attribution, max_zoom=self.map_max_zoom)

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            allowed_hosts=self.allowed_url_hosts,
            allow_private_networks=self.allow_private_networks,
            file_root=self.file_root,
            max_bytes=self.max_image_bytes,
        )


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"request body over {self.max_bytes:,} bytes", code="body_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await error_response(too_large)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(g3: G3, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``g3`` (which is not loaded or closed here: the caller owns it)."""
    settings = settings or ServeSettings()
    state: dict[str, Admission] = {}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["admission"] = Admission(settings.max_concurrent, settings.max_waiting)
        yield
        drained = await state["admission"].drain(settings.shutdown_grace_s)
        log.info("shutdown: %s", "all requests finished" if drained else "gave up waiting for in-flight requests")

    app = FastAPI(title="g3", version=_version(), lifespan=lifespan,
                  description="Worldwide image geolocalization (G3) behind an OpenAI-compatible API.")  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def json_only(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        if request.method == "POST" and request.url.path.startswith("/v1/"):
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                message = f"send JSON (Content-Type: application/json), not {kind or 'nothing'!r}"
                return error_response(APIError(415, message, code="unsupported_media_type"))
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {first.get('msg', 'malformed body')}" + (f" at {where}" if where else "")
        return error_response(APIError(422, message, code="invalid_request", param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving %s", request.url.path)
        return error_response(APIError(500, "internal error; see the server log", code="internal_error"))

    def check_key(request: Request) -> None:
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in settings.api_keys):
            raise APIError(401, "missing or invalid API key (Authorization: Bearer …)", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        admission = state["admission"]
        return Health(
            status="shutting_down" if admission.closing else "ok",
            model=settings.model_id,
            in_flight=admission.in_flight,
            waiting=admission.waiting,
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @v1.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_id, created=created)])

    @v1.post("/chat/completions", response_model=ChatCompletionResponse)
    async def chat(body: ChatCompletionRequest) -> Any:
        from g3.serve.requests import photo_url

        if body.model != settings.model_id:
            raise APIError(404, f"model {body.model!r} not found; this server serves {settings.model_id!r}",
                           code="model_not_found", param="model")  # fmt: skip
        url = photo_url(body, max_images=settings.max_images, max_text_chars=settings.max_text_chars)
        if body.min_confidence and g3.config.verify.ranker is None:
            raise APIError(400, "min_confidence needs calibrated confidences, and this server has no fitted ranker "
                           "(verify.ranker in its configuration); send the request without min_confidence",
                           code="no_confidence", param="min_confidence")  # fmt: skip
        try:
            image = await fetch_image(url, settings.fetch_policy())
        except FetchError as exc:
            raise APIError(exc.status, str(exc), code=exc.code, param="messages") from exc
        request_id = new_id()
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(state["admission"].slot())
        if body.stream:
            return StreamingResponse(
                _stream(g3, image, body, request_id, settings, stack), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )  # fmt: skip
        async with stack:
            try:
                async with asyncio.timeout(settings.request_timeout_s):
                    prediction = await g3.alocate(image)
            except TimeoutError as exc:
                raise APIError(504, f"locating the photo took longer than {settings.request_timeout_s:g} s",
                               code="timeout") from exc  # fmt: skip
            except ImageTooLargeError as exc:
                raise APIError(413, str(exc), code="image_too_large", param="messages") from exc
            except InvalidImageError as exc:
                raise APIError(400, str(exc), code="invalid_image", param="messages") from exc
        return completion(prediction, body, request_id, model=settings.model_id)

    app.include_router(v1)
    mount_web(app, image_root=settings.image_root, max_image_bytes=settings.max_image_bytes, auth=check_key,
              map_settings=settings.map_settings())  # fmt: skip
    return app


async def _stream(
    g3: G3, image: bytes, body: ChatCompletionRequest, request_id: str, settings: ServeSettings,
    stack: contextlib.AsyncExitStack,
) -> AsyncIterator[str]:  # fmt: skip
    """SSE events: the role, one chunk per finished step, the answer, (usage), ``[DONE]``; on failure an
    error chunk and ``[DONE]``."""
    model = settings.model_id
    try:
        yield _sse(chunk(request_id, model, role="assistant"))
        prediction = None
        async with asyncio.timeout(settings.request_timeout_s):
            async for node, update in g3.astream(image):
                if node == "prediction":
                    prediction = update["prediction"]
                else:
                    yield _sse(chunk(request_id, model, step=node, data=step_data(node, update)))
        assert prediction is not None  # astream always ends with the prediction
        for event in content_chunks(prediction, body, request_id, model):
            yield _sse(event)
        for event in final_chunks(prediction, body, request_id, model):
            yield _sse(event)
    except TimeoutError:
        yield _sse(error_body(504, f"locating the photo took longer than {settings.request_timeout_s:g} s",
                              code="timeout").model_dump())  # fmt: skip
    except ImageTooLargeError as exc:
        yield _sse(error_body(413, str(exc), code="image_too_large", param="messages").model_dump())
    except InvalidImageError as exc:
        yield _sse(error_body(400, str(exc), code="invalid_image", param="messages").model_dump())
    except G3Error as exc:
        yield _sse(error_body(500, str(exc), code="pipeline_error").model_dump())
    except Exception:
        log.exception("unexpected error while streaming")
        yield _sse(error_body(500, "internal error; see the server log", code="internal_error").model_dump())
    finally:
        await stack.aclose()
    yield "data: [DONE]\n\n"


def _sse(payload: Any) -> str:
    data = payload.model_dump(exclude_none=True) if isinstance(payload, BaseModel) else payload
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _version() -> str:
    from g3 import __version__

    return __version__
