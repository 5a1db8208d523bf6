"""Large multimodal model backends, G3's prompt ensemble, and answer parsing.

Backends (imported on demand, each from its module): `g3.lmm.openai_backend.OpenAIBackend` (any
OpenAI-compatible server, e.g. ``vllm serve``), `g3.lmm.vllm_backend.VLLMBackend` (in-process
``vllm.LLM``), `g3.lmm.transformers_backend.TransformersBackend` (CPU / small models). Each has its config
type in `g3.lmm.config` (chosen by ``lmm.backend``); `g3.lmm.registry` lists them and `make_backend` builds one.
"""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.lmm.base import COORDINATE_SCHEMA, LMMBackend, LMMRequest, LMMResponse, Usage, encode_image
    from g3.lmm.config import LMMConfig
    from g3.lmm.parse import ParsedAnswer, ParseStats, parse_answer, parse_answers
    from g3.lmm.prompts import EnsembleConfig, PromptSpec, build_requests, paper_prompts, render_prompt
    from g3.lmm.registry import make_backend

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.lmm.base": ("COORDINATE_SCHEMA", "LMMBackend", "LMMRequest", "LMMResponse", "Usage", "encode_image"),
    "g3.lmm.config": ("LMMConfig",),
    "g3.lmm.parse": ("ParsedAnswer", "ParseStats", "parse_answer", "parse_answers"),
    "g3.lmm.prompts": ("EnsembleConfig", "PromptSpec", "build_requests", "paper_prompts", "render_prompt"),
    "g3.lmm.registry": ("make_backend",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "COORDINATE_SCHEMA",
    "EnsembleConfig",
    "LMMBackend",
    "LMMConfig",
    "LMMRequest",
    "LMMResponse",
    "ParseStats",
    "ParsedAnswer",
    "PromptSpec",
    "Usage",
    "build_requests",
    "encode_image",
    "make_backend",
    "paper_prompts",
    "parse_answer",
    "parse_answers",
    "render_prompt",
]
