"""Tests of g3.data.query_image: every input kind, every image mode, the size guard and the LMM payload."""

from __future__ import annotations

import io
import os
import resource
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import ExifTags, Image, ImageOps, features

from g3.data.query_image import DEFAULT_MAX_PIXELS, QueryImage, load_query_image
from g3.errors import G3Error, InvalidImageError

REAL_IMAGES = SHARED_DATA / "im2gps3k" / "images_cc_subset500"


# --- helpers --------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, rng.bytes(size[0] * size[1] * bands))


def _halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``."""
    img = Image.new("RGB", size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def _exif_jpeg(orientation: int = 6) -> bytes:
    """A 96×48 JPEG, red left and blue right, whose EXIF says to rotate it 90° clockwise for display."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return _encode(_halves((96, 48), (255, 0, 0), (0, 0, 255)), "JPEG", quality=95, exif=exif.tobytes())


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, built row by row: a few KB even for 20000×20000."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _reopen(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _assert_close(pixel: object, expected: tuple[int, int, int], tol: int = 3) -> None:
    assert isinstance(pixel, tuple) and len(pixel) == 3, pixel
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


def _reds(q: QueryImage) -> list[int]:
    """The red channel of the first row of ``q.image``."""
    return [int(v) for v in np.asarray(q.image)[0, :, 0]]


def _check(q: QueryImage) -> None:
    """Invariants of every result: upright RGB pixels, and LMM bytes that decode to the same size."""
    assert isinstance(q, QueryImage)
    assert q.image.mode == "RGB" and (q.width, q.height) == q.image.size
    reopened = _reopen(q.data)
    assert reopened.format in {"JPEG", "PNG", "WEBP", "MPO"}
    assert ImageOps.exif_transpose(reopened).size == q.image.size


# --- input kinds ----------------------------------------------------------------------------------


def test_path_str_and_pathlike(tmp_path: Path) -> None:
    data = _encode(_noise("RGB", (40, 30), 1), "JPEG", quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    for obj in (path, str(path)):
        q = load_query_image(obj)
        _check(q)
        assert q.source == str(path) and q.image.size == (40, 30)
        assert q.data == data  # a plain RGB JPEG goes to LMMs as it is


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like(wrap: type) -> None:
    data = _encode(_noise("RGB", (20, 10), 2), "PNG")
    q = load_query_image(wrap(data))
    _check(q)
    assert q.source == "bytes" and q.data == data and isinstance(q.data, bytes)
    assert q.image.tobytes() == _noise("RGB", (20, 10), 2).tobytes()  # PNG is lossless


def test_pil_image_is_normalised_and_not_shared() -> None:
    src = _noise("RGB", (12, 8), 3)
    q = load_query_image(src)
    _check(q)
    assert q.source == "PIL image" and _reopen(q.data).format == "JPEG"
    assert q.image is not src and q.image.tobytes() == src.tobytes()
    q.image.putpixel((0, 0), (1, 2, 3))
    assert src.tobytes() == _noise("RGB", (12, 8), 3).tobytes()


def test_lazily_opened_pil_image_gets_exif_rotation() -> None:
    lazy = Image.open(io.BytesIO(_exif_jpeg()))
    q = load_query_image(lazy)
    assert q.image.size == (48, 96)
    _assert_close(q.image.getpixel((24, 10)), (255, 0, 0), tol=10)


def test_pil_image_modes() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    assert load_query_image(rgba).image.getpixel((0, 0)) == (255, 255, 255)
    assert load_query_image(rgba).image.getpixel((1, 1)) == (255, 0, 0)
    assert load_query_image(Image.new("LA", (2, 2), (0, 0))).image.getpixel((0, 0)) == (255, 255, 255)
    assert load_query_image(Image.new("L", (2, 2), 77)).image.getpixel((1, 1)) == (77, 77, 77)
    assert load_query_image(Image.new("1", (2, 2), 1)).image.getpixel((0, 0)) == (255, 255, 255)
    _assert_close(load_query_image(Image.new("CMYK", (2, 2), (255, 0, 0, 0))).image.getpixel((0, 0)), (0, 255, 255))
    # 32-bit integers: 16-bit range is scaled by 1/257, a wider range stretched, never clipped.
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert wide.mode == "I"
    assert _reds(load_query_image(wide)) == [0, 128, 255]
    huge = Image.fromarray(np.array([[0, 500_000, 1_000_000]], dtype=np.int32))
    assert _reds(load_query_image(huge)) == [0, 128, 255]
    # Floats: [0, 1] is scaled by 255; [0, 255] is kept.
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert _reds(load_query_image(unit)) == [0, 128, 255]
    byte_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert _reds(load_query_image(byte_range)) == [0, 100, 255]


def test_numpy_arrays() -> None:
    gray = np.full((3, 5), 77, dtype=np.uint8)
    q = load_query_image(gray)
    _check(q)
    assert q.source == "numpy array" and q.image.size == (5, 3) and q.image.getpixel((4, 2)) == (77, 77, 77)
    assert load_query_image(gray[:, :, None]).image.getpixel((0, 0)) == (77, 77, 77)

    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[1, 2] = (10, 20, 30)
    assert load_query_image(rgb).image.getpixel((2, 1)) == (10, 20, 30)
    assert load_query_image(rgb[:, ::-1]).image.getpixel((3, 1)) == (10, 20, 30)  # non-contiguous view

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[1, 1] = (0, 0, 0, 0)  # transparent black → white
    out = load_query_image(rgba).image
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)


