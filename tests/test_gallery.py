"""GPS gallery: coordinate sources, embedding with a real (tiny) aligner, exact search, the on-disk cache."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from g3.errors import GeoIndexError, InvalidCoordinatesError
from g3.index.gallery import (
    GallerySearchResult,
    GPSGallery,
    cache_file_name,
    gallery_cache_dir,
    load_gallery_coordinates,
)
from g3.models import GeoAligner

CELLS_5000 = SHARED_DATA / "geoestimation_cells" / "cells_50_5000.csv"


def random_points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` (lat, lon) points spread over the globe."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)], axis=1)


class CountingEncode:
    """Wraps ``aligner.encode_gps`` and counts calls (or refuses them)."""

    def __init__(self, aligner: GeoAligner, *, forbid: bool = False) -> None:
        self.original = aligner.encode_gps
        self.forbid = forbid
        self.calls = 0

    def __call__(self, latlon: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        self.calls += 1
        if self.forbid:
            raise AssertionError("encode_gps must not be called: the cache should have been used")
        return self.original(latlon, validate=validate)


# -- coordinate sources -------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("geoclip") is None, reason="the geoclip package is not installed")
def test_geoclip_gallery_loads_100k_points() -> None:
    coords = load_gallery_coordinates("geoclip")
    assert coords.shape == (100_000, 2)
    assert coords.dtype == np.float64
    assert np.abs(coords[:, 0]).max() <= 90 and np.abs(coords[:, 1]).max() <= 180


@pytest.mark.skipif(not CELLS_5000.is_file(), reason=f"{CELLS_5000} is not available")
def test_geoestimation_cells_load_their_mean_coordinates() -> None:
    coords = load_gallery_coordinates(CELLS_5000)
    assert coords.shape == (3298, 2)
    # first data row: 0,8744,3376,39.28162046949048,-107.94343695171831
    np.testing.assert_allclose(coords[0], [39.28162046949048, -107.94343695171831])


def test_lat_lon_csv_loads(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("IMG_ID,LAT,LON,city\na.jpg,48.85,2.35,Paris\nb.jpg,-33.87,151.21,Sydney\n")
    np.testing.assert_allclose(load_gallery_coordinates(path), [[48.85, 2.35], [-33.87, 151.21]])
    assert load_gallery_coordinates(str(path)).shape == (2, 2)


def test_lowercase_latitude_longitude_csv_with_comments_loads(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("# made by hand\nname,longitude,latitude\nx,10.5,20.25\ny,-70,-30\n")
    np.testing.assert_allclose(load_gallery_coordinates(path), [[20.25, 10.5], [-30, -70]])


def test_csv_without_coordinate_columns_names_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "nothing.csv"
    path.write_text("IMG_ID,x,y\na,1,2\n")
    with pytest.raises(GeoIndexError, match=r"nothing\.csv.*\['IMG_ID', 'x', 'y'\]"):
        load_gallery_coordinates(path)


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GeoIndexError, match="neither 'geoclip' nor an existing CSV"):
        load_gallery_coordinates(tmp_path / "missing.csv")
    out_of_range = tmp_path / "bad.csv"
    out_of_range.write_text("lat,lon\n95,0\n")
    with pytest.raises(InvalidCoordinatesError):
        load_gallery_coordinates(out_of_range)
    empty = tmp_path / "empty.csv"
    empty.write_text("lat,lon\n")
    with pytest.raises(GeoIndexError, match="no coordinates"):
        load_gallery_coordinates(empty)


# -- build and search ---------------------------------------------------------------------------------


def test_gallery_point_finds_itself(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    coords = random_points(300)
    gallery = GPSGallery.build(coords, tiny_aligner, cache_dir=None)
    assert len(gallery) == 300 and gallery.dim == tiny_aligner.embed_dim
    assert gallery.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-5)
    assert gallery.fingerprint == tiny_aligner.fingerprint()

    result = gallery.search(gallery.embeddings[:50], k=3)
    assert isinstance(result, GallerySearchResult)
    np.testing.assert_array_equal(result.rows[:, 0], np.arange(50))
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.coordinates[:, 0], coords[:50])


def test_search_matches_numpy_brute_force(tiny_aligner: GeoAligner) -> None:
    coords = random_points(500, seed=1)
    gallery = GPSGallery.build(coords, tiny_aligner, cache_dir=None, batch_size=64)
    queries = np.random.default_rng(2).standard_normal((40, gallery.dim)).astype(np.float32)
    result = gallery.search(queries, k=7)

    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = unit @ gallery.embeddings.T
    expected_rows = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    assert result.scores.shape == result.rows.shape == result.lat.shape == result.lon.shape == (40, 7)
    assert result.rows.dtype == np.int64 and result.lat.dtype == np.float64
    np.testing.assert_array_equal(result.rows, expected_rows)
    np.testing.assert_allclose(result.scores, np.take_along_axis(sims, expected_rows, axis=1), atol=1e-5)
    np.testing.assert_array_equal(result.lat, coords[expected_rows, 0])
    np.testing.assert_array_equal(result.lon, coords[expected_rows, 1])
    assert np.all(np.diff(result.scores, axis=1) <= 0)

    # a torch tensor and a single (D,) vector are accepted too
    from_tensor = gallery.search(torch.from_numpy(queries), k=7)
    np.testing.assert_array_equal(from_tensor.rows, result.rows)
    assert gallery.search(queries[0], k=2).rows.shape == (1, 2)


def test_search_clamps_k_and_checks_its_input(tiny_aligner: GeoAligner) -> None:
    gallery = GPSGallery.build(random_points(4), tiny_aligner, cache_dir=None)
    result = gallery.search(gallery.embeddings[:2], k=10)
    assert result.rows.shape == (2, 4)
    assert sorted(result.rows[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=f"width {3 * gallery.dim}.*width {gallery.dim}"):
        gallery.search(np.ones((1, 3 * gallery.dim), dtype=np.float32))
    with pytest.raises(ValueError, match="k must be at least 1"):
        gallery.search(gallery.embeddings[:1], k=0)
    with pytest.raises(ValueError, match="NaN"):
        gallery.search(np.full((1, gallery.dim), np.nan, dtype=np.float32))


def test_constructor_checks_shapes_and_exposes_read_only_arrays() -> None:
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="3 gallery coordinates but 2 embeddings"):
        GPSGallery(random_points(3), emb[:2])
    with pytest.raises(InvalidCoordinatesError):
        GPSGallery(np.zeros((3, 3)), emb)
    gallery = GPSGallery(random_points(3), emb, fingerprint="abc")
    assert gallery.dim == 3 and len(gallery) == 3 and gallery.fingerprint == "abc"
    with pytest.raises(ValueError):
        gallery.embeddings[0, 0] = 5.0
    with pytest.raises(ValueError):
        gallery.coordinates[0, 0] = 5.0


def test_build_refuses_invalid_coordinates(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    with pytest.raises(InvalidCoordinatesError):
        GPSGallery.build(np.array([[0.0, 0.0], [np.nan, 1.0]]), tiny_aligner, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_image_to_gps_retrieval_end_to_end(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    coords = random_points(200, seed=3)
    gallery = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        queries = tiny_aligner.encode_image(pixels).gps_aligned
    result = gallery.search(queries, k=3)
    assert result.coordinates.shape == (2, 3, 2)
    gallery_points = {tuple(p) for p in coords.tolist()}
    assert all(tuple(p) in gallery_points for p in result.coordinates.reshape(-1, 2).tolist())
    assert np.all(result.scores <= 1.0 + 1e-5) and np.all(result.scores >= -1.0 - 1e-5)


def test_from_source_reads_a_csv(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("lat,lon\n10,20\n-10,-20\n45,90\n")
    gallery = GPSGallery.from_source(path, tiny_aligner, cache_dir=tmp_path / "cache", batch_size=2)
    np.testing.assert_array_equal(gallery.coordinates, [[10, 20], [-10, -20], [45, 90]])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


# -- cache --------------------------------------------------------------------------------------------


def test_second_build_loads_the_cache(
    tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    coords = random_points(100)
    caplog.set_level(logging.INFO, logger="g3.index.gallery")
    first = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path, batch_size=32)
    files = list(tmp_path.glob("*.npy"))
    assert [f.name for f in files] == [cache_file_name(tiny_aligner.fingerprint(), coords)]
    assert files[0].name.startswith(f"gps-gallery-{tiny_aligner.fingerprint()[:16]}-")
    assert "embedding 100 gallery points" in caplog.text

    caplog.clear()
    monkeypatch.setattr(tiny_aligner, "encode_gps", CountingEncode(tiny_aligner, forbid=True))
    second = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    assert "loaded 100 gallery embeddings from cache" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_cache_is_keyed_by_aligner_and_coordinates(
    tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coords = random_points(50)
    first = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    counter = CountingEncode(tiny_aligner)
    monkeypatch.setattr(tiny_aligner, "encode_gps", counter)

    GPSGallery.build(coords[:49], tiny_aligner, cache_dir=tmp_path)  # other points: new entry
    assert counter.calls == 1

    with torch.no_grad():
        tiny_aligner.location_head[0].weight.add_(0.05)  # other weights: other fingerprint
    changed = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    assert counter.calls == 2
    assert changed.fingerprint != first.fingerprint
    assert not np.allclose(changed.embeddings, first.embeddings)
    assert len(list(tmp_path.glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "not_unit"])
def test_unusable_cache_file_is_replaced(
    damage: str,
    tiny_aligner: GeoAligner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    coords = random_points(20)
    good = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    path = tmp_path / cache_file_name(tiny_aligner.fingerprint(), coords)
    if damage == "garbage":
        path.write_bytes(b"this is not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong_shape":
        np.save(path, np.zeros((3, 3), dtype=np.float32))
    else:
        np.save(path, np.zeros((20, tiny_aligner.embed_dim), dtype=np.float32))

    counter = CountingEncode(tiny_aligner)
    monkeypatch.setattr(tiny_aligner, "encode_gps", counter)
    with caplog.at_level(logging.WARNING, logger="g3.index.gallery"):
        rebuilt = GPSGallery.build(coords, tiny_aligner, cache_dir=tmp_path)
    assert counter.calls == 1
    assert "ignoring" in caplog.text and str(path) in caplog.text
    np.testing.assert_allclose(rebuilt.embeddings, good.embeddings, atol=1e-6)
    np.testing.assert_array_equal(np.load(path), rebuilt.embeddings)  # rewritten


def test_no_cache_dir_writes_nothing(tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("G3_CACHE_DIR", str(tmp_path / "g3cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    coords = random_points(10)
    counter = CountingEncode(tiny_aligner)
    monkeypatch.setattr(tiny_aligner, "encode_gps", counter)
    GPSGallery.build(coords, tiny_aligner, cache_dir=None)
    GPSGallery.build(coords, tiny_aligner, cache_dir=None)
    assert counter.calls == 2
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_the_environment(
    tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("G3_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert gallery_cache_dir() == tmp_path / "home" / ".cache" / "g3" / "galleries"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gallery_cache_dir() == tmp_path / "xdg" / "g3" / "galleries"
    monkeypatch.setenv("G3_CACHE_DIR", str(tmp_path / "g3cache"))
    assert gallery_cache_dir() == tmp_path / "g3cache" / "galleries"  # g3's cache folder, as for every cache
    assert gallery_cache_dir(tmp_path / "mine") == tmp_path / "mine" / "galleries"  # a configuration's cache_dir

    GPSGallery.build(random_points(5), tiny_aligner)  # default: the environment's folder
    assert len(list((tmp_path / "g3cache" / "galleries").glob("gps-gallery-*.npy"))) == 1
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_build_restores_training_mode(tiny_aligner: GeoAligner) -> None:
    tiny_aligner.train()
    GPSGallery.build(random_points(5), tiny_aligner, cache_dir=None)
    assert tiny_aligner.training
    with pytest.raises(ValueError, match="batch_size"):
        GPSGallery.build(random_points(5), tiny_aligner, cache_dir=None, batch_size=0)


def test_a_configured_g3_caches_gallery_embeddings_in_its_cache_dir(
    tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from g3.agent import G3, G3Config

    monkeypatch.setenv("G3_CACHE_DIR", str(tmp_path / "elsewhere"))
    tiny_aligner.save_pretrained(str(tmp_path / "aligner"))
    csv = tmp_path / "points.csv"
    csv.write_text("LAT,LON\n48.85,2.35\n35.68,139.69\n-33.87,151.21\n")
    config = G3Config.model_validate(
        {"aligner": str(tmp_path / "aligner"), "index": None, "gallery": str(csv), "lmm": {"backend": "none"},
         "pipeline": {"mode": "gallery", "describe": "none"}, "cache_dir": str(tmp_path / "cache")}
    )  # fmt: skip
    with G3.from_config(config):
        pass
    assert len(list((tmp_path / "cache" / "galleries").glob("gps-gallery-*.npy"))) == 1
    assert not (tmp_path / "elsewhere").exists()
