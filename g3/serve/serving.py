"""The serving layer under the routes: `ChatService` takes one chat request from checks to answer.

It checks the request, fetches its photo, waits for a slot (`g3.serve.admission`), locates the photo and
answers, whole or streamed as server-sent events. Whatever fails goes through `g3.serve.errors.api_error`
once, so a failure gets the same status and ``error`` body whether the answer is streamed or not (a stream,
whose HTTP status is sent with its first event, carries that body as its last event before ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from g3.agent import G3
from g3.agent.progress import Step, step_summary
from g3.serve.admission import Admission
from g3.serve.errors import APIError, api_error
from g3.serve.fetch import fetch_image
from g3.serve.protocol import ChatCompletionRequest, ChatCompletionResponse, Health, ModelCard, ModelList
from g3.serve.requests import photo_url
from g3.serve.responses import chunk, completion, content_chunks, final_chunks, new_id, sse
from g3.serve.settings import ServeSettings

#: The last event of every stream.
DONE = "data: [DONE]\n\n"


class ChatService:
    """Serves ``g3`` under ``settings``: the models, the health, and chat completions plain or streamed.

    `start` opens its queue and `stop` drains it; both run in the serving event loop (the app's lifespan).
    """

    def __init__(self, g3: G3, settings: ServeSettings) -> None:
        self.g3 = g3
        self.settings = settings
        self.created = int(time.time())
        self._admission: Admission | None = None

    @property
    def admission(self) -> Admission:
        if self._admission is None:
            raise RuntimeError("the chat service is not started: the app's lifespan starts it (run it under uvicorn)")
        return self._admission

    def start(self) -> None:
        """Open the queue of requests (bound to the running event loop)."""
        self._admission = Admission(self.settings.max_concurrent, self.settings.max_waiting)

    async def stop(self) -> bool:
        """Refuse new requests and wait for the ones in flight; True if all finished within the grace time."""
        return await self.admission.drain(self.settings.shutdown_grace_s)

    def health(self) -> Health:
        admission = self.admission
        return Health(status="shutting_down" if admission.closing else "ok", model=self.settings.model_id,
                      in_flight=admission.in_flight, waiting=admission.waiting)  # fmt: skip

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.settings.model_id, created=self.created)])

    def check(self, request: ChatCompletionRequest) -> str:
        """The URL of the request's photo, once the request is one this server answers; `APIError` if not."""
        model = self.settings.model_id
        if request.model != model:
            raise APIError(404, f"model {request.model!r} not found; this server serves {model!r}",
                           code="model_not_found", param="model")  # fmt: skip
        url = photo_url(request, max_images=self.settings.max_images, max_text_chars=self.settings.max_text_chars)
        if request.min_confidence and self.g3.config.verify.ranker is None:
            raise APIError(400, "min_confidence needs calibrated confidences, and this server has no fitted ranker "
                           "(verify.ranker in its configuration); send the request without min_confidence",
                           code="no_confidence", param="min_confidence")  # fmt: skip
        return url

    def error(self, exc: BaseException) -> APIError:
        """`api_error` with this server's time limit."""
        return api_error(exc, timeout_s=self.settings.request_timeout_s)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        """The completion, or for ``stream`` its server-sent events; `APIError` for anything refused or failed
        before the answer starts (checks, fetching, a full queue; and any failure of a plain answer)."""
        url = self.check(request)
        try:
            image = await fetch_image(url, self.settings.fetch_policy())
        except Exception as exc:
            raise self.error(exc) from exc
        request_id = new_id()
        slot = contextlib.AsyncExitStack()
        await slot.enter_async_context(self.admission.slot())
        if request.stream:
            return self._events(image, request, request_id, slot)
        async with slot:
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    prediction = await self.g3.alocate(image)
            except Exception as exc:
                raise self.error(exc) from exc
        return completion(prediction, request, request_id, model=self.settings.model_id)

    async def _events(
        self, image: bytes, request: ChatCompletionRequest, request_id: str, slot: contextlib.AsyncExitStack
    ) -> AsyncIterator[str]:
        """SSE events: the role, one chunk per finished step, the answer, (usage), ``[DONE]``; on failure the
        error body of `error` and ``[DONE]``. The slot is released when the stream ends."""
        model = self.settings.model_id
        try:
            yield sse(chunk(request_id, model, role="assistant"))
            prediction = None
            async with asyncio.timeout(self.settings.request_timeout_s):
                async for step, update in self.g3.astream(image):
                    if step == Step.PREDICTION:
                        prediction = update["prediction"]
                    else:
                        yield sse(chunk(request_id, model, step=step, data=step_summary(step, update)))
            assert prediction is not None  # astream always ends with the prediction
            for event in [*content_chunks(prediction, request, request_id, model),
                          *final_chunks(prediction, request, request_id, model)]:  # fmt: skip
                yield sse(event)
        except Exception as exc:
            yield sse(self.error(exc).body().model_dump())
        finally:
            await slot.aclose()
        yield DONE
