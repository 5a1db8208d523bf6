"""ASGI middleware of the server: a cap on request bodies, and JSON only on ``POST /v1/…``."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from g3.serve.errors import APIError, error_response


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


class JSONOnly:
    """ASGI middleware: 415 for a ``POST /v1/…`` whose Content-Type is not ``application/json``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            kind = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                message = f"send JSON (Content-Type: application/json), not {kind or 'nothing'!r}"
                await error_response(APIError(415, message, code="unsupported_media_type"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