def test_numpy_uint16_float_and_bool_are_scaled() -> None:
    u16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert [load_query_image(u16).image.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]
    assert load_query_image(u16.astype(">u2")).image.getpixel((2, 0)) == (255, 255, 255)  # big-endian
    rgb16 = np.zeros((1, 1, 3), dtype=np.uint16)
    rgb16[0, 0] = (65535, 32768, 0)
    _assert_close(load_query_image(rgb16).image.getpixel((0, 0)), (255, 128, 0), tol=1)

    for dtype in (np.float16, np.float32, np.float64):
        floats = np.array([[0.0, 0.5, 1.0]], dtype=dtype)
        assert _reds(load_query_image(floats)) == [0, 128, 255]

    flags = np.array([[True, False]])
    assert [load_query_image(flags).image.getpixel((x, 0)) for x in range(2)] == [(255,) * 3, (0,) * 3]


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([[0.0, 1.5]]), r"outside \[0, 1\]"),
        (np.array([[-0.1, 0.5]], dtype=np.float32), r"outside \[0, 1\]"),
        (np.array([[np.nan, 0.5]]), r"outside \[0, 1\]"),
        (np.zeros((2, 2), dtype=np.int64), r"dtype int64"),
        (np.zeros((2, 2), dtype=np.int8), r"dtype int8"),
        (np.zeros((2, 2), dtype=np.complex64), r"dtype complex64"),
        (np.zeros((2, 2), dtype=object), r"dtype object"),
        (np.zeros((2, 2, 2), dtype=np.uint8), r"shape \(2, 2, 2\)"),
        (np.zeros((3, 8, 8), dtype=np.uint8), r"shape \(3, 8, 8\).*channels-first"),
        (np.zeros((1, 2, 2, 3), dtype=np.uint8), r"shape \(1, 2, 2, 3\)"),
        (np.zeros(5, dtype=np.uint8), r"shape \(5,\)"),
        (np.zeros((0, 5), dtype=np.uint8), r"empty"),
        (np.zeros((4, 0, 3), dtype=np.uint8), r"empty"),
    ],
)
def test_bad_arrays_are_refused(array: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        load_query_image(array)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
            lambda hw: st.sampled_from([hw, (*hw, 3)]),
        ),
    )
)
def test_uint8_arrays_round_trip(array: np.ndarray) -> None:
    q = load_query_image(array)
    expected = np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array
    assert np.array_equal(np.asarray(q.image), expected)
    assert _reopen(q.data).size == (array.shape[1], array.shape[0])


@pytest.mark.parametrize("obj", [42, 3.5, None, ["a.jpg"], {"image": b""}, object()])
def test_unsupported_types_are_named(obj: object) -> None:
    with pytest.raises(InvalidImageError, match=type(obj).__qualname__):
        load_query_image(obj)  # type: ignore[arg-type]


def test_errors_are_g3_and_value_errors() -> None:
    assert issubclass(InvalidImageError, G3Error) and issubclass(InvalidImageError, ValueError)


