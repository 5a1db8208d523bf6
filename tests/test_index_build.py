"""Building a geo index from a corpus with the real aligner and FAISS: content, skipped images, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_corpus

from g3.data import GeoCorpus
from g3.errors import GeoIndexError
from g3.index import GeoIndex, IndexBuildConfig, build_index
from g3.models import GeoAligner

pytest.importorskip("faiss")

CONFIG = IndexBuildConfig(batch_size=8, shard_size=16, num_workers=0)


@pytest.fixture()
def corpus(tmp_path: Path) -> GeoCorpus:
    csv, images = make_corpus(tmp_path / "data", per_region=10)  # 60 rows, 4 shards of 16
    corpus = GeoCorpus.load(csv, images, min_image_bytes=0, progress=False)
    for i in (3, 20, 41):  # broken after the corpus was checked: found while encoding
        (images / corpus.image_name(i)).write_bytes(b"broken")
    return corpus


def flat_vectors(index: GeoIndex) -> np.ndarray:
    faiss_index = index.backend.cpu_index  # type: ignore[attr-defined]
    return faiss_index.reconstruct_n(0, faiss_index.ntotal)


def test_build_indexes_every_readable_image_and_reports_the_rest(
    corpus: GeoCorpus, tiny_aligner: GeoAligner, tmp_path: Path
) -> None:
    out = tmp_path / "indices" / "synthetic"
    index = build_index(tiny_aligner, corpus, out, CONFIG, progress=False)
    assert len(index) == 57 and index.dim == tiny_aligner.key_dim == 96
    report = json.loads((out / "build_report.json").read_text())
    assert report["corpus_rows"] == 60 and report["indexed"] == 57 and report["skipped"] == 3
    assert sorted(report["skipped_ids"]) == sorted(corpus.image_id(i) for i in (3, 20, 41))
    assert report["location_text"]["rows_looked_up"] == 0  # the synthetic corpus has its text already
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 57 and manifest["aligner_fingerprint"] == tiny_aligner.fingerprint()
    threads = torch.get_num_threads()  # the default: this process's
    assert manifest["build"] == {"corpus_rows": 60, "indexed": 57, "skipped": 3, "threads": threads, "tf32": False}
    assert not (tmp_path / "indices" / ".synthetic.build").exists()  # shards removed after assembling

    # row r of the index is the key of its metadata row's image
    loaded = GeoIndex.load(out, aligner=tiny_aligner)
    ids = loaded.metadata.column("IMG_ID").to_pylist()
    row_of = {img_id: i for i, img_id in enumerate(corpus.frame["IMG_ID"])}
    probe = [0, 17, 56]
    with torch.no_grad():
        keys = tiny_aligner.encode_image([corpus.read_image(row_of[ids[r]]) for r in probe]).key.numpy()
    result = loaded.search(keys, k=3)
    assert result.similar.rows[:, 0].tolist() == probe
    np.testing.assert_allclose(result.similar.scores[:, 0], 3.0, atol=1e-4)
    lat = corpus.frame.set_index("IMG_ID").loc[[ids[r] for r in probe], "LAT"].to_numpy()
    np.testing.assert_allclose(result.similar.lat[:, 0], lat)
    assert loaded.place_names(result.similar.rows[:, :1])[0, 0].endswith(("France", "Japan", "Australia", "Peru",
                                                                          "Canada", "Kenya"))  # fmt: skip


def test_interrupted_build_resumes_to_the_same_index(
    corpus: GeoCorpus, tiny_aligner: GeoAligner, tmp_path: Path
) -> None:
    straight = build_index(tiny_aligner, corpus, tmp_path / "a", CONFIG, progress=False)

    def stop_after_second_shard(s: int) -> None:
        if s == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_aligner, corpus, tmp_path / "b", CONFIG, progress=False, on_shard=stop_after_second_shard)
    work = tmp_path / ".b.build"
    assert sorted(p.name for p in work.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    assert not (tmp_path / "b").exists()

    encoded = []
    resumed = build_index(tiny_aligner, corpus, tmp_path / "b", CONFIG, progress=False, on_shard=encoded.append)
    assert encoded == [2, 3]  # only the missing shards were encoded again
    np.testing.assert_array_equal(flat_vectors(resumed), flat_vectors(straight))
    assert resumed.metadata.equals(straight.metadata)


def test_unfinished_build_of_another_aligner_is_not_mixed_in(
    corpus: GeoCorpus, tiny_aligner: GeoAligner, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    def stop(s: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_aligner, corpus, tmp_path / "idx", CONFIG, progress=False, on_shard=stop)
    other = GeoAligner.from_clip(tiny_aligner.config, seed=123)
    with pytest.raises(GeoIndexError, match="different aligner_fingerprint"):
        build_index(other, corpus, tmp_path / "idx", CONFIG, progress=False)
    index = build_index(other, corpus, tmp_path / "idx", CONFIG, progress=False, restart=True)
    assert index.manifest.aligner_fingerprint == other.fingerprint()
    with pytest.raises(GeoIndexError, match="not with the aligner given"):
        GeoIndex.load(tmp_path / "idx", aligner=tiny_aligner)


def test_trained_kind_and_missing_location_text(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    csv, images = make_corpus(tmp_path / "data", per_region=10)
    frame = GeoCorpus.load(csv, images, min_image_bytes=0, progress=False).frame
    frame[["city", "state", "country"]] = ""  # a corpus with coordinates only
    corpus = GeoCorpus.from_frame(frame, GeoCorpus.load(csv, images, min_image_bytes=0, progress=False).store)
    config = IndexBuildConfig(
        kind="IVF4,Flat", batch_size=16, shard_size=32, num_workers=0, search_params={"nprobe": 4}
    )
    index = build_index(tiny_aligner, corpus, tmp_path / "ivf", config, progress=False)
    assert len(index) == 60 and index.kind == "IVF4,Flat"
    countries = set(index.metadata.column("country").to_pylist())
    assert {"France", "Japan", "Australia", "Peru", "Canada", "Kenya"} <= countries  # filled offline from GeoNames
    report = json.loads((tmp_path / "ivf" / "build_report.json").read_text())
    assert report["location_text"]["rows_looked_up"] == 60


def test_tf32_is_on_while_encoding_only_and_a_resume_keeps_the_precision(
    corpus: GeoCorpus, tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    encode = tiny_aligner.encode_image

    def recording(pixels: torch.Tensor):  # type: ignore[no-untyped-def]
        seen.append(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
        return encode(pixels)

    monkeypatch.setattr(tiny_aligner, "encode_image", recording)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    plain = build_index(tiny_aligner, corpus, tmp_path / "fp32", CONFIG, progress=False)
    assert seen and not any(seen)
    seen.clear()

    def stop(s: int) -> None:
        raise KeyboardInterrupt

    tf32 = CONFIG.model_copy(update={"tf32": True})
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_aligner, corpus, tmp_path / "tf32", tf32, progress=False, on_shard=stop)
    assert seen and all(seen)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before  # restored on error
    with pytest.raises(GeoIndexError, match="different tf32"):
        build_index(tiny_aligner, corpus, tmp_path / "tf32", CONFIG, progress=False)
    resumed = build_index(tiny_aligner, corpus, tmp_path / "tf32", tf32, progress=False)
    np.testing.assert_array_equal(flat_vectors(resumed), flat_vectors(plain))  # a CPU has no TF32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_the_build_fixes_its_threads_records_them_and_a_resume_keeps_them(
    corpus: GeoCorpus, tiny_aligner: GeoAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    encode = tiny_aligner.encode_image

    def recording(pixels: torch.Tensor):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return encode(pixels)

    monkeypatch.setattr(tiny_aligner, "encode_image", recording)
    before = torch.get_num_threads()
    one = CONFIG.model_copy(update={"threads": 1})
    calls = 0

    def stop_at_second(s: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_aligner, corpus, tmp_path / "idx", one, progress=False, on_shard=stop_at_second)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before  # set while encoding, restored on error
    assert json.loads((tmp_path / ".idx.build" / "state.json").read_text())["threads"] == 1
    with pytest.raises(GeoIndexError, match="different threads"):
        build_index(tiny_aligner, corpus, tmp_path / "idx", CONFIG.model_copy(update={"threads": 3}), progress=False)
    seen.clear()
    resumed = build_index(tiny_aligner, corpus, tmp_path / "idx", CONFIG, progress=False)  # threads None: adopts 1
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    assert resumed.manifest.build["threads"] == 1
    straight = build_index(tiny_aligner, corpus, tmp_path / "one", one, progress=False)
    assert flat_vectors(resumed).tobytes() == flat_vectors(straight).tobytes()
