"""The configurations ship in the package and are found by name from any folder; the default (``paper``) names
G3's published model as ``official://`` folders under the cache folder and, while they are not fetched, says
which command gets them — before any model is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from g3.agent import G3, G3Config
from g3.agent.config import ConfigError, config_file, with_lmm
from g3.agent.official import default_official_dir, official_path
from g3.configs import CONFIG_DIR, config_names, shipped_config
from g3.errors import AssetMissingError

ROOT = Path(__file__).resolve().parents[1]
G3_BIN = shutil.which("g3") or str(Path(sys.executable).with_name("g3"))
PHOTO = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))[0]


def test_names_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_file("tiny") == CONFIG_DIR / "tiny.yaml"
    assert config_file("eval/zero_shot") == CONFIG_DIR / "eval" / "zero_shot.yaml"
    assert config_file("eval/tiny/g3.yaml") == CONFIG_DIR / "eval" / "tiny" / "g3.yaml"
    assert G3Config.load("eval/gallery").pipeline.mode == "gallery"
    assert {"paper", "tiny", "eval/g3", "eval/tiny/g3"} <= set(config_names())
    assert shipped_config("../pyproject") is None and shipped_config("") is None
    # the repository's configs/ is the package's folder (one copy of each file)
    assert (ROOT / "configs").resolve() == CONFIG_DIR

    (tmp_path / "tiny").write_text("aligner: tiny://aligner\nindex: tiny://index\nnote: mine\n")
    assert G3Config.load("tiny").note == "mine"  # a file of that name here wins over the shipped one
    with pytest.raises(ConfigError, match=r"no configuration 'papr'.*paper, tiny"):
        G3Config.load("papr")


def test_files_extend_shipped_configurations_by_name_and_bundles_load_as_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: paper\naligner: ./aligner\nindex: ./index\n")
    config = G3Config.load(mine)
    assert config.aligner == str(tmp_path / "aligner") and config.ensemble == G3Config.load("paper").ensemble
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "g3.yaml").write_text("extends: tiny\nnote: a bundle\n")
    monkeypatch.chdir(tmp_path)
    assert G3Config.load("bundle").note == "a bundle"


def test_the_package_data_ships_every_configuration() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["g3.configs"]
    shipped = {p for pattern in globs for p in CONFIG_DIR.glob(pattern)}
    assert shipped == set(CONFIG_DIR.rglob("*.yaml")) and len(shipped) >= 19


def test_the_paper_setting_points_at_the_fetched_bundle_not_into_the_package(tmp_path: Path) -> None:
    paper = G3Config.load("paper")
    assert (paper.aligner, paper.index) == ("official://aligner", "official://index")
    assert G3Config().aligner == paper.aligner and G3Config().index == paper.index  # the defaults are the paper's
    assert official_path(paper.aligner, tmp_path) == tmp_path / "official" / "aligner"
    assert default_official_dir().parent != CONFIG_DIR.parent
    with pytest.raises(AssetMissingError, match=r"g3 fetch official.*--config tiny"):
        G3.from_config(paper.model_copy(update={"cache_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="official://aligner"):
        official_path("official://nope")


def test_the_paper_setting_runs_once_its_folders_are_there(tiny_assets: Path, tmp_path: Path) -> None:
    official = tmp_path / "official"
    official.mkdir()
    for name in ("aligner", "index"):
        (official / name).symlink_to(tiny_assets / name)
    paper = G3Config.load("paper")
    config = with_lmm(paper, model="tiny://llava").model_copy(update={"cache_dir": str(tmp_path)})
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"mode": "retrieval"})})
    with G3.from_config(config) as g3:
        p = g3.locate(np.full((32, 32, 3), 90, np.uint8))
    assert p.source == "retrieval" and -90 <= p.lat <= 90


def test_the_lmm_named_on_the_command_line_replaces_the_configured_one() -> None:
    paper = G3Config.load("paper")
    served = with_lmm(paper, url="http://10.0.0.5:8000/v1")
    assert (served.lmm.backend, served.lmm.base_url, served.lmm.model) == (
        "openai", "http://10.0.0.5:8000/v1", paper.lmm.model
    )  # fmt: skip
    assert with_lmm(paper, url="http://h:1/v1", model="served-name").lmm.model == "served-name"
    in_process = with_lmm(paper, model="Qwen/Qwen2-VL-2B-Instruct")
    assert (in_process.lmm.backend, in_process.lmm.base_url) == ("vllm", None)
    assert with_lmm(paper, model="tiny://llava").lmm.backend == "transformers"
    assert with_lmm(paper) is paper and served.ensemble == paper.ensemble and served.verify == paper.verify
    with pytest.raises(ConfigError, match="not an http"):
        with_lmm(paper, url="127.0.0.1:8000")


def test_locate_without_a_config_names_the_fetch_command_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "G3_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([G3_BIN, "locate", str(PHOTO)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert done.returncode == 2 and "g3 fetch official" in done.stderr, done.stderr
    assert str(tmp_path / "cache" / "official" / "aligner") in done.stderr
    assert elapsed < 20  # no model was imported (about half a second here)
