"""pools.jsonl of an evaluation run (g3.evaluation.pools): one pool per located photo, with its truth, G3's vectors
and the candidates the answer was chosen from; resumed runs keep one pool per photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from g3.agent import G3
from g3.evaluation.datasets import EvalDataset, load_im2gps3k
from g3.evaluation.pools import POOLS
from g3.evaluation.runner import PREDICTIONS, read_predictions, run_evaluation
from g3.verify import read_pools

IM2GPS3K = SHARED_DATA / "im2gps3k"
needs_data = pytest.mark.skipif(not (IM2GPS3K / "images_cc_subset500").is_dir(), reason="shared IM2GPS3k data absent")
ROOT = Path(__file__).resolve().parents[1]


def small_dataset(tmp_path: Path, count: int) -> EvalDataset:
    photos = sorted((IM2GPS3K / "images_cc_subset500").glob("*.jpg"))[:count]
    names = {p.name for p in photos}
    rows = (IM2GPS3K / "im2gps3k_places365.csv").read_text().splitlines()
    csv = tmp_path / "small.csv"
    csv.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in names]) + "\n")
    return load_im2gps3k(csv, IM2GPS3K / "images_cc_subset500")


@needs_data
def test_every_located_photo_has_its_pool(tiny_g3: G3, tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path, 6)
    run = tmp_path / "run"
    run_evaluation(tiny_g3, dataset, run, batch_size=4, progress=False)
    records = {r["img_id"]: r for r in read_predictions(run / PREDICTIONS)}
    pools = list(read_pools(run / POOLS))  # the strict reader of the format: labelled, ids unique
    assert [p.id for p in pools] == list(records)
    for pool in pools:
        record = records[pool.id]
        assert pool.truth == (record["gt_lat"], record["gt_lon"])
        # the pool is what the answer was chosen from: the same candidates, the answer among them
        assert len(pool.candidates) == len(record["candidates"])
        assert any((c.lat, c.lon) == (record["pred_lat"], record["pred_lon"]) for c in pool.candidates)
        sources = {c.source for c in pool.candidates}
        assert {"zero_shot", "rag_5", "rag_10", "rag_15", "retrieval"} <= sources
        for c in pool.candidates:
            assert (c.rank is not None) == (c.source == "retrieval") and (c.sample is None) == (c.rank is not None)
        assert pool.neighbours is not None and len(pool.neighbours) == 15  # the largest RAG prompt's k
        assert pool.query_gps is not None and pool.candidate_embeddings is not None
    # G3's rule recomputed from the pool's vectors ranks the candidates as the run did
    located = tiny_g3.locate(dataset.image_path(pools[0].id))
    emb = np.asarray(pools[0].candidate_embeddings)
    cosine = emb @ np.asarray(pools[0].query_gps) / np.linalg.norm(emb, axis=1) / np.linalg.norm(pools[0].query_gps)
    by_place = {(c.lat, c.lon, c.source): c.components["embedding"] for c in located.candidates}
    expected = [by_place[(c.lat, c.lon, c.source)] for c in pools[0].candidates]
    np.testing.assert_allclose(cosine, expected, atol=2e-6)


@needs_data
def test_a_resumed_run_keeps_one_pool_per_photo(tiny_g3: G3, tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path, 6)
    run = tmp_path / "run"

    def stop_after_first(batch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_g3, dataset, run, batch_size=2, fail_fast=0, progress=False, on_batch=stop_after_first)
    lines = (run / POOLS).read_text().splitlines()
    assert len(lines) == 2 == len(read_predictions(run / PREDICTIONS))
    # an interrupt between the two writes of the next batch: its pools written, its predictions not, and the
    # last pool cut short
    orphan = json.loads(lines[0]) | {"id": dataset.present().IMG_ID.iloc[2]}
    (run / POOLS).write_text("\n".join([*lines, json.dumps(orphan), lines[1][:50]]))
    run_evaluation(tiny_g3, dataset, run, batch_size=2, progress=False)
    pools = list(read_pools(run / POOLS))
    assert sorted(p.id for p in pools) == sorted(r["img_id"] for r in read_predictions(run / PREDICTIONS))
    assert len(pools) == 6
