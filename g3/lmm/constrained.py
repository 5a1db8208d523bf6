"""JSON-schema constrained decoding for the transformers backend, with xgrammar.

A request's ``json_schema`` is compiled once per tokenizer and schema (`GrammarCache`) into a grammar over
the model's vocabulary; during ``generate``, `GrammarMask` masks every token that would leave the grammar,
row by row, so that each answer is one JSON object of the schema (or its prefix, when ``max_tokens`` cuts
it), followed by the end-of-sequence token.

Why xgrammar: it is vLLM's default structured-output backend, and vLLM (0.32) picks it for G3's coordinate
schema. Compiled as vLLM's backend compiles it (``any_whitespace=False`` and ``(",", ":")`` separators,
vLLM's ``disable_any_whitespace``), the transformers backend constrains answers with the same grammar as a
vLLM server: whitespace-free JSON, numbers within ``minimum``/``maximum`` (xgrammar's ranged numbers also
stop after 6 decimals, so a random model's digits end), required keys, no extra properties. Its matcher is
C++ (microseconds per token and row), it needs only a torch ≥ 1.10 (the CPU wheel is fine) and plugs into
``generate`` as a ``LogitsProcessor``; it reads byte-level BPE tokenizers (LLaVA's, the tiny one) directly.
Others looked at: llguidance (vLLM's ``guidance`` fallback; its transformers helper took 4–6 s to import
here), lm-format-enforcer and outlines (vLLM's other backends; character-level Python matching or a heavier
dependency tree, and not vLLM's default, so other semantics for the same schema), transformers-cfg (EBNF
grammars, no JSON schema of its own).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from g3.errors import MissingDependencyError

#: JSON separators of the compiled grammars (vLLM's with ``disable_any_whitespace``): ``{"a":1,"b":2}``.
SEPARATORS = (",", ":")


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:
        raise MissingDependencyError(
            f"constrained decoding (a request with a json_schema) on the transformers backend needs xgrammar: "
            f"`pip install xgrammar` ({exc})"
        ) from exc
    return xgrammar


def schema_key(schema: dict[str, Any]) -> str:
    """A canonical JSON text of a schema: equal schemas share one compiled grammar."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class GrammarCache:
    """The compiled grammars of one tokenizer, one per JSON schema, compiled on first use.

    ``vocab_size`` is the width of the model's logits (may differ from the tokenizer's length);
    ``stop_token_ids`` end an answer once its JSON object is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        xgr = _xgrammar()
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._grammars)

    def get(self, schema: dict[str, Any]) -> Any:
        """The compiled grammar of ``schema``; raises ``ValueError`` naming the schema when it cannot compile."""
        key = schema_key(schema)
        with self._lock:
            grammar = self._grammars.get(key)
            if grammar is None:
                try:
                    grammar = self._compiler.compile_json_schema(key, any_whitespace=False, separators=SEPARATORS)
                except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors derive from these
                    raise ValueError(f"cannot compile the JSON schema {key[:200]} into a grammar: {exc}") from exc
                self._grammars[key] = grammar
        return grammar


class GrammarMask(LogitsProcessor):
    """Mask the logits of each row to the tokens its grammar allows next (rows with None: unconstrained).

    One instance serves one ``generate`` call: it keeps a matcher per row, which accepts the token sampled
    for its row at the previous step. Place it before the sampler in ``logits_processor``. A row whose
    grammar is complete allows only the stop tokens; once it has accepted one, the row is left alone
    (``generate`` pads it).
    """

    def __init__(self, grammars: Sequence[Any | None], vocab_size: int) -> None:
        xgr = _xgrammar()
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(self.matchers), vocab_size)
        self.vocab_size = vocab_size
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != len(self.matchers):
            raise RuntimeError(f"GrammarMask has {len(self.matchers)} rows but generate has {input_ids.shape[0]}")
        rows: list[int] = []
        last = input_ids[:, -1].tolist() if self._started else None
        for row, matcher in enumerate(self.matchers):
            if matcher is None or matcher.is_terminated():
                continue
            if last is not None and not matcher.accept_token(last[row]):
                raise RuntimeError(f"row {row} sampled token {last[row]}, which its grammar does not allow")
            if matcher.is_terminated():  # it just accepted its stop token: the row is finished
                continue
            matcher.fill_next_token_bitmask(self.bitmask, row)
            rows.append(row)
        self._started = True
        if rows:
            bitmask = self.bitmask.to(scores.device)  # xgrammar masks CPU logits in C++, CUDA ones with a kernel
            self._xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=self.vocab_size, indices=rows)
        return scores
