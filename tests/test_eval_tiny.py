"""Every evaluation baseline (configs/eval/*.yaml, over paper.yaml) has a tiny variant (configs/eval/tiny/,
over tiny.yaml) with the same settings, which loads and locates a photo offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from g3.agent import G3, G3Config

EVAL = Path(__file__).resolve().parents[1] / "configs" / "eval"
BASELINES = sorted(p.name for p in EVAL.glob("*.yaml"))


def own_settings(path: Path) -> tuple[str, dict]:
    """A file's ``extends`` and the settings it sets itself."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data.pop("extends"), data


def test_every_baseline_has_a_tiny_variant_with_its_settings() -> None:
    assert len(BASELINES) >= 8 and sorted(p.name for p in (EVAL / "tiny").glob("*.yaml")) == BASELINES
    for name in BASELINES:
        base, settings = own_settings(EVAL / name)
        tiny_base, tiny_settings = own_settings(EVAL / "tiny" / name)
        assert (base, tiny_base) == ("../paper.yaml", "../../tiny.yaml"), name
        assert tiny_settings == settings, f"configs/eval/tiny/{name} differs from configs/eval/{name}"


@pytest.mark.parametrize("name", BASELINES)
def test_each_tiny_baseline_locates_a_photo(name: str, tiny_assets: Path) -> None:
    config = G3Config.load(EVAL / "tiny" / name).model_copy(update={"cache_dir": str(tiny_assets.parent)})
    paper_variant = G3Config.load(EVAL / name)
    assert config.pipeline.mode == paper_variant.pipeline.mode
    assert config.pipeline.model_dump(exclude={"max_image_side"}) == paper_variant.pipeline.model_dump(
        exclude={"max_image_side"}
    )
    with G3.from_config(config) as g3:
        p = g3.locate(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert p.mode == config.pipeline.mode and p.candidates and -90 <= p.lat <= 90 and "meaningless" in (p.note or "")
    assert p.usage.prompts == (len(config.effective_ensemble.prompts) if config.pipeline.mode == "full" else 0)
