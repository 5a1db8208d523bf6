"""Benchmark loaders: IM2GPS3k and YFCC4k metadata (LON before LAT), image folders, generic CSVs, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from g3.errors import CorpusError
from g3.evaluation.datasets import (
    EvalDataset,
    load_dataset,
    load_generic,
    load_im2gps3k,
    load_yfcc4k,
)

IM2GPS3K_CSV = SHARED_DATA / "im2gps3k" / "im2gps3k_places365.csv"
IM2GPS3K_SUBSET = SHARED_DATA / "im2gps3k" / "images_cc_subset500"
YFCC4K_CSV = SHARED_DATA / "yfcc4k" / "yfcc4k_places365.csv"
YFCC4K_LATLON = SHARED_DATA / "yfcc4k" / "yfcc4k_latlon.csv"


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"shared data {path} is absent")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- real metadata ---------------------------------------------------------------------------------


def test_im2gps3k_metadata() -> None:
    _need(IM2GPS3K_CSV)
    ds = load_im2gps3k(IM2GPS3K_CSV)
    assert ds.name == "im2gps3k"
    assert len(ds.frame) == ds.denominator == 2997
    assert list(ds.frame.columns[:3]) == ["IMG_ID", "LAT", "LON"]
    for col in ("AUTHOR", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor"):
        assert col in ds.frame.columns
    assert set(ds.frame["S3_Label"]) == {0, 1, 2}
    assert ds.frame["IMG_ID"].is_unique
    assert ds.frame["LAT"].dtype == np.float64 and ds.frame["LON"].dtype == np.float64
    first = ds.frame.iloc[0]
    assert first["IMG_ID"] == "1000269685_e60e9cdfb4_1125_78841376@N00.jpg"
    assert (first["LAT"], first["LON"]) == (32.325436, -64.764404)  # Bermuda
    assert ds.image_dir is None and ds.missing == []
    assert ds.latlon.shape == (2997, 2)


def test_yfcc4k_lon_before_lat_matches_latlon_file() -> None:
    _need(YFCC4K_CSV, YFCC4K_LATLON)
    raw = load_yfcc4k(YFCC4K_CSV)
    derived = load_yfcc4k(YFCC4K_LATLON)
    reference = pd.read_csv(YFCC4K_LATLON, dtype={"IMG_ID": str})
    assert raw.name == derived.name == "yfcc4k"
    assert len(raw.frame) == raw.denominator == 4536
    # Every row's coordinates equal the explicit LAT/LON columns of the derived file: the
    # YFCC100M header's LON-before-LAT order is handled.
    assert raw.frame["IMG_ID"].tolist() == reference["IMG_ID"].tolist()
    np.testing.assert_array_equal(raw.frame["LAT"].to_numpy(), reference["LAT"].to_numpy())
    np.testing.assert_array_equal(raw.frame["LON"].to_numpy(), reference["LON"].to_numpy())
    # Toronto, not a point in Antarctica.
    assert (raw.frame["LAT"].iloc[0], raw.frame["LON"].iloc[0]) == (43.649708, -79.365637)
    # Both formats load to the same frame.
    pd.testing.assert_frame_equal(raw.frame, derived.frame)
    assert list(raw.frame.columns) == [
        "IMG_ID",
        "LAT",
        "LON",
        "AUTHOR",
        "license",
        "license_url",
        "flickr_page",
        "yfcc_line",
    ]


def test_load_dataset_picks_the_loader() -> None:
    _need(IM2GPS3K_CSV, YFCC4K_CSV, YFCC4K_LATLON)
    assert load_dataset(IM2GPS3K_CSV).name == "im2gps3k"
    assert load_dataset(str(YFCC4K_CSV)).name == "yfcc4k"
    assert load_dataset(YFCC4K_LATLON).name == "yfcc4k"
    by_name = load_dataset("YFCC4k", csv=YFCC4K_CSV)
    assert by_name.name == "yfcc4k" and len(by_name.frame) == 4536
    assert len(load_dataset("im2gps3k", csv=IM2GPS3K_CSV).frame) == 2997


def test_im2gps3k_with_subset_folder_lists_missing(caplog: pytest.LogCaptureFixture) -> None:
    _need(IM2GPS3K_CSV, IM2GPS3K_SUBSET)
    with caplog.at_level(logging.WARNING, logger="g3.evaluation.datasets"):
        ds = load_dataset(IM2GPS3K_CSV, IM2GPS3K_SUBSET)
    assert ds.denominator == 2997
    assert len(ds.missing) == 2497
    assert "2497 of 2997 images are missing" in caplog.text
    present = ds.present()
    assert len(present) == 500
    assert not set(present["IMG_ID"]) & set(ds.missing)
    assert all(ds.image_path(i).is_file() for i in present["IMG_ID"])
    assert not any(ds.image_path(i).exists() for i in ds.missing[:50])
    # present() keeps the frame's index, so rows can be matched back.
    pd.testing.assert_frame_equal(present, ds.frame.loc[present.index])
    assert ds.missing == [i for i in ds.frame["IMG_ID"] if i in set(ds.missing)]  # frame order


# --- generic CSVs ----------------------------------------------------------------------------------


def test_generic_csv_case_insensitive(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"x")
    (images / "sub").mkdir()
    (images / "sub" / "c.jpg").write_bytes(b"x")
    csv = _write(
        tmp_path / "mybench.csv",
        "img_id,Lat, lon ,scene\na.jpg,48.85,2.35,urban\nb.jpg,-33.9,151.2,\nsub/c.jpg,0,0,x\n",
    )
    ds = load_generic(csv, images)
    assert ds.name == "mybench"
    assert list(ds.frame.columns) == ["IMG_ID", "LAT", "LON", "scene"]
    assert ds.frame["LAT"].tolist() == [48.85, -33.9, 0.0]
    assert ds.missing == ["b.jpg"]
    assert ds.denominator == 3
    assert ds.present()["IMG_ID"].tolist() == ["a.jpg", "sub/c.jpg"]
    assert ds.image_path("sub/c.jpg") == images / "sub" / "c.jpg"
    assert load_dataset(csv).name == "mybench"
    assert load_generic(csv, name="other").name == "other"


def test_dataset_without_images(tmp_path: Path) -> None:
    ds = load_generic(_write(tmp_path / "d.csv", "IMG_ID,LAT,LON\na,1,2\n"))
    assert ds.missing == [] and ds.denominator == 1
    with pytest.raises(CorpusError, match="without an image folder"):
        ds.present()
    with pytest.raises(CorpusError, match="without an image folder"):
        ds.image_path("a")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("IMG_ID,LAT,LON\na,1,2\na,3,4\n", "more than once"),
        ("IMG_ID,LAT,LON\na,1,2\nb,north,4\n", "line 3 IMG_ID 'b'"),
        ("IMG_ID,LAT,LON\na,1,2\nb,,4\n", "missing, non-numeric or out-of-range"),
        ("IMG_ID,LAT,LON\na,91,2\n", "out-of-range"),
        ("IMG_ID,LAT,LON\na,10,181\n", "out-of-range"),
        ("IMG_ID,LAT,LON\na,1,2\nb,120,40\n", "swapped"),
        ("IMG_ID,LAT,LON\n,1,2\n", "empty IMG_ID"),
        ("IMG_ID,LAT,LON\n../etc/passwd,1,2\n", "not a relative file name"),
        ("IMG_ID,LAT,LON\n/abs.jpg,1,2\n", "not a relative file name"),
        ("IMG_ID,LATITUDE,LON\na,1,2\n", "no LAT column"),
        ("IMG_ID,LAT,lat,LON\na,1,1,2\n", "several LAT columns"),
        ("IMG_ID,LAT,LON\n", "no rows"),
        ("", "cannot read"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, match: str) -> None:
    csv = _write(tmp_path / "bad.csv", text)
    with pytest.raises(CorpusError, match=match):
        load_generic(csv)


def test_loader_errors(tmp_path: Path) -> None:
    csv = _write(tmp_path / "d.csv", "IMG_ID,LAT,LON\na,1,2\n")
    with pytest.raises(CorpusError, match="does not exist"):
        load_generic(tmp_path / "absent.csv")
    with pytest.raises(CorpusError, match="image folder"):
        load_generic(csv, tmp_path / "no-such-folder")
    with pytest.raises(CorpusError, match="needs the benchmark's metadata CSV"):
        load_dataset("im2gps3k")
    with pytest.raises(CorpusError, match="neither a known dataset name"):
        load_dataset("im2gps")
    with pytest.raises(CorpusError, match="unknown dataset name"):
        load_dataset("mp16", csv=csv)
    with pytest.raises(CorpusError, match="lacks columns"):
        EvalDataset(name="x", frame=pd.DataFrame({"IMG_ID": ["a"], "LAT": [1.0]}))
    ds = load_generic(csv, tmp_path)
    with pytest.raises(CorpusError, match="relative image file name"):
        ds.image_path("../a")


def test_row_count_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = _write(tmp_path / "im2gps3k_small.csv", "IMG_ID,LAT,LON,S3_Label\na,1,2,0\n")
    with caplog.at_level(logging.WARNING, logger="g3.evaluation.datasets"):
        ds = load_dataset(csv)
    assert ds.name == "im2gps3k"
    assert "published benchmark has 2997" in caplog.text
