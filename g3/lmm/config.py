"""The ``lmm:`` settings: one config type per backend, chosen by its ``backend`` field.

`LMMConfig` holds what every backend takes (``model``, ``timeout_s``, ``batch_window_ms``); each backend's type
adds its own settings and says how many calls it takes at once (`LMMConfig.concurrent_calls`). A setting of
another backend (``device`` with ``backend: openai``) is refused with a message naming both; set to null it
counts as not given. ``LMMConfig(backend="openai", base_url=...)`` builds the type of the named backend
(``vllm`` when none is named). `g3.lmm.registry` maps backend names to these types and builds the backends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, field_validator, model_validator

#: The backend of an ``lmm:`` mapping that names none.
DEFAULT_BACKEND = "vllm"


class LMMConfig(BaseModel):
    """Which multimodal model answers the prompts, and how it is reached: the settings every backend takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(default=DEFAULT_BACKEND, description="a name of g3.lmm.registry.BACKENDS")
    model: str = Field(default="Qwen/Qwen2.5-VL-7B-Instruct", description="hub id, local folder, or served name")
    timeout_s: float = Field(default=120.0, gt=0, description="limit for all prompts of one image")
    batch_window_ms: float = Field(default=5.0, ge=0, description="micro-batching window across concurrent prompts")

    def __new__(cls, *args: Any, **data: Any) -> Any:
        # LMMConfig(backend=NAME, ...) builds NAME's config type, as the ``lmm:`` mapping of a file does
        if cls is not LMMConfig:
            return super().__new__(cls)
        from g3.lmm.registry import config_type

        return super().__new__(config_type(str(data.get("backend", DEFAULT_BACKEND))))

    @model_validator(mode="wrap")
    @classmethod
    def _as_backend_type(cls, data: Any, handler: ModelWrapValidatorHandler[LMMConfig]) -> LMMConfig:
        # LMMConfig.model_validate({...}) validates as the named backend's type, as the constructor does
        if cls is not LMMConfig or isinstance(data, LMMConfig):
            return handler(data)
        from g3.lmm.registry import config_type

        backend = data.get("backend", DEFAULT_BACKEND) if isinstance(data, dict) else DEFAULT_BACKEND
        return config_type(str(backend)).model_validate(data)

    @model_validator(mode="before")
    @classmethod
    def _own_settings(cls, data: Any) -> Any:
        """Refuse the settings of another backend by name; drop those set to null (not given)."""
        if not isinstance(data, dict):
            return data
        from g3.lmm.registry import config_types

        backend = cls.model_fields["backend"].default
        kept = dict(data)
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            owners = [name for name, kind in config_types().items() if key in kind.model_fields]
            if owners and value is None:
                del kept[key]
            elif owners:
                raise ValueError(
                    f"lmm.{key} is a setting of backend {' / '.join(owners)}, not of backend {backend!r}: remove it "
                    f"or set lmm.backend to {owners[0]!r}"
                )
        return kept

    def concurrent_calls(self) -> int:
        """How many calls the backend takes at once: in-process engines one (they batch inside it)."""
        return 1

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The servers the backend calls: none for a backend without a server."""
        return ()


class ServerlessConfig(LMMConfig):
    """A backend that calls no server (no LMM, or the model runs in this process): ``base_url`` is None."""

    @property
    def base_url(self) -> None:
        return None


class NoLMMConfig(ServerlessConfig):
    """``backend: none``: no LMM (retrieval or gallery modes)."""

    backend: Literal["none"] = "none"


class VLLMConfig(ServerlessConfig):
    """``backend: vllm``: vLLM in this process (`g3.lmm.vllm_backend`)."""

    backend: Literal["vllm"] = "vllm"
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm.LLM(**engine_args)")


class TransformersConfig(ServerlessConfig):
    """``backend: transformers``: a Hugging Face model in this process (`g3.lmm.transformers_backend`)."""

    backend: Literal["transformers"] = "transformers"
    device: str = Field(default="auto", description="auto | cpu | cuda")


class OpenAIConfig(LMMConfig):
    """``backend: openai``: one OpenAI-compatible server (`g3.lmm.openai_backend`) or a pool (`g3.lmm.pool`)."""

    backend: Literal["openai"] = "openai"
    base_url: str | tuple[str, ...] | None = Field(
        default=None,
        description="OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1, or a list of them: a pool of servers "
        "used round-robin with health checks and failover",
    )
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the API key")
    max_concurrency: int = Field(default=8, ge=1, description="requests in flight per server")
    max_retries: int = Field(default=3, ge=0)
    health_interval_s: float = Field(default=10.0, gt=0, description="several base_urls: health-check period")
    backoff_max_s: float = Field(
        default=30.0, gt=0, description="several base_urls: longest wait before re-checking a server out of rotation"
    )
    attempt_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="several base_urls: limit of one try on one server, so that a hung server fails over "
        "within timeout_s (default: timeout_s)",
    )

    @field_validator("base_url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value.strip() if isinstance(value, str) else value
        if not isinstance(value, list | tuple):
            raise ValueError(f"lmm.base_url must be a URL or a list of URLs, not a {type(value).__name__}")
        if not value:
            raise ValueError("lmm.base_url is an empty list: give one URL or several (e.g. http://127.0.0.1:8000/v1)")
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            raise ValueError(f"lmm.base_url entries must be URL strings, got {bad[0]!r}")
        urls = tuple(v.strip() for v in value)
        twice = sorted({u.rstrip("/") for u in urls if [w.rstrip("/") for w in urls].count(u.rstrip("/")) > 1})
        if twice:
            raise ValueError(f"lmm.base_url lists {', '.join(twice)} more than once")
        return urls

    @model_validator(mode="after")
    def _needs_url(self) -> OpenAIConfig:
        if not self.base_url:
            raise ValueError("lmm.backend 'openai' needs lmm.base_url (e.g. http://127.0.0.1:8000/v1)")
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"lmm.base_url {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        return self

    @property
    def base_urls(self) -> tuple[str, ...]:
        """``base_url`` as a tuple: one URL, or the servers of a pool."""
        if self.base_url is None:
            return ()
        return (self.base_url,) if isinstance(self.base_url, str) else tuple(self.base_url)

    def concurrent_calls(self) -> int:
        """HTTP servers take calls concurrently: ``max_concurrency`` per server."""
        return self.max_concurrency * max(len(self.base_urls), 1)
