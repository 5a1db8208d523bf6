"""`G3Config`: one object (loadable from YAML) with every knob of the pipeline and the paper's defaults.

A YAML file may start from another with ``extends: other.yaml`` (relative to the file) or with the name of a
shipped configuration (``extends: paper``): its mappings are merged key by key, the extending file winning — e.g.
each evaluation baseline is a few lines over ``configs/paper.yaml``. `G3Config.load` takes a file, a bundle folder
(holding ``g3.yaml``) or a shipped configuration's name (``paper``, ``tiny``, ``eval/g3``: see `g3.configs`),
so ``g3 locate --config tiny`` works from any folder.

Relative paths in a file are relative to that file, like ``extends:``, so a configuration works from any
working folder (``g3 locate -c /abs/my.yaml``). This applies to the settings that name files or folders
(`PATH_SETTINGS`: aligner, index, gallery, cache_dir, lmm.model, ensemble.prompt_dir, verify.ranker), each
resolved against the file that sets it (a base file's paths against the base file). Since some of these also
take names (a hub id such as ``Qwen/Qwen2.5-VL-7B-Instruct``, ``gallery: geoclip``), a relative value is taken as a path
beside the file when it starts with ``./`` or ``../`` or when it exists there; any other value stays as
written (a name, a URI, an absolute path, or a path relative to the working folder, where it was looked
up before). Values given as a mapping or a `G3Config` are taken as written. A value of the form
``tiny://NAME`` names an offline asset that g3 builds on first use in the cache folder (see
`g3.agent.tiny`): it makes ``configs/tiny.yaml`` run anywhere with no download, with meaningless answers.
Secrets are never read from the file: the API key of an OpenAI-compatible server comes from the
environment variable named by ``lmm.api_key_env``.

The ``lmm:`` section takes the settings of the backend it names (one config type per backend, `g3.lmm.config`;
``vllm`` when it names none). A file that extends another and names another backend keeps only the base's
``lmm`` settings the two backends share (``model``, ``timeout_s``, …).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from g3.configs import config_names, shipped_config
from g3.errors import ConfigError
from g3.lmm.config import DEFAULT_BACKEND, LMMConfig, VLLMConfig
from g3.lmm.prompts import EnsembleConfig
from g3.lmm.registry import carry_over, config_union
from g3.verify import VerifyConfig

if TYPE_CHECKING:
    AnyLMMConfig = LMMConfig
else:  # one config type per backend, chosen by ``lmm.backend`` (g3.lmm.registry)
    AnyLMMConfig = config_union()

#: The configuration file of a bundle folder (`G3.from_pretrained`, `g3 fetch official`).
BUNDLE_CONFIG = "g3.yaml"


def config_file(source: str | os.PathLike[str]) -> Path:
    """The YAML file a configuration argument names: a file; a bundle folder (its ``g3.yaml``); else the name
    of a configuration shipped with g3 (``paper``, ``tiny``, ``eval/zero_shot``). `ConfigError` otherwise."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir() and (path / BUNDLE_CONFIG).is_file():
        return path / BUNDLE_CONFIG
    shipped = shipped_config(str(source))
    if shipped is not None:
        return shipped
    names = [n for n in config_names() if not n.startswith(("eval/tiny/", "train_"))]
    raise ConfigError(
        f"no configuration {str(source)!r}: it is not a file (from {Path.cwd()}), a bundle folder with "
        f"{BUNDLE_CONFIG}, or the name of a shipped configuration ({', '.join(names)}; eval/tiny/NAME for the "
        "tiny variant of each eval/NAME)"
    )


class PipelineConfig(BaseModel):
    """Which steps run. The switches reproduce the paper's ablations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "retrieval", "gallery"] = Field(
        default="full",
        description="full: G3; retrieval: retrieved coordinates only (no LMM); gallery: GeoCLIP-style GPS gallery",
    )
    geo_alignment: bool = Field(default=True, description="False: retrieve with the raw CLIP view only")
    diversification: bool = Field(default=True, description="False: a single RAG prompt instead of the ensemble")
    verification: bool = Field(default=True, description="False: pick a candidate at random (seeded)")
    describe: Literal["offline", "nominatim", "none"] = Field(
        default="offline", description="reverse-geocode the answer: GeoNames offline, or a Nominatim server"
    )
    nominatim_user_agent: str | None = Field(default=None, description="required by Nominatim's usage policy")
    nominatim_domain: str = "nominatim.openstreetmap.org"
    gallery_k: int = Field(default=5, ge=1, description="gallery mode: gallery points verified")
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_image_side: int | None = Field(default=1024, ge=32, description="photos are downscaled to this for LMMs")
    seed: int = 0


class G3Config(BaseModel):
    """Everything that defines a G3 pipeline. ``G3Config()`` is the paper's setting (GPU machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aligner: str = Field(
        default="official://aligner",
        description="g3 aligner checkpoint folder, official://aligner (G3's, from `g3 fetch official`) or tiny://aligner",
    )
    index: str | None = Field(
        default="official://index",
        description="geo index folder, official://index (G3's MP16-Pro index, from `g3 fetch official`) or tiny://index",
    )
    gallery: str | None = Field(default=None, description="'geoclip', a CSV of coordinates, or None")
    lmm: AnyLMMConfig = Field(default_factory=VLLMConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    cache_dir: str | None = Field(
        default=None,
        description="g3's cache folder for this configuration: tiny:// and official:// assets, gallery embeddings "
        "(<cache_dir>/galleries), the Nominatim cache; default $G3_CACHE_DIR, else ~/.cache/g3 (g3.io)",
    )
    note: str | None = Field(default=None, description="shown with every prediction (e.g. 'answers are meaningless')")

    @model_validator(mode="after")
    def _consistent(self) -> G3Config:
        if self.pipeline.mode in ("full", "retrieval") and self.index is None:
            raise ValueError(f"pipeline.mode '{self.pipeline.mode}' needs an index")
        if self.pipeline.mode == "gallery" and self.gallery is None:
            raise ValueError("pipeline.mode 'gallery' needs a gallery ('geoclip' or a CSV)")
        if self.pipeline.describe == "nominatim" and not self.pipeline.nominatim_user_agent:
            raise ValueError("pipeline.describe 'nominatim' needs pipeline.nominatim_user_agent (its usage policy)")
        if self.pipeline.mode == "full" and self.lmm.backend == "none":
            raise ValueError("pipeline.mode 'full' needs an LMM backend; use mode 'retrieval' to run without one")
        if self.verify.mode == "lmm_rerank" and self.lmm.backend == "none":
            raise ValueError("verify.mode 'lmm_rerank' needs an LMM backend (lmm.backend) to choose the candidate")
        return self

    @property
    def effective_ensemble(self) -> EnsembleConfig:
        """The ensemble actually run: without diversification, only the largest RAG prompt."""
        if self.pipeline.diversification:
            return self.ensemble
        rag = [p for p in self.ensemble.prompts if p.k_similar or p.k_dissimilar] or list(self.ensemble.prompts)
        return self.ensemble.model_copy(update={"prompts": (max(rag, key=lambda p: p.k_similar),)})

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | G3Config) -> G3Config:
        """A config from a YAML file, a mapping, or a config (returned as is)."""
        if isinstance(source, G3Config):
            return source
        where = "the configuration mapping"
        if isinstance(source, str | Path):
            path = config_file(source)
            where = str(path)
            data = _read_yaml(path)
        else:
            data = source
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid configuration in {where}:\n{validation_errors(exc)}") from exc


