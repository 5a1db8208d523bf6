"""`g3 index import`: G3's published index (a FAISS IndexFlatIP written by the official IndexSearch.py) adopted
as a g3 index folder, searched as the official code searches it, verified against photos, and every refusal."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image
from test_official_checkpoint import official_replica
from typer.testing import CliRunner

from g3.cli import app
from g3.data import decode_image
from g3.errors import GeoIndexError
from g3.index import GeoIndex
from g3.index.importer import import_faiss_index
from g3.index.manifest import read_manifest
from g3.models import GeoAligner
from g3.models.official import load_official_g3

faiss = pytest.importorskip("faiss")
pytest.importorskip("pyproj")

PHOTOS = SHARED_DATA / "im2gps3k" / "images_cc_subset500"
MP16_PRO_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "neighbourhood", "city", "county", "state", "region", "country",
                   "continent"]  # fmt: skip
CORPUS = 48  # photos in the official-style index; the next photo is the query


def official_keys(model: torch.nn.Module, pixel_values: torch.Tensor) -> np.ndarray:
    """The key computation of G3's IndexSearch.py (build_index / search_index), line for line."""
    vision_output = model.vision_model(pixel_values)[1]
    image_embeds = model.vision_projection(vision_output)
    image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
    image_text_embeds = model.vision_projection_else_1(model.vision_projection(vision_output))
    image_text_embeds = image_text_embeds / image_text_embeds.norm(p=2, dim=-1, keepdim=True)
    image_location_embeds = model.vision_projection_else_2(model.vision_projection(vision_output))
    image_location_embeds = image_location_embeds / image_location_embeds.norm(p=2, dim=-1, keepdim=True)
    image_embeds = torch.cat([image_embeds, image_text_embeds, image_location_embeds], dim=1)
    return image_embeds.cpu().detach().numpy()


def write_mp16_pro_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, MP16_PRO_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


