"""LMM backend for any OpenAI-compatible chat-completions server (a ``vllm serve`` endpoint, OpenAI, …).

Requests of an image run concurrently (bounded by ``max_concurrency``) through the official ``openai``
async client, which retries 408/409/429/5xx and connection errors with exponential backoff (honouring
``Retry-After``) up to ``max_retries`` times; each call has a timeout. Images travel as base64 ``data:``
URLs. With ``structured_output="auto"`` the JSON schema is sent as ``response_format`` and, if the
server rejects that parameter, the backend stops sending it (logged once) and relies on parsing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

from g3.errors import MissingDependencyError
from g3.lmm.base import ErrorKind, LMMBackend, LMMRequest, LMMResponse, Usage, data_url
from g3.lmm.config import OpenAIConfig

log = logging.getLogger(__name__)


class OpenAIBackend(LMMBackend):
    """Chat completions with an image, ``n`` samples per request, against ``base_url`` (ending in ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        structured_output: Literal["auto", "json_schema", "none"] = "auto",
        image_detail: Literal["low", "high", "auto"] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url = base_url
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.structured_output = structured_output
        self.image_detail = image_detail
        self._schema_supported = structured_output != "none"

    @property
    def endpoint(self) -> str:
        """``"http://host:port/v1 (model NAME)"``: named in every error of this backend."""
        return f"{self.base_url} (model {self.model})"

    def new_client(self, *, max_retries: int | None = None) -> Any:
        """An ``openai.AsyncOpenAI`` client for ``base_url`` (``max_retries``: override the backend's)."""
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise MissingDependencyError("the OpenAI-compatible backend needs `pip install openai`") from exc
        retries = self.max_retries if max_retries is None else max_retries
        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=retries)

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        # One client per call: its connection pool belongs to the running event loop.
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self.new_client() as client:

            async def bounded(request: LMMRequest) -> LMMResponse:
                async with semaphore:
                    return await self._one(client, request)

            return list(await asyncio.gather(*(bounded(r) for r in requests)))

    def _payload(self, request: LMMRequest, *, with_schema: bool) -> dict[str, Any]:
        image: dict[str, Any] = {"url": data_url(request.image)}
        if self.image_detail:
            image["detail"] = self.image_detail
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": image}, {"type": "text", "text": request.prompt}],
                }
            ],
            "n": request.n,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        if with_schema and request.json_schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "coordinates", "schema": request.json_schema},
            }
        return payload

    async def _one(self, client: Any, request: LMMRequest) -> LMMResponse:
        import openai

        start = time.perf_counter()
        try:
            return await self.complete(client, request)
        except openai.OpenAIError as exc:
            return LMMResponse(request.tag, (), Usage(), time.perf_counter() - start,
                               error=f"{describe_error(exc)} (LMM server {self.endpoint})",
                               error_kind=error_kind(exc))  # fmt: skip

    async def complete(self, client: Any, request: LMMRequest) -> LMMResponse:
        """One chat completion for ``request`` through ``client`` (from `new_client`); raises the client's
        ``openai.OpenAIError`` when it fails (the server pool uses the error's type to fail over)."""
        import openai

        start = time.perf_counter()
        try:
            completion = await client.chat.completions.create(
                **self._payload(request, with_schema=self._schema_supported)
            )
        except openai.BadRequestError as exc:
            if not (self._schema_supported and self.structured_output == "auto" and _about_schema(exc)):
                raise
            log.warning("%s rejects response_format json_schema (%s); continuing without it", self.base_url, exc)
            self._schema_supported = False
            completion = await client.chat.completions.create(**self._payload(request, with_schema=False))
        texts = tuple(choice.message.content or "" for choice in completion.choices)
        usage = completion.usage
        return LMMResponse(
            tag=request.tag,
            texts=texts,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            latency_s=time.perf_counter() - start,
        )


def build(config: OpenAIConfig) -> LMMBackend:
    """The backend of ``lmm: {backend: openai}``: one server, or a pool (`g3.lmm.pool`) for several base URLs.
    The API key comes from the environment variable ``api_key_env`` names."""
    api_key = os.environ.get(config.api_key_env)
    urls = config.base_urls
    if len(urls) > 1:
        from g3.lmm.pool import OpenAIPoolBackend

        return OpenAIPoolBackend(urls, config.model, api_key=api_key, max_concurrency=config.max_concurrency,
                                 timeout_s=config.timeout_s, attempt_timeout_s=config.attempt_timeout_s,
                                 max_retries=config.max_retries, health_interval_s=config.health_interval_s,
                                 backoff_max_s=config.backoff_max_s)  # fmt: skip
    return OpenAIBackend(urls[0], config.model, api_key=api_key, max_concurrency=config.max_concurrency,
                         timeout_s=config.timeout_s, max_retries=config.max_retries)  # fmt: skip


def _about_schema(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("response_format", "json_schema", "structured", "guided"))


def describe_error(exc: BaseException) -> str:
    """A one-line description of a client error: type, HTTP status, message (≤ 300 characters)."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + f": {str(exc)[:300]}"


def error_kind(exc: BaseException) -> ErrorKind:
    """``"timeout"`` for a client timeout, ``"unreachable"`` for any other connection failure, else ``"error"``."""
    import openai

    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable"
    return "error"
