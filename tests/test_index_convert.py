"""`g3 index convert`: another FAISS kind of an index folder without re-encoding — the two-stage kind (codes in
memory, exact re-ranking from float16 vectors on disk) loaded by GeoIndex and the retriever, recall measured
against exact search, an interrupted conversion resumed to the same files, and the refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from g3.cli import app
from g3.errors import GeoIndexError
from g3.index import GeoIndex
from g3.index.convert import CONVERT_REPORT, ConvertConfig, convert_index, default_first_stage
from g3.index.two_stage import TwoStageBackend

faiss = pytest.importorskip("faiss")

ROWS, THIRD = 3000, 32


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP threads spin while waiting: on a busy 2-core machine a small training takes 10x longer."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def key_like(n: int, seed: int) -> np.ndarray:
    """Rows of three unit-norm thirds around shared cluster centres, with an uneven spectrum, as G3's keys are."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((60, 3 * THIRD)) * np.linspace(2.0, 0.2, 3 * THIRD)
    x = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, 3 * THIRD)) * np.linspace(1.5, 0.3, 3 * THIRD)
    thirds = x.reshape(n, 3, THIRD)
    return (thirds / np.linalg.norm(thirds, axis=2, keepdims=True)).reshape(n, 3 * THIRD).astype(np.float32)


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    return key_like(ROWS, seed=0)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory, keys: np.ndarray) -> Path:
    rng = np.random.default_rng(1)
    meta = pd.DataFrame(
        {"IMG_ID": [f"{i:05d}.jpg" for i in range(ROWS)], "LAT": rng.uniform(-90, 90, ROWS),
         "LON": rng.uniform(-180, 180, ROWS), "city": [f"City{i % 9}" for i in range(ROWS)]}
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("convert") / "flat"
    GeoIndex.create(keys, meta, kind="Flat", fingerprint="feedbeef").save(folder)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / truth.shape[1] for t, f in zip(truth, found, strict=True)]))


def test_two_stage_is_exact_on_its_candidates_and_loads_everywhere(flat: Path, keys: np.ndarray, tmp_path: Path):
    out = tmp_path / "two"
    config = ConvertConfig(kind="two-stage", candidates=64, queries=200, k=10, rerank_dtype="float16")
    index = convert_index(flat, out, config, progress=False)
    assert isinstance(index.backend, TwoStageBackend) and index.kind == default_first_stage(ROWS, 3 * THIRD)
    vectors = np.load(out / "vectors.npy", mmap_mode="r")
    assert vectors.dtype == np.float16 and vectors.shape == keys.shape
    np.testing.assert_array_equal(vectors, keys.astype(np.float16))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["aligner_fingerprint"] == "feedbeef"
    assert manifest["rerank"] == {"file": "vectors.npy", "dtype": "float16", "candidates": 64}
    assert manifest["converted_from"]["kind"] == "Flat" and manifest["converted_from"]["lossless"] is True
    assert set(manifest["files"]) == {"index.faiss", "metadata.parquet", "vectors.npy"}
    report = json.loads((out / CONVERT_REPORT).read_text())
    assert report["recall"]["k"] == 10 and report["recall"]["queries"] == 200 and report["recall"]["recall"] >= 0.9
    # codes in memory: a small fraction of the float32 row (384 bytes) even with this tiny index's fixed overhead
    assert report["memory_bytes_per_row"] < 0.35 * keys.shape[1] * 4
    assert report["disk_bytes_per_row"] > keys.shape[1] * 2  # the float16 vectors stay on disk

    queries = key_like(50, seed=7)
    exact = queries @ keys.T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    result = GeoIndex.load(out, verify_checksums=True).search(queries, 10, dissimilar=True)
    assert recall(truth, result.similar.rows) >= 0.9
    # the scores are exact inner products with the stored (float16) vectors, best first
    stored = queries @ keys.astype(np.float16).astype(np.float32).T
    np.testing.assert_allclose(result.similar.scores, np.take_along_axis(stored, result.similar.rows, 1), atol=1e-4)
    assert (np.diff(result.similar.scores, axis=1) <= 1e-6).all()
    assert result.dissimilar is not None and result.dissimilar.scores.max() < result.similar.scores.min()
    lowest = np.argsort(exact, axis=1, kind="stable")[:, :10]
    assert recall(lowest, result.dissimilar.rows) >= 0.8
    np.testing.assert_array_equal(result.similar.lat, index._lat[result.similar.rows])

    more = GeoIndex.load(out, search_params={"candidates": 256, "nprobe": 64})
    assert isinstance(more.backend, TwoStageBackend) and more.backend.candidates == 256
    assert recall(truth, more.search(queries, 10).similar.rows) >= recall(truth, result.similar.rows)

    from llama_index.core.schema import QueryBundle

    from g3.index.retriever import GeoRetriever

    nodes = GeoRetriever(index, similar_k=5).retrieve(QueryBundle(query_str="", embedding=keys[3].tolist()))
    assert nodes[0].node.metadata["row"] == 3 and len(nodes) == 5


class Stop(Exception):
    pass


