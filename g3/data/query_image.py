"""Query photos: one image from a path, bytes, a PIL image or a numpy array, loaded safely for G3.

`load_query_image` returns a `QueryImage`: the upright 8-bit RGB pixels (for the aligner) and the
encoded bytes sent to LMMs. Decoding follows `decode_image` (EXIF orientation, alpha composited on white,
16/32-bit and float grayscale scaled to 8 bits, CMYK/palette/bilevel converted), but errors are
`InvalidImageError` and the decompression-bomb guard is our own ``max_pixels``, checked from the header
before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from g3.data.images import to_upright_rgb
from g3.errors import ImageTooLargeError, InvalidImageError

#: Largest accepted image, in pixels (width × height), a guard against decompression bombs.
DEFAULT_MAX_PIXELS = 40_000_000
#: Quality of the JPEG sent to LMMs when the original bytes cannot be sent as they are.
JPEG_QUALITY = 95

#: Containers whose bytes LMM servers accept as they are (MPO is a JPEG with extra frames appended).
_PASSTHROUGH_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})
#: Modes every decoder turns into the same RGB pixels as ours.
_PASSTHROUGH_MODES = frozenset({"RGB", "L"})
_ORIENTATION = ExifTags.Base.Orientation
_PIL_LIMIT_LOCK = threading.Lock()

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray


@dataclass(frozen=True)
class QueryImage:
    """A query photo ready for G3.

    ``image`` is upright 8-bit RGB (downscaled when ``max_side`` was given). ``data`` is what LMMs receive:
    the original file bytes when they are a single-frame JPEG, PNG or WebP in RGB or grayscale that needs no
    EXIF rotation, no downscaling and carries no GPS metadata; otherwise ``image`` encoded as a quality-95
    JPEG (4:4:4, without metadata). ``source`` says where it came from: the path, ``"bytes"``, ``"PIL image"`` or
    ``"numpy array"``.
    """

    image: Image.Image
    data: bytes = field(repr=False)
    source: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def load_query_image(
    obj: ImageInput,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> QueryImage:
    """Load a query photo from a file path, encoded bytes, a PIL image or a numpy array.

    Images above ``max_pixels`` (width × height, read from the file header before decoding) are refused;
    this limit replaces PIL's ``Image.MAX_IMAGE_PIXELS`` when it is higher (PIL's is lifted, process-wide
    and under a lock, while the image is decoded). Animated images give their first frame. Arrays are
    HxW, HxWx1, HxWx3 or HxWx4 (channels last) of uint8, uint16 (scaled by 1/257), bool, or floats in
    [0, 1]. With ``max_side``, the image is downscaled (LANCZOS, aspect kept) so that its longer side is
    at most ``max_side``. Raises `InvalidImageError` saying what is wrong with the input.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    if isinstance(obj, str | os.PathLike):
        source = os.fsdecode(os.fspath(obj))
        return _from_bytes(_read_file(source), source, f"image file {source!r}", max_pixels, max_side)
    if isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        return _from_bytes(data, "bytes", f"image bytes ({len(data):,} bytes)", max_pixels, max_side)
    if isinstance(obj, Image.Image):
        return _from_pil(obj, max_pixels, max_side)
    if isinstance(obj, np.ndarray):
        img = _array_to_image(obj, max_pixels)
        return _finish(to_upright_rgb(img, "numpy array"), None, "numpy array", max_side)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    hint = " (convert it with numpy.asarray(...), channels last)" if hasattr(obj, "__array__") else ""
    raise InvalidImageError(
        f"cannot load an image from a {kind}{hint}; pass a file path, image bytes, a PIL image or a numpy array"
    )


# --- sources --------------------------------------------------------------------------------------


