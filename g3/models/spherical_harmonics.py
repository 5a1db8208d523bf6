"""Spherical-harmonic location encoder with a SIREN network (Rußwurm et al., ICLR 2024).

"Geographic Location Encoding with Spherical Harmonics and Sinusoidal Representation Networks":
points on the sphere are embedded by the real orthonormal spherical harmonics of degrees ``0..L-1``
(``L²`` features), then mapped by a sinusoidal representation network (SIREN, Sitzmann et al. 2020).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class SphericalHarmonicsConfig(BaseModel):
    """Configuration of `SphericalHarmonicsEncoder`. Defaults follow the paper's SH + SIREN setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["spherical_harmonics"] = "spherical_harmonics"
    degree: int = Field(default=10, ge=1, le=40, description="L: degrees l = 0..L-1, L² features")
    hidden_dim: int = Field(default=256, gt=0)
    hidden_layers: int = Field(default=2, ge=1, description="number of sine layers")
    out_dim: int = Field(default=512, gt=0)
    w0: float = Field(default=1.0, gt=0, description="SIREN frequency of the hidden sine layers")
    w0_initial: float = Field(default=30.0, gt=0, description="SIREN frequency of the first layer")
    seed: int = Field(default=0, description="seed of the weight initialisation")


def spherical_harmonics(latlon: torch.Tensor, degree: int) -> torch.Tensor:
    """Real orthonormal spherical harmonics of degrees ``0..degree-1`` at points given in degrees.

    Args:
        latlon: ``(N, 2)`` (latitude, longitude) in degrees.
        degree: L ≥ 1; the output has ``L²`` columns.

    Returns:
        ``(N, L²)`` in the input's floating dtype (float64 inside). Column ``l² + l + m`` holds
        ``Y_l^m`` for ``0 ≤ l < L``, ``-l ≤ m ≤ l``::

            Y_l^m = √2 K_l^m P_l^|m|(sin φ) cos(m λ)     m > 0
            Y_l^0 =    K_l^0 P_l^0(sin φ)
            Y_l^m = √2 K_l^|m| P_l^|m|(sin φ) sin(|m| λ)   m < 0

        with φ the latitude, λ the longitude, ``K_l^m = sqrt((2l+1)/(4π) · (l-m)!/(l+m)!)`` and ``P_l^m``
        the associated Legendre functions *without* the Condon–Shortley phase, so that for ``l = 1``
        the columns ``(m = -1, 0, 1)`` are ``sqrt(3/(4π)) · (y, z, x)`` of the unit vector. The functions
        are orthonormal over the unit sphere w.r.t. the surface measure.

    cos(colatitude) = sin φ and sin(colatitude) = cos φ are used directly (never ``sqrt(1 - x²)``), and
    cos φ is evaluated as ``sin(90° - |φ|)`` so that it is exactly 0 at the poles: values there do not
    depend on the longitude, and values and gradients are finite everywhere.
    """
    if degree < 1:
        raise ValueError(f"degree must be at least 1, got {degree}")
    if latlon.ndim != 2 or latlon.shape[-1] != 2:
        raise ValueError(f"expected latlon of shape (N, 2), got {tuple(latlon.shape)}")
    out_dtype = latlon.dtype if latlon.is_floating_point() else torch.get_default_dtype()
    lat, lon = latlon.to(torch.float64).unbind(-1)
    x = torch.sin(torch.deg2rad(lat))  # cos(colatitude)
    s = torch.sin(torch.deg2rad(90.0 - lat.abs()))  # sin(colatitude) = cos(lat), exactly 0 at the poles
    lam = torch.deg2rad(lon)

    columns: list[torch.Tensor | None] = [None] * degree**2
    p_mm = torch.ones_like(x)  # P_m^m, starting at P_0^0 = 1
    for m in range(degree):
        if m > 0:
            p_mm = (2 * m - 1) * s * p_mm  # P_m^m = (2m-1) sin θ P_{m-1}^{m-1}
            cos_m, sin_m = torch.cos(m * lam), torch.sin(m * lam)
        p_prev, p_l = torch.zeros_like(x), p_mm  # P_{l-1}^m, P_l^m
        for l in range(m, degree):  # noqa: E741
            if l == m + 1:
                p_prev, p_l = p_l, (2 * m + 1) * x * p_l  # P_{m+1}^m = (2m+1) cos θ P_m^m
            elif l > m + 1:
                p_prev, p_l = p_l, ((2 * l - 1) * x * p_l - (l + m - 1) * p_prev) / (l - m)
            k = math.sqrt((2 * l + 1) / (4 * math.pi)) * math.exp(
                0.5 * (math.lgamma(l - m + 1) - math.lgamma(l + m + 1))
            )
            if m == 0:
                columns[l * l + l] = k * p_l
            else:
                columns[l * l + l + m] = math.sqrt(2) * k * p_l * cos_m
                columns[l * l + l - m] = math.sqrt(2) * k * p_l * sin_m
    return torch.stack([c for c in columns if c is not None], dim=-1).to(out_dtype)