# --- paths ----------------------------------------------------------------------------------------


def test_missing_path_and_folder_and_url(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InvalidImageError, match=r"nope\.jpg.*does not exist"):
        load_query_image(missing)
    with pytest.raises(InvalidImageError, match=r"is a folder"):
        load_query_image(tmp_path)
    with pytest.raises(InvalidImageError, match=r"is a URL"):
        load_query_image("https://example.com/photo.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"empty\.jpg.*is empty"):
        load_query_image(empty)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(_encode(Image.new("RGB", (2, 2)), "JPEG"))
    path.chmod(0)
    try:
        with pytest.raises(InvalidImageError, match=r"cannot read image file .*locked\.jpg"):
            load_query_image(path)
    finally:
        path.chmod(0o600)


# --- decoding ---------------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    data = _exif_jpeg(6)
    q = load_query_image(data)
    _check(q)
    assert q.image.size == (48, 96)  # stored 96×48, displayed rotated 90° clockwise
    _assert_close(q.image.getpixel((24, 10)), (255, 0, 0), tol=10)  # the stored left (red) is now on top
    _assert_close(q.image.getpixel((24, 86)), (0, 0, 255), tol=10)
    assert q.data != data  # servers may not rotate: LMMs get upright pixels, without the orientation tag
    sent = _reopen(q.data)
    assert sent.size == (48, 96) and sent.getexif().get(ExifTags.Base.Orientation, 1) == 1


def test_cmyk_jpeg() -> None:
    data = _encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    q = load_query_image(data)
    _check(q)
    _assert_close(q.image.getpixel((8, 8)), (0, 255, 255))
    assert q.data != data and _reopen(q.data).mode == "RGB"


def test_rgba_png_transparency_becomes_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 128, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black on white → mid gray
    q = load_query_image(_encode(img, "PNG"))
    _check(q)
    assert q.image.getpixel((0, 0)) == (255, 255, 255) and q.image.getpixel((5, 5)) == (0, 128, 0)
    _assert_close(q.image.getpixel((1, 0)), (127, 127, 127), tol=1)
    sent = _reopen(q.data)
    assert sent.format == "JPEG"
    _assert_close(sent.getpixel((0, 0)), (255, 255, 255), tol=12)  # a JPEG of a 1-pixel white corner


def test_palette_png_with_transparency() -> None:
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    img = Image.fromarray(arr).convert("L")
    img = Image.frombytes("P", img.size, img.tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 12))
    q = load_query_image(_encode(img, "PNG", transparency=0))  # index 0 (black) is transparent
    _check(q)
    assert q.image.getpixel((0, 0)) == (255, 255, 255)  # white, not the palette's black
    assert q.image.getpixel((1, 0)) == (255, 0, 0)
    assert q.image.getpixel((2, 0)) == (0, 255, 0)


def test_palette_and_bilevel_and_gray_pngs() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_query_image(_encode(pal, "PNG")).image.getpixel((0, 0)) == (10, 200, 30)
    bilevel = Image.new("1", (4, 4), 1)
    assert load_query_image(_encode(bilevel, "PNG")).image.getpixel((3, 3)) == (255, 255, 255)
    gray = _encode(Image.new("L", (4, 4), 99), "PNG")
    q = load_query_image(gray)
    assert q.image.getpixel((0, 0)) == (99, 99, 99) and q.data == gray  # grayscale passes through


def test_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    q = load_query_image(_encode(img, "PNG"))
    _check(q)
    values = _reds(q)
    assert values[0] == 0 and abs(values[1] - 128) <= 1 and values[2] == 255 and values[3] == 1
    assert _reopen(q.data).mode == "RGB"  # a 16-bit PNG is re-encoded: servers would clip it


def test_float_tiff() -> None:
    img = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    q = load_query_image(_encode(img, "TIFF"))
    _check(q)
    assert _reds(q) == [0, 64, 255]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (16, 12), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    q = load_query_image(data)
    _check(q)
    assert q.image.size == (16, 12) and q.image.getpixel((5, 5)) == (255, 0, 0)
    assert _reopen(q.data).format == "JPEG"


