"""The LangGraph workflow of one query: encode → retrieve → render → generate (fan-out) → parse → verify → describe.

``verify`` chooses by ``verify.mode``: the fused score (G3's rule) or the densest cluster; with ``lmm_rerank`` a
``rerank`` node after it asks the LMM to choose among the fused ranking's top candidates.

State is a ``TypedDict``; only keys written by parallel workers have reducers. Models, index, gallery
and LMM backend come in through the runtime context (`G3Runtime`), never module globals. Each node
calls one function of `g3.agent.steps` and records its wall time. The shape of the graph follows the
configuration: ``pipeline.mode`` (full | retrieval | gallery) and the ablation switches.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from g3.agent import steps
from g3.agent.config import G3Config
from g3.agent.progress import Step
from g3.data.geocode import NominatimGeocoder
from g3.data.query_image import QueryImage
from g3.index import GeoIndex, GPSGallery
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse
from g3.lmm.batching import generate_with_timeout
from g3.lmm.parse import ParseStats
from g3.models import GeoAligner
from g3.neighbours import Neighbours
from g3.verify import Candidate, Pool, ScoredCandidate

if TYPE_CHECKING:
    from g3.verify.ranker import Ranker


def _merge(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {**left, **right}


class LocateState(TypedDict, total=False):
    image: QueryImage
    views: steps.QueryViews
    similar: Neighbours
    dissimilar: Neighbours
    requests: list[LMMRequest]
    responses: Annotated[list[LMMResponse], operator.add]  # one per parallel generate worker
    candidates: list[Candidate]
    parse: ParseStats
    ranked: list[ScoredCandidate]
    rerank: steps.Reranked  # verify.mode lmm_rerank: the LMM's choice (or why it failed)
    confidence: dict[str, float] | None  # verify.ranker: the answer's calibrated P(within r km)
    pool: Pool  # verify.ranker: the pool the ranker scored (the query's final candidates)
    address: dict[str, str] | None
    warnings: Annotated[list[str], operator.add]
    timings: Annotated[dict[str, float], _merge]


class GenerateTask(TypedDict):
    """The narrow input of one generate worker."""

    request: LMMRequest


@dataclass(frozen=True)
class G3Runtime:
    """What nodes need besides the state: configuration, models, databases, the LMM backend."""

    config: G3Config
    aligner: GeoAligner
    index: GeoIndex | None = None
    gallery: GPSGallery | None = None
    backend: LMMBackend | None = None
    geocoder: NominatimGeocoder | None = None
    ranker: Ranker | None = None  # verify.ranker, loaded


Node = Callable[[Any, Runtime[G3Runtime]], Awaitable[dict[str, Any]]]


def _timed(name: str, fn: Node) -> Node:
    async def node(state: Any, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
        start = time.perf_counter()
        update = await fn(state, runtime)
        timings = {**update.get("timings", {}), name: time.perf_counter() - start}
        return {**update, "timings": timings}

    return node


# -- nodes: each calls one step function ----------------------------------------------------------------


async def encode(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    return {"views": await asyncio.to_thread(steps.encode_query, runtime.context.aligner, state["image"])}


async def retrieve(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ctx = runtime.context
    ensemble = ctx.config.effective_ensemble
    assert ctx.index is not None  # guaranteed by the graph shape: retrieval modes need an index
    k_similar, k_dissimilar = ensemble.retrieval_k(full=ctx.config.pipeline.mode == "full")
    similar, dissimilar = await asyncio.to_thread(
        steps.retrieve,
        ctx.index,
        state["views"],
        k_similar=k_similar,
        k_dissimilar=k_dissimilar,
        geo_alignment=ctx.config.pipeline.geo_alignment,
    )
    return {"similar": similar, "dissimilar": dissimilar}


async def gallery(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ctx = runtime.context
    assert ctx.gallery is not None  # guaranteed by the graph shape
    candidates = steps.gallery_candidates(ctx.gallery, state["views"], ctx.config.pipeline.gallery_k)
    return {"candidates": candidates, "similar": Neighbours.empty()}


async def render(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ensemble = runtime.context.config.effective_ensemble
    return {"requests": steps.render_requests(ensemble, state["image"], state["similar"], state["dissimilar"])}


def fan_out(state: LocateState) -> list[Send]:
    """One generate worker per prompt, running concurrently."""
    return [Send(Step.GENERATE.value, GenerateTask(request=r)) for r in state["requests"]]


async def generate(task: GenerateTask, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ctx = runtime.context
    assert ctx.backend is not None  # guaranteed by the graph shape: full mode needs a backend
    (response,) = await generate_with_timeout(ctx.backend, [task["request"]], ctx.config.lmm.timeout_s)
    return {"responses": [response], "timings": {f"generate:{response.tag}": response.latency_s}}


async def parse(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ensemble = runtime.context.config.effective_ensemble
    collected = steps.collect_candidates(state.get("responses", []), state["similar"], ensemble)
    return {"candidates": collected.candidates, "parse": collected.parse, "warnings": collected.warnings}


async def retrieval_only(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    count = runtime.context.config.ensemble.retrieved_count(answers=False)
    return {"candidates": steps.retrieval_candidates(state["similar"], count)}


async def verify(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    ctx = runtime.context
    config = ctx.config.verify
    args = (state["candidates"], state["views"], ctx.aligner, state["similar"], config)
    if config.mode == "cluster":
        verified = await asyncio.to_thread(steps.cluster_candidates, *args)
        return {"candidates": verified.candidates, "ranked": verified.ranked}
    # fused, and the ranking an lmm_rerank shows its top candidates from
    return {"ranked": await asyncio.to_thread(steps.verify_candidates, *args)}


async def rerank(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    """``verify.mode: lmm_rerank``: one more LMM request chooses among the top candidates (`steps.apply_rerank`)."""
    ctx = runtime.context
    assert ctx.backend is not None  # guaranteed by G3Config: lmm_rerank needs an LMM backend
    shown = steps.rerank_shown(state["ranked"], ctx.config.verify.rerank_candidates)
    ensemble = ctx.config.effective_ensemble
    seed = None if ensemble.seed is None else ensemble.seed + len(ensemble.prompts)
    request = await asyncio.to_thread(steps.rerank_rendered, state["image"], shown, ensemble, seed)
    (response,) = await generate_with_timeout(ctx.backend, [request], ctx.config.lmm.timeout_s)
    outcome = steps.apply_rerank(state["candidates"], state["ranked"], shown, response)
    warnings = [] if outcome.error is None else [f"LMM rerank failed ({outcome.error}): the fused rule's answer stands"]
    return {"candidates": outcome.candidates, "ranked": outcome.ranked, "rerank": outcome, "warnings": warnings}


async def rank(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    """``verify.ranker``: the fitted ranker re-chooses among the candidates and states its confidence."""
    from g3.agent.ranking import rank_state

    ctx = runtime.context
    assert ctx.ranker is not None  # guaranteed by G3: a configuration naming a ranker loads it
    return await asyncio.to_thread(rank_state, state, ctx.aligner, ctx.ranker)


async def pick_random(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    return {"ranked": steps.random_pick(state["candidates"], state["image"], runtime.context.config.pipeline.seed)}


async def describe(state: LocateState, runtime: Runtime[G3Runtime]) -> dict[str, Any]:
    best = state["ranked"][0].candidate
    geocoder = runtime.context.geocoder
    return {"address": await asyncio.to_thread(steps.describe_location, best.lat, best.lon, geocoder)}


def build_graph(config: G3Config) -> Any:
    """The compiled graph for this configuration (nodes and edges depend on mode and ablations); its node names
    are `Step` values."""
    graph = StateGraph(LocateState, context_schema=G3Runtime)
    mode = config.pipeline.mode

    def add(step: Step, fn: Node, **kwargs: Any) -> str:
        graph.add_node(step.value, _timed(step.value, fn), **kwargs)  # type: ignore[call-overload]
        return step.value

    graph.add_edge(START, add(Step.ENCODE, encode))
    if mode == "gallery":
        last = add(Step.GALLERY, gallery)
        graph.add_edge(Step.ENCODE.value, last)
    else:
        graph.add_edge(Step.ENCODE.value, add(Step.RETRIEVE, retrieve))
        if mode == "full":
            add(Step.RENDER, render)
            graph.add_node(Step.GENERATE.value, generate, input_schema=GenerateTask)  # type: ignore[call-overload]
            last = add(Step.PARSE, parse)
            graph.add_edge(Step.RETRIEVE.value, Step.RENDER.value)
            graph.add_conditional_edges(Step.RENDER.value, fan_out, [Step.GENERATE.value])
            graph.add_edge(Step.GENERATE.value, last)
        else:
            last = add(Step.CANDIDATES, retrieval_only)
            graph.add_edge(Step.RETRIEVE.value, last)
    chooser = add(Step.VERIFY, verify) if config.pipeline.verification else add(Step.PICK_RANDOM, pick_random)
    graph.add_edge(last, chooser)
    if config.pipeline.verification and config.verify.mode == "lmm_rerank":
        graph.add_edge(chooser, add(Step.RERANK, rerank))
        chooser = Step.RERANK.value
    if config.pipeline.verification and config.verify.ranker:
        graph.add_edge(chooser, add(Step.RANK, rank))
        chooser = Step.RANK.value
    if config.pipeline.describe != "none":
        graph.add_edge(chooser, add(Step.DESCRIBE, describe))
        graph.add_edge(Step.DESCRIBE.value, END)
    else:
        graph.add_edge(chooser, END)
    return graph.compile()
