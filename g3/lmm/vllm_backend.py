"""In-process vLLM backend (``vllm.LLM``): every request of a call goes to the engine in one ``chat`` call.

vLLM then schedules all prompts of an image (and of a batch of images) together, shares the image
prefix through its prefix cache, and samples ``n`` answers per prompt; the coordinate JSON schema is
enforced with vLLM's structured outputs. Needs ``pip install 'g3[gpu]'`` (or vLLM's CPU build).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from g3.errors import MissingDependencyError
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage, data_url
from g3.lmm.config import VLLMConfig

log = logging.getLogger(__name__)


class VLLMBackend(LMMBackend):
    """``vllm.LLM(model, **engine_args)``; loaded on `load` or on first use, not in the constructor."""

    name = "vllm"

    def __init__(self, model: str, **engine_args: Any) -> None:
        self.model = model
        self.engine_args = {"enable_prefix_caching": True, **engine_args}
        self._llm: Any = None
        self._lock = threading.Lock()  # one engine call at a time; vLLM batches inside it

    def load(self) -> Any:
        """Build the engine (downloads or reads the weights; allocates the KV cache)."""
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise MissingDependencyError(
                    "the in-process vLLM backend needs vLLM: `pip install 'g3[gpu]'` on a GPU machine, or use the "
                    "OpenAI-compatible backend against a `vllm serve` endpoint"
                ) from exc
            self._llm = LLM(model=self.model, **self.engine_args)
        return self._llm

    @staticmethod
    def sampling_params(request: LMMRequest) -> Any:
        """vLLM ``SamplingParams`` of a request (structured output when it carries a JSON schema)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = (
            StructuredOutputsParams(json=request.json_schema, disable_any_whitespace=True)
            if request.json_schema
            else None
        )
        return SamplingParams(
            n=1 if request.temperature == 0 else request.n,  # vLLM refuses n > 1 when greedy: see _generate_locked
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            seed=request.seed,
            structured_outputs=structured,
        )

    def _generate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        with self._lock:
            return self._generate_locked(requests)

    def _generate_locked(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        llm = self.load()
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(r.image)}},
                        {"type": "text", "text": r.prompt},
                    ],
                }
            ]
            for r in requests
        ]
        start = time.perf_counter()
        try:
            outputs = llm.chat(
                conversations, sampling_params=[self.sampling_params(r) for r in requests], use_tqdm=False
            )
        except Exception as exc:  # the engine raises many kinds; the ensemble must go on
            elapsed = time.perf_counter() - start
            log.warning("vLLM generation failed: %s", exc)
            return [LMMResponse(r.tag, (), Usage(), elapsed, error=f"{type(exc).__name__}: {exc}") for r in requests]
        elapsed = time.perf_counter() - start
        return [
            LMMResponse(
                tag=r.tag,
                # greedy decoding gives one answer; repeat it so that every request has its n answers
                texts=tuple(o.text for o in out.outputs) * (r.n if r.temperature == 0 else 1),
                usage=Usage(len(out.prompt_token_ids or ()), sum(len(o.token_ids) for o in out.outputs)),
                latency_s=elapsed,
            )
            for r, out in zip(requests, outputs, strict=True)
        ]

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        return await asyncio.to_thread(self._generate, requests)


def build(config: VLLMConfig) -> VLLMBackend:
    """The backend of ``lmm: {backend: vllm}``: ``vllm.LLM(model, **engine_args)`` in this process."""
    return VLLMBackend(config.model, **config.engine_args)