def test_interrupted_conversion_resumes_to_the_same_files(flat: Path, tmp_path: Path):
    config = ConvertConfig(kind="two-stage:IVF32,PQ24x4fs", chunk_rows=400, checkpoint_rows=800, queries=100, k=10)
    seen: list[int] = []

    def stop_at_1600(rows: int) -> None:
        seen.append(rows)
        if rows >= 1600:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        convert_index(flat, out, config, progress=False, on_checkpoint=stop_at_1600)
    assert seen == [800, 1600] and not out.exists()
    work = tmp_path / ".resumed.convert"
    assert json.loads((work / "progress.json").read_text()) == {"rows": 1600}

    with pytest.raises(GeoIndexError, match="unfinished conversion with a different k"):
        convert_index(flat, out, config.model_copy(update={"k": 5}), progress=False)
    convert_index(flat, out, config, progress=False, on_checkpoint=seen.append)
    assert seen == [800, 1600, 2400, 3000] and not work.exists()
    report = json.loads((out / CONVERT_REPORT).read_text())
    assert report["resumed_from_rows"] == 1600

    whole = tmp_path / "whole"
    convert_index(flat, whole, config, progress=False)
    for name in ("index.faiss", "vectors.npy", "metadata.parquet"):
        assert sha256(out / name) == sha256(whole / name), name
    assert json.loads((whole / CONVERT_REPORT).read_text())["recall"]["recall"] == report["recall"]["recall"]

    # a restart discards the unfinished work of other settings
    with pytest.raises(Stop):
        convert_index(flat, out, config, progress=False, on_checkpoint=stop_at_1600)
    convert_index(flat, out, config.model_copy(update={"k": 5}), restart=True, progress=False)
    assert json.loads((out / CONVERT_REPORT).read_text())["resumed_from_rows"] == 0


def test_cli_convert_to_hnsw_and_back_from_two_stage(flat: Path, keys: np.ndarray, tmp_path: Path):
    runner = CliRunner()
    hnsw = tmp_path / "hnsw"
    result = runner.invoke(app, ["index", "convert", str(flat), "--kind", "HNSW16", "--out", str(hnsw),
                                 "--ef-search", "64", "--queries", "100", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rows, kind HNSW16;" in result.output and "recall@20" in result.output
    loaded = GeoIndex.load(hnsw)
    assert loaded.kind == "HNSW16" and loaded.manifest.search_params == {"efSearch": 64}
    assert json.loads((hnsw / CONVERT_REPORT).read_text())["recall"]["recall"] >= 0.9

    two = tmp_path / "two"
    result = runner.invoke(app, ["index", "convert", str(flat), "--kind", "two-stage:IVF32,PQ24x4fs", "--out", str(two),
                                 "--candidates", "100", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "+ exact re-ranking from disk" in result.output
    np.testing.assert_array_equal(np.load(two / "vectors.npy"), keys)  # float32 by default: the keys themselves

    # back to Flat from the two-stage index's vectors: the same keys, so exact search returns the source's answers
    back = tmp_path / "back"
    convert_index(two, back, ConvertConfig(kind="Flat", queries=100), progress=False)
    report = json.loads((back / CONVERT_REPORT).read_text())
    assert report["recall"]["recall"] == 1.0 and report["source_kind"] == "IVF32,PQ24x4fs (two-stage)"
    queries = key_like(20, seed=5)
    np.testing.assert_array_equal(GeoIndex.load(back).search(queries, 10).similar.rows,
                                  GeoIndex.load(flat).search(queries, 10).similar.rows)  # fmt: skip

    # from a compressed kind the vectors are FAISS's reconstructions, and the report says they are lossy
    sq = tmp_path / "sq"
    convert_index(flat, sq, ConvertConfig(kind="IVF32,SQ8", queries=50), progress=False)
    convert_index(sq, tmp_path / "sq-flat", ConvertConfig(kind="Flat", queries=50), progress=False)
    assert json.loads((tmp_path / "sq-flat" / "manifest.json").read_text())["converted_from"]["lossless"] is False
    pq = tmp_path / "pq"
    convert_index(flat, pq, ConvertConfig(kind="IVF32,PQ24x4fs", queries=0), progress=False)
    with pytest.raises(GeoIndexError, match=r"fast-scan codes.*cannot give back its vectors"):
        convert_index(pq, tmp_path / "pq-flat", ConvertConfig(kind="Flat"), progress=False)


def test_refusals(flat: Path, tmp_path: Path):
    with pytest.raises(GeoIndexError, match=r"cannot build index kind 'IVF32,PQ7'"):
        convert_index(flat, tmp_path / "x", ConvertConfig(kind="IVF32,PQ7"), progress=False)
    assert not (tmp_path / ".x.convert").exists()
    with pytest.raises(GeoIndexError, match="name the first stage after the colon"):
        convert_index(flat, tmp_path / "x", ConvertConfig(kind="two-stage:"), progress=False)
    with pytest.raises(GeoIndexError, match="is the source index itself"):
        convert_index(flat, flat, ConvertConfig(kind="HNSW16"), progress=False)
    with pytest.raises(GeoIndexError, match=r"manifest\.json is missing"):
        convert_index(tmp_path / "nothing", tmp_path / "x", ConvertConfig(kind="HNSW16"), progress=False)

    two = tmp_path / "two"
    convert_index(flat, two, ConvertConfig(kind="two-stage:IVF32,PQ24x4fs", queries=0), progress=False)
    assert json.loads((two / CONVERT_REPORT).read_text())["recall"]["recall"] is None
    data = (two / "vectors.npy").read_bytes()
    (two / "vectors.npy").write_bytes(data[:-100])
    with pytest.raises(GeoIndexError, match=r"vectors\.npy has \d+ bytes, the manifest says"):
        GeoIndex.load(two)


def test_pca_first_stage_keeps_only_its_projection(flat: Path, tmp_path: Path):
    out = tmp_path / "pca"
    convert_index(flat, out, ConvertConfig(kind="two-stage:PCAR48,IVF16,PQ24x4fs", queries=100, k=10), progress=False)
    index = faiss.read_index(str(out / "index.faiss"))
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    assert pca.PCAMat.size() == 0 and pca.A.size() == 48 * 3 * THIRD  # the d×d training matrix is not kept
    assert json.loads((out / CONVERT_REPORT).read_text())["recall"]["recall"] >= 0.9
