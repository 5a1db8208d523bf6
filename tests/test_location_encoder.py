from __future__ import annotations

import importlib.util

import pytest
import torch

from g3.errors import CheckpointError
from g3.models import LocationEncoder, RFFEncoderConfig
from g3.models.geoclip_weights import (
    geoclip_weights_path,
    load_geoclip_gallery,
    load_geoclip_location_encoder,
)

needs_geoclip = pytest.mark.skipif(
    importlib.util.find_spec("geoclip") is None,
    reason="geoclip not installed (pip install --no-deps geoclip)",
)


def random_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, generator=g) * 180 - 90, torch.rand(n, generator=g) * 360 - 180], dim=1)


def test_shapes_and_parameter_names_follow_geoclip() -> None:
    enc = LocationEncoder()
    out = enc(random_points(7, 0))
    assert out.shape == (7, 512)
    names = set(enc.state_dict())
    assert "LocEnc0.capsule.0.b" in names and "LocEnc2.head.0.weight" in names
    assert {n for n in names if n.startswith("LocEnc1.capsule.")} == {
        "LocEnc1.capsule.0.b",
        *(f"LocEnc1.capsule.{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")),
    }
    # the Fourier frequencies are fixed, not trained
    assert all("capsule.0.b" not in n for n, _ in enc.named_parameters())
    assert enc.get_buffer("LocEnc2.capsule.0.b").shape == (256, 2)


def test_frequency_scales_follow_sigmas_and_seed() -> None:
    enc = LocationEncoder(RFFEncoderConfig(sigmas=(1.0, 100.0), rff_features=2048, seed=3))
    stds = [enc.get_buffer(f"LocEnc{i}.capsule.0.b").std().item() for i in range(2)]
    assert stds[0] == pytest.approx(1.0, rel=0.1) and stds[1] == pytest.approx(100.0, rel=0.1)
    again = LocationEncoder(RFFEncoderConfig(sigmas=(1.0, 100.0), rff_features=2048, seed=3))
    assert torch.equal(enc.get_buffer("LocEnc1.capsule.0.b"), again.get_buffer("LocEnc1.capsule.0.b"))


def test_projection_is_selectable() -> None:
    torch.manual_seed(0)
    merc = LocationEncoder(RFFEncoderConfig(projection="mercator", hidden_dim=32, rff_features=16))
    ee = LocationEncoder(RFFEncoderConfig(projection="equal_earth", hidden_dim=32, rff_features=16))
    ee.load_state_dict(merc.state_dict())
    pts = random_points(5, 1)
    assert not torch.allclose(merc(pts), ee(pts))


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        RFFEncoderConfig(sigma=[1, 2])  # type: ignore[call-arg]


@needs_geoclip
def test_reproduces_geoclip_pretrained_location_encoder_exactly() -> None:
    """Real weights: our encoder with GeoCLIP's shipped weights equals GeoCLIP's own encoder."""
    import geoclip

    reference = geoclip.LocationEncoder().eval()
    ours = load_geoclip_location_encoder(projection="equal_earth")
    points = random_points(1000, 42)
    with torch.no_grad():
        diff = (reference(points) - ours(points)).abs().max().item()
    assert diff <= 1e-5
    # and the poles, the antimeridian and the origin
    edge = torch.tensor([[90.0, 0.0], [-90.0, 180.0], [0.0, -180.0], [0.0, 0.0]])
    with torch.no_grad():
        assert (reference(edge) - ours(edge)).abs().max().item() <= 1e-5


@needs_geoclip
def test_geoclip_weights_load_with_mercator_and_gallery() -> None:
    enc = load_geoclip_location_encoder(projection="mercator")
    assert enc.config.projection == "mercator" and not enc.training
    assert geoclip_weights_path().name == "location_encoder_weights.pth"
    gallery = load_geoclip_gallery()
    assert gallery.shape == (100_000, 2)
    assert (abs(gallery[:, 0]) <= 90).all() and (abs(gallery[:, 1]) <= 180).all()


def test_wrong_weight_shapes_are_refused_with_the_key() -> None:
    from g3.models.checkpoint import load_checked

    enc = LocationEncoder(RFFEncoderConfig(hidden_dim=32, rff_features=16))
    state = enc.state_dict()
    state["LocEnc1.capsule.3.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"LocEnc1\.capsule\.3\.weight: checkpoint has \(3, 3\)"):
        load_checked(enc, state, source="test.pth")
