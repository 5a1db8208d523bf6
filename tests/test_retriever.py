"""`GeoRetriever`: G3 retrieval over a real Flat `GeoIndex` as a llama-index retriever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from PIL import Image

from g3.index import GeoIndex
from g3.index.retriever import GeoRetriever
from g3.models import GeoAligner

N = 30


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Distinct images: a random base colour plus random noise of random strength."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(1, 1, 3))
        noise = rng.normal(0, rng.uniform(5, 80), size=(32, 32, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def metadata_frame(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = [f"City{i}" for i in range(n)]
    state = [f"State{i}" for i in range(n)]
    country = [f"Country{i}" for i in range(n)]
    for i in range(n):
        if i % 5 == 0:  # place unknown
            city[i] = state[i] = country[i] = ""
        elif i % 3 == 0:  # city unknown
            city[i] = ""
    return pd.DataFrame(
        {
            "IMG_ID": [f"img{i:03d}" for i in range(n)],
            "LAT": rng.uniform(-80, 80, n),
            "LON": rng.uniform(-180, 180, n),
            "city": city,
            "state": state,
            "country": country,
        }
    )


@pytest.fixture()
def setup(tiny_aligner: GeoAligner) -> tuple[GeoIndex, np.ndarray, pd.DataFrame, list[Image.Image]]:
    images = random_images(N)
    with torch.no_grad():
        keys = tiny_aligner.encode_image(images).key.numpy().astype(np.float32)
    assert keys.shape == (N, tiny_aligner.key_dim) == (N, 96)
    frame = metadata_frame(N)
    index = GeoIndex.create(keys, frame, kind="Flat", aligner=tiny_aligner)
    return index, keys, frame, images


def test_own_key_comes_first_and_nodes_match_the_index_search(setup) -> None:
    index, keys, frame, _ = setup
    retriever = GeoRetriever(index, similar_k=10)
    for j in (0, 7, 13, 29):
        nodes = retriever.retrieve(QueryBundle(query_str="", embedding=keys[j].tolist()))
        assert len(nodes) == 10
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
        first = nodes[0]
        assert first.score == pytest.approx(3.0, abs=1e-4)
        assert first.node.metadata["row"] == j
        assert first.node.metadata["img_id"] == frame.IMG_ID[j]
        assert first.node.metadata["lat"] == frame.LAT[j]
        assert first.node.metadata["lon"] == frame.LON[j]
        result = index.search(keys[j], 10)
        assert [n.node.metadata["row"] for n in nodes] == result.similar.rows[0].tolist()
        assert [n.score for n in nodes] == result.similar.scores[0].tolist()
        assert [n.node.metadata["rank"] for n in nodes] == list(range(10))
        assert {n.node.metadata["relation"] for n in nodes} == {"similar"}
        assert [n.node.node_id for n in nodes] == [f"similar:{r}" for r in result.similar.rows[0]]
        for n in nodes:
            row = n.node.metadata["row"]
            assert n.node.metadata["img_id"] == frame.IMG_ID[row]
            assert (n.node.metadata["lat"], n.node.metadata["lon"]) == (frame.LAT[row], frame.LON[row])


def test_dissimilar_nodes_are_the_lowest_scores_after_the_similar_ones(setup) -> None:
    index, keys, _, _ = setup
    retriever = GeoRetriever(index, similar_k=5, dissimilar_k=4)
    j = 11
    nodes = retriever.retrieve_image(keys[j])
    assert [n.node.metadata["relation"] for n in nodes] == ["similar"] * 5 + ["dissimilar"] * 4
    brute = keys.astype(np.float64) @ keys[j].astype(np.float64)
    order = np.argsort(brute, kind="stable")
    dissimilar = nodes[5:]
    assert [n.node.metadata["row"] for n in dissimilar] == order[:4].tolist()
    np.testing.assert_allclose([n.score for n in dissimilar], brute[order[:4]], atol=1e-4)
    assert [n.node.metadata["rank"] for n in dissimilar] == list(range(4))
    assert [n.node.metadata["row"] for n in nodes[:5]] == order[::-1][:5].tolist()
    scores = [n.score for n in dissimilar]
    assert scores == sorted(scores)  # least similar first
    assert max(scores) < min(n.score for n in nodes[:5])
    result = index.search(keys[j], 5, dissimilar=True, dissimilar_k=4)
    assert result.dissimilar is not None
    assert [n.score for n in dissimilar] == result.dissimilar.scores[0].tolist()


def test_more_neighbours_than_rows_skips_missing_rows(setup) -> None:
    index, keys, _, _ = setup
    nodes = GeoRetriever(index, similar_k=N + 10, dissimilar_k=N + 5).retrieve_image(keys[3])
    assert [n.node.metadata["relation"] for n in nodes] == ["similar"] * N + ["dissimilar"] * N
    assert sorted(n.node.metadata["row"] for n in nodes[:N]) == list(range(N))
    assert len({n.node.node_id for n in nodes}) == 2 * N


def test_image_path_query_equals_key_query(setup, tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    index, keys, _, images = setup
    path = tmp_path / "query.png"
    images[4].save(path)
    retriever = GeoRetriever(index, tiny_aligner, similar_k=6, dissimilar_k=3)
    by_path = retriever.retrieve(QueryBundle(query_str="", image_path=str(path)))
    by_key = retriever.retrieve(QueryBundle(query_str="", embedding=keys[4].tolist()))
    assert [n.node.node_id for n in by_path] == [n.node.node_id for n in by_key]
    np.testing.assert_allclose([n.score for n in by_path], [n.score for n in by_key], atol=1e-5)
    assert by_path[0].node.metadata["row"] == 4
    # The conveniences: a path, a PIL image (also non-RGB), a key.
    for query in (path, str(path), images[4], images[4].convert("RGBA")):
        assert [n.node.node_id for n in retriever.retrieve_image(query)] == [n.node.node_id for n in by_key]


def test_image_query_without_aligner_is_refused(setup, tmp_path: Path) -> None:
    index, _, _, images = setup
    path = tmp_path / "query.png"
    images[0].save(path)
    retriever = GeoRetriever(index)
    with pytest.raises(ValueError, match="aligner"):
        retriever.retrieve(QueryBundle(query_str="", image_path=str(path)))
    with pytest.raises(ValueError, match="aligner"):
        retriever.retrieve_image(images[0])
    with pytest.raises(ValueError, match="embedding"):
        retriever.retrieve("where was this taken?")


def test_bad_arguments(setup, tiny_aligner: GeoAligner) -> None:
    index, keys, _, _ = setup
    with pytest.raises(ValueError, match="similar_k"):
        GeoRetriever(index, similar_k=0)
    with pytest.raises(ValueError, match="dissimilar_k"):
        GeoRetriever(index, dissimilar_k=-1)
    with pytest.raises(ValueError, match="width"):
        GeoRetriever(index).retrieve(QueryBundle(query_str="", embedding=keys[0, :10].tolist()))
    narrow = GeoIndex.create(keys[:, :32], metadata_frame(N))
    with pytest.raises(ValueError, match="width"):
        GeoRetriever(narrow, tiny_aligner)


def test_text_is_the_place_name_or_the_coordinates(setup) -> None:
    index, keys, frame, _ = setup
    nodes = GeoRetriever(index, similar_k=N).retrieve_image(keys[0])
    assert len(nodes) == N
    for n in nodes:
        row = n.node.metadata["row"]
        text = n.node.get_content()
        if row % 5 == 0:
            assert text == f"{frame.LAT[row]:.5f}, {frame.LON[row]:.5f}"
        elif row % 3 == 0:
            assert text == f"State{row}, Country{row}"
        else:
            assert text == f"City{row}, State{row}, Country{row}"


def test_composes_with_a_llama_index_query_engine(setup) -> None:
    from llama_index.core.llms.mock import MockLLM

    index, keys, _, _ = setup
    retriever = GeoRetriever(index, similar_k=8, dissimilar_k=2)
    expected = retriever.retrieve_image(keys[21])
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()))
    query = QueryBundle(query_str="Where was this photo taken?", embedding=keys[21].tolist())
    response = engine.query(query)
    assert [(n.node.node_id, n.score) for n in response.source_nodes] == [(n.node.node_id, n.score) for n in expected]
    assert response.source_nodes[0].node.metadata["row"] == 21

    # A real node post-processor on our scores: only the query's own image clears 2.9999.
    strict = RetrieverQueryEngine(
        retriever,
        response_synthesizer=NoText(llm=MockLLM()),
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=2.9999)],
    )
    assert [n.node.node_id for n in strict.query(query).source_nodes] == ["similar:21"]

    async def run() -> tuple[list[NodeWithScore], list[NodeWithScore]]:
        return await retriever.aretrieve(query), (await engine.aquery(query)).source_nodes

    nodes, sources = asyncio.run(run())
    assert [n.node.node_id for n in nodes] == [n.node.node_id for n in expected]
    assert [n.node.node_id for n in sources] == [n.node.node_id for n in expected]
