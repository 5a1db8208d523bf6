"""Models: location encoders, the geo-aligner (CLIP + G3 heads), checkpoint loading."""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.models.aligner import AlignmentLoss, GeoAligner, ImageEmbeddings
    from g3.models.config import AlignerConfig, LocationEncoderSpec, LossWeights
    from g3.models.location_encoder import LocationEncoder, RFFEncoderConfig
    from g3.models.spherical_harmonics import SphericalHarmonicsConfig, SphericalHarmonicsEncoder

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.models.aligner": ("AlignmentLoss", "GeoAligner", "ImageEmbeddings"),
    "g3.models.config": ("AlignerConfig", "LocationEncoderSpec", "LossWeights"),
    "g3.models.location_encoder": ("LocationEncoder", "RFFEncoderConfig"),
    "g3.models.spherical_harmonics": ("SphericalHarmonicsConfig", "SphericalHarmonicsEncoder"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