def _read_file(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        raise InvalidImageError(f"{source!r} is a URL; G3 does not download images: download it and pass the file")
    path = Path(source).expanduser()
    if not path.exists():
        raise InvalidImageError(f"image file {source!r} does not exist; check the path")
    if path.is_dir():
        raise InvalidImageError(f"{source!r} is a folder, not an image file; pass the path of one image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImageError(f"cannot read image file {source!r}: {exc}") from exc
    return data


def _from_bytes(data: bytes, source: str, desc: str, max_pixels: int, max_side: int | None) -> QueryImage:
    if not data:
        raise InvalidImageError(f"{desc} is empty; pass a JPEG, PNG, WebP or other image PIL can read")
    with _pil_pixel_limit(max_pixels):
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(desc, None, max_pixels, exc) from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError(f"{desc} {_unidentified_reason(data)}") from exc
        except Exception as exc:  # PIL raises many types on corrupt headers (SyntaxError, struct.error, ...)
            raise _undecodable(desc, exc) from exc
        _check_size(img.size, desc, max_pixels)
        passthrough = _can_pass_through(img)
        if max_side is not None and max(img.size) > max_side:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale, keeping at least twice the target size.
            scale = 2 * max_side / max(img.size)
            img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        try:
            img.load()
            rgb = to_upright_rgb(img, desc)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(desc, None, max_pixels, exc) from exc
        except Exception as exc:
            raise _undecodable(desc, exc) from exc
    return _finish(rgb, data if passthrough else None, source, max_side)


def _from_pil(img: Image.Image, max_pixels: int, max_side: int | None) -> QueryImage:
    desc = f"PIL image ({img.mode}, {img.width}×{img.height})"
    _check_size(img.size, desc, max_pixels)
    with _pil_pixel_limit(max_pixels):
        try:
            img.load()  # a lazily opened file decodes here; never let EXIF handling hide its errors
            rgb = to_upright_rgb(img, desc)
        except Exception as exc:
            raise _undecodable(desc, exc) from exc
    if rgb is img:
        rgb = img.copy()  # never share pixels with the caller's object
    return _finish(rgb, None, "PIL image", max_side)


def _array_to_image(arr: np.ndarray, max_pixels: int) -> Image.Image:
    """A numpy array as a PIL ``L``, ``RGB`` or ``RGBA`` image, after checking its shape, size and values."""
    desc = f"numpy array of shape {arr.shape} and dtype {arr.dtype}"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = " (a channels-first CxHxW array? use arr.transpose(1, 2, 0))"
        raise InvalidImageError(f"{desc} is not an image: pass HxW (grayscale), HxWx3 (RGB) or HxWx4 (RGBA){hint}")
    if arr.size == 0:
        raise InvalidImageError(f"{desc} is empty; an image needs at least 1×1 pixels")
    _check_size((arr.shape[1], arr.shape[0]), desc, max_pixels)
    kind, itemsize = arr.dtype.kind, arr.dtype.itemsize
    if kind == "b":
        u8 = arr.astype(np.uint8) * np.uint8(255)
    elif kind == "u" and itemsize == 1:
        u8 = arr
    elif kind == "u" and itemsize == 2:
        u8 = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257): 65535 → 255
    elif kind == "f":
        ok = (arr >= 0) & (arr <= 1)  # False for NaN
        if not bool(ok.all()):
            bad = arr[~ok]
            raise InvalidImageError(
                f"{desc} has {bad.size:,} values outside [0, 1] (e.g. {float(bad.flat[0])}); "
                "float images must hold values in [0, 1]: divide by 255 if they are 0-255, or clip them"
            )
        u8 = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise InvalidImageError(
            f"{desc}: dtype {arr.dtype} is not supported; pass uint8 (0-255), uint16, bool or floats in [0, 1] "
            "(e.g. arr.astype(numpy.uint8) for 0-255 integers)"
        )
    return Image.fromarray(np.ascontiguousarray(u8))


# --- normalisation --------------------------------------------------------------------------------


def _finish(rgb: Image.Image, original: bytes | None, source: str, max_side: int | None) -> QueryImage:
    """Downscale to ``max_side`` and pick the LMM payload: ``original`` when kept, else a JPEG of ``rgb``."""
    if max_side is not None and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        original = None
    data = original if original is not None else encode_jpeg(rgb)
    return QueryImage(image=rgb, data=data, source=source)


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """``image`` as RGB JPEG bytes, without metadata, with full-resolution colour (4:4:4)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _can_pass_through(img: Image.Image) -> bool:
    """Whether an opened file's own bytes can go to LMMs: a plain single-frame RGB/gray JPEG, PNG or WebP.

    Not when it needs an EXIF rotation (servers may not apply it), has transparency (servers composite it
    differently) or carries GPS metadata (it would hand the answer, and the user's location, to the LMM).
    """
    if img.format not in _PASSTHROUGH_FORMATS or img.mode not in _PASSTHROUGH_MODES or "transparency" in img.info:
        return False
    if img.format != "MPO" and getattr(img, "is_animated", False):
        return False
    try:
        exif = img.getexif()
        orientation = exif.get(_ORIENTATION, 1)
        gps = bool(exif.get_ifd(ExifTags.IFD.GPSInfo))
    except Exception:  # unreadable EXIF: re-encode rather than guess what a server makes of it
        return False
    xmp: Any = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or b""
    xmp_gps = (b"GPSLatitude" if isinstance(xmp, bytes) else "GPSLatitude") in xmp
    return orientation in (None, 1) and not gps and not xmp_gps


# --- size guard -----------------------------------------------------------------------------------


def _check_size(size: tuple[int, int], desc: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImageError(f"{desc} is empty ({width}×{height}); an image needs at least 1×1 pixels")
    if width * height > max_pixels:
        raise _too_large(desc, size, max_pixels)


def _too_large(
    desc: str, size: tuple[int, int] | None, max_pixels: int, exc: BaseException | None = None
) -> ImageTooLargeError:
    if size is not None:
        what = f"is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels"
    elif exc is not None and (match := re.search(r"\((\d+) pixels\)", str(exc))):
        what = f"has {int(match.group(1)):,} pixels"
    else:
        what = f"is too large to decode safely ({exc})"
    return ImageTooLargeError(
        f"{desc} {what}, more than the limit of max_pixels={max_pixels:,} (a guard against decompression "
        "bombs); downscale the image, or raise max_pixels if you trust it"
    )


@contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Raise PIL's ``Image.MAX_IMAGE_PIXELS`` to ``max_pixels`` meanwhile, when it is lower.

    PIL refuses more than twice its limit while opening; our own check applies ``max_pixels`` exactly.
    The change is process-wide, so it is made under a lock and undone unless someone else changed it since.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or current >= max_pixels:
        yield
        return
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        lift = previous is not None and previous < max_pixels
        if lift:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            if lift and max_pixels == Image.MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = previous


# --- messages -------------------------------------------------------------------------------------


def _undecodable(desc: str, exc: BaseException) -> InvalidImageError:
    detail = f"{type(exc).__name__}: {exc}"
    if "truncated" in str(exc).lower():
        return InvalidImageError(f"{desc} is truncated ({detail}); the file is incomplete: download or copy it again")
    if isinstance(exc, ValueError) and "conversion" in str(exc).lower():
        return InvalidImageError(f"{desc} has an image mode G3 cannot convert to RGB ({detail}); save it as RGB")
    return InvalidImageError(f"{desc} cannot be decoded ({detail}); the file is damaged or not a supported image")


def _unidentified_reason(data: bytes) -> str:
    if data[4:8] == b"ftyp":
        return (
            "looks like HEIC/HEIF or AVIF, which this PIL cannot read; convert it to JPEG or PNG "
            "(or install pillow-heif and call pillow_heif.register_heif_opener())"
        )
    return "is not an image PIL can read; pass a JPEG, PNG, WebP, GIF, TIFF or BMP file"
