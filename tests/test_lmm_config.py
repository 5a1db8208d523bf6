"""The ``lmm:`` settings: a config type per backend chosen by ``backend``, the registry and `make_backend`."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from g3.agent.config import ConfigError, G3Config, LMMConfig, with_lmm
from g3.lmm import registry
from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage
from g3.lmm.batching import BatchingBackend
from g3.lmm.config import NoLMMConfig, OpenAIConfig, TransformersConfig, VLLMConfig
from g3.lmm.registry import BACKENDS, Backend, make_backend


def test_the_backend_field_chooses_the_config_type() -> None:
    assert type(G3Config().lmm) is VLLMConfig  # no backend named: vllm, as before
    assert type(G3Config.load({"lmm": {"model": "m"}}).lmm) is VLLMConfig
    assert type(G3Config.load({"lmm": {"backend": "transformers", "device": "cpu"}}).lmm) is TransformersConfig
    assert type(G3Config.load({"lmm": {"backend": "none"}, "pipeline": {"mode": "retrieval"}}).lmm) is NoLMMConfig
    assert type(LMMConfig(backend="openai", base_url="http://a:1/v1")) is OpenAIConfig
    assert type(LMMConfig()) is VLLMConfig
    assert LMMConfig.model_validate({"backend": "transformers", "device": "cpu"}) == TransformersConfig(device="cpu")
    with pytest.raises(ConfigError, match=r"unknown lmm\.backend"):
        G3Config.load({"lmm": {"backend": "llamacpp"}})


@pytest.mark.parametrize(
    ("lmm", "field", "owner"),
    [
        ({"backend": "openai", "base_url": "http://a:1/v1", "device": "cpu"}, "device", "transformers"),
        ({"backend": "transformers", "engine_args": {"x": 1}}, "engine_args", "vllm"),
        ({"backend": "vllm", "max_concurrency": 4}, "max_concurrency", "openai"),
    ],
)
def test_a_setting_of_another_backend_is_refused_by_name(lmm: dict[str, object], field: str, owner: str) -> None:
    with pytest.raises(ConfigError, match=rf"lmm\.{field} is a setting of backend {owner}, not of backend"):
        G3Config.load({"lmm": lmm})


def test_a_null_setting_of_another_backend_counts_as_not_given() -> None:
    config = G3Config.load({"lmm": {"backend": "vllm", "base_url": None}})
    assert config.lmm.base_url is None and config.lmm.base_urls == ()


def test_a_file_that_switches_backends_keeps_the_shared_settings(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("lmm: {backend: transformers, model: m, device: cpu, timeout_s: 7}\n")
    (tmp_path / "served.yaml").write_text("extends: base.yaml\nlmm: {backend: openai, base_url: 'http://a:1/v1'}\n")
    (tmp_path / "same.yaml").write_text("extends: base.yaml\nlmm: {device: cuda}\n")
    served = G3Config.load(tmp_path / "served.yaml").lmm
    assert isinstance(served, OpenAIConfig) and (served.model, served.timeout_s) == ("m", 7)
    same = G3Config.load(tmp_path / "same.yaml").lmm
    assert isinstance(same, TransformersConfig) and (same.device, same.model) == ("cuda", "m")
    tiny = with_lmm(G3Config.load(tmp_path / "served.yaml"), model="tiny://llava").lmm
    assert isinstance(tiny, TransformersConfig) and tiny.timeout_s == 7


def test_each_config_says_how_many_calls_its_backend_takes() -> None:
    assert VLLMConfig().concurrent_calls() == 1 and TransformersConfig().concurrent_calls() == 1
    assert OpenAIConfig(base_url="http://a:1/v1", max_concurrency=3).concurrent_calls() == 3
    assert OpenAIConfig(base_url=["http://a:1/v1", "http://b:1/v1"], max_concurrency=3).concurrent_calls() == 6


class EchoBackend(LMMBackend):
    name = "echo"

    def __init__(self, word: str) -> None:
        self.word = word

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        return [LMMResponse(r.tag, (self.word,) * r.n, Usage(), 0.0) for r in requests]


class EchoConfig(LMMConfig):
    backend: Literal["echo"] = "echo"
    word: str = "hello"

    def concurrent_calls(self) -> int:
        return 2


def test_a_new_backend_is_one_module_and_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("g3_test_echo_backend")
    module.EchoConfig = EchoConfig  # type: ignore[attr-defined]
    module.build = lambda config: EchoBackend(config.word)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(BACKENDS, "echo", Backend(f"{module.__name__}:EchoConfig", f"{module.__name__}:build"))
    registry.config_types.cache_clear()
    try:
        config = LMMConfig(backend="echo", word="bonjour")
        assert isinstance(config, EchoConfig)
        with pytest.raises(ValueError, match=r"lmm\.word is a setting of backend echo"):
            VLLMConfig(word="bonjour")  # type: ignore[call-arg]
        backend = make_backend(config)
        assert isinstance(backend, BatchingBackend) and backend.max_concurrent_calls == 2
        assert backend.generate([LMMRequest("p", b"x", n=2, tag="t")])[0].texts == ("bonjour", "bonjour")
    finally:
        monkeypatch.undo()
        registry.config_types.cache_clear()


def test_make_backend_builds_none_for_no_lmm() -> None:
    assert make_backend(NoLMMConfig()) is None
