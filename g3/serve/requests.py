"""Checks on a chat request before any work: one photo (an ``image_url`` part), bounded text."""

from __future__ import annotations

from g3.serve.errors import APIError
from g3.serve.protocol import ChatCompletionRequest, ImagePart, TextPart


def photo_url(request: ChatCompletionRequest, *, max_images: int, max_text_chars: int) -> str:
    """The ``image_url.url`` of the request's photo.

    Raises `APIError` 400 when there is no image, more than ``max_images``, or more than
    ``max_text_chars`` characters of text (the text is accepted but G3 locates from the photo alone).
    """
    images: list[str] = []
    text = 0
    for message in request.messages:
        if isinstance(message.content, str):
            text += len(message.content)
            continue
        for part in message.content or []:
            if isinstance(part, ImagePart):
                if message.role != "user":
                    raise APIError(400, f"images must be in user messages, not in a {message.role} message",
                                   code="image_not_in_user_message", param="messages")  # fmt: skip
                images.append(part.image_url.url)
            elif isinstance(part, TextPart):
                text += len(part.text)
    if not images:
        raise APIError(
            400,
            'the request has no image: add a user message part {"type": "image_url", "image_url": '
            '{"url": "data:image/jpeg;base64,…"}}',
            code="no_image",
            param="messages",
        )
    if len(images) > max_images:
        raise APIError(400, f"{len(images)} images in one request; this server locates at most {max_images} "
                       "(send one request per photo)", code="too_many_images", param="messages")  # fmt: skip
    if text > max_text_chars:
        raise APIError(400, f"{text:,} characters of text, more than the limit of {max_text_chars:,}",
                       code="text_too_long", param="messages")  # fmt: skip
    return images[0]
