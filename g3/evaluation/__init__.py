"""Evaluation: accuracy at distance thresholds, GeoScore, Recall vs Area, and scoring prediction files.

Every report states its distance convention (``"geodesic-lt"``, G3's, or ``"haversine-le"``,
GeoEstimation/GeoCLIP's); see `g3.evaluation.metrics`.
"""

from __future__ import annotations

from g3.evaluation.metrics import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    GEOESTIMATION_RADIUS_KM,
    GEOSCORE_SCALE_KM,
    SPHERE_AREA_KM2,
    THRESHOLDS_KM,
    Convention,
    accuracy,
    area_needed_km2,
    areas_needed_km2,
    cap_area_km2,
    distances_km,
    geoscore,
    percent_table,
    recall_at_areas,
    recall_vs_area,
    summarize,
    threshold_key,
)
from g3.evaluation.scoring import (
    COLUMN_SPELLINGS,
    resolve_columns,
    score_predictions,
    stored_summary_mismatches,
)

__all__ = [
    "COLUMN_SPELLINGS",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "GEOESTIMATION_RADIUS_KM",
    "GEOSCORE_SCALE_KM",
    "SPHERE_AREA_KM2",
    "THRESHOLDS_KM",
    "Convention",
    "accuracy",
    "area_needed_km2",
    "areas_needed_km2",
    "cap_area_km2",
    "distances_km",
    "geoscore",
    "percent_table",
    "recall_at_areas",
    "recall_vs_area",
    "resolve_columns",
    "score_predictions",
    "stored_summary_mismatches",
    "summarize",
    "threshold_key",
]
