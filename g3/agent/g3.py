"""`G3`: the entry point — ``G3.from_config("configs/tiny.yaml").locate("photo.jpg")``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from g3.agent import official, tiny
from g3.agent.answer import pool_of, prediction_of
from g3.agent.config import BUNDLE_CONFIG, G3Config
from g3.agent.graph import G3Runtime, LocateState, build_graph
from g3.agent.prediction import GeoPrediction
from g3.agent.progress import Step
from g3.agent.sync import run_coroutine
from g3.data.geocode import NominatimGeocoder
from g3.data.query_image import load_query_image
from g3.errors import BatchError
from g3.index import GeoIndex, GPSGallery
from g3.io import default_cache_dir
from g3.lmm.base import LMMBackend
from g3.lmm.prompts import load_template
from g3.lmm.registry import make_backend
from g3.models import GeoAligner
from g3.verify import Pool

if TYPE_CHECKING:
    from g3.verify.ranker import Ranker

log = logging.getLogger(__name__)

#: What `G3.locate` accepts: a path, encoded bytes, a PIL image or a numpy array.
ImageInput = Any


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
        cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
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
            from g3.index.gallery import gallery_cache_dir

            gallery = _Gallery.from_source(config.gallery, aligner, cache_dir=gallery_cache_dir(cache))
        backend = None
        if config.pipeline.mode == "full" or config.verify.mode == "lmm_rerank":
            backend = make_backend(config.lmm.model_copy(update={"model": tiny.resolve(config.lmm.model, cache)}))
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
                cache_path=cache / "nominatim-cache.json",
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

    def prediction(self, state: LocateState) -> GeoPrediction:
        """The `GeoPrediction` of a finished graph state (`g3.agent.answer.prediction_of`)."""
        return prediction_of(state, self.config, self.runtime.backend)

    def pool(self, state: LocateState) -> Pool:
        """The candidate pool of a finished graph state (see `alocate_with_pool`); the ranker's when it ran."""
        return pool_of(state, self.runtime.aligner)

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

    async def astream(self, image: ImageInput) -> AsyncIterator[tuple[Step, dict[str, Any]]]:
        """Step-by-step progress: yields ``(Step, its state update)`` as each node finishes, then
        ``(Step.PREDICTION, {"prediction": GeoPrediction})``, built from the graph's own final state."""
        final: dict[str, Any] | None = None
        modes = ["updates", "values"]
        async for mode, chunk in self.graph.astream(self._input(image), context=self.runtime, stream_mode=modes):
            if mode == "values":
                final = chunk  # the whole state after each step: the last one is the finished state
                continue
            for node, update in chunk.items():
                yield Step(node), update or {}
        assert final is not None  # LangGraph emits the state at least once (the input)
        yield Step.PREDICTION, {"prediction": self.prediction(final)}  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the LMM backend and save the geocoding cache."""
        if self.runtime.backend is not None:
            self.runtime.backend.close()
        if self.runtime.geocoder is not None:
            self.runtime.geocoder.close()

    def __enter__(self) -> G3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
