"""Configuration of the geo-alignment model (`GeoAligner`). Defaults are the paper's (G3, NeurIPS 2024)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from g3.models.location_encoder import RFFEncoderConfig
from g3.models.spherical_harmonics import SphericalHarmonicsConfig

#: Either location encoder, chosen by its ``kind`` field (``"rff"`` or ``"spherical_harmonics"``).
LocationEncoderSpec = Annotated[RFFEncoderConfig | SphericalHarmonicsConfig, Field(discriminator="kind")]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class LossWeights(BaseModel):
    """Weights of the symmetric InfoNCE terms. G3 trains image↔text and image↔GPS only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_text: float = Field(default=1.0, ge=0)
    image_gps: float = Field(default=1.0, ge=0)
    text_gps: float = Field(default=0.0, ge=0)


class AlignerConfig(BaseModel):
    """Everything that defines a `GeoAligner` besides its weights.

    The heads' width follows the CLIP model's ``projection_dim`` (768 for ViT-L/14), so only the CLIP
    source and the location side are configured here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip: str = Field(default=DEFAULT_CLIP, description="hub id or local folder of a transformers CLIPModel")
    location_encoder: LocationEncoderSpec = Field(default_factory=RFFEncoderConfig)
    location_head_hidden_dim: int | None = Field(
        default=None, gt=0, description="hidden width of the location head; None = encoder output width"
    )
    logit_scale_init: float = Field(default=3.99, description="initial log temperature (G3: 3.99, i.e. ×54)")
    logit_scale_max: float = Field(default=100.0, gt=0, description="cap on exp(logit scale), as in CLIP")
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    text_max_length: int = Field(default=77, gt=0, description="token limit of captions")
