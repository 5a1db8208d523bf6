"""`G3`: the entry point — ``G3.from_config("configs/tiny.yaml").locate("photo.jpg")``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from g3.agent import official, tiny
from g3.agent.config import BUNDLE_CONFIG, G3Config, LMMConfig
from g3.agent.degradation import assess, rerank_failed
from g3.agent.graph import G3Runtime, LocateState, build_graph
from g3.agent.prediction import GeoPrediction, LMMUsage, Neighbour, RankedCandidate
from g3.agent.sync import run_coroutine
from g3.data.geocode import NominatimGeocoder
from g3.data.query_image import load_query_image
from g3.errors import BatchError
from g3.index import GeoIndex, GPSGallery
from g3.lmm.base import LMMBackend, LMMResponse
from g3.lmm.batching import BatchingBackend
from g3.lmm.prompts import load_template
from g3.lmm.rerank import RERANK_TAG
from g3.models import GeoAligner
from g3.verify import Pool
from g3.verify.pools import RANKED_SOURCES

if TYPE_CHECKING:
    from g3.verify.ranker import Ranker

log = logging.getLogger(__name__)

#: What `G3.locate` accepts: a path, encoded bytes, a PIL image or a numpy array.
ImageInput = Any


def make_backend(config: LMMConfig, cache_dir: Path | None = None) -> LMMBackend | None:
    """The LMM backend a configuration names (wrapped in a micro-batcher), or None for ``backend: none``."""
    import os

    if config.backend == "none":
        return None
    model = tiny.resolve(config.model, cache_dir)
    inner: LMMBackend
    urls = config.base_urls
    if config.backend == "openai" and len(urls) > 1:
        from g3.lmm.pool import OpenAIPoolBackend

        inner = OpenAIPoolBackend(urls, model, api_key=os.environ.get(config.api_key_env),
                                  max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                                  attempt_timeout_s=config.attempt_timeout_s, max_retries=config.max_retries,
                                  health_interval_s=config.health_interval_s,
                                  backoff_max_s=config.backoff_max_s)  # fmt: skip
    elif config.backend == "openai":
        from g3.lmm.openai_backend import OpenAIBackend

        inner = OpenAIBackend(urls[0], model, api_key=os.environ.get(config.api_key_env),
                              max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                              max_retries=config.max_retries)  # fmt: skip
    elif config.backend == "vllm":
        from g3.lmm.vllm_backend import VLLMBackend

        inner = VLLMBackend(model, **config.engine_args)
    else:
        import torch

        from g3.lmm.transformers_backend import TransformersBackend

        device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        inner = TransformersBackend(model, device=device)
    # in-process engines run one call at a time (batched inside); HTTP servers take calls concurrently
    concurrent = config.max_concurrency * max(len(urls), 1) if config.backend == "openai" else 1
    return BatchingBackend(inner, max_wait_ms=config.batch_window_ms, max_concurrent_calls=concurrent)


class G3:
    """Worldwide image geolocalization with G3. The constructor takes loaded parts and does no I/O;
    `G3.from_config` loads them from a configuration."""

    def __init__(
        self,
        config: G3Config,
        *,
        aligner: GeoAligner,
        index: GeoIndex | None = None,
        gallery: GPSGallery | None = None,
        backend: LMMBackend | None = None,
        geocoder: NominatimGeocoder | None = None,
        ranker: Ranker | None = None,
    ) -> None:
        if config.verify.ranker and config.pipeline.verification and ranker is None:
            from g3.agent.config import ConfigError

            raise ConfigError(
                f"verify.ranker names {config.verify.ranker} but no ranker was given: pass ranker=Ranker.load(path) "
                "or build G3 with G3.from_config"
            )
        self.config = config
        self.runtime = G3Runtime(config=config, aligner=aligner, index=index, gallery=gallery, backend=backend,
                                 geocoder=geocoder, ranker=ranker)  # fmt: skip
        self.graph = build_graph(config)

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any] | G3Config) -> G3:
        """Load aligner, index, gallery and LMM backend named by a config (YAML path, mapping or object)."""
        config = G3Config.load(source)
        cache = Path(config.cache_dir) if config.cache_dir else None
        official.check_assets(config)  # says which command gets the paper's assets before anything loads
        ranker = None
        if config.verify.ranker and config.pipeline.verification:  # a refused ranker fails before the models load
            from g3.verify.ranker import Ranker as _Ranker

            ranker = _Ranker.load(config.verify.ranker)
        aligner = GeoAligner.from_pretrained(tiny.resolve(official.resolve(config.aligner, cache), cache))
        import torch

        if torch.cuda.is_available():
            aligner = aligner.to("cuda")
        index = None
        if config.pipeline.mode != "gallery" and config.index:
            index = GeoIndex.load(tiny.resolve(official.resolve(config.index, cache), cache), aligner=aligner)
        gallery = None
        if config.pipeline.mode == "gallery" and config.gallery:
            from g3.index.gallery import GPSGallery as _Gallery

            gallery = _Gallery.from_source(config.gallery, aligner)
        backend = None
        if config.pipeline.mode == "full" or config.verify.mode == "lmm_rerank":
            backend = make_backend(config.lmm, cache)
        if config.pipeline.mode == "full":
            for spec in config.effective_ensemble.prompts:  # read (and check) the templates now, not per query
                load_template(spec.template, config.ensemble.prompt_dir)
        if config.verify.mode == "lmm_rerank" and config.pipeline.verification:
            from g3.lmm.rerank import RERANK_TEMPLATE

            load_template(RERANK_TEMPLATE, config.ensemble.prompt_dir)
        geocoder = None
        if config.pipeline.describe == "nominatim":
            assert config.pipeline.nominatim_user_agent is not None  # validated by G3Config
            geocoder = NominatimGeocoder(
                config.pipeline.nominatim_user_agent,
                cache_path=(cache or tiny.default_cache_dir()) / "nominatim-cache.json",
                domain=config.pipeline.nominatim_domain,
            )
        return cls(config, aligner=aligner, index=index, gallery=gallery, backend=backend, geocoder=geocoder,
                   ranker=ranker)  # fmt: skip

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> G3:
        """Load a bundle: ``folder/g3.yaml`` whose relative paths (aligner, index, gallery, LMM model,
        prompt folder) point inside ``folder`` — a self-contained, movable G3 setup (a configuration file's
        relative paths are relative to the file: see `g3.agent.config`)."""
        from g3.agent.config import ConfigError

        root = Path(folder)
        path = root / BUNDLE_CONFIG
        if not path.is_file():
            raise ConfigError(f"{root} is not a g3 bundle: {BUNDLE_CONFIG} is missing")
        return cls.from_config(path)

    # -- locating -----------------------------------------------------------------------------------

    def _input(self, image: ImageInput) -> dict[str, Any]:
        pipe = self.config.pipeline
        query = load_query_image(image, max_pixels=pipe.max_image_pixels, max_side=pipe.max_image_side)
        return {"image": query, "warnings": [], "timings": {}}

    async def alocate(self, image: ImageInput) -> GeoPrediction:
        """Locate one photo (path, bytes, PIL image or numpy array). Raises `InvalidImageError` for bad input."""
        state = await self.graph.ainvoke(self._input(image), context=self.runtime)
        return self.prediction(state)

    def locate(self, image: ImageInput) -> GeoPrediction:
        """Synchronous `alocate` (also inside a running event loop, e.g. a notebook: see `run_coroutine`)."""
        return run_coroutine(self.alocate(image))

    async def alocate_with_pool(self, image: ImageInput) -> tuple[GeoPrediction, Pool]:
        """`alocate`, and the photo's candidate pool (`g3.verify.Pool`, id ``"query"``, no truth): what the
        answer was chosen from, as an evaluation run writes it to ``pools.jsonl`` (`g3.agent.pooling`)."""
        state = await self.graph.ainvoke(self._input(image), context=self.runtime)
        return self.prediction(state), self.pool(state)

    def pool(self, state: LocateState) -> Pool:
        """The candidate pool of a finished graph state (see `alocate_with_pool`); the ranker's when it ran."""
        if "pool" in state:
            return state["pool"]
        from g3.agent.pooling import state_pool

        return state_pool(state, self.runtime.aligner)

    async def alocate_batch(
        self,
        images: Sequence[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        with_pools: bool = False,
    ) -> list[Any]:
        """Locate several photos, ``concurrency`` at a time (their prompts share LMM batches).

        A photo that fails never costs the others their results: every photo is located, then, if some
        failed, `BatchError` is raised carrying all results in order (``.results``, the failed photos'
        exceptions in their places) and ``.errors`` (index → exception). With ``return_exceptions`` the
        list is returned instead, each failed photo's exception in place of its prediction. A cancellation
        or an interrupt is raised as it is. With ``with_pools`` each result is a ``(prediction, pool)``
        pair (`alocate_with_pool`).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        semaphore = asyncio.Semaphore(concurrency)

        async def one(image: ImageInput) -> Any:
            async with semaphore:
                return await (self.alocate_with_pool(image) if with_pools else self.alocate(image))

        results: list[Any] = list(await asyncio.gather(*(one(i) for i in images), return_exceptions=True))
        errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        for error in errors.values():
            if not isinstance(error, Exception):
                raise error  # cancelled or interrupted: not a bad photo
        if errors and not return_exceptions:
            raise BatchError(results, errors) from next(iter(errors.values()))
        return results

    def locate_batch(
        self,
        images: Sequence[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        with_pools: bool = False,
    ) -> list[Any]:
        """Synchronous `alocate_batch` (also inside a running event loop, e.g. a notebook)."""
        return run_coroutine(self.alocate_batch(images, concurrency=concurrency, return_exceptions=return_exceptions,
                                                with_pools=with_pools))  # fmt: skip

    async def astream(self, image: ImageInput) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Step-by-step progress: yields ``(node name, its state update)`` as each step finishes, then
        ``("prediction", {"prediction": GeoPrediction})``."""
        state: dict[str, Any] = self._input(image)
        async for chunk in self.graph.astream(state, context=self.runtime, stream_mode="updates"):
            for node, update in chunk.items():
                for key, value in (update or {}).items():
                    if key in ("responses", "warnings"):
                        state[key] = state.get(key, []) + list(value)
                    elif key == "timings":
                        state[key] = {**state.get(key, {}), **value}
                    else:
                        state[key] = value
                yield node, update or {}
        yield "prediction", {"prediction": self.prediction(state)}  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the LMM backend and save the geocoding cache."""
        if self.runtime.backend is not None:
            self.runtime.backend.close()
        if self.runtime.geocoder is not None:
            self.runtime.geocoder.close()

    # -- result ---------------------------------------------------------------------------------------

    def prediction(self, state: LocateState) -> GeoPrediction:
        """Assemble the `GeoPrediction` from a finished graph state."""
        ranked = state["ranked"]
        best = ranked[0]
        responses = state.get("responses", [])
        backend = self.runtime.backend
        similar = state.get("similar")
        dissimilar = state.get("dissimilar")

        def neighbours(found: Any) -> list[Neighbour]:
            if found is None:
                return []
            return [
                Neighbour(img_id=found.ids[i] if i < len(found.ids) else None, lat=float(lat), lon=float(lon),
                          score=float(found.scores[i]), place=found.places[i] if i < len(found.places) else "")
                for i, (lat, lon) in enumerate(found.coordinates)
            ]  # fmt: skip

        timings = dict(state.get("timings", {}))
        per_prompt = [v for k, v in timings.items() if k.startswith("generate:")]
        if per_prompt:
            timings["generate"] = max(per_prompt)
        warnings = list(state.get("warnings", []))
        if self.config.note:
            warnings.append(self.config.note)
        degradations = assess(
            self.config.pipeline.mode,
            responses,
            generated=sum(
                c.source not in RANKED_SOURCES and c.source != RERANK_TAG for c in state.get("candidates", [])
            ),  # the LMM's own answers: neither retrieved/gallery points nor the rerank's pick among them
            parse=state.get("parse"),
            endpoint=backend.endpoint if backend is not None else "none",
        )
        reranked = state.get("rerank")
        raw_answers = self._raw_answers(responses)
        tokens = [r.usage for r in responses]
        if reranked is not None:  # verify.mode lmm_rerank: its raw answer and tokens are reported with the prompts'
            raw_answers[reranked.response.tag] = list(reranked.response.texts)
            tokens.append(reranked.response.usage)
            if reranked.error is not None:
                degradations.append(rerank_failed(reranked.error, backend.endpoint if backend else "none"))
        return GeoPrediction(
            lat=best.candidate.lat,
            lon=best.candidate.lon,
            score=float(best.score),
            source=best.candidate.source,
            address=state.get("address"),
            candidates=[
                RankedCandidate(
                    lat=s.candidate.lat,
                    lon=s.candidate.lon,
                    source=s.candidate.source,
                    sample=s.candidate.sample,
                    score=float(s.score),
                    components={k: float(v) for k, v in s.components.items()},
                    rank=s.rank,
                )
                for s in ranked
            ],
            similar=neighbours(similar),
            dissimilar=neighbours(dissimilar),
            usage=LMMUsage(
                backend=backend.name if backend is not None else None,
                prompts=len(responses),
                failed_prompts=sum(not r.ok for r in responses),
                prompt_tokens=sum(u.prompt_tokens for u in tokens),
                completion_tokens=sum(u.completion_tokens for u in tokens),
            ),
            parse=state["parse"].to_dict() if "parse" in state else {},
            raw_answers=raw_answers,
            timings=timings,
            warnings=warnings,
            mode=self.config.pipeline.mode,
            note=self.config.note,
            degradations=degradations,
            confidence=state.get("confidence"),
        )

    def _raw_answers(self, responses: Sequence[LMMResponse]) -> dict[str, list[str]]:
        """Each prompt's raw LMM texts (a failed prompt: none), in the ensemble's prompt order."""
        order = {spec.name: i for i, spec in enumerate(self.config.effective_ensemble.prompts)}
        ordered = sorted(responses, key=lambda r: order.get(r.tag, len(order)))
        return {r.tag: list(r.texts) for r in ordered}

    def __enter__(self) -> G3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
