"""The graph owns its answer: `G3.astream` and `G3.alocate` build the same prediction from the graph's final
state (`g3.agent.answer`), every node of every graph shape is a `Step`, and neighbours keep one shape."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scripted import ScriptedLMM

from g3.agent import G3, G3Config
from g3.agent.graph import build_graph
from g3.agent.progress import Step, step_summary
from g3.index import GeoIndex
from g3.lmm.batching import BatchingBackend
from g3.models import GeoAligner
from g3.neighbours import Neighbours


@pytest.fixture(scope="module")
def parts(tiny_assets: Path) -> tuple[GeoAligner, GeoIndex]:
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    return aligner, GeoIndex.load(tiny_assets / "index", aligner=aligner)


def photo() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_astream_ends_with_the_prediction_alocate_gives(parts: tuple[GeoAligner, GeoIndex]) -> None:
    aligner, index = parts
    config = G3Config.model_validate({"aligner": "unused", "index": "unused", "lmm": {"backend": "vllm"}})
    g3 = G3(config, aligner=aligner, index=index, backend=BatchingBackend(ScriptedLMM()))

    async def stream() -> list[tuple[Step, dict[str, Any]]]:
        return [item async for item in g3.astream(photo())]

    streamed = asyncio.run(stream())
    steps = [step for step, _ in streamed]
    assert all(isinstance(step, Step) for step in steps)
    assert steps[0] == Step.ENCODE and steps[-1] == Step.PREDICTION and steps.count(Step.GENERATE) == 4
    located = g3.locate(photo())
    from_stream = streamed[-1][1]["prediction"]
    assert from_stream.model_dump(exclude={"timings"}) == located.model_dump(exclude={"timings"})
    assert from_stream.timings.keys() == located.timings.keys()  # every step's and prompt's time, in both
    # the reducers' work is LangGraph's: the four prompts' responses and all their timings reach the answer
    assert from_stream.usage.prompts == 4 and {f"generate:{t}" for t in from_stream.raw_answers} <= set(
        from_stream.timings
    )
    retrieve = next(update for step, update in streamed if step == Step.RETRIEVE)
    assert from_stream.similar[0].model_dump() == dict(
        zip(("lat", "lon", "score", "place", "img_id"), retrieve["similar"].rows(1)[0], strict=True)
    )
    assert step_summary(Step.RETRIEVE, retrieve)["similar"] == retrieve["similar"].rows(20)


SHAPES = {
    "pipeline.mode": ["full", "retrieval", "gallery"],
    "pipeline.verification": [True, False],
    "pipeline.describe": ["offline", "none"],
    "verify.mode": ["fused", "cluster", "lmm_rerank"],
    "verify.ranker": [None, "ranker.json"],
}


def test_every_node_of_every_graph_shape_is_a_step() -> None:
    seen: set[str] = set()
    for values in itertools.product(*SHAPES.values()):
        raw: dict[str, Any] = {"aligner": "x", "index": "x", "gallery": "x", "lmm": {"backend": "vllm"}}
        for key, value in zip(SHAPES, values, strict=True):
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        nodes = set(build_graph(G3Config.model_validate(raw)).get_graph().nodes) - {"__start__", "__end__"}
        assert all(Step(node).value == node for node in nodes), nodes
        seen |= nodes
    # every step but the two that are no node shows up in some shape
    assert seen == {s.value for s in Step} - {Step.PREDICTION, Step.CHOICES}


def test_neighbours_of_an_index_search_keep_one_shape(parts: tuple[GeoAligner, GeoIndex]) -> None:
    _, index = parts
    k = len(index) + 3  # more than the index holds: the missing rows are left out
    hits = index.search(np.ones(index.dim, dtype=np.float32), k).similar
    found = hits.neighbours(0)
    assert len(found) == len(index) == (hits.rows[0] >= 0).sum()
    assert found.index_rows.tolist() == hits.rows[0][: len(index)].tolist()
    rows = found.rows()
    assert [r[4] for r in rows] == hits.ids[0][: len(index)].tolist()
    assert [r[2] for r in rows] == hits.scores[0][: len(index)].astype(np.float64).tolist()
    assert found.rows(2) == rows[:2] and len(found.head(2)) == 2
    assert Neighbours.empty().rows() == [] and len(Neighbours.empty()) == 0
    with pytest.raises(ValueError, match="places"):
        Neighbours(np.zeros((2, 2)), np.zeros(2), places=["one"])
