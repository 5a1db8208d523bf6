"""Chat-completion responses and stream chunks (server-sent events) built from a `GeoPrediction`.

The answer states its calibrated confidence when a fitted ranker gave one. A request's ``min_confidence``
that the prediction misses withholds the answer: one choice saying WITHHELD with the probability (as JSON:
`g3.agent.abstention.withheld_payload`, without coordinates), never the answer or its alternatives.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel

from g3.agent import GeoPrediction
from g3.agent.abstention import Shortfall, confidence_text, shortfalls, withheld_payload, withheld_text
from g3.agent.progress import Step
from g3.serve.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoicesInfo,
    ChunkChoice,
    Delta,
    StepInfo,
    UsageInfo,
)


def new_id() -> str:
    return f"chatcmpl-g3-{uuid.uuid4().hex[:24]}"


def wants_json(request: ChatCompletionRequest) -> bool:
    return request.response_format is not None and request.response_format.type in ("json_object", "json_schema")


def answer_text(prediction: GeoPrediction, rank: int) -> str:
    """A short natural-language answer for the candidate of ``rank`` (0 = the answer); a degraded prediction's
    answers start with ``DEGRADED (reasons)`` and the answer says why."""
    c = prediction.candidates[rank]
    place = f" near {prediction.place}" if rank == 0 and prediction.place else ""
    lead = "The photo was most likely taken" if rank == 0 else f"Alternative #{rank}: the photo may have been taken"
    where = f"latitude {c.lat:.5f}, longitude {c.lon:.5f}"
    confidence = confidence_text(prediction.confidence) if rank == 0 else ""
    text = f"{lead}{place} at {where} (relative score {c.score:.3f}, from {c.source}"
    text += f"; calibrated confidence {confidence})." if confidence else ")."
    if prediction.degraded:
        reasons, why = _degraded_parts(prediction)
        text = f"DEGRADED ({reasons}): {text}"
        if rank == 0:
            text += f" This answer is degraded: {why}"
    if rank == 0 and prediction.warnings:
        text += " Note: " + " ".join(w.rstrip(".") + "." for w in prediction.warnings)
    return text


def _degraded_parts(prediction: GeoPrediction) -> tuple[str, str]:
    """A degraded prediction's reason codes (``"a, b"``, each once) and its messages as sentences."""
    reasons = ", ".join(dict.fromkeys(d.reason for d in prediction.degradations))
    return reasons, " ".join(d.message.rstrip(".") + "." for d in prediction.degradations)


def missed(prediction: GeoPrediction, request: ChatCompletionRequest) -> list[Shortfall]:
    """The request's ``min_confidence`` requirements the prediction misses (empty: it is answered)."""
    return shortfalls(prediction, request.min_confidence or {})


def withheld_content(prediction: GeoPrediction, request: ChatCompletionRequest, why: list[Shortfall]) -> str:
    """The one choice of a withheld answer: WITHHELD with the probabilities (and degradations), no coordinates."""
    if wants_json(request):
        return json.dumps(withheld_payload(prediction, why), ensure_ascii=False)
    text = withheld_text(why)
    if confidence := confidence_text(prediction.confidence):
        text += f" Calibrated confidence of the withheld answer: {confidence}."
    if prediction.degraded:
        reasons, why_degraded = _degraded_parts(prediction)
        text = f"DEGRADED ({reasons}): {text} The prediction is also degraded: {why_degraded}"
    return text


def choice_content(prediction: GeoPrediction, request: ChatCompletionRequest, rank: int) -> str:
    """Choice ``rank``'s content: text, or the prediction as JSON with that candidate as the answer; a withheld
    answer's content instead (`withheld_content`)."""
    if why := missed(prediction, request):
        return withheld_content(prediction, request, why)
    if not wants_json(request):
        return answer_text(prediction, rank)
    c = prediction.candidates[rank]
    chosen = prediction.model_copy(update={"lat": c.lat, "lon": c.lon, "score": c.score, "source": c.source})
    return chosen.model_dump_json()


def usage(prediction: GeoPrediction) -> UsageInfo:
    u = prediction.usage
    return UsageInfo(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                     total_tokens=u.prompt_tokens + u.completion_tokens)  # fmt: skip


def ranks(prediction: GeoPrediction, request: ChatCompletionRequest) -> range:
    """Choices returned: ``n``, or fewer when there are fewer distinct candidates; one when withheld."""
    if missed(prediction, request):
        return range(1)
    return range(min(request.n, len(prediction.candidates)))


def choices_info(prediction: GeoPrediction, request: ChatCompletionRequest) -> ChoicesInfo:
    """How many choices were asked for and returned; a note when fewer than ``n`` (clients count choices)."""
    returned = len(ranks(prediction, request))
    note = None
    if why := missed(prediction, request):
        note = f"the answer is withheld ({'; '.join(s.message for s in why)}): one choice saying so, no alternatives"
    elif returned < request.n:
        found = len(prediction.candidates)
        note = (f"n={request.n} asked for {request.n} choices but only {returned} "
                f"{'is' if returned == 1 else 'are'} returned: the photo has {found} candidate "
                f"location{'' if found == 1 else 's'} (choice i is the i-th ranked candidate)")  # fmt: skip
    return ChoicesInfo(choices_requested=request.n, choices_returned=returned, note=note)


def completion(
    prediction: GeoPrediction, request: ChatCompletionRequest, request_id: str, *, model: str
) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=request_id,
        created=int(time.time()),
        model=model,
        choices=[
            Choice(index=i, message=AssistantMessage(content=choice_content(prediction, request, i)))
            for i in ranks(prediction, request)
        ],
        usage=usage(prediction),
        g3=choices_info(prediction, request),
    )


def chunk(
    request_id: str,
    model: str,
    *,
    index: int = 0,
    role: str | None = None,
    content: str | None = None,
    finish: bool = False,
    step: str | None = None,
    data: dict[str, Any] | None = None,
    usage_info: UsageInfo | None = None,
) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=request_id,
        created=int(time.time()),
        model=model,
        choices=[] if usage_info is not None else [
            ChunkChoice(index=index, delta=Delta(role=role, content=content),  # type: ignore[arg-type]
                        finish_reason="stop" if finish else None)
        ],
        usage=usage_info,
        g3=StepInfo(step=step, data=data or {}) if step else None,
    )  # fmt: skip


def content_chunks(
    prediction: GeoPrediction, request: ChatCompletionRequest, request_id: str, model: str
) -> list[ChatCompletionChunk]:
    """The choices' contents; when fewer than ``n``, the first also carries a ``choices`` step saying so."""
    info = choices_info(prediction, request)
    out = [chunk(request_id, model, index=i, content=choice_content(prediction, request, i))
           for i in ranks(prediction, request)]  # fmt: skip
    if info.note is not None and out:
        out[0] = out[0].model_copy(update={"g3": StepInfo(step=Step.CHOICES, data=info.model_dump())})
    return out


def final_chunks(
    prediction: GeoPrediction, request: ChatCompletionRequest, request_id: str, model: str
) -> list[ChatCompletionChunk]:
    out = [chunk(request_id, model, index=i, finish=True) for i in ranks(prediction, request)]
    if request.stream_options is not None and request.stream_options.include_usage:
        out.append(chunk(request_id, model, usage_info=usage(prediction)))
    return out


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One server-sent event of a stream: a chunk (its fields that are set), or an error body as it is."""
    data = payload.model_dump(exclude_none=True) if isinstance(payload, BaseModel) else payload
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
