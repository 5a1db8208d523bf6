"""Geo-verification: choose the final answer among a query's candidate locations.

* `g3.verify.scoring`: the fixed rules (G3's embedding cosine, consensus, retrieval score) and `verify`;
* `g3.verify.pools`: candidate pools as JSON lines (`Pool`, `read_pools`, `pool_line`), the format that
  evaluation runs write and `g3 verify fit` learns from;
* `g3.verify.features` (candidate features of a pool), `g3.verify.baselines` (the fixed rules over pools),
  `g3.verify.ranker` (the learned LightGBM ranker, its cross-validation and artefact) and
  `g3.verify.calibration` (its calibrated confidence).
"""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.verify.baselines import RULES
    from g3.verify.calibration import expected_calibration_error
    from g3.verify.features import FEATURES, pool_features
    from g3.verify.pools import (
        Pool,
        PoolCandidate,
        parse_pool,
        pool_from_candidates,
        pool_line,
        read_pools,
        write_pools,
    )
    from g3.verify.ranker import CVResult, Ranker, cross_validate, fit_ranker
    from g3.verify.scoring import (
        COMPONENTS,
        DEFAULT_VERIFY_CONFIG,
        Candidate,
        Kernel,
        ScoredCandidate,
        VerifyConfig,
        consensus_scores,
        consensus_select,
        embedding_scores,
        verify,
    )

#: public name → its module, imported on first use
_EXPORTS = {
    "g3.verify.baselines": ("RULES",),
    "g3.verify.calibration": ("expected_calibration_error",),
    "g3.verify.features": ("FEATURES", "pool_features"),
    "g3.verify.ranker": ("CVResult", "Ranker", "cross_validate", "fit_ranker"),
    "g3.verify.pools": (
        "Pool",
        "PoolCandidate",
        "parse_pool",
        "pool_from_candidates",
        "pool_line",
        "read_pools",
        "write_pools",
    ),
    "g3.verify.scoring": (
        "COMPONENTS",
        "DEFAULT_VERIFY_CONFIG",
        "Candidate",
        "Kernel",
        "ScoredCandidate",
        "VerifyConfig",
        "consensus_scores",
        "consensus_select",
        "embedding_scores",
        "verify",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "COMPONENTS",
    "DEFAULT_VERIFY_CONFIG",
    "FEATURES",
    "RULES",
    "CVResult",
    "Candidate",
    "Kernel",
    "Pool",
    "PoolCandidate",
    "Ranker",
    "ScoredCandidate",
    "VerifyConfig",
    "consensus_scores",
    "consensus_select",
    "cross_validate",
    "embedding_scores",
    "expected_calibration_error",
    "fit_ranker",
    "parse_pool",
    "pool_features",
    "pool_from_candidates",
    "pool_line",
    "read_pools",
    "verify",
    "write_pools",
]
