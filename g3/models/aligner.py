"""`GeoAligner`: frozen CLIP plus G3's alignment heads, mapping images, text and GPS into shared spaces.

Three views of an image (each L2-normalised, ``D`` = CLIP's projection width, 768 for ViT-L/14):

* ``clip``          the raw CLIP image embedding;
* ``text_aligned``  image → text-aligned space (trained against location captions);
* ``gps_aligned``   image → GPS-aligned space (trained against the location encoder).

Their concatenation (``3·D`` = 2304) is the retrieval key of the geo index. GPS points go through the
location encoder and the location head into the GPS-aligned space; captions through CLIP's text tower
and the text head into the text-aligned space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from g3.geo import validate_latlon
from g3.models.config import AlignerConfig
from g3.models.location_encoder import LocationEncoder, RFFEncoderConfig
from g3.models.spherical_harmonics import SphericalHarmonicsEncoder

if TYPE_CHECKING:
    from PIL import Image
    from transformers import CLIPModel


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """G3's projection head: Linear → ReLU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def build_location_encoder(config: AlignerConfig) -> LocationEncoder | SphericalHarmonicsEncoder:
    """Instantiate the location encoder named by ``config.location_encoder.kind``."""
    spec = config.location_encoder
    if isinstance(spec, RFFEncoderConfig):
        return LocationEncoder(spec)
    return SphericalHarmonicsEncoder(spec)


@dataclass(frozen=True)
class ImageEmbeddings:
    """The three L2-normalised views of a batch of images, each ``(N, D)``."""

    clip: torch.Tensor
    text_aligned: torch.Tensor
    gps_aligned: torch.Tensor

    @property
    def key(self) -> torch.Tensor:
        """Retrieval key ``(N, 3·D)``: the three views concatenated (unit-norm views, norm √3)."""
        return torch.cat([self.clip, self.text_aligned, self.gps_aligned], dim=-1)


