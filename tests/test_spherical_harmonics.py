"""Tests of the spherical-harmonic + SIREN location encoder (g3.models.spherical_harmonics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.legendre import leggauss, legval
from pydantic import ValidationError

from g3.models.spherical_harmonics import (
    Siren,
    SirenLayer,
    SphericalHarmonicsConfig,
    SphericalHarmonicsEncoder,
    spherical_harmonics,
)


def _random_points(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lat = torch.rand(n, generator=g, dtype=torch.float64) * 180 - 90
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    return torch.stack((lat, lon), dim=-1).to(dtype)


def _unit_vectors(latlon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lat, lon = torch.deg2rad(latlon.to(torch.float64)).unbind(-1)
    return torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)


@pytest.mark.parametrize("degree", [1, 2, 5, 10, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(degree: int, dtype: torch.dtype) -> None:
    out = spherical_harmonics(_random_points(7, dtype=dtype), degree)
    assert out.shape == (7, degree**2)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        spherical_harmonics(_random_points(3), 0)
    with pytest.raises(ValueError):
        spherical_harmonics(torch.zeros(3, 3), 4)


def test_orthonormal_over_the_sphere() -> None:
    degree = 10
    # Gauss–Legendre in z = sin(lat) is exact for the polynomial-in-z parts; the uniform longitude grid
    # is exact for trigonometric polynomials of order < n_lon.
    nodes, weights = leggauss(2 * degree)
    n_lon = 4 * degree
    lat = np.degrees(np.arcsin(nodes))
    lon = np.arange(n_lon) * 360.0 / n_lon - 180.0
    grid_lat, grid_lon = np.meshgrid(lat, lon, indexing="ij")
    points = torch.from_numpy(np.stack((grid_lat.ravel(), grid_lon.ravel()), axis=-1))
    y = spherical_harmonics(points, degree).numpy()
    w = np.repeat(weights, n_lon) * (2 * math.pi / n_lon)
    gram = y.T @ (y * w[:, None])
    np.testing.assert_allclose(gram, np.eye(degree**2), atol=1e-8)


def test_low_degree_closed_forms() -> None:
    points = torch.cat((_random_points(50), torch.tensor([[90.0, 12.0], [-90.0, -40.0], [0.0, 180.0]])))
    x, y, z = _unit_vectors(points)
    out = spherical_harmonics(points, 3)
    c1 = math.sqrt(3 / (4 * math.pi))
    c2 = math.sqrt(15 / (4 * math.pi))
    expected = torch.stack(
        [
            torch.full_like(x, 1 / (2 * math.sqrt(math.pi))),  # l=0
            c1 * y,  # l=1, m=-1
            c1 * z,  # l=1, m=0: sqrt(3/(4π)) sin(lat)
            c1 * x,  # l=1, m=1
            c2 * x * y,  # l=2, m=-2
            c2 * y * z,  # l=2, m=-1
            0.25 * math.sqrt(5 / math.pi) * (3 * z**2 - 1),  # l=2, m=0
            c2 * x * z,  # l=2, m=1
            0.5 * c2 * (x**2 - y**2),  # l=2, m=2
        ],
        dim=-1,
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [6, 25, 40])
def test_addition_theorem(degree: int) -> None:
    """Σ_m Y_l^m(a) Y_l^m(b) = (2l+1)/(4π) P_l(a·b), whatever the sign convention."""
    a, b = _random_points(30, seed=1), _random_points(30, seed=2)
    ya, yb = spherical_harmonics(a, degree), spherical_harmonics(b, degree)
    (xa, ya_, za), (xb, yb_, zb) = _unit_vectors(a), _unit_vectors(b)
    cos_angle = (xa * xb + ya_ * yb_ + za * zb).numpy()
    for l in range(degree):  # noqa: E741
        block = slice(l * l, (l + 1) ** 2)
        got = (ya[:, block] * yb[:, block]).sum(-1).numpy()
        coeffs = np.zeros(l + 1)
        coeffs[l] = 1.0
        expected = (2 * l + 1) / (4 * math.pi) * legval(cos_angle, coeffs)
        np.testing.assert_allclose(got, expected, atol=1e-9 * (2 * l + 1))


@pytest.mark.parametrize("pole", [90.0, -90.0])
def test_poles_independent_of_longitude_and_finite_gradients(pole: float) -> None:
    lon = torch.linspace(-180, 180, 37, dtype=torch.float64)
    points = torch.stack((torch.full_like(lon, pole), lon), dim=-1).requires_grad_(True)
    out = spherical_harmonics(points, 12)
    assert torch.isfinite(out).all()
    assert torch.equal(out, out[:1].expand_as(out))
    # only m = 0 is non-zero at a pole
    m0 = [deg * deg + deg for deg in range(12)]
    assert out[:, m0].abs().min() > 0
    others = torch.ones(144, dtype=torch.bool)
    others[m0] = False
    assert torch.equal(out[:, others], torch.zeros_like(out[:, others]))

    weights = torch.randn(144, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), points)
    assert torch.isfinite(grad).all()


def test_gradients_match_finite_differences_including_poles_and_equator() -> None:
    points = torch.tensor(
        [[90.0, 10.0], [-90.0, 75.0], [0.0, 0.0], [0.0, -120.0], [45.0, 33.0], [-89.99, 179.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    assert torch.autograd.gradcheck(lambda p: spherical_harmonics(p, 6), (points,), eps=1e-6, atol=1e-6)


def _config(**kwargs: object) -> SphericalHarmonicsConfig:
    return SphericalHarmonicsConfig.model_validate({"degree": 5, "hidden_dim": 32, "out_dim": 16, **kwargs})


def test_config_defaults_and_validation() -> None:
    c = SphericalHarmonicsConfig()
    assert (c.kind, c.degree, c.hidden_dim, c.hidden_layers, c.out_dim) == (
        "spherical_harmonics",
        10,
        256,
        2,
        512,
    )
    assert (c.w0, c.w0_initial, c.seed) == (1.0, 30.0, 0)
    for bad in ({"degree": 0}, {"degree": 41}, {"hidden_layers": 0}, {"w0": 0.0}, {"sigmas": [1.0]}):
        with pytest.raises(ValidationError):
            SphericalHarmonicsConfig.model_validate(bad)
    with pytest.raises(ValidationError):
        SphericalHarmonicsConfig.model_validate({"kind": "rff"})


def test_encoder_output_shape_and_dtype() -> None:
    encoder = SphericalHarmonicsEncoder(_config())
    assert encoder.out_dim == 16
    out = encoder(_random_points(9, dtype=torch.float32))
    assert out.shape == (9, 16)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert SphericalHarmonicsEncoder().out_dim == 512


def test_encoder_is_deterministic_from_its_seed_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = SphericalHarmonicsEncoder(_config()), SphericalHarmonicsEncoder(_config())
    c = SphericalHarmonicsEncoder(_config(seed=1))
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa)
    points = _random_points(5, dtype=torch.float32)
    assert torch.equal(a(points), b(points))


def test_gradients_reach_every_parameter() -> None:
    encoder = SphericalHarmonicsEncoder(_config(hidden_layers=3))
    encoder(_random_points(64, dtype=torch.float32)).square().sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_siren_initialisation_bounds() -> None:
    config = _config(hidden_layers=3, w0=2.0, w0_initial=30.0)
    siren = SphericalHarmonicsEncoder(config).siren
    assert isinstance(siren, Siren)
    layers = list(siren.layers)
    assert len(layers) == 3
    assert all(isinstance(layer, SirenLayer) for layer in layers)
    first = layers[0]
    assert isinstance(first, SirenLayer)
    assert first.w0 == 30.0
    assert first.linear.in_features == 25
    assert first.linear.weight.abs().max() <= 1 / 25
    for layer in layers[1:]:
        assert isinstance(layer, SirenLayer)
        assert layer.w0 == 2.0
        bound = math.sqrt(6 / 32) / 2.0
        assert layer.linear.weight.abs().max() <= bound
        # uniform over the whole range, not a narrower default init
        assert layer.linear.weight.abs().max() > 0.9 * bound
    assert siren.last.out_features == 16
    assert siren.last.weight.abs().max() <= math.sqrt(6 / 32) / 2.0


def test_siren_layer_computes_sine_of_scaled_affine_map() -> None:
    layer = SirenLayer(4, 3, 5.0, is_first=False, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    expected = torch.sin(5.0 * (x @ layer.linear.weight.T + layer.linear.bias))
    torch.testing.assert_close(layer(x), expected)
