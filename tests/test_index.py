"""The FAISS geo index with real FAISS: exactness, approximate recall, dissimilar search, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from g3.errors import GeoIndexError
from g3.index import GeoIndex

pytest.importorskip("faiss")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_keys(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)))


def metadata(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "IMG_ID": [f"img/{i:05d}.jpg" for i in range(n)],
            "LAT": rng.uniform(-90, 90, n),
            "LON": rng.uniform(-180, 180, n),
            "city": [f"City{i % 7}" if i % 5 else "" for i in range(n)],
            "state": ["State"] * n,
            "country": [f"Country{i % 3}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    return clustered_keys(4000, 96, clusters=40)


def test_exact_search_equals_numpy_brute_force(keys: np.ndarray) -> None:
    meta = metadata(len(keys))
    index = GeoIndex.create(keys, meta, kind="Flat")
    queries = clustered_keys(25, 96, clusters=40, seed=1)
    result = index.search(queries, k=20, dissimilar=True)
    scores = queries @ keys.T
    expected_rows = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_allclose(
        result.similar.scores, np.take_along_axis(scores, expected_rows, 1), rtol=1e-5, atol=1e-5
    )
    # ties aside, the same rows in the same order
    assert (result.similar.rows == expected_rows).mean() > 0.99
    np.testing.assert_array_equal(result.similar.lat, meta["LAT"].to_numpy()[result.similar.rows])
    np.testing.assert_array_equal(result.similar.lon, meta["LON"].to_numpy()[result.similar.rows])
    assert result.similar.ids[0, 0] == meta["IMG_ID"][result.similar.rows[0, 0]]
    assert result.similar.coordinates.shape == (25, 20, 2)

    # dissimilar: the lowest-scoring rows, lowest first, with their true inner products
    lowest = np.argsort(scores, axis=1, kind="stable")[:, :20]
    assert result.dissimilar is not None
    np.testing.assert_allclose(result.dissimilar.scores, np.take_along_axis(scores, lowest, 1), rtol=1e-5, atol=1e-5)
    assert (np.diff(result.dissimilar.scores, axis=1) >= -1e-6).all()
    assert result.dissimilar.scores.max() < result.similar.scores.min()


def test_single_vector_query_k_beyond_size_and_bad_queries(keys: np.ndarray) -> None:
    index = GeoIndex.create(keys[:10], metadata(10), kind="Flat")
    res = index.search(keys[0], k=15)
    assert res.similar.rows.shape == (1, 15) and res.similar.rows[0, 0] == 0
    assert (res.similar.rows[0, 10:] == -1).all() and np.isnan(res.similar.lat[0, 10:]).all()
    assert res.similar.ids[0, 10] is None
    with pytest.raises(ValueError, match="width 5, the index has width 96"):
        index.search(np.ones((2, 5)), k=3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(96, np.nan), k=3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(keys[0], k=0)


def test_place_names_and_columns(keys: np.ndarray) -> None:
    index = GeoIndex.create(keys[:10], metadata(10), kind="Flat")
    names = index.place_names(np.array([[1, 0, -1]]))
    assert names.tolist() == [["City1, State, Country1", "State, Country0", ""]]
    assert index.column(np.array([2, -1]), "country").tolist() == ["Country2", None]


@pytest.mark.parametrize("kind", ["IVF64,PQ16", "HNSW32", "IVF64,Flat"])
def test_approximate_kinds_recall_against_exact(keys: np.ndarray, kind: str) -> None:
    meta = metadata(len(keys))
    exact = GeoIndex.create(keys, meta, kind="Flat")
    approx = GeoIndex.create(keys, meta, kind=kind, search_params={"nprobe": 16, "efSearch": 128})
    queries = clustered_keys(100, 96, clusters=40, seed=2)
    truth = exact.search(queries, 20).similar.rows
    found = approx.search(queries, 20).similar.rows
    recall = np.mean([len(set(t) & set(f)) / 20 for t, f in zip(truth, found, strict=True)])
    print(f"recall@20 of {kind} vs exact: {recall:.3f}")
    floor = {"IVF64,PQ16": 0.5, "HNSW32": 0.75, "IVF64,Flat": 0.9}[kind]
    assert recall >= floor


def test_bad_factory_string_is_explained(keys: np.ndarray) -> None:
    with pytest.raises(GeoIndexError, match=r"cannot build index kind 'IVF64,PQ7'"):
        GeoIndex.create(keys, metadata(len(keys)), kind="IVF64,PQ7")


def test_save_load_identical_and_memory_mapped(keys: np.ndarray, tmp_path: Path) -> None:
    meta = metadata(len(keys))
    queries = clustered_keys(10, 96, clusters=40, seed=3)
    for kind in ("Flat", "IVF64,PQ16", "HNSW16"):
        index = GeoIndex.create(keys, meta, kind=kind, fingerprint="abc123", search_params={"nprobe": 8})
        before = index.search(queries, 20, dissimilar=True)
        index.save(tmp_path / kind)
        for mmap in (True, False):
            loaded = GeoIndex.load(tmp_path / kind, mmap=mmap, verify_checksums=True)
            after = loaded.search(queries, 20, dissimilar=True)
            np.testing.assert_array_equal(after.similar.rows, before.similar.rows)
            np.testing.assert_array_equal(after.similar.scores, before.similar.scores)
            assert after.dissimilar is not None and before.dissimilar is not None
            np.testing.assert_array_equal(after.dissimilar.rows, before.dissimilar.rows)
            assert loaded.manifest.search_params == {"nprobe": 8} and loaded.kind == kind
            assert loaded.metadata.equals(index.metadata)
    manifest = json.loads((tmp_path / "Flat" / "manifest.json").read_text())
    assert manifest["rows"] == 4000 and manifest["dim"] == 96 and manifest["aligner_fingerprint"] == "abc123"
    assert set(manifest["files"]) == {"index.faiss", "metadata.parquet"}


def test_corrupt_and_mismatched_indexes_are_refused(keys: np.ndarray, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    GeoIndex.create(keys, metadata(len(keys)), kind="Flat", fingerprint="aaaa1111").save(folder)

    with pytest.raises(GeoIndexError, match=r"built with aligner aaaa1111.*not with the aligner given \(bbbb2222"):
        GeoIndex.load(folder, fingerprint="bbbb2222")
    assert len(GeoIndex.load(folder, fingerprint="aaaa1111")) == 4000

    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(GeoIndexError, match=r"index\.faiss has \d+ bytes, the manifest says"):
        GeoIndex.load(folder)

    # same size, altered bytes: caught by the checksum, and by FAISS when the header is hit
    corrupt = bytearray(data)
    corrupt[:16] = b"\x00" * 16
    (folder / "index.faiss").write_bytes(bytes(corrupt))
    with pytest.raises(GeoIndexError, match="does not match its checksum"):
        GeoIndex.load(folder, verify_checksums=True)
    with pytest.raises(GeoIndexError, match="cannot be read by FAISS"):
        GeoIndex.load(folder)

    (folder / "manifest.json").write_text("{")
    with pytest.raises(GeoIndexError, match=r"manifest\.json is corrupt"):
        GeoIndex.load(folder)
    with pytest.raises(GeoIndexError, match=r"manifest\.json is missing"):
        GeoIndex.load(tmp_path / "elsewhere")


def test_metadata_must_match_keys(keys: np.ndarray) -> None:
    with pytest.raises(GeoIndexError, match="10 keys but 9 metadata rows"):
        GeoIndex.create(keys[:10], metadata(9))
    with pytest.raises(GeoIndexError, match=r"lacks column\(s\) \['LAT'\]"):
        GeoIndex.create(keys[:10], metadata(10).drop(columns=["LAT"]))
