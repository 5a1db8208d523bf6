"""Validation of an aligner: image → GPS retrieval accuracy on held-out images."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from g3.data import GeoCorpus
from g3.errors import CorpusError
from g3.geo import haversine_km
from g3.models import GeoAligner

log = logging.getLogger(__name__)

#: Distance thresholds (km) of the geolocation literature: street, city, region, country, continent.
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)


@torch.no_grad()
def gps_retrieval_accuracy(
    aligner: GeoAligner,
    corpus: GeoCorpus,
    *,
    gallery: np.ndarray | None = None,
    batch_size: int = 64,
    thresholds_km: Sequence[float] = THRESHOLDS_KM,
) -> dict[str, float]:
    """Share of images whose best-matching gallery point lies within each threshold of the truth.

    Each image's GPS-aligned embedding is compared (cosine) with the location embeddings of
    ``gallery`` (``(M, 2)`` lat/lon degrees; default: the corpus's own coordinates, GeoCLIP-style
    image→GPS retrieval); the top gallery point is the prediction. Returns ``acc@{t}km`` fractions,
    ``median_km``, ``mean_km``, ``n`` (images evaluated) and ``skipped`` (unreadable images).
    """
    was_training = aligner.training
    aligner.eval()
    try:
        truth = corpus.coordinates()
        gallery = truth if gallery is None else np.asarray(gallery, dtype=np.float64)
        gallery_emb = torch.cat(
            [
                aligner.encode_gps(torch.from_numpy(gallery[i : i + 4096]).float(), validate=False)
                for i in range(0, len(gallery), 4096)
            ]
        )
        predictions, kept, skipped = [], [], 0
        for start in range(0, len(corpus), batch_size):
            images, rows = [], []
            for i in range(start, min(start + batch_size, len(corpus))):
                try:
                    images.append(corpus.read_image(i))
                    rows.append(i)
                except CorpusError as exc:
                    log.warning("validation: skipping unreadable image: %s", exc)
                    skipped += 1
            if not images:
                continue
            emb = aligner.encode_image(images).gps_aligned
            predictions.append((emb @ gallery_emb.T).argmax(dim=1).cpu().numpy())
            kept.extend(rows)
    finally:
        aligner.train(was_training)
    if not kept:
        raise CorpusError(f"no validation image could be read ({skipped} skipped)")
    best = gallery[np.concatenate(predictions)]
    true = truth[np.asarray(kept)]
    dist = haversine_km(true[:, 0], true[:, 1], best[:, 0], best[:, 1])
    result = {f"acc@{t:g}km": float(np.mean(dist <= t)) for t in thresholds_km}
    result.update(median_km=float(np.median(dist)), mean_km=float(np.mean(dist)), n=len(kept), skipped=skipped)
    return result
