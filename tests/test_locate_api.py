"""Traps of the Python API: `G3.locate` inside a running event loop (a notebook), and `locate_batch` with a
bad photo among good ones (the others' results are kept). Real aligner, FAISS index and LangGraph graph of the
tiny setting; a scripted LMM behind the real micro-batcher."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from scripted import ScriptedLMM

from g3.agent import G3, G3Config, GeoPrediction
from g3.errors import BatchError, G3Error, InvalidImageError
from g3.index import GeoIndex
from g3.lmm.batching import BatchingBackend
from g3.models import GeoAligner


@pytest.fixture(scope="module")
def g3(tiny_assets: Path) -> G3:
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    index = GeoIndex.load(tiny_assets / "index", aligner=aligner)
    config = G3Config.model_validate({"aligner": "x", "index": "x", "lmm": {"backend": "vllm"}})
    return G3(config, aligner=aligner, index=index, backend=BatchingBackend(ScriptedLMM(), max_wait_ms=5))


def photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_locate_inside_a_running_event_loop(g3: G3) -> None:
    """A notebook runs an event loop: the synchronous calls must work there, and the loop's own tasks keep
    their state (the call blocks it, as any synchronous call does)."""
    direct = g3.locate(photo(0))

    async def notebook_cell() -> tuple[GeoPrediction, list[GeoPrediction], asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        one = g3.locate(photo(0))
        many = g3.locate_batch([photo(1), photo(2)], concurrency=2)
        awaited = await g3.alocate(photo(0))  # the loop's own way still works after the sync calls
        assert (awaited.lat, awaited.lon) == (one.lat, one.lon)
        return one, many, loop

    one, many, loop = asyncio.run(notebook_cell())
    assert (one.lat, one.lon) == (direct.lat, direct.lon) and one.usage.prompts == 4
    assert len(many) == 2 and all(isinstance(p, GeoPrediction) and p.usage.prompts == 4 for p in many)
    assert loop.is_closed()


def test_one_bad_photo_never_costs_the_others_their_results(g3: G3, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    images = [photo(3), b"not an image", photo(4), missing]
    with pytest.raises(BatchError) as caught:
        g3.locate_batch(images, concurrency=2)
    error = caught.value
    assert isinstance(error, G3Error) and sorted(error.errors) == [1, 3]
    assert all(isinstance(e, InvalidImageError) for e in error.errors.values())
    assert isinstance(error.results[0], GeoPrediction) and isinstance(error.results[2], GeoPrediction)
    assert error.results[1] is error.errors[1] and "2 of 4 photos failed" in str(error)
    assert "#1" in str(error) and "missing.jpg" in str(error)  # which photo and why
    kept = g3.locate_batch(images, concurrency=2, return_exceptions=True)
    assert [type(r).__name__ for r in kept] == ["GeoPrediction", "InvalidImageError", "GeoPrediction",
                                                "InvalidImageError"]  # fmt: skip
    assert (kept[0].lat, kept[0].lon) == (error.results[0].lat, error.results[0].lon)
    assert g3.locate_batch([], concurrency=2) == []


def test_the_tiny_setting_inside_a_running_event_loop(tiny_assets: Path) -> None:
    """The real transformers backend (its worker threads, the batcher) serves a notebook's loop and then a
    plain call: its per-loop state does not leak from one loop to the other."""
    config = G3Config.load(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    with G3.from_config(config.model_copy(update={"cache_dir": str(tiny_assets.parent)})) as tiny:

        async def notebook_cell() -> GeoPrediction:
            return tiny.locate(photo(5))

        inside = asyncio.run(notebook_cell())
        outside = tiny.locate(photo(5))
    assert inside.usage.prompts == outside.usage.prompts == 4 and inside.usage.failed_prompts == 0
    assert (inside.lat, inside.lon) == (outside.lat, outside.lon)


def test_an_evaluation_chunk_inside_a_running_event_loop(g3: G3, tmp_path: Path) -> None:
    """`g3.evaluation.runner.locate_chunk` (what `run_evaluation` calls) works from a notebook too."""
    from PIL import Image

    from g3.evaluation.runner import locate_chunk

    Image.fromarray(photo(6)).save(tmp_path / "a.png")
    chunk = [("a", tmp_path / "a.png", (48.85, 2.35)), ("b", tmp_path / "missing.png", None)]

    async def notebook_cell() -> list[dict]:
        return locate_chunk(g3, chunk, concurrency=2)

    records = asyncio.run(notebook_cell())
    assert records[0]["error"] is None and records[0]["pred_lat"] is not None
    assert records[1]["error"].startswith("InvalidImageError")