@pytest.mark.skipif(not features.check("webp"), reason="PIL built without WebP")
def test_webp_still_passes_through_and_animated_gives_first_frame() -> None:
    still = _encode(_noise("RGB", (16, 16), 4), "WEBP", lossless=True)
    q = load_query_image(still)
    assert q.data == still and q.image.tobytes() == _noise("RGB", (16, 16), 4).tobytes()
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    animated = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    q = load_query_image(animated)
    _check(q)
    assert q.image.getpixel((5, 5)) == (255, 0, 0)
    assert q.data != animated and _reopen(q.data).format == "JPEG"


def test_truncated_files_are_refused() -> None:
    jpeg = _encode(_noise("RGB", (64, 64), 5), "JPEG", quality=95)
    with pytest.raises(InvalidImageError, match=r"truncated"):
        load_query_image(jpeg[: len(jpeg) // 2])
    png = _encode(_noise("RGB", (64, 64), 6), "PNG")
    with pytest.raises(InvalidImageError, match=r"image bytes"):
        load_query_image(png[: len(png) // 2])


def test_truncated_pil_image_is_refused() -> None:
    jpeg = _encode(_noise("RGB", (64, 64), 5), "JPEG", quality=95)
    lazy = Image.open(io.BytesIO(jpeg[: len(jpeg) // 2]))
    with pytest.raises(InvalidImageError, match=r"PIL image .*truncated"):
        load_query_image(lazy)


def test_garbage_and_empty_bytes() -> None:
    with pytest.raises(InvalidImageError, match=r"not an image PIL can read"):
        load_query_image(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InvalidImageError, match=r"empty"):
        load_query_image(b"")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(InvalidImageError, match=r"HEIC"):
        load_query_image(heic)


def test_zero_sized_pil_image_is_refused_and_1x1_accepted() -> None:
    with pytest.raises(InvalidImageError, match=r"empty"):
        load_query_image(Image.new("RGB", (0, 3)))
    q = load_query_image(Image.new("RGB", (1, 1), (9, 8, 7)))
    assert q.image.size == (1, 1) and q.image.getpixel((0, 0)) == (9, 8, 7)
    assert load_query_image(_encode(Image.new("RGB", (1, 40)), "PNG")).image.size == (1, 40)


# --- size guard -----------------------------------------------------------------------------------


def test_huge_png_is_refused_from_its_header() -> None:
    data = _bilevel_png(20000, 20000)
    assert len(data) < 100_000
    header = Image.open(io.BytesIO(_bilevel_png(200, 100)))
    assert header.size == (200, 100) and header.mode == "1"  # the builder writes real PNGs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidImageError, match=r"400,000,000 pixels.*max_pixels=10,000,000"):
        load_query_image(data, max_pixels=10_000_000)
    with pytest.raises(InvalidImageError, match=r"400,000,000 pixels.*max_pixels=40,000,000"):
        load_query_image(data)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    assert grown_kb < 100_000  # 400 megapixels were never decoded


def test_size_guard_gives_the_size_and_can_be_raised() -> None:
    data = _bilevel_png(4000, 3000)
    with pytest.raises(InvalidImageError, match=r"4000×3000 = 12,000,000 pixels.*max_pixels=10,000,000.*raise"):
        load_query_image(data, max_pixels=10_000_000)
    q = load_query_image(data, max_pixels=12_000_000)
    assert q.image.size == (4000, 3000) and q.image.getpixel((0, 0)) == (0, 0, 0)
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_size_guard_applies_to_pil_images_and_arrays() -> None:
    with pytest.raises(InvalidImageError, match=r"PIL image .*30×20 = 600 pixels.*max_pixels=500"):
        load_query_image(Image.new("RGB", (30, 20)), max_pixels=500)
    with pytest.raises(InvalidImageError, match=r"numpy array .*30×20 = 600 pixels.*max_pixels=500"):
        load_query_image(np.zeros((20, 30, 3), dtype=np.uint8), max_pixels=500)
    assert load_query_image(np.zeros((20, 30), dtype=np.uint8), max_pixels=600).image.size == (30, 20)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, for the refused image
def test_our_limit_replaces_a_lower_pil_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(_noise("RGB", (64, 64), 7), "PNG")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse (> 2 × 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert load_query_image(data, max_pixels=5000).image.size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    with pytest.raises(InvalidImageError, match=r"64×64 = 4,096 pixels.*max_pixels=3,000"):
        load_query_image(data, max_pixels=3000)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_bad_limits_are_value_errors() -> None:
    img = Image.new("RGB", (2, 2))
    for kwargs in ({"max_pixels": 0}, {"max_pixels": 1.5}, {"max_side": 0}, {"max_side": True}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            load_query_image(img, **kwargs)


# --- LMM payload and downscaling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(_encode(_noise("RGB", (30, 20), 8), "JPEG"), id="jpeg"),
        pytest.param(_encode(_noise("RGB", (30, 20), 8), "PNG"), id="png"),
        pytest.param(_encode(_noise("RGB", (30, 20), 8), "BMP"), id="bmp"),
        pytest.param(_encode(_noise("RGB", (30, 20), 8), "TIFF"), id="tiff"),
        pytest.param(_exif_jpeg(8), id="exif-8"),
        pytest.param(_noise("RGBA", (30, 20), 8), id="pil-rgba"),
        pytest.param(np.zeros((20, 30), dtype=np.float32), id="array"),
    ],
)
def test_data_reopens_to_the_same_size(obj: object) -> None:
    q = load_query_image(obj)  # type: ignore[arg-type]
    _check(q)
    assert _reopen(q.data).format in {"JPEG", "PNG"}


def test_bmp_and_tiff_are_reencoded_as_jpeg() -> None:
    for fmt in ("BMP", "TIFF"):
        data = _encode(_noise("RGB", (8, 8), 9), fmt)
        q = load_query_image(data)
        assert q.data != data and _reopen(q.data).format == "JPEG"


def test_gps_metadata_never_reaches_lmms() -> None:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    data = _encode(_noise("RGB", (32, 32), 10), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    q = load_query_image(data)
    assert q.data != data
    assert not _reopen(q.data).getexif().get_ifd(ExifTags.IFD.GPSInfo)


def test_max_side_downscales_image_and_data() -> None:
    data = _encode(_halves((400, 200), (255, 0, 0), (0, 0, 255)), "PNG")
    q = load_query_image(data, max_side=100)
    _check(q)
    assert q.image.size == (100, 50) and _reopen(q.data).size == (100, 50)
    _assert_close(q.image.getpixel((10, 25)), (255, 0, 0))
    _assert_close(q.image.getpixel((90, 25)), (0, 0, 255))
    small = load_query_image(data, max_side=400)
    assert small.image.size == (400, 200) and small.data == data  # already within max_side: sent as is
    portrait = load_query_image(_exif_jpeg(6), max_side=24)
    assert portrait.image.size == (12, 24)
    assert load_query_image(np.zeros((10, 1000), dtype=np.uint8), max_side=100).image.size == (100, 1)
    assert load_query_image(Image.new("RGB", (300, 300)), max_side=64).image.size == (64, 64)


def test_max_side_on_a_large_jpeg_uses_reduced_decoding() -> None:
    img = _halves((2400, 1600), (200, 30, 40), (20, 40, 220))
    q = load_query_image(_encode(img, "JPEG", quality=95), max_side=300)
    assert q.image.size == (300, 200) and _reopen(q.data).size == (300, 200)
    _assert_close(q.image.getpixel((40, 100)), (200, 30, 40), tol=6)
    _assert_close(q.image.getpixel((260, 100)), (20, 40, 220), tol=6)


def test_repr_leaves_out_the_bytes() -> None:
    q = load_query_image(Image.new("RGB", (3, 2)))
    assert "data=" not in repr(q) and "PIL image" in repr(q)
    assert (q.width, q.height) == (3, 2)


# --- real photos ----------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="shared im2gps3k images not available")
def test_real_photos() -> None:
    paths = sorted(REAL_IMAGES.glob("*.jpg"))[:3]
    assert len(paths) == 3
    for path in paths:
        q = load_query_image(path)
        _check(q)
        with Image.open(path) as ref:
            assert q.image.size == ImageOps.exif_transpose(ref).size
        assert q.source == str(path)
        small = load_query_image(path.read_bytes(), max_side=256)
        assert max(small.image.size) == 256 or max(q.image.size) <= 256
        _check(small)
        assert load_query_image(np.asarray(q.image)).image.tobytes() == q.image.tobytes()