def with_lmm(config: G3Config, *, url: str | None = None, model: str | None = None) -> G3Config:
    """``config`` with its LMM named anew (`g3 locate/serve --lmm-url/--lmm-model`): ``url`` an OpenAI-compatible
    server (``vllm serve``), with ``model`` its served model name (default: the configured one); ``model`` alone
    a hub id or folder run in-process by vLLM (``tiny://llava``: by transformers, the only backend it runs on)."""
    if url is None and model is None:
        return config
    if url is not None:
        backend, named = "openai", {"base_url": url, "model": model or config.lmm.model}
    else:
        assert model is not None
        backend, named = ("transformers" if model.startswith("tiny://") else "vllm"), {"model": model}
    lmm = {**carry_over(config.lmm.model_dump(), backend), **named}
    try:
        return G3Config.model_validate({**config.model_dump(), "lmm": lmm})
    except ValidationError as exc:
        raise ConfigError(f"cannot use the LMM named on the command line:\n{validation_errors(exc)}") from exc


def validation_errors(exc: ValidationError) -> str:
    """pydantic's errors as lines ``setting: message`` under the names a file uses: the LMM backend a setting was
    checked against is said in words (pydantic's ``lmm.openai.max_concurrency`` is ``lmm.max_concurrency``)."""
    from g3.lmm.registry import BACKENDS

    lines = []
    for error in exc.errors():
        where = [str(part) for part in error["loc"]]
        backend = ""
        if len(where) > 1 and where[0] == "lmm" and where[1] in BACKENDS:
            backend = f" (backend {where.pop(1)})"
        value = f" (got {error['input']!r})" if error["type"] not in ("value_error", "missing") else ""
        lines.append(f"  {'.'.join(where) or 'the configuration'}{backend}: {error['msg']}{value}"[:600])
    return "\n".join(lines)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping, with ``extends:`` resolved (relative to the file) and merged."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    _resolve_paths(data, path.parent)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    base_path = (path.parent / str(base_name)).resolve()
    shipped = None if base_path.is_file() else shipped_config(str(base_name))
    if shipped is not None:
        base_path = shipped.resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to {base_path}")
    return _merge(_switched_lmm(_read_yaml(base_path, (*seen, path.resolve())), data), data)


#: Settings that name a file or folder: their relative values are resolved against the configuration file.
PATH_SETTINGS = ("aligner", "index", "gallery", "cache_dir", "lmm.model", "ensemble.prompt_dir", "verify.ranker")


def relative_to_file(value: str, folder: Path) -> str:
    """``value`` of a path setting read from a file in ``folder``: ``folder/value`` when ``value`` is a
    relative path starting with ``./`` or ``../`` or naming something that exists there, else ``value``
    unchanged (a hub id, a name, a URI, an absolute path, or a path relative to the working folder)."""
    if not value or "://" in value or value.startswith("~") or Path(value).is_absolute():
        return value
    beside = Path(os.path.normpath(folder.absolute() / value))
    explicit = value in (".", "..") or value.startswith(("./", "../", ".\\", "..\\"))
    return str(beside) if explicit or beside.exists() else value


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Resolve, in place, the `PATH_SETTINGS` that ``data`` (one file's own mapping) sets."""
    for dotted in PATH_SETTINGS:
        *parents, leaf = dotted.split(".")
        node: Any = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = relative_to_file(node[leaf], folder)


def _switched_lmm(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with only the ``lmm`` settings the overriding file's backend takes (model, timeout_s, …), when
    that file names another backend: a setting of the base's backend would be refused by the new one."""
    lmm, base_lmm = override.get("lmm"), base.get("lmm")
    if not (isinstance(lmm, dict) and isinstance(base_lmm, dict)) or "backend" not in lmm:
        return base
    if lmm["backend"] == base_lmm.get("backend", DEFAULT_BACKEND):
        return base
    return {**base, "lmm": carry_over(base_lmm, str(lmm["backend"]))}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
