"""The one interface every large-multimodal-model backend implements, and its request/response types.

A request is one prompt about one image, sampled ``n`` times. Backends receive all requests of an image
(or of a batch of images) at once so that they can batch them: vLLM schedules them together (sharing
the image prefix in its cache), an OpenAI-compatible server gets them concurrently, transformers pads
them into one ``generate`` call.

A failed request does not raise: its response carries ``error`` and no texts, so the prompt ensemble
goes on with the other prompts and the caller decides how to degrade.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from g3.media import HEAD_BYTES, sniff_image_type

#: JSON schema of an answer: G3's prompts ask for exactly this object.
COORDINATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "latitude": {"type": "number", "minimum": -90, "maximum": 90},
        "longitude": {"type": "number", "minimum": -180, "maximum": 180},
    },
    "required": ["latitude", "longitude"],
    "additionalProperties": False,
}

#: Sampling defaults of a request and of the prompt ensemble (`g3.lmm.prompts.EnsembleConfig`): G3's values.
DEFAULT_TEMPERATURE = 1.2
DEFAULT_MAX_TOKENS = 200


@dataclass(frozen=True)
class LMMRequest:
    """One prompt about one image, to be sampled ``n`` times.

    ``image`` is encoded image bytes (JPEG or PNG); ``tag`` names the prompt (e.g. ``"rag_10"``) and is
    copied to the response so that every candidate keeps its source. ``json_schema`` asks backends that
    can constrain decoding to produce that JSON object (None: free text).
    """

    prompt: str
    image: bytes
    n: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = DEFAULT_MAX_TOKENS
    json_schema: dict[str, Any] | None = field(default_factory=lambda: dict(COORDINATE_SCHEMA))
    seed: int | None = None
    tag: str = ""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if not self.image:
            raise ValueError("the request has no image bytes")


@dataclass(frozen=True)
class Usage:
    """Token counts of one request (all ``n`` samples)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


#: Kinds of failed requests (`LMMResponse.error_kind`): the server could not be reached (connection
#: refused, DNS, reset), the request ran out of time, or anything else (an HTTP error status, an engine error).
ErrorKind = Literal["unreachable", "timeout", "error"]


@dataclass(frozen=True)
class LMMResponse:
    """The ``n`` answers to one request, or the error that prevented them.

    ``error`` says what failed and where (the server's URL or the model); ``error_kind`` classifies it
    (None on success; backends that cannot tell leave it None and the error counts as ``"error"``).
    """

    tag: str
    texts: tuple[str, ...]
    usage: Usage
    latency_s: float
    error: str | None = None
    error_kind: ErrorKind | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class LMMBackend(abc.ABC):
    """A multimodal model that answers `LMMRequest`s. Subclasses implement `agenerate`."""

    #: A short name for logs and predictions, e.g. ``"vllm"``, ``"openai"``, ``"transformers"``.
    name: str = "lmm"

    @property
    def endpoint(self) -> str:
        """Where requests go, for error messages: the server URL(s) and model, or the in-process model."""
        names = (getattr(self, "model", None), getattr(self, "model_path", None))
        model = next((v for v in names if isinstance(v, str) and v), None)
        return f"{self.name} (model {model})" if model else self.name

    @abc.abstractmethod
    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        """Answer every request (batched or concurrently); one response per request, in order."""

    def generate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        """Synchronous `agenerate` (runs its own event loop; call `agenerate` from async code)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        raise RuntimeError("generate() was called inside a running event loop; await agenerate() instead")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release resources (connections, GPU memory). The default does nothing."""

    def __enter__(self) -> LMMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_image(image: Image.Image | bytes, *, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """Image bytes for a request: bytes pass through, a PIL image is encoded (RGB JPEG by default)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def decode_request_image(data: bytes) -> Image.Image:
    """The RGB PIL image of a request's bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def data_url(data: bytes) -> str:
    """A ``data:`` URL of image bytes (media type sniffed from the header), as OpenAI-style APIs take."""
    media_type = sniff_image_type(data[:HEAD_BYTES]) or "image/jpeg"
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
