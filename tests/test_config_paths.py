"""Relative paths in a configuration file are relative to that file (like ``extends:``), so that
``g3 locate -c /abs/my.yaml`` works from any folder; hub ids, ``tiny://`` URIs and names stay as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from g3.agent import G3, G3Config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_paths_resolve_against_the_file_that_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, conf, elsewhere = tmp_path / "base", tmp_path / "conf", tmp_path / "elsewhere"
    for folder in (base / "aligner-b", conf / "aligner", conf / "prompts", tmp_path / "models" / "llava", elsewhere):
        folder.mkdir(parents=True)
    (base / "base.yaml").write_text("aligner: aligner-b\nindex: ./not-built-yet\ngallery: geoclip\n")
    mine = conf / "my.yaml"
    mine.write_text(
        "extends: ../base/base.yaml\n"
        "aligner: aligner\n"  # bare, exists beside the file
        "lmm: {backend: transformers, model: ../models/llava}\n"
        "ensemble: {prompt_dir: prompts}\n"
        "cache_dir: ./cache\n"  # ./: resolved even before it exists
    )
    monkeypatch.chdir(elsewhere)
    config = G3Config.load(mine)
    assert config.aligner == str(conf / "aligner") and config.lmm.model == str(tmp_path / "models" / "llava")
    assert config.ensemble.prompt_dir == conf / "prompts" and config.cache_dir == str(conf / "cache")
    assert config.index == str(base / "not-built-yet")  # the base file's ./ path: against the base file
    assert config.gallery == "geoclip"  # a name, not a path beside the file

    # the base's bare relative path is resolved against the base file, where it exists
    (base / "base.yaml").write_text("aligner: aligner-b\n")
    mine.write_text("extends: ../base/base.yaml\nlmm: {model: Qwen/Qwen2.5-VL-7B-Instruct}\nindex: tiny://index\n")
    config = G3Config.load(mine)
    assert config.aligner == str(base / "aligner-b")
    assert config.lmm.model == "Qwen/Qwen2.5-VL-7B-Instruct" and config.index == "tiny://index"
    # a bare path found nowhere beside the file stays as written: relative to the working folder
    mine.write_text("aligner: checkpoints/g3\nindex: /abs/index\n")
    config = G3Config.load(mine)
    assert (config.aligner, config.index) == ("checkpoints/g3", "/abs/index")
    # a mapping has no file: its paths are taken as written
    assert G3Config.load({"aligner": "aligner", "index": "x"}).aligner == "aligner"


def test_a_config_with_relative_paths_runs_from_another_folder(
    tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = tmp_path / "setup"
    setup.mkdir()
    for name in ("aligner", "index"):
        (setup / name).symlink_to(tiny_assets / name)
    config = setup / "my.yaml"
    config.write_text(
        f"extends: {TINY}\naligner: aligner\nindex: ./index\npipeline: {{mode: retrieval}}\nlmm: {{backend: none}}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with G3.from_config(config) as g3:
        p = g3.locate(np.full((32, 32, 3), 90, np.uint8))
    assert p.source == "retrieval" and -90 <= p.lat <= 90