def _uniform_linear(in_dim: int, out_dim: int, bound: float, generator: torch.Generator) -> nn.Linear:
    """A Linear with weight and bias ~ U(-bound, bound) drawn from ``generator`` (not the global RNG)."""
    linear = nn.utils.skip_init(nn.Linear, in_dim, out_dim)  # skips the default init, which uses it
    with torch.no_grad():
        for p in (linear.weight, linear.bias):
            p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
    return linear


class SirenLayer(nn.Module):
    """``y = sin(w0 · (W x + b))``, ``(N, in_dim) → (N, out_dim)``, with SIREN's initialisation.

    First layer: W, b ~ U(-1/in_dim, 1/in_dim); later layers: U(-sqrt(6/in_dim)/w0, sqrt(6/in_dim)/w0).
    """

    def __init__(self, in_dim: int, out_dim: int, w0: float, *, is_first: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.w0 = w0
        bound = 1.0 / in_dim if is_first else math.sqrt(6.0 / in_dim) / w0
        self.linear = _uniform_linear(in_dim, out_dim, bound, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    """``hidden_layers`` sine layers (the first with ``w0_initial``) then a plain Linear to ``out_dim``.

    ``(N, in_dim) → (N, out_dim)``. The last Linear is initialised like a hidden sine layer.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        hidden_layers: int,
        out_dim: int,
        *,
        w0: float = 1.0,
        w0_initial: float = 30.0,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(hidden_layers):
            first = i == 0
            width = in_dim if first else hidden_dim
            w = w0_initial if first else w0
            layers.append(SirenLayer(width, hidden_dim, w, is_first=first, generator=generator))
        self.layers = nn.Sequential(*layers)
        self.last = _uniform_linear(hidden_dim, out_dim, math.sqrt(6.0 / hidden_dim) / w0, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.layers(x))


class SphericalHarmonicsEncoder(nn.Module):
    """Embed GPS points: ``(N, 2)`` (lat, lon) in degrees → ``(N, out_dim)``.

    Spherical-harmonic features (``degree²`` columns, see `spherical_harmonics`) followed by a `Siren`.
    Weights are initialised from ``config.seed`` with a private generator (the global RNG is untouched).
    """

    def __init__(self, config: SphericalHarmonicsConfig | None = None) -> None:
        super().__init__()
        self.config = config or SphericalHarmonicsConfig()
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        self.siren = Siren(
            c.degree**2,
            c.hidden_dim,
            c.hidden_layers,
            c.out_dim,
            w0=c.w0,
            w0_initial=c.w0_initial,
            generator=generator,
        )

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` (lat, lon) in degrees → ``(N, out_dim)`` in the weights' dtype."""
        weight = self.siren.last.weight
        features = spherical_harmonics(latlon, self.config.degree).to(weight.dtype)
        return self.siren(features)
