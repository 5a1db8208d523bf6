"""The API's routes, thin: each hands its request to the app's `ChatService` and returns what it answers.

``GET /health`` needs no key; ``GET /v1/models`` and ``POST /v1/chat/completions`` need one when the server
has keys (`check_key`, also guarding the web page's ``/v1/g3/images``).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from g3.serve.errors import APIError
from g3.serve.protocol import ChatCompletionRequest, ChatCompletionResponse, Health, ModelList
from g3.serve.serving import ChatService

#: Headers of a stream: no caching, and no buffering by a reverse proxy.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_service(request: Request) -> ChatService:
    """The app's service (``app.state.service``, set by `g3.serve.app.create_app`)."""
    service: ChatService = request.app.state.service
    return service


def check_key(request: Request) -> None:
    """`APIError` 401 unless the request carries one of the server's API keys (when it has any)."""
    keys = chat_service(request).settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
        raise APIError(401, "missing or invalid API key (Authorization: Bearer …)", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


Service = Annotated[ChatService, Depends(chat_service)]
router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])


@router.get("/health", response_model=Health)
async def health(service: Service) -> Health:
    return service.health()


@v1.get("/models", response_model=ModelList)
async def models(service: Service) -> ModelList:
    return service.models()


@v1.post("/chat/completions", response_model=ChatCompletionResponse)
async def chat(body: ChatCompletionRequest, service: Service) -> Any:
    answer = await service.chat(body)
    if isinstance(answer, ChatCompletionResponse):
        return answer
    return StreamingResponse(answer, media_type="text/event-stream", headers=STREAM_HEADERS)


router.include_router(v1)
