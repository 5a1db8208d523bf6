"""Geo-verification: choose the final answer among a query's candidate locations.

* `g3.verify.scoring`: the fixed rules (G3's embedding cosine, consensus, retrieval score) and `verify`;
* `g3.verify.pools`: candidate pools as JSON lines (`Pool`, `read_pools`, `pool_line`), the format that
  evaluation runs write and `g3 verify fit` learns from.
"""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.verify.pools import (
        Pool,
        PoolCandidate,
        parse_pool,
        pool_from_candidates,
        pool_line,
        read_pools,
        write_pools,
    )
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
    "Candidate",
    "Kernel",
    "Pool",
    "PoolCandidate",
    "ScoredCandidate",
    "VerifyConfig",
    "consensus_scores",
    "consensus_select",
    "embedding_scores",
    "parse_pool",
    "pool_from_candidates",
    "pool_line",
    "read_pools",
    "verify",
    "write_pools",
]
