"""What kind of image a file holds, from its first bytes (magic numbers), without decoding it."""

from __future__ import annotations

#: Magic bytes at offset 0 → image media type (WebP, which needs two checks, is in `sniff_image_type`).
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
#: Bytes `sniff_image_type` looks at; pass at least this many when there are.
HEAD_BYTES = 16


def sniff_image_type(head: bytes) -> str | None:
    """The media type (``"image/jpeg"``, ``"image/png"``, ``"image/webp"``, ``"image/gif"``, ``"image/bmp"``,
    ``"image/tiff"``) announced by a file's first bytes, or None when they are no such image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((media_type for magic, media_type in _MAGIC if head.startswith(magic)), None)


def image_format(head: bytes) -> str | None:
    """The short format name of `sniff_image_type` (``"jpeg"``, ``"png"``, …), or None."""
    media_type = sniff_image_type(head)
    return None if media_type is None else media_type.removeprefix("image/")