class Official:
    """An index built the way the official code builds it, with its CSV, checkpoint and a query photo."""

    def __init__(self, root: Path, model: torch.nn.Module, processor: Any, clip_dir: Path) -> None:
        photos = sorted(PHOTOS.glob("*.jpg"))[: CORPUS + 1]
        meta = {r["IMG_ID"]: r for r in csv.DictReader((SHARED_DATA / "im2gps3k" / "images_cc_subset500.csv").open())}
        self.images = root / "images"
        self.images.mkdir()
        for p in photos[:CORPUS]:
            (self.images / p.name).symlink_to(p)
        self.query = photos[CORPUS]

        def pixels(paths: list[Path]) -> torch.Tensor:  # MP16Dataset: Image.open(path).convert('RGB')
            return processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]

        with torch.no_grad():
            keys = official_keys(model, pixels(photos[:CORPUS]))
            self.query_key = official_keys(model, pixels([self.query]))
        index_flat = faiss.IndexFlatIP(keys.shape[1])
        index_flat.add(keys)
        self.index_file = root / "g3.index"
        faiss.write_index(index_flat, str(self.index_file))
        self.keys = keys
        self.rows = [
            {"IMG_ID": p.name, "AUTHOR": meta[p.name]["AUTHOR"], "LAT": meta[p.name]["LAT"], "LON": meta[p.name]["LON"],
             "neighbourhood": "", "city": f"City{i}", "county": "", "state": f"State{i % 3}", "region": "",
             "country": f"Country{i % 5}", "continent": "Somewhere"}
            for i, p in enumerate(photos[:CORPUS])
        ]  # fmt: skip
        self.csv = write_mp16_pro_csv(root / "MP16_Pro_filtered.csv", self.rows)
        torch.save(model.state_dict(), root / "g3.pth")
        self.checkpoint = root / "checkpoint"
        load_official_g3(root / "g3.pth", clip_source=str(clip_dir)).save_pretrained(str(self.checkpoint))
        self.aligner = GeoAligner.from_pretrained(str(self.checkpoint)).eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Iterator[Official]:
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("official")
    with official_replica(root, tiny_clip_dir) as model:
        yield Official(root, model, CLIPImageProcessor.from_pretrained(tiny_clip_dir), tiny_clip_dir)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imported_official_index_answers_as_the_official_search(official: Official, tmp_path: Path) -> None:
    out = tmp_path / "mp16"
    result = CliRunner().invoke(
        app,
        ["index", "import", str(official.index_file), "--metadata", str(official.csv), "--checkpoint",
         str(official.checkpoint), "--out", str(out), "--verify-images", str(official.images), "--samples", "8",
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "8 photos verified" in result.output

    # the official search_index: D, I = index.search(image_embeds, topk); then with -1 * image_embeds
    official_index = faiss.read_index(str(official.index_file))
    scores, rows = official_index.search(official.query_key, 10)
    neg_scores, neg_rows = official_index.search(-official.query_key, 10)

    index = GeoIndex.load(out, aligner=official.aligner)
    with torch.inference_mode():
        key = official.aligner.encode_image([decode_image(official.query.read_bytes(), official.query.name)]).key
    found = index.search(key.numpy(), k=10, dissimilar=True)
    np.testing.assert_array_equal(found.similar.rows, rows)
    np.testing.assert_allclose(found.similar.scores, scores, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(found.dissimilar.rows, neg_rows)
    np.testing.assert_allclose(found.dissimilar.scores, -neg_scores, atol=1e-5, rtol=0)
    expected_lat = [float(official.rows[r]["LAT"]) for r in rows[0]]
    np.testing.assert_allclose(found.similar.lat[0], expected_lat)
    assert list(found.similar.ids[0]) == [official.rows[r]["IMG_ID"] for r in rows[0]]
    assert index.place_names(rows[:, :1])[0, 0] == f"City{rows[0, 0]}, State{rows[0, 0] % 3}, Country{rows[0, 0] % 5}"

    manifest = read_manifest(out)
    assert manifest.format_version == 2
    assert manifest.keys_built_by == "external"
    assert manifest.aligner_fingerprint == official.aligner.fingerprint()
    assert manifest.kind == "Flat" and manifest.rows == CORPUS
    index_src, csv_src = manifest.sources["index"], manifest.sources["metadata"]
    assert (index_src.name, index_src.bytes, index_src.sha256, index_src.streamed) == (
        "g3.index", official.index_file.stat().st_size, sha256(official.index_file), True)  # fmt: skip
    assert (csv_src.name, csv_src.sha256) == ("MP16_Pro_filtered.csv", sha256(official.csv))
    assert manifest.files["index.faiss"].sha256 == index_src.sha256
    report = json.loads((out / "import_report.json").read_text())
    assert report["verify_images"]["samples"] == 8 and report["verify_images"]["min_cosine"] >= 0.999
    assert (out / "index.faiss").stat().st_ino == official.index_file.stat().st_ino  # hard-linked, not copied


def test_verify_images_fails_on_a_shuffled_csv(official: Official, tmp_path: Path) -> None:
    shuffled = [official.rows[i] for i in np.random.default_rng(3).permutation(CORPUS)]
    bad_csv = write_mp16_pro_csv(tmp_path / "shuffled.csv", shuffled)
    with pytest.raises(GeoIndexError, match=r"do not match their index rows .* not in the index's order"):
        import_faiss_index(official.index_file, bad_csv, official.aligner, tmp_path / "out",
                           verify_images=official.images, samples=8, progress=False)  # fmt: skip
    assert not (tmp_path / "out").exists()
    # without --verify-images the same files import (the layout checks cannot see a row order)
    index = import_faiss_index(official.index_file, bad_csv, official.aligner, tmp_path / "out", progress=False,
                               link="copy")  # fmt: skip
    assert len(index) == CORPUS and read_manifest(tmp_path / "out").build["placed"] == "copy"


def test_a_known_sha256_spares_reading_a_linked_file_and_must_match_a_copy(
    official: Official, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`g3 fetch official` has hashed the index already: a hard-linked file is not read again (the recorded
    SHA-256 is the one given), and a copied file that does not hash to it is refused, nothing written."""
    digest = sha256(official.index_file)
    with pytest.raises(GeoIndexError, match=r"changed since it was checked: its SHA-256 is .*, not 0+"):
        import_faiss_index(official.index_file, official.csv, official.aligner, tmp_path / "copy", progress=False,
                           link="copy", known_sha256="0" * 64)  # fmt: skip
    assert not (tmp_path / "copy").exists()
    import g3.index.importer as importer

    monkeypatch.setattr(importer, "_bar", lambda *a: pytest.fail(f"the linked file was read again: {a}"))
    import_faiss_index(official.index_file, official.csv, official.aligner, tmp_path / "linked", progress=False,
                       link="hardlink", known_sha256=digest, check_rows=64)  # fmt: skip
    assert read_manifest(tmp_path / "linked").sources["index"].sha256 == digest


# -- refusals: each names the problem ----------------------------------------------------------------


def write_flat(path: Path, keys: np.ndarray, metric: int | None = None) -> Path:
    index = faiss.IndexFlat(keys.shape[1], faiss.METRIC_INNER_PRODUCT if metric is None else metric)
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    faiss.write_index(index, str(path))
    return path


def refuse(official: Official, tmp_path: Path, keys: np.ndarray, *, metric: int | None = None,
           rows: int = CORPUS) -> str:  # fmt: skip
    """The message of the `GeoIndexError` that refuses importing ``keys`` with the first ``rows`` CSV rows."""
    index_file = write_flat(tmp_path / "g3.index", keys, metric)
    csv_file = write_mp16_pro_csv(tmp_path / "meta.csv", official.rows[:rows])
    with pytest.raises(GeoIndexError) as info:
        import_faiss_index(index_file, csv_file, official.aligner, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    return str(info.value)


def test_refuses_a_width_other_than_the_aligners_key(official: Official, tmp_path: Path) -> None:
    message = refuse(official, tmp_path, official.keys[:, :-3])
    assert "width 93" in message and "keys of width 96" in message


def test_refuses_a_metric_other_than_inner_product(official: Official, tmp_path: Path) -> None:
    message = refuse(official, tmp_path, official.keys, metric=faiss.METRIC_L2)
    assert "uses the l2 metric, not inner product" in message


def test_refuses_a_row_count_other_than_the_csvs(official: Official, tmp_path: Path) -> None:
    message = refuse(official, tmp_path, official.keys, rows=CORPUS - 1)
    assert f"holds {CORPUS} vectors but" in message and f"has {CORPUS - 1} data rows" in message


def test_refuses_non_finite_rows(official: Official, tmp_path: Path) -> None:
    keys = official.keys.copy()
    keys[17, 5] = np.nan
    message = refuse(official, tmp_path, keys)
    assert "NaN or infinite" in message and "rows 17" in message


def test_refuses_thirds_that_are_not_unit_vectors(official: Official, tmp_path: Path) -> None:
    keys = official.keys.copy()
    keys[:, 64:] *= 0.5  # the GPS-aligned third of every row
    message = refuse(official, tmp_path, keys)
    assert "GPS-aligned third(s)" in message and "norm 0.5000" in message and "not unit vectors" in message


def test_refuses_other_kinds_cut_files_and_bad_csvs(official: Official, tmp_path: Path) -> None:
    csv_file = write_mp16_pro_csv(tmp_path / "meta.csv", official.rows)
    ivf = faiss.index_factory(96, "IVF2,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(official.keys)
    faiss.write_index(ivf, str(tmp_path / "ivf.index"))
    with pytest.raises(GeoIndexError, match="not a FAISS flat index"):
        import_faiss_index(tmp_path / "ivf.index", csv_file, official.aligner, tmp_path / "out", progress=False)
    cut = tmp_path / "cut.index"
    cut.write_bytes(official.index_file.read_bytes()[:-100])
    with pytest.raises(GeoIndexError, match="truncated"):
        import_faiss_index(cut, csv_file, official.aligner, tmp_path / "out", progress=False)
    bad = [dict(r) for r in official.rows]
    bad[9]["LAT"] = "95.5"
    with pytest.raises(GeoIndexError, match=r"data row 10 has LAT = 95.5"):
        import_faiss_index(official.index_file, write_mp16_pro_csv(tmp_path / "bad.csv", bad), official.aligner,
                           tmp_path / "out", progress=False)  # fmt: skip
    (tmp_path / "no_lat.csv").write_text("IMG_ID,LON\na.jpg,3.0\n")
    with pytest.raises(GeoIndexError, match=r"lacks column\(s\) \['LAT'\]"):
        import_faiss_index(official.index_file, tmp_path / "no_lat.csv", official.aligner, tmp_path / "out",
                           progress=False)  # fmt: skip
    assert not (tmp_path / "out").exists()
