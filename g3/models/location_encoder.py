"""GeoCLIP-style location encoder: random Fourier features at several scales, one MLP branch each, summed.

Parameter names mirror GeoCLIP's ``LocationEncoder`` (``LocEnc{i}.capsule.{0.b,1,3,5}``,
``LocEnc{i}.head.0``) so that GeoCLIP's shipped weights and the location encoder inside G3's checkpoint
load without renaming.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from g3.geo import Projection, project


class RFFEncoderConfig(BaseModel):
    """Configuration of `LocationEncoder`. Defaults are GeoCLIP's; G3 uses the Mercator projection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["rff"] = "rff"
    projection: Projection = "mercator"
    sigmas: tuple[float, ...] = Field(default=(2.0**0, 2.0**4, 2.0**8), min_length=1)
    rff_features: int = Field(default=256, gt=0, description="frequencies per branch (2x features)")
    hidden_dim: int = Field(default=1024, gt=0)
    hidden_layers: int = Field(default=3, ge=1)
    out_dim: int = Field(default=512, gt=0)
    seed: int = Field(default=0, description="seed of the random frequency matrices")


class GaussianFourierFeatures(nn.Module):
    """γ(v) = [cos(2π v Bᵀ), sin(2π v Bᵀ)] with B ~ N(0, σ²) fixed (a buffer, not trained).

    Input ``(N, 2)``, output ``(N, 2 * features)``.
    """

    def __init__(self, sigma: float, features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("b", torch.randn((features, 2), generator=generator) * sigma)
        self.b: torch.Tensor

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class _Branch(nn.Module):
    """One scale: Fourier features → ``hidden_layers`` × (Linear, ReLU) → Linear to ``out_dim``."""

    def __init__(self, sigma: float, config: RFFEncoderConfig, generator: torch.Generator) -> None:
        super().__init__()
        layers: list[nn.Module] = [GaussianFourierFeatures(sigma, config.rff_features, generator)]
        width = 2 * config.rff_features
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.ReLU()]
            width = config.hidden_dim
        self.capsule = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(width, config.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.capsule(x))


class LocationEncoder(nn.Module):
    """Embed GPS points: ``(N, 2)`` (lat, lon) in degrees → ``(N, out_dim)`` (512 by default).

    The points are projected (Mercator as in G3, or Equal Earth as in GeoCLIP), encoded by one
    Fourier-feature branch per σ (coarse to fine scales) and the branch outputs are summed.
    """

    def __init__(self, config: RFFEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or RFFEncoderConfig()
        generator = torch.Generator().manual_seed(self.config.seed)
        for i, sigma in enumerate(self.config.sigmas):
            self.add_module(f"LocEnc{i}", _Branch(sigma, self.config, generator))

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        x = project(latlon, self.config.projection)
        branches = [self.get_submodule(f"LocEnc{i}") for i in range(len(self.config.sigmas))]
        out = branches[0](x)
        for branch in branches[1:]:
            out = out + branch(x)
        return out
