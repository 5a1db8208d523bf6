"""Evaluation: accuracy at distance thresholds, GeoScore, Recall vs Area, and scoring prediction files.

Every report states its distance convention (``"geodesic-lt"``, G3's, or ``"haversine-le"``,
GeoEstimation/GeoCLIP's); see `g3.evaluation.metrics`.
"""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
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
    from g3.evaluation.scoring import COLUMN_SPELLINGS, resolve_columns, score_predictions, stored_summary_mismatches

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.evaluation.metrics": (
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
        "summarize",
        "threshold_key",
    ),
    "g3.evaluation.scoring": ("COLUMN_SPELLINGS", "resolve_columns", "score_predictions", "stored_summary_mismatches"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
