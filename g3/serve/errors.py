"""One error shape for every non-2xx answer of the API (``{"error": {message, type, param, code}}``), and one
mapping from what went wrong to that answer (`api_error`), used by plain and streamed answers alike."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from g3.errors import G3Error, ImageFetchError, ImageTooLargeError, InvalidImageError
from g3.serve.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)

#: OpenAI-style error types by HTTP status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client with ``status`` and an OpenAI-shaped body.

    An HTTP answer, not a g3 failure, so it is no `g3.errors.G3Error`: g3's errors become one through
    `api_error`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> ErrorResponse:
    """The error body for an HTTP status (the one function that builds them)."""
    return ErrorResponse(
        error=ErrorInfo(message=message, type=_TYPES.get(status, "server_error"), param=param, code=code)
    )


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body().model_dump(), status_code=error.status, headers=error.headers)


def api_error(exc: BaseException, *, timeout_s: float | None = None) -> APIError:
    """The answer to a request that failed with ``exc`` (the one mapping, for plain and streamed answers).

    `APIError` as it is; `TimeoutError` 504 (``timeout_s``: the limit it ran past, named in the message);
    `ImageTooLargeError` 413, `InvalidImageError` 400, `ImageFetchError` its own status and code; any other
    `G3Error` 500 ``pipeline_error`` with its message; anything else 500 ``internal_error``, logged with its
    stack trace, which never reaches the client.
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimeoutError):
        limit = f"longer than {timeout_s:g} s" if timeout_s is not None else "too long"
        return APIError(504, f"locating the photo took {limit}", code="timeout")
    if isinstance(exc, ImageTooLargeError):
        return APIError(413, str(exc), code="image_too_large", param="messages")
    if isinstance(exc, InvalidImageError):
        return APIError(400, str(exc), code="invalid_image", param="messages")
    if isinstance(exc, ImageFetchError):
        return APIError(exc.status, str(exc), code=exc.code, param="messages")
    if isinstance(exc, G3Error):
        log.warning("the pipeline failed: %s", exc, exc_info=exc)
        return APIError(500, str(exc), code="pipeline_error")
    return internal_error(exc)


def internal_error(exc: BaseException) -> APIError:
    """500 ``internal_error`` for a failure g3 did not foresee, logged with its stack trace (never sent)."""
    log.error("unexpected error while serving", exc_info=exc)
    return APIError(500, "internal error; see the server log", code="internal_error")


# --- exception handlers of the app ----------------------------------------------------------------


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(api_error(exc))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Anything else a route raised: 500 ``internal_error`` (a timeout is a 504 only where a request ran past
    ``request_timeout_s``, which the chat service maps itself)."""
    return error_response(internal_error(exc))


async def on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the first invalid field of the body."""
    assert isinstance(exc, RequestValidationError)  # registered for it only
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"invalid request: {first.get('msg', 'malformed body')}" + (f" at {where}" if where else "")
    return error_response(APIError(422, message, code="invalid_request", param=where or None))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404 no route, 405 method) in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)  # registered for it only
    return error_response(APIError(exc.status_code, str(exc.detail), code="http_error"))


#: The app's exception handlers, by the exception type they answer.
EXCEPTION_HANDLERS = {
    APIError: on_api_error,
    G3Error: on_api_error,
    RequestValidationError: on_invalid_request,
    StarletteHTTPException: on_http_error,
    Exception: on_unexpected,
}
