"""Tests of g3.data: image stores, decoding, captions and the filtered corpus, on synthetic data."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA
from PIL import Image

from g3.data import (
    CAPTION_TEMPLATE,
    DROP_REASONS,
    CorpusReport,
    FolderImageStore,
    GeoCorpus,
    ImageStore,
    TarImageStore,
    caption_for,
    captions_for_frame,
    decode_image,
    image_file_name,
    image_sizes,
    open_image_store,
)
from g3.errors import CorpusError, InvalidCoordinatesError

REAL_CSV = SHARED_DATA / "im2gps3k" / "images_cc_subset500.csv"
REAL_IMAGES = SHARED_DATA / "im2gps3k" / "images_cc_subset500"


# --- synthetic images ------------------------------------------------------------------------------


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, rng.bytes(size[0] * size[1] * bands))


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _palette_png() -> bytes:
    rng = np.random.default_rng(3)
    arr = rng.integers(1, 256, size=(96, 96), dtype=np.uint8)
    arr[0, 0] = 0  # palette index 0 is transparent
    img = Image.fromarray(arr).convert("L")
    img = Image.frombytes("P", img.size, img.tobytes())
    palette = rng.integers(0, 256, size=768, dtype=np.uint8)
    palette[:3] = 0  # the transparent entry is black, so a white result proves compositing
    img.putpalette(palette.tobytes())
    return _encode(img, "PNG", transparency=0)


def _gray16_png() -> bytes:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 65536, size=(64, 64), dtype=np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 0, 32896
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return _encode(img, "PNG")


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _encode(_noise("RGB", (96, 48), 6), "JPEG", quality=95, exif=exif.tobytes())


def _images() -> dict[str, bytes]:
    """IMG_ID → file bytes for every row whose image exists."""
    images = {
        "3f/ab/good_a.jpg": _encode(_noise("RGB", (64, 64), 1), "JPEG", quality=95),
        "good_b.png": _encode(_noise("RGB", (64, 64), 2), "PNG"),
        "pal.png": _palette_png(),
        "cmyk.jpg": _encode(_noise("CMYK", (64, 64), 4), "JPEG", quality=95),
        "gray16.png": _gray16_png(),
        "exif.jpg": _exif_jpeg(),
        "nested/dir/raw.jpg": _encode(_noise("RGB", (64, 64), 7), "JPEG", quality=95),
        "corrupt.jpg": np.random.default_rng(8).bytes(6000),
        "tiny.jpg": _encode(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG"),
        "nocountry.jpg": _encode(_noise("RGB", (64, 64), 9), "JPEG", quality=95),
        "badlat.jpg": _encode(_noise("RGB", (64, 64), 10), "JPEG", quality=95),
        "badlon.jpg": _encode(_noise("RGB", (64, 64), 11), "JPEG", quality=95),
    }
    for img_id, data in images.items():
        if img_id != "tiny.jpg":
            assert len(data) > 5120, (img_id, len(data))
    assert len(images["tiny.jpg"]) < 5120
    return images


GOOD_IDS = [
    "3f/ab/good_a.jpg",
    "good_b.png",
    "pal.png",
    "cmyk.jpg",
    "gray16.png",
    "exif.jpg",
    "nested/dir/raw.jpg",
]

# IMG_ID, LAT, LON, city, state, country
ROWS = [
    ("3f/ab/good_a.jpg", "48.85", "2.35", "Paris", "", "France"),
    ("good_b.png", "45.76", "4.83", "Lyon", "Auvergne-Rhône-Alpes", "France"),
    ("pal.png", "35.0", "135.0", "", "", "Japan"),
    ("cmyk.jpg", "-33.9", "151.2", "Sydney", "New South Wales", "Australia"),
    ("gray16.png", "0", "-180", "", "  ", "Kiribati"),
    ("exif.jpg", "90", "180", "Longyearbyen", "Svalbard", "Norway"),
    ("nested/dir/raw.jpg", "-90", "0", "", "", "Antarctica"),
    ("corrupt.jpg", "10", "10", "X", "", "Chad"),
    ("tiny.jpg", "11", "11", "Y", "", "Chad"),
    ("missing.jpg", "12", "12", "Z", "", "Chad"),
    ("nocountry.jpg", "13", "13", "W", "", ""),
    ("badlat.jpg", "123", "13", "W", "", "Chad"),
    ("badlon.jpg", "10", "abc", "W", "", "Chad"),
    ("good_b.png", "1", "1", "Dup", "", "France"),
]

EXPECTED_DROPPED = {
    "bad_coordinates": 2,
    "duplicate_id": 1,
    "missing_country": 1,
    "missing_image": 1,
    "too_small": 1,
    "unreadable": 1,
}


def _write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_corpus_csv(path: Path) -> Path:
    header = ["IMG_ID", "LAT", "LON", "city", "state", "country", "extra"]
    return _write_csv(path, header, [(*r, f"x{i}") for i, r in enumerate(ROWS)])


def _make_folder(root: Path, images: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for img_id, data in images.items():
        # One image sits at its raw relative path, to exercise the folder store's fallback.
        target = root / (img_id if img_id.startswith("nested/") else image_file_name(img_id))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def _make_tar(path: Path, images: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for d in ("mp16", "mp16/images"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for img_id, data in images.items():
            info = tarfile.TarInfo(f"mp16/images/{image_file_name(img_id)}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("mp16/images/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "good_b.png"
        tf.addfile(link)
    return path


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return _images()


@pytest.fixture(params=["folder", "tar"])
def source(request: pytest.FixtureRequest, tmp_path: Path, images: dict[str, bytes]) -> tuple[Path, Path]:
    csv_path = _write_corpus_csv(tmp_path / "corpus.csv")
    if request.param == "folder":
        return csv_path, _make_folder(tmp_path / "images", images)
    return csv_path, _make_tar(tmp_path / "images.tar", images)


# --- loading and the report ------------------------------------------------------------------------


def test_load_counts_every_drop_reason(source: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    csv_path, image_path = source
    with caplog.at_level(logging.INFO, logger="g3.data.corpus"):
        corpus = GeoCorpus.load(csv_path, image_path, verify_images=True, progress=False)
    report = corpus.report
    assert report.total_rows == len(ROWS)
    assert report.dropped == EXPECTED_DROPPED
    assert report.kept == len(GOOD_IDS) == len(corpus)
    assert report.kept + sum(report.dropped.values()) == report.total_rows
    assert report.examples["bad_coordinates"] == ["badlat.jpg", "badlon.jpg"]
    assert report.examples["duplicate_id"] == ["good_b.png"]
    assert report.examples["missing_country"] == ["nocountry.jpg"]
    assert report.examples["missing_image"] == ["missing.jpg"]
    assert report.examples["too_small"] == ["tiny.jpg"]
    assert report.examples["unreadable"] == ["corrupt.jpg"]

    frame = corpus.frame
    assert frame["IMG_ID"].tolist() == GOOD_IDS
    assert list(frame.index) == list(range(len(GOOD_IDS)))
    for col in ("IMG_ID", "LAT", "LON", "caption", "neighbourhood", "county", "region", "continent", "extra"):
        assert col in frame.columns
    assert frame["extra"].tolist()[:2] == ["x0", "x1"]  # the first "good_b.png" row is the one kept
    coords = corpus.coordinates()
    assert coords.shape == (7, 2) and coords.dtype == np.float64
    np.testing.assert_allclose(coords[1], [45.76, 4.83])

    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings_ and "dropped 7 of 14 rows" in warnings_[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("missing_image: 1" in m for m in infos)


def test_load_without_verification_keeps_corrupt_file(source: tuple[Path, Path]) -> None:
    csv_path, image_path = source
    corpus = GeoCorpus.load(csv_path, image_path, progress=False)
    assert corpus.report.dropped == {**EXPECTED_DROPPED, "unreadable": 0}
    assert len(corpus) == len(GOOD_IDS) + 1
    i = corpus.frame["IMG_ID"].tolist().index("corrupt.jpg")
    with pytest.raises(CorpusError, match=r"corrupt\.jpg"):
        corpus.read_image(i)


def test_min_image_bytes_and_require_country_options(source: tuple[Path, Path]) -> None:
    csv_path, image_path = source
    corpus = GeoCorpus.load(csv_path, image_path, min_image_bytes=0, require_country=False, progress=False)
    assert corpus.report.dropped["too_small"] == 0
    assert corpus.report.dropped["missing_country"] == 0
    assert {"tiny.jpg", "nocountry.jpg"} <= set(corpus.frame["IMG_ID"])
    with pytest.raises(ValueError, match="min_image_bytes"):
        GeoCorpus.load(csv_path, image_path, min_image_bytes=-1, progress=False)


def test_captions_of_loaded_corpus(source: tuple[Path, Path]) -> None:
    corpus = GeoCorpus.load(*source, progress=False)
    captions = dict(zip(corpus.frame["IMG_ID"], corpus.captions(), strict=True))
    assert captions["3f/ab/good_a.jpg"] == "A street view photo taken in Paris, France"
    assert captions["good_b.png"] == "A street view photo taken in Lyon, Auvergne-Rhône-Alpes, France"
    assert captions["pal.png"] == "A street view photo taken in Japan"
    assert captions["gray16.png"] == "A street view photo taken in Kiribati"  # whitespace-only state


def test_read_image_decodes_every_mode_to_rgb(source: tuple[Path, Path]) -> None:
    corpus = GeoCorpus.load(*source, verify_images=True, progress=False)
    ids = corpus.frame["IMG_ID"].tolist()
    for i in range(len(corpus)):
        img = corpus.read_image(i)
        assert img.mode == "RGB" and len(img.getbands()) == 3, ids[i]
    assert corpus.read_image(ids.index("exif.jpg")).size == (48, 96)  # rotated from 96×48
    assert corpus.read_image(ids.index("pal.png")).getpixel((0, 0)) == (255, 255, 255)
    gray = corpus.read_image(ids.index("gray16.png"))
    assert [gray.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (0, 0, 0), (128, 128, 128)]
    assert corpus.read_image(ids.index("cmyk.jpg")).size == (64, 64)
    assert corpus.image_name(0) == "3f_ab_good_a.jpg"
    assert corpus.image_name(ids.index("nested/dir/raw.jpg")) == "nested_dir_raw.jpg"


def test_all_rows_dropped_is_an_error(tmp_path: Path, images: dict[str, bytes]) -> None:
    csv_path = _write_corpus_csv(tmp_path / "c.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no usable rows") as err:
        GeoCorpus.load(csv_path, empty, progress=False)
    assert "missing_image" in str(err.value)


def test_missing_required_column_names_it(tmp_path: Path, images: dict[str, bytes]) -> None:
    folder = _make_folder(tmp_path / "img", images)
    csv_path = _write_csv(tmp_path / "nolat.csv", ["IMG_ID", "lat", "LON", "country"], [("a.jpg", "1", "2", "X")])
    with pytest.raises(CorpusError) as err:
        GeoCorpus.load(csv_path, folder, progress=False)
    msg = str(err.value)
    assert "'LAT'" in msg and str(csv_path) in msg and "columns found" in msg and "'lat'" in msg


def test_missing_country_column_asks_for_require_country_false(tmp_path: Path, images: dict[str, bytes]) -> None:
    folder = _make_folder(tmp_path / "img", images)
    csv_path = _write_csv(tmp_path / "c.csv", ["IMG_ID", "LAT", "LON"], [("good_b.png", "1", "2")])
    with pytest.raises(CorpusError, match="country") as err:
        GeoCorpus.load(csv_path, folder, progress=False)
    assert "require_country=False" in str(err.value)
    corpus = GeoCorpus.load(csv_path, folder, require_country=False, progress=False)
    assert len(corpus) == 1 and corpus.frame.loc[0, "country"] == ""


def test_na_like_ids_stay_strings(tmp_path: Path, images: dict[str, bytes]) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "NA").write_bytes(images["good_b.png"])
    csv_path = _write_csv(
        tmp_path / "c.csv", ["IMG_ID", "LAT", "LON", "city", "country"], [("NA", "1", "2", "null", "Namibia")]
    )
    corpus = GeoCorpus.load(csv_path, folder, progress=False)
    assert corpus.frame["IMG_ID"].tolist() == ["NA"]
    # Address columns follow pandas' (and so G3's) NA handling: the string "null" is empty.
    assert corpus.captions() == ["A street view photo taken in Namibia"]


def test_custom_store_instance(tmp_path: Path, images: dict[str, bytes]) -> None:
    class DictStore:
        def __init__(self, data: dict[str, bytes]) -> None:
            self.data = {image_file_name(k): v for k, v in data.items()}

        def exists(self, name: str) -> bool:
            return image_file_name(name) in self.data

        def size(self, name: str) -> int | None:
            data = self.data.get(image_file_name(name))
            return None if data is None else len(data)

        def read_bytes(self, name: str) -> bytes:
            try:
                return self.data[image_file_name(name)]
            except KeyError:
                raise CorpusError(f"{name} not in DictStore") from None

    store = DictStore(images)
    assert isinstance(store, ImageStore)
    assert image_sizes(store, ["good_b.png", "nope"]).tolist() == [len(images["good_b.png"]), -1]
    corpus = GeoCorpus.load(_write_corpus_csv(tmp_path / "c.csv"), store, verify_images=True, progress=False)
    assert corpus.report.dropped == EXPECTED_DROPPED
    with pytest.raises(ValueError, match="tar_index_cache"):
        GeoCorpus.load(tmp_path / "c.csv", store, tar_index_cache=tmp_path / "x.npz", progress=False)


def test_report_save_summary_and_invariant(tmp_path: Path, source: tuple[Path, Path]) -> None:
    report = GeoCorpus.load(*source, verify_images=True, progress=False).report
    path = tmp_path / "out" / "report.json"
    report.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == report.to_dict()
    assert CorpusReport.from_dict(saved) == report
    lines = report.summary().splitlines()
    assert len(lines) == 1 + len(DROP_REASONS)
    assert "kept 7 of 14" in lines[0]
    for reason, line in zip(DROP_REASONS, lines[1:], strict=True):
        assert line.strip().startswith(f"{reason}: {EXPECTED_DROPPED[reason]}")
    with pytest.raises(ValueError, match="inconsistent"):
        CorpusReport(total_rows=3, kept=1, dropped={"too_small": 1})
    with pytest.raises(ValueError, match="unknown drop reason"):
        CorpusReport(total_rows=1, kept=0, dropped={"bogus": 1})


# --- stores ----------------------------------------------------------------------------------------


def test_store_lookup_and_errors(source: tuple[Path, Path], images: dict[str, bytes]) -> None:
    _, image_path = source
    store = open_image_store(image_path, progress=False)
    assert isinstance(store, FolderImageStore if image_path.is_dir() else TarImageStore)
    for img_id, data in images.items():
        assert store.exists(img_id)
        assert store.size(img_id) == len(data)
        assert store.read_bytes(img_id) == data
    assert store.exists("3f_ab_good_a.jpg")  # the flattened name works too
    assert not store.exists("missing.jpg") and store.size("missing.jpg") is None
    assert not store.exists("link.jpg")  # links in a tar are not images
    with pytest.raises(CorpusError) as err:
        store.read_bytes("a/missing.jpg")
    assert "a_missing.jpg" in str(err.value) and str(image_path) in str(err.value)
    sizes = image_sizes(store, ["good_b.png", "missing.jpg", "tiny.jpg"])
    assert sizes.tolist() == [len(images["good_b.png"]), -1, len(images["tiny.jpg"])]


def test_folder_store_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x" * 10)
    store = FolderImageStore(root)
    assert not store.exists("../secret.jpg")


def test_open_image_store_rejects_other_paths(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        open_image_store(tmp_path / "nowhere")
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 200)
    with pytest.raises(CorpusError, match="neither a folder nor a tar"):
        open_image_store(text)
    with pytest.raises(CorpusError):
        FolderImageStore(text)


def test_compressed_tar_store(tmp_path: Path, images: dict[str, bytes]) -> None:
    path = _make_tar(tmp_path / "images.tar.gz", images, mode="w:gz")
    store = open_image_store(path, progress=True)
    assert isinstance(store, TarImageStore) and store.compressed
    for img_id in ("cmyk.jpg", "3f/ab/good_a.jpg", "gray16.png"):  # out of archive order
        assert store.read_bytes(img_id) == images[img_id]


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_tar_index_cache_written_reused_and_rebuilt(
    tmp_path: Path, images: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    tar_path = _make_tar(tmp_path / "images.tar", images)
    cache = tmp_path / "cache" / f"index{suffix}"
    builds: list[Path] = []
    real_build = TarImageStore._build_index

    def counting_build(self: TarImageStore, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        builds.append(self.path)
        return real_build(self, progress)

    monkeypatch.setattr(TarImageStore, "_build_index", counting_build)

    first = TarImageStore(tar_path, index_cache=cache, progress=False)
    assert cache.is_file() and len(builds) == 1
    assert not list(cache.parent.glob("*.tmp"))  # written atomically, nothing left behind

    second = TarImageStore(tar_path, index_cache=cache, progress=False)
    assert len(builds) == 1  # reused
    for img_id, data in images.items():
        assert second.read_bytes(img_id) == data
    assert len(second) == len(first)

    corpus = GeoCorpus.load(_write_corpus_csv(tmp_path / "c.csv"), tar_path, tar_index_cache=cache, progress=False)
    assert len(builds) == 1 and len(corpus) == len(GOOD_IDS) + 1

    # Rewrite the tar with one more image: its size and mtime change, so the index is rebuilt.
    time.sleep(0.01)
    new_images = {**images, "late.jpg": images["good_b.png"]}
    _make_tar(tar_path, new_images)
    third = TarImageStore(tar_path, index_cache=cache, progress=False)
    assert len(builds) == 2 and third.exists("late.jpg")
    TarImageStore(tar_path, index_cache=cache, progress=False)
    assert len(builds) == 2  # the rebuilt cache is reused in turn

    # Same size, new mtime: still rebuilt.
    st = os.stat(tar_path)
    os.utime(tar_path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    TarImageStore(tar_path, index_cache=cache, progress=False)
    assert len(builds) == 3

    # An unreadable cache is rebuilt, not trusted.
    cache.write_bytes(b"garbage")
    store = TarImageStore(tar_path, index_cache=cache, progress=False)
    assert len(builds) == 4 and store.exists("late.jpg")


def test_tar_index_skips_repeated_basenames(tmp_path: Path, images: dict[str, bytes]) -> None:
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tf:
        for prefix, img_id in (("a", "good_b.png"), ("b", "cmyk.jpg")):
            info = tarfile.TarInfo(f"{prefix}/same.jpg")
            info.size = len(images[img_id])
            tf.addfile(info, io.BytesIO(images[img_id]))
    store = TarImageStore(path, progress=False)
    assert len(store) == 1 and store.read_bytes("same.jpg") == images["good_b.png"]


# --- decoding --------------------------------------------------------------------------------------


def test_decode_image_conversions() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = decode_image(_encode(rgba, "PNG"), "rgba.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)

    la = Image.new("LA", (2, 2), (0, 0))
    assert decode_image(_encode(la, "PNG"), "la.png").getpixel((0, 0)) == (255, 255, 255)
    gray = decode_image(_encode(Image.new("L", (2, 2), 77), "PNG"), "l.png")
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)
    bilevel = decode_image(_encode(Image.new("1", (2, 2), 1), "PNG"), "1.png")
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)
    cmyk = decode_image(_encode(_noise("CMYK", (16, 16), 1), "JPEG"), "cmyk.jpg")
    assert cmyk.mode == "RGB" and cmyk.size == (16, 16)
    gray16 = decode_image(_gray16_png(), "g16.png")
    assert gray16.mode == "RGB" and gray16.getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(_exif_jpeg(), "exif.jpg").size == (48, 96)


def test_decode_image_errors_name_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CorpusError, match=r"broken\.jpg"):
        decode_image(b"not an image at all", "broken.jpg")
    good = _encode(_noise("RGB", (64, 64), 1), "JPEG", quality=95)
    with pytest.raises(CorpusError, match=r"truncated\.jpg"):
        decode_image(good[: len(good) // 2], "truncated.jpg")

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64×64 > 2 × 100: DecompressionBombError
    with pytest.raises(CorpusError, match=r"bomb.jpg.*too large"):
        decode_image(good, "bomb.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1× and 2×: only a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(CorpusError, match=r"bomb\.jpg"):
            decode_image(good, "bomb.jpg")


# --- captions --------------------------------------------------------------------------------------


def test_caption_for_skips_empty_parts() -> None:
    assert caption_for("Paris", "Île-de-France", "France") == (
        "A street view photo taken in Paris, Île-de-France, France"
    )
    assert caption_for("Paris", "", "France") == "A street view photo taken in Paris, France"
    assert caption_for(math.nan, None, " Chad ") == "A street view photo taken in Chad"
    assert caption_for(pd.NA, "  ", float("nan")) == "A street view photo taken in"
    assert caption_for("a", "b", "c", template="{location} photo", separator=" / ") == "a / b / c photo"
    assert CAPTION_TEMPLATE.format(location="X") == "A street view photo taken in X"
    with pytest.raises(ValueError, match="location"):
        caption_for("a", "b", "c", template="no placeholder")


def test_captions_for_frame_vectorised() -> None:
    frame = pd.DataFrame(
        {
            "city": ["Paris", None, "", "Oslo"],
            "state": ["", np.nan, "X", "Oslo"],
            "country": ["France", "Chad", None, "Norway"],
        },
        index=[10, 11, 12, 13],
    )
    out = captions_for_frame(frame)
    assert list(out.index) == [10, 11, 12, 13]
    expected = [caption_for(*row) for row in frame[["city", "state", "country"]].itertuples(index=False)]
    assert out.tolist() == expected
    assert out.tolist()[2] == "A street view photo taken in X"
    # A missing column counts as empty.
    assert captions_for_frame(frame[["country"]]).tolist()[0] == "A street view photo taken in France"
    custom = captions_for_frame(frame, fields=("country", "city"), template="in {location}!", separator="; ")
    assert custom.tolist()[0] == "in France; Paris!"
    assert captions_for_frame(pd.DataFrame({"city": []})).tolist() == []


# --- corpus objects --------------------------------------------------------------------------------


def _synthetic_corpus(n: int, tmp_path: Path) -> GeoCorpus:
    frame = pd.DataFrame(
        {
            "IMG_ID": [f"{i}.jpg" for i in range(n)],
            "LAT": np.linspace(-80, 80, n),
            "LON": np.linspace(-170, 170, n),
            "city": ["C"] * n,
            "country": ["K"] * n,
        }
    )
    (tmp_path / "empty_store").mkdir(exist_ok=True)
    return GeoCorpus.from_frame(frame, FolderImageStore(tmp_path / "empty_store"))


def test_from_frame_validates_and_fills(tmp_path: Path) -> None:
    corpus = _synthetic_corpus(5, tmp_path)
    assert corpus.captions()[0] == "A street view photo taken in C, K"
    assert {"state", "neighbourhood", "continent"} <= set(corpus.frame.columns)
    assert corpus.report.total_rows == corpus.report.kept == 5
    store = corpus.store
    with pytest.raises(CorpusError, match="LON"):
        GeoCorpus.from_frame(pd.DataFrame({"IMG_ID": ["a"], "LAT": [1.0]}), store)
    with pytest.raises(InvalidCoordinatesError):
        GeoCorpus.from_frame(pd.DataFrame({"IMG_ID": ["a"], "LAT": [91.0], "LON": [0.0]}), store)
    given = pd.DataFrame({"IMG_ID": ["a"], "LAT": [1.0], "LON": [2.0], "caption": ["my caption"]})
    assert GeoCorpus.from_frame(given, store).captions() == ["my caption"]


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    corpus = _synthetic_corpus(100, tmp_path)
    train, val = corpus.split(0.2, seed=0)
    assert (len(train), len(val)) == (80, 20)
    train_ids, val_ids = set(train.frame["IMG_ID"]), set(val.frame["IMG_ID"])
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(corpus.frame["IMG_ID"])
    again_train, again_val = corpus.split(0.2, seed=0)
    assert again_val.frame["IMG_ID"].tolist() == val.frame["IMG_ID"].tolist()
    assert again_train.frame["IMG_ID"].tolist() == train.frame["IMG_ID"].tolist()
    assert corpus.split(0.2, seed=1)[1].frame["IMG_ID"].tolist() != val.frame["IMG_ID"].tolist()
    assert train.store is corpus.store and val.store is corpus.store
    assert val.report.kept == len(val)
    for bad in (0.0, 1.0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match="val_fraction"):
            corpus.split(bad, seed=0)
    with pytest.raises(ValueError, match="at least one row"):
        _synthetic_corpus(3, tmp_path).split(0.01, seed=0)


def test_subset(tmp_path: Path) -> None:
    corpus = _synthetic_corpus(6, tmp_path)
    sub = corpus.subset([4, 1])
    assert sub.frame["IMG_ID"].tolist() == ["4.jpg", "1.jpg"]
    np.testing.assert_array_equal(sub.coordinates(), corpus.coordinates()[[4, 1]])
    mask = np.array([True, False, True, False, False, False])
    assert corpus.subset(mask).frame["IMG_ID"].tolist() == ["0.jpg", "2.jpg"]
    assert len(corpus.subset([])) == 0
    with pytest.raises(IndexError):
        corpus.subset(np.array([True, False]))


# --- pickling and worker processes -----------------------------------------------------------------


def _read_in_child(payload: bytes) -> list[tuple[str, tuple[int, int], str]]:
    corpus = pickle.loads(payload)
    out = []
    for i in range(len(corpus)):
        img = corpus.read_image(i)
        out.append((img.mode, img.size, hashlib.sha1(img.tobytes()).hexdigest()))
    return out


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pickled_tar_corpus_reads_in_child_process(tmp_path: Path, images: dict[str, bytes], method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    tar_path = _make_tar(tmp_path / "images.tar", images)
    corpus = GeoCorpus.load(_write_corpus_csv(tmp_path / "c.csv"), tar_path, verify_images=True, progress=False)
    expected = _read_in_child(pickle.dumps(corpus))  # also opens the parent's handle before forking
    payload = pickle.dumps(corpus)
    clone = pickle.loads(payload)
    assert clone.store._fd is None and clone.store._pid is None  # no handle travels in a pickle
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_read_in_child, [payload, payload])
    assert results == [expected, expected]
    assert all(mode == "RGB" for mode, _, _ in expected)


def _read_inherited(corpus: GeoCorpus, queue: multiprocessing.Queue) -> None:
    hashes = [hashlib.sha1(corpus.read_image(i).tobytes()).hexdigest() for i in range(len(corpus))]
    queue.put((os.getpid(), corpus.store._pid, hashes))


@pytest.mark.parametrize(("name", "mode"), [("images.tar", "w"), ("images.tar.gz", "w:gz")])
def test_forked_child_reopens_inherited_tar_handle(
    tmp_path: Path, images: dict[str, bytes], name: str, mode: str
) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork is not available here")
    tar_path = _make_tar(tmp_path / name, images, mode=mode)
    corpus = GeoCorpus.load(_write_corpus_csv(tmp_path / "c.csv"), tar_path, progress=True)
    expected = [hashlib.sha1(corpus.read_image(i).tobytes()).hexdigest() for i in range(len(corpus) - 1)]
    corpus = corpus.subset(list(range(len(corpus) - 1)))  # drop corrupt.jpg (last row)
    parent_handle = corpus.store._fd if corpus.store._tar is None else corpus.store._tar
    assert parent_handle is not None and corpus.store._pid == os.getpid()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_read_inherited, args=(corpus, queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert {pid for pid, _, _ in results} == {c.pid for c in children}
    assert all(handle_pid == pid for pid, handle_pid, _ in results)  # each child opened its own handle
    assert all(hashes == expected for _, _, hashes in results)
    assert parent_handle in (corpus.store._fd, corpus.store._tar)  # the parent's handle is untouched
    assert [hashlib.sha1(corpus.read_image(i).tobytes()).hexdigest() for i in range(len(corpus))] == expected


def test_folder_corpus_pickles(source: tuple[Path, Path]) -> None:
    corpus = GeoCorpus.load(*source, progress=False)
    clone = pickle.loads(pickle.dumps(corpus))
    assert clone.frame.equals(corpus.frame) and clone.report == corpus.report
    assert clone.read_image(0).tobytes() == corpus.read_image(0).tobytes()


class _ImageDataset:
    def __init__(self, corpus: GeoCorpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.corpus.read_image(i).resize((8, 8)))


def test_torch_dataloader_workers_read_tar(tmp_path: Path, images: dict[str, bytes]) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    tar_path = _make_tar(tmp_path / "images.tar", images)
    corpus = GeoCorpus.load(_write_corpus_csv(tmp_path / "c.csv"), tar_path, verify_images=True, progress=False)
    loader = torch_data.DataLoader(_ImageDataset(corpus), batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(b.shape[0] for b in batches) == len(corpus)
    assert all(tuple(b.shape[1:]) == (8, 8, 3) for b in batches)


# --- the real im2gps3k subset ----------------------------------------------------------------------


@pytest.mark.skipif(
    not (REAL_CSV.is_file() and REAL_IMAGES.is_dir()),
    reason=f"im2gps3k CC subset not present ({REAL_CSV} and {REAL_IMAGES})",
)
def test_real_im2gps3k_subset() -> None:
    with pytest.raises(CorpusError, match="require_country=False"):
        GeoCorpus.load(REAL_CSV, REAL_IMAGES, progress=False)
    corpus = GeoCorpus.load(REAL_CSV, REAL_IMAGES, require_country=False, progress=False)
    assert len(corpus) == 500
    assert corpus.report.total_rows == 500 and corpus.report.total_dropped == 0
    assert corpus.coordinates().shape == (500, 2)
    assert set(corpus.captions()) == {"A street view photo taken in"}
    assert "AUTHOR" in corpus.frame.columns
    img = corpus.read_image(0)
    assert img.mode == "RGB" and min(img.size) > 0
