"""An in-process LMM backend on Hugging Face transformers: batched ``generate`` over padded requests.

All requests of a call that share ``n`` and ``max_tokens`` are left-padded into one ``generate`` call
(``batch_size`` requests at most), each sampled ``n`` times. Sampling is reproducible per request: every
request draws its tokens from its own ``torch.Generator`` seeded with its ``seed``, so a request gets the same
texts whether it is sent alone or batched with others, and the global torch RNG is left untouched. That
holds exactly on a CPU in float32; on a GPU in bfloat16, a padded batch runs other kernels than a lone
request and rounds differently, so the texts of one seed can change with the batch (seen on an H200).

For LLaVA models the prompt of a request is run through the model once and its KV cache copied to its
``n`` samples ("shared prefill"); ``generate`` with ``num_return_sequences=n`` would run it ``n`` times, which
dominates the cost of G3's long RAG prompts on a CPU.

A request's ``json_schema`` is enforced as the vLLM backend enforces it: compiled (once per schema) into an
xgrammar grammar, the grammar vLLM uses for that schema, and applied row by row while sampling, so even a
random model answers one JSON object of the schema (`g3.lmm.constrained` says why xgrammar). Requests
without a schema are sampled freely, in the same batches.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from g3.errors import CheckpointError, MissingDependencyError
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage, decode_request_image
from g3.lmm.config import TransformersConfig
from g3.lmm.constrained import GrammarCache, GrammarMask

#: The ``dtype`` names the backend takes (besides ``auto``) and their torch dtypes.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

#: Model types whose prompt cache is computed once and copied to the ``n`` samples by default (1-D positions, the
#: image only matters in the prefill; checked to answer exactly as plain ``generate``). Others: ``share_prefill``.
_SHARED_PREFILL_MODEL_TYPES = frozenset({"llava"})

#: The texts and usage of one answered request.
_Result = tuple[tuple[str, ...], Usage]

#: Sampling settings that neutralise the model's own warpers (top-k, top-p, …): `_SeededSampler` samples.
_NEUTRAL_SAMPLING: dict[str, Any] = {
    "do_sample": True,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


class _SeededSampler(LogitsProcessor):
    """Pick each row's next token with that row's temperature and its request's generator.

    Returns one-hot scores (0 for the chosen token, -inf elsewhere), so the multinomial step of ``generate``
    can only take the chosen token. Rows of one request share a generator and draw from it in row order;
    temperature 0 picks the argmax.
    """

    def __init__(self, temperatures: Sequence[float], generators: Sequence[torch.Generator]) -> None:
        self.temperatures = list(temperatures)
        self.generators = list(generators)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float()
        chosen = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators, strict=True)):
            if temperature == 0:
                chosen[row] = logits[row].argmax()
            else:
                probs = torch.softmax(logits[row] / temperature, dim=-1)
                chosen[row] = torch.multinomial(probs, 1, generator=generator)[0]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class TransformersBackend(LMMBackend):
    """A vision-language model loaded in process with ``AutoModelForImageTextToText`` + ``AutoProcessor``.

    ``model`` is a hub id or a local folder; the constructor does no I/O, `load` (called lazily on first use)
    loads the model. ``batch_size`` is the most requests per ``generate`` call (each expands to ``n`` rows);
    ``max_image_side`` shrinks larger images before preprocessing. A request's ``json_schema`` constrains its
    answers (see the module docstring). Sampling uses only the request's temperature (no top-k/top-p);
    other settings of the model's generation config (e.g. repetition penalty) still apply. ``share_prefill``
    computes each prompt once for its ``n`` samples (None: for LLaVA, where it is checked to give the
    answers of plain ``generate``; other models with 1-D positions can opt in).
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
        max_image_side: int | None = None,
        share_prefill: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_image_side is not None and max_image_side < 1:
            raise ValueError(f"max_image_side must be positive, got {max_image_side}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(DTYPES)}")
        self.model_path = str(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_image_side = max_image_side
        self.share_prefill = share_prefill
        self._model: Any = None
        self._processor: Any = None
        self._grammars: GrammarCache | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model and processor (once); raises `CheckpointError` naming the model when that fails."""
        with self._load_lock:
            if self._model is not None:
                return
            try:
                from transformers import AutoModelForImageTextToText, AutoProcessor
            except ImportError as exc:
                raise MissingDependencyError(
                    f"the transformers backend needs a transformers with AutoModelForImageTextToText: {exc}"
                ) from exc
            torch_dtype = "auto" if self.dtype == "auto" else DTYPES[self.dtype]
            try:
                processor = AutoProcessor.from_pretrained(self.model_path)
                model: Any = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=torch_dtype)
            except ImportError as exc:
                raise MissingDependencyError(
                    f"loading the multimodal model {self.model_path!r} needs a package that is not installed: {exc}"
                ) from exc
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(
                    f"cannot load the multimodal model {self.model_path!r} with transformers "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            self._adopt(model, processor)

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        *,
        device: str | None = None,
        batch_size: int = 8,
        max_image_side: int | None = None,
        share_prefill: bool | None = None,
    ) -> TransformersBackend:
        """A backend around a model and processor already in memory (quantised, built from a config, …).

        ``device`` defaults to the model's own device; the processor needs a tokenizer and a chat template.
        """
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        backend = cls(
            name,
            device=device or str(model.device),
            batch_size=batch_size,
            max_image_side=max_image_side,
            share_prefill=share_prefill,
        )
        with backend._load_lock:
            backend._adopt(model, processor)
        return backend

    def _adopt(self, model: Any, processor: Any) -> None:
        """Check the processor, left-pad its tokenizer and keep both, the model on ``self.device``."""
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "chat_template", None) is None:
            raise CheckpointError(
                f"the processor of {self.model_path!r} has no tokenizer or no chat template; "
                "a vision-language chat model is needed"
            )
        tokenizer.padding_side = "left"  # decoder-only generation continues at the right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._processor = processor
        self._model = model.to(self.device).eval()
        self._grammars = None

    def close(self) -> None:
        """Drop the model (frees its memory once nothing else refers to it)."""
        with self._load_lock:
            self._model = None
            self._processor = None
            self._grammars = None

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        """Answer the requests with batched ``generate`` calls run in a worker thread; responses in order."""
        if not requests:
            return []
        if self._model is None:
            await asyncio.to_thread(self.load)
        return await asyncio.to_thread(self._generate_all, list(requests))

    def _generate_all(self, requests: list[LMMRequest]) -> list[LMMResponse]:
        """Decode images, group requests into batches, and run them one batch after another."""
        responses: list[LMMResponse | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[tuple[int, Any]]] = {}
        grammars: dict[int, Any] = {}
        for i, request in enumerate(requests):
            try:
                image = self._prepare_image(request.image)
            except Exception as exc:
                responses[i] = _error(request, f"cannot decode the image: {type(exc).__name__}: {exc}", 0.0)
                continue
            if request.json_schema is not None:
                try:
                    grammars[i] = self._grammar(request.json_schema)
                except ValueError as exc:
                    responses[i] = _error(request, str(exc), 0.0)
                    continue
            groups.setdefault((request.n, request.max_tokens), []).append((i, image))
        with self._generate_lock:
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    batch = members[start : start + self.batch_size]
                    indices = [i for i, _ in batch]
                    t0 = time.perf_counter()
                    try:
                        results = self._generate_batch(
                            [requests[i] for i in indices],
                            [img for _, img in batch],
                            [grammars.get(i) for i in indices],
                        )
                    except Exception as exc:
                        elapsed = time.perf_counter() - t0
                        for i in indices:
                            responses[i] = _error(
                                requests[i], f"generation failed: {type(exc).__name__}: {exc}", elapsed
                            )
                        continue
                    elapsed = time.perf_counter() - t0
                    for i, result in zip(indices, results, strict=True):
                        if isinstance(result, str):
                            responses[i] = _error(requests[i], result, elapsed)
                        else:
                            responses[i] = LMMResponse(requests[i].tag, *result, elapsed)
        return [r for r in responses if r is not None]

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The compiled grammar of a JSON schema (compiled on first use, then cached for the loaded model)."""
        if self._grammars is None:
            tokenizer = self._processor.tokenizer
            eos_ids = _token_ids(self._model.generation_config.eos_token_id) or _token_ids(tokenizer.eos_token_id)
            vocab_size = self._model.config.get_text_config().vocab_size
            self._grammars = GrammarCache(tokenizer, vocab_size, eos_ids)
        return self._grammars.get(schema)

    def _prepare_image(self, data: bytes) -> Any:
        image = decode_request_image(data)
        if self.max_image_side is not None and max(image.size) > self.max_image_side:
            image.thumbnail((self.max_image_side, self.max_image_side))
        return image

    def _encode(self, requests: list[LMMRequest], images: list[Any]) -> Any:
        """The left-padded model inputs of chat-templated requests (one image each), on the model's device."""
        model, processor = self._model, self._processor
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in requests
        ]
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        return inputs

    def _generate_batch(
        self, requests: list[LMMRequest], images: list[Any], grammars: list[Any | None]
    ) -> list[_Result | str]:
        """One ``generate`` call for requests that share ``n`` and ``max_tokens`` (``grammars``: each one's
        compiled schema, or None).

        Returns each request's texts and usage, or an error message for a request whose prompt plus
        ``max_tokens`` exceeds the model's context.
        """
        inputs = self._encode(requests, images)
        limit = getattr(self._model.config.get_text_config(), "max_position_embeddings", None)
        max_tokens = requests[0].max_tokens
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if limit is None or all(length + max_tokens <= limit for length in lengths):
            return list(self._sample(requests, inputs, grammars))
        results: list[_Result | str] = [
            f"the prompt ({length} tokens) plus max_tokens ({max_tokens}) exceeds the context of {limit} tokens"
            for length in lengths
        ]
        fits = [k for k, length in enumerate(lengths) if length + max_tokens <= limit]
        if fits:
            kept = [requests[k] for k in fits]
            kept_inputs = self._encode(kept, [images[k] for k in fits])
            for k, result in zip(fits, self._sample(kept, kept_inputs, [grammars[k] for k in fits]), strict=True):
                results[k] = result
        return results

    def _shares_prefill(self) -> bool:
        if self.share_prefill is not None:
            return self.share_prefill
        return getattr(self._model.config, "model_type", "") in _SHARED_PREFILL_MODEL_TYPES

    def _prefill(self, inputs: Any, n: int) -> dict[str, Any]:
        """Run every prompt but its last token once, and the ``generate`` inputs of its ``n`` samples.

        The cache is built with the positions ``generate`` gives left-padded rows, copied ``n`` times, and
        ``generate`` then feeds only the last prompt token (the image is already in the cache).
        """
        model = self._model
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        prefix = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        out = model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
            **prefix,
        )
        cache = getattr(out, cache_name)
        cache.batch_repeat_interleave(n)
        return {
            "input_ids": ids.repeat_interleave(n, dim=0),
            "attention_mask": mask.repeat_interleave(n, dim=0),
            cache_name: cache,
        }

    def _sample(self, requests: list[LMMRequest], inputs: Any, grammars: list[Any | None]) -> list[_Result]:
        """Run ``generate`` on encoded requests (``n`` samples each, each constrained to its grammar when it
        has one) and decode the new tokens."""
        model, tokenizer = self._model, self._processor.tokenizer
        n, max_tokens = requests[0].n, requests[0].max_tokens
        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()

        device = inputs["input_ids"].device
        temperatures: list[float] = []
        generators: list[torch.Generator] = []
        for r in requests:
            generator = torch.Generator(device=device)
            generator.manual_seed(r.seed if r.seed is not None else secrets.randbits(63))
            temperatures += [r.temperature] * n
            generators += [generator] * n

        eos_ids = _token_ids(model.generation_config.eos_token_id) or _token_ids(tokenizer.eos_token_id)
        pad_id = tokenizer.pad_token_id
        processors: list[LogitsProcessor] = [_SeededSampler(temperatures, generators)]
        if any(g is not None for g in grammars):
            rows = [g for g in grammars for _ in range(n)]
            vocab_size = self._grammars.vocab_size if self._grammars is not None else 0
            processors.insert(0, GrammarMask(rows, vocab_size))  # mask first: the sampler draws among allowed tokens
        devices = [device] if device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if n > 1 and self._shares_prefill():
                gen_inputs, num_return = self._prefill(inputs, n), 1
            else:
                gen_inputs, num_return = dict(inputs), n
            output = model.generate(
                **gen_inputs,
                **_NEUTRAL_SAMPLING,
                max_new_tokens=max_tokens,
                num_return_sequences=num_return,
                logits_processor=processors,
                pad_token_id=pad_id,
                eos_token_id=eos_ids or None,
            )
        new_tokens = output[:, prompt_len:].tolist()

        results: list[_Result] = []
        for k in range(len(requests)):
            texts: list[str] = []
            completion = 0
            for row in new_tokens[k * n : (k + 1) * n]:
                kept, counted = _until_eos(row, eos_ids)
                completion += counted
                texts.append(tokenizer.decode(kept, skip_special_tokens=True))
            results.append((tuple(texts), Usage(int(prompt_tokens[k]), completion)))
        return results


def build(config: TransformersConfig) -> TransformersBackend:
    """The backend of ``lmm: {backend: transformers}``; ``device: auto`` is CUDA when there is a GPU, else CPU."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    return TransformersBackend(config.model, device=device)


def _token_ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _until_eos(row: list[int], eos_ids: list[int]) -> tuple[list[int], int]:
    """The tokens of a generated row before its end, and how many it generated (its EOS included).

    ``generate`` pads a row only after its EOS, so everything after the first EOS is padding.
    """
    for pos, token in enumerate(row):
        if token in eos_ids:
            return row[:pos], pos + 1
    return row, len(row)


def _error(request: LMMRequest, message: str, latency: float) -> LMMResponse:
    return LMMResponse(request.tag, (), Usage(), latency, error=message)
