"""Loading G3's official checkpoint layout.

The official model is reproduced here from its published structure (attribute names and layer
shapes of ``utils/G3.py``) around the tiny CLIP, written as a module named ``utils.G3`` so that a whole
pickled model (``torch.save(model)``) carries the same class paths as the real ``g3.pth``.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from g3.errors import CheckpointError
from g3.models.official import load_official_g3, map_official_key

REPLICA = textwrap.dedent(
    """
    import numpy as np
    import torch
    from pyproj import Proj, Transformer
    from torch import nn
    from transformers import CLIPModel


    class GaussianEncoding(nn.Module):
        def __init__(self, sigma, input_size, encoded_size):
            super().__init__()
            self.b = nn.Parameter(torch.randn(encoded_size, input_size) * sigma, requires_grad=False)

        def forward(self, v):
            vp = 2 * np.pi * v @ self.b.T
            return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


    class LocationEncoderCapsule(nn.Module):
        def __init__(self, sigma):
            super().__init__()
            self.km = sigma
            self.capsule = nn.Sequential(
                GaussianEncoding(sigma, 2, 256), nn.Linear(512, 1024), nn.ReLU(),
                nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
            )
            self.head = nn.Sequential(nn.Linear(1024, 512))

        def forward(self, x):
            return self.head(self.capsule(x))


    class CustomLocationEncoder(nn.Module):
        def __init__(self, sigma=(2**0, 2**4, 2**8)):
            super().__init__()
            self.sigma = list(sigma)
            for i, s in enumerate(self.sigma):
                self.add_module("LocEnc" + str(i), LocationEncoderCapsule(s))
            self.transformer = Transformer.from_proj(Proj("epsg:4326"), Proj("epsg:3857"), always_xy=True)

        def forward(self, latlon):
            lat = latlon[:, 0].double().numpy()
            lon = latlon[:, 1].double().numpy()
            x, y = self.transformer.transform(lon, lat)
            loc = torch.tensor([[b, a] for a, b in zip(x, y)], dtype=torch.float32) / 20037508.3427892
            out = torch.zeros(loc.shape[0], 512)
            for i in range(len(self.sigma)):
                out += self._modules["LocEnc" + str(i)](loc)
            return out


    class G3(nn.Module):
        def __init__(self, clip_dir):
            super().__init__()
            clip = CLIPModel.from_pretrained(clip_dir)
            d = clip.config.projection_dim
            self.vision_model = clip.vision_model
            self.text_model = clip.text_model
            self.vision_projection = clip.visual_projection
            self.text_projection = clip.text_projection
            self.logit_scale1 = nn.Parameter(torch.tensor(3.99))
            self.logit_scale2 = nn.Parameter(torch.tensor(3.5))
            self.logit_scale3 = nn.Parameter(torch.tensor(3.0))
            self.location_encoder = CustomLocationEncoder()
            self.vision_projection_else_1 = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
            self.text_projection_else = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
            self.vision_projection_else_2 = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
            self.location_projection_else = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, d))

        def gps_image_embeds(self, pixel_values):
            x = self.vision_projection_else_2(self.vision_projection(self.vision_model(pixel_values)[1]))
            return x / x.norm(p=2, dim=-1, keepdim=True)

        def location_embeds(self, latlon):
            x = self.location_projection_else(self.location_encoder(latlon))
            return x / x.norm(p=2, dim=-1, keepdim=True)
    """
)


@contextmanager
def official_replica(root: Path, clip_dir: Path) -> Iterator[Any]:
    """The replica's ``G3`` model (seed 0, eval mode) over the CLIP at ``clip_dir``, imported as the official
    code imports it (``utils.G3`` from ``root/official_src``); the module is forgotten on exit."""
    pkg = root / "official_src" / "utils"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "G3.py").write_text(REPLICA)
    sys.path.insert(0, str(pkg.parent))
    try:
        torch.manual_seed(0)
        yield importlib.import_module("utils.G3").G3(str(clip_dir)).eval()
    finally:
        sys.path.remove(str(pkg.parent))
        for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
            del sys.modules[name]


@pytest.fixture()
def official_model(tmp_path: Path, tiny_clip_dir: Path) -> Iterator[Any]:
    pytest.importorskip("pyproj")
    with official_replica(tmp_path, tiny_clip_dir) as model:
        yield model


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


POINTS = torch.tensor([[48.85, 2.35], [-33.87, 151.21], [64.15, -21.94], [0.0, 0.0]])


def assert_same_model(official: torch.nn.Module, ours: torch.nn.Module) -> None:
    with torch.no_grad():
        px = pixels()
        torch.testing.assert_close(ours.encode_image(px).gps_aligned, official.gps_image_embeds(px))
        # pyproj (float64) vs torch Mercator agree to ~1e-7 before float32 rounding; the σ=256
        # Fourier branch amplifies that, hence a tolerance looser than float32 epsilon.
        torch.testing.assert_close(ours.encode_gps(POINTS), official.location_embeds(POINTS), atol=2e-4, rtol=0)
    assert ours.logit_scale_gps.item() == pytest.approx(3.5)
    assert ours.logit_scale_text_gps.item() == pytest.approx(3.0)
    assert ours.config.location_encoder.projection == "mercator"


def test_key_mapping() -> None:
    assert map_official_key("vision_projection.weight") == "clip.visual_projection.weight"
    assert map_official_key("vision_projection_else_1.0.weight") == "image_text_head.0.weight"
    assert map_official_key("vision_projection_else_2.2.bias") == "image_gps_head.2.bias"
    assert map_official_key("location_encoder.LocEnc2.capsule.0.b") == "location_encoder.LocEnc2.capsule.0.b"
    assert map_official_key("logit_scale2") == "logit_scale_gps"
    assert map_official_key("optimizer.state") is None


def test_official_state_dict_loads_and_reproduces_the_official_model(
    official_model: torch.nn.Module, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    state = official_model.state_dict()
    # DDP prefixes and the position_ids buffers older transformers saved are tolerated
    state = {f"module.{k}": v for k, v in state.items()}
    state["module.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(state, tmp_path / "g3.pth")
    ours = load_official_g3(tmp_path / "g3.pth", clip_source=str(tiny_clip_dir))
    assert_same_model(official_model, ours)


def test_state_dict_without_clip_weights_takes_clip_from_the_source(
    official_model: torch.nn.Module, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    state = {
        k: v
        for k, v in official_model.state_dict().items()
        if not k.startswith(("vision_model.", "text_model.", "vision_projection.", "text_projection."))
    }
    torch.save(state, tmp_path / "heads.pth")
    assert_same_model(official_model, load_official_g3(tmp_path / "heads.pth", clip_source=str(tiny_clip_dir)))


def test_wrong_missing_and_unknown_keys_are_named(
    official_model: torch.nn.Module, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    good = official_model.state_dict()
    path = tmp_path / "g3.pth"

    torch.save({**good, "vision_projection_else_2.0.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(CheckpointError, match=r"image_gps_head\.0\.weight: checkpoint has \(4, 4\)"):
        load_official_g3(path, clip_source=str(tiny_clip_dir))

    torch.save({k: v for k, v in good.items() if k != "location_projection_else.2.weight"}, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): location_head\.2\.weight"):
        load_official_g3(path, clip_source=str(tiny_clip_dir))

    torch.save({**good, "text_location_head.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"not part of G3's model: text_location_head\.weight"):
        load_official_g3(path, clip_source=str(tiny_clip_dir))

    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=str(path)):
        load_official_g3(path, clip_source=str(tiny_clip_dir))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_g3(tmp_path / "absent.pth", clip_source=str(tiny_clip_dir))


def test_whole_pickled_model_needs_trust_and_then_loads(
    official_model: torch.nn.Module, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    path = tmp_path / "g3.pth"
    torch.save(official_model, path)
    # make the official classes unimportable, as they are for a g3 user
    saved_path = list(sys.path)
    sys.path[:] = [p for p in sys.path if not p.endswith("official_src")]
    hidden = {m: sys.modules.pop(m) for m in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]}
    try:
        with pytest.raises(CheckpointError, match="trust_pickle=True"):
            load_official_g3(path, clip_source=str(tiny_clip_dir))
        ours = load_official_g3(path, clip_source=str(tiny_clip_dir), trust_pickle=True)
    finally:
        sys.path[:] = saved_path
        sys.modules.update(hidden)
    assert "utils" not in {m.split(".")[0] for m in sys.modules if m not in hidden}
    assert_same_model(official_model, ours)
