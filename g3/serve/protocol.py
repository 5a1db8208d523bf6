"""Request and response models of g3's OpenAI-compatible API (pydantic and the standard library only).

A subset of OpenAI's chat-completions protocol: what a client sends to have a photo located, and what it
gets back. Unknown request fields (``max_tokens``, ``temperature``, ``top_p``, …) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(description="data: URL (base64), or http(s)/file URL where the server allows them")
    detail: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "geo_prediction"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. One photo per request (an ``image_url`` part of a user message)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=16, description="alternatives: choice i is the i-th ranked candidate")
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    min_confidence: dict[str, float] | None = Field(
        default=None,
        description="g3 extension: withhold the answer unless its calibrated probability of lying within r km is at "
        'least p, as {"r": p} with r in 25, 200, 750 (e.g. {"200": 0.8}); needs a server with a fitted ranker. '
        "A withheld answer says WITHHELD with its probability and gives no coordinates.",
    )

    @field_validator("min_confidence")
    @classmethod
    def _check_min_confidence(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        from g3.agent.abstention import check_requirements

        return None if value is None else check_requirements(value)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChoicesInfo(BaseModel):
    """g3's extension to a completion: the choices asked for (``n``) and returned, and why fewer."""

    choices_requested: int
    choices_returned: int
    note: str | None = Field(default=None, description="set when fewer choices than n are returned, saying why")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo
    g3: ChoicesInfo | None = Field(default=None, description="g3 extension: choices requested and returned")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop"] | None = None


class StepInfo(BaseModel):
    """g3's extension to stream chunks: a pipeline step that just finished."""

    step: str
    data: dict[str, Any] = Field(default_factory=dict)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    g3: StepInfo | None = Field(default=None, description="g3 extension: the step this chunk reports")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "g3"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer (and of a stream's error chunk)."""

    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok", "shutting_down"]
    model: str
    in_flight: int
    waiting: int
