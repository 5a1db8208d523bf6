"""Models: location encoders, the geo-aligner (CLIP + G3 heads), checkpoint loading."""

from g3.models.aligner import AlignmentLoss, GeoAligner, ImageEmbeddings
from g3.models.config import AlignerConfig, LocationEncoderSpec, LossWeights
from g3.models.location_encoder import LocationEncoder, RFFEncoderConfig
from g3.models.spherical_harmonics import SphericalHarmonicsConfig, SphericalHarmonicsEncoder

__all__ = [
    "AlignerConfig",
    "AlignmentLoss",
    "GeoAligner",
    "ImageEmbeddings",
    "LocationEncoder",
    "LocationEncoderSpec",
    "LossWeights",
    "RFFEncoderConfig",
    "SphericalHarmonicsConfig",
    "SphericalHarmonicsEncoder",
]
