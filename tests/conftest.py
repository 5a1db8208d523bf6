"""Shared fixtures: tiny random CLIP folders built offline, small aligner configurations."""

from __future__ import annotations

import os

# No test may reach a model hub: fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
from g3.models.tiny import build_tiny_clip

if TYPE_CHECKING:
    from g3.agent import G3

#: The repository's root (configs/ lives there).
REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """The project's shared real data: $G3_SHARED_DATA, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("G3_SHARED_DATA", ""), Path(__file__).resolve().parents[2] / "shared" / "data"]
    candidates.append("/work/shared/data")  # where the workplace keeps it when CI clones elsewhere
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), Path(candidates[1]))


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (32×32 images, 32-d embeddings) saved like a hub checkpoint."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def small_rff() -> RFFEncoderConfig:
    """A narrow GeoCLIP-style location encoder, quick on CPU."""
    return RFFEncoderConfig(rff_features=32, hidden_dim=64, out_dim=64)


@pytest.fixture()
def tiny_aligner(tiny_clip_dir: Path, small_rff: RFFEncoderConfig) -> GeoAligner:
    return GeoAligner.from_clip(AlignerConfig(clip=str(tiny_clip_dir), location_encoder=small_rff), seed=0)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny assets (aligner, index, LLaVA), built once per test session in a temporary cache."""
    from g3.agent.tiny import ensure_tiny_assets

    return ensure_tiny_assets(tmp_path_factory.mktemp("g3-cache"))


@pytest.fixture(scope="session")
def tiny_g3(tiny_assets: Path) -> Iterator[G3]:
    """The shipped tiny setting (configs/tiny.yaml) over the session's tiny assets, built once per session."""
    from g3.agent import G3, G3Config

    config = G3Config.load(REPO / "configs" / "tiny.yaml").model_copy(update={"cache_dir": str(tiny_assets.parent)})
    with G3.from_config(config) as g3:
        yield g3