@dataclass(frozen=True)
class AlignmentLoss:
    """Total training loss and its weighted-in parts (unweighted symmetric InfoNCE values)."""

    total: torch.Tensor
    image_text: torch.Tensor
    image_gps: torch.Tensor
    text_gps: torch.Tensor | None


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss between row-aligned unit vectors ``a`` (N, D) and ``b`` (N, D): mean of both directions."""
    logits = logit_scale * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class GeoAligner(nn.Module):
    """Frozen CLIP + G3 heads. Build with `GeoAligner.from_clip` or load with `GeoAligner.from_pretrained`.

    The constructor does no I/O: it takes an already built ``CLIPModel``. The CLIP weights are frozen
    (``requires_grad=False``, kept in eval mode); heads, location encoder and temperatures train.
    ``image_processor`` and ``tokenizer`` are attached by the loaders for convenience methods that take
    PIL images or strings.
    """

    def __init__(
        self,
        config: AlignerConfig,
        clip: CLIPModel,
        *,
        image_processor: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        self.clip.requires_grad_(False)
        self.clip.eval()
        dim = self.embed_dim
        self.image_text_head = mlp_head(dim, dim, dim)
        self.text_head = mlp_head(dim, dim, dim)
        self.image_gps_head = mlp_head(dim, dim, dim)
        self.location_encoder = build_location_encoder(config)
        loc_dim = self.location_encoder.out_dim
        self.location_head = mlp_head(loc_dim, config.location_head_hidden_dim or loc_dim, dim)
        init = torch.tensor(float(config.logit_scale_init))
        self.logit_scale_text = nn.Parameter(init.clone())
        self.logit_scale_gps = nn.Parameter(init.clone())
        # The text↔GPS temperature trains only when its loss term is on (DDP rejects unused parameters).
        self.logit_scale_text_gps = nn.Parameter(init.clone(), requires_grad=config.loss_weights.text_gps > 0)
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_clip(cls, config: AlignerConfig | None = None, *, seed: int | None = None) -> GeoAligner:
        """Load CLIP from ``config.clip`` (hub id or local folder) and add freshly initialised heads."""
        from g3.models.clip import load_clip

        config = config or AlignerConfig()
        clip, processor, tokenizer = load_clip(config.clip)
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            return cls(config, clip, image_processor=processor, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, *, clip_source: str | None = None) -> GeoAligner:
        """Load a g3 aligner checkpoint folder (see `g3.models.checkpoint.save_aligner`)."""
        from g3.models.checkpoint import load_aligner

        return load_aligner(path, clip_source=clip_source)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the configuration and all weights; see `g3.models.checkpoint.aligner_fingerprint`."""
        from g3.models.checkpoint import aligner_fingerprint

        return aligner_fingerprint(self)

    def save_pretrained(self, path: str, *, include_clip: bool = True) -> None:
        """Save config + safetensors weights (+ the CLIP folder unless ``include_clip=False``)."""
        from g3.models.checkpoint import save_aligner

        save_aligner(self, path, include_clip=include_clip)

    # -- properties -------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of every aligned space (CLIP's projection width)."""
        return int(self.clip.config.projection_dim)  # type: ignore[arg-type]

    @property
    def key_dim(self) -> int:
        """Width of the retrieval key, ``3·D``."""
        return 3 * self.embed_dim

    @property
    def text_max_length(self) -> int:
        """Token limit of captions: the configured limit within CLIP's position table."""
        positions = self.clip.config.text_config.max_position_embeddings  # type: ignore[union-attr]
        return min(self.config.text_max_length, int(positions))

    @property
    def device(self) -> torch.device:
        return self.logit_scale_text.device

    def train(self, mode: bool = True) -> GeoAligner:
        super().train(mode)
        self.clip.eval()  # frozen: no dropout, whatever the mode of the heads
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of everything but CLIP: heads, location encoder (incl. its fixed buffers), temperatures."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    # -- preprocessing ----------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images → CLIP pixel values ``(N, 3, H, W)`` with the attached image processor."""
        if self.image_processor is None:
            raise RuntimeError("no image processor attached; load the aligner with from_clip/from_pretrained")
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``input_ids`` / ``attention_mask`` padded to ``config.text_max_length``."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached; load the aligner with from_clip/from_pretrained")
        positions = self.clip.config.text_config.max_position_embeddings  # type: ignore[union-attr]
        limit = min(self.config.text_max_length, int(positions))
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    # -- encoders ---------------------------------------------------------------------------------

    def clip_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) CLIP image embeddings ``(N, D)``; no gradient flows into frozen CLIP."""
        with torch.no_grad():
            pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
            return self.clip.visual_projection(pooled)

    def clip_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) CLIP text embeddings ``(N, D)``."""
        with torch.no_grad():
            pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return self.clip.text_projection(pooled)

    def embed_image_features(self, features: torch.Tensor) -> ImageEmbeddings:
        """The three normalised views from raw CLIP image features ``(N, D)``."""
        return ImageEmbeddings(
            clip=F.normalize(features, dim=-1),
            text_aligned=F.normalize(self.image_text_head(features), dim=-1),
            gps_aligned=F.normalize(self.image_gps_head(features), dim=-1),
        )

    def encode_image(self, images: torch.Tensor | Sequence[Image.Image]) -> ImageEmbeddings:
        """Images (pixel values ``(N, 3, H, W)`` or PIL images) → `ImageEmbeddings`, each ``(N, D)``."""
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return self.embed_image_features(self.clip_image_features(pixels.to(self.device)))

    def encode_text(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Captions (strings or tokenizer output) → text-aligned embeddings ``(N, D)``, unit norm."""
        enc = self.tokenize(texts) if not isinstance(texts, dict) else texts
        features = self.clip_text_features(enc["input_ids"], enc["attention_mask"])
        return F.normalize(self.text_head(features), dim=-1)

    def encode_gps(self, latlon: torch.Tensor | Sequence[Sequence[float]], *, validate: bool = True) -> torch.Tensor:
        """GPS points ``(N, 2)`` (lat, lon) in degrees → GPS-aligned embeddings ``(N, D)``, unit norm.

        Raises `g3.errors.InvalidCoordinatesError` for NaN/inf/out-of-range input unless
        ``validate=False`` (for coordinates already checked, e.g. from a loaded corpus).
        """
        if validate:
            validate_latlon(latlon, what="encode_gps input")
        points = torch.as_tensor(latlon, dtype=torch.float32, device=self.device)
        return F.normalize(self.location_head(self.location_encoder(points)), dim=-1)

    # -- training ---------------------------------------------------------------------------------

    def _scale(self, log_scale: torch.Tensor) -> torch.Tensor:
        return log_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        latlon: torch.Tensor,
    ) -> AlignmentLoss:
        """G3's geo-alignment loss on a batch: weighted symmetric InfoNCE image↔text, image↔GPS (, text↔GPS)."""
        weights = self.config.loss_weights
        image_features = self.clip_image_features(pixel_values)
        image_text = F.normalize(self.image_text_head(image_features), dim=-1)
        image_gps = F.normalize(self.image_gps_head(image_features), dim=-1)
        text = F.normalize(self.text_head(self.clip_text_features(input_ids, attention_mask)), dim=-1)
        gps = F.normalize(self.location_head(self.location_encoder(latlon.float())), dim=-1)

        loss_it = symmetric_info_nce(image_text, text, self._scale(self.logit_scale_text))
        loss_ig = symmetric_info_nce(image_gps, gps, self._scale(self.logit_scale_gps))
        total = weights.image_text * loss_it + weights.image_gps * loss_ig
        loss_tg = None
        if weights.text_gps > 0:
            loss_tg = symmetric_info_nce(text, gps, self._scale(self.logit_scale_text_gps))
            total = total + weights.text_gps * loss_tg
        return AlignmentLoss(total=total, image_text=loss_it, image_gps=loss_ig, text_gps=loss_tg)
