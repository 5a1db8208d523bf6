"""A finished query's candidate pool (`g3.verify.Pool`): what `g3 verify fit` learns from and a ranker scores.

The pool holds every candidate the verification step chose from, with where it came from (the prompt and
answer index of a generated one, the rank and similarity of a retrieved or gallery one), the retrieved
neighbours' locations (best first), and G3's two vectors: the photo's GPS-aligned embedding and each
candidate's location embedding, so that the cosine rule (and the features built on it) can be computed
later without the models. Vector components are rounded to 7 decimals (unit vectors: a cosine moves by
1.5e-6 at most), which keeps a line of 21 candidates × 768 values near 180 kB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from g3.verify import Candidate, Pool, pool_from_candidates

if TYPE_CHECKING:
    from g3.models import GeoAligner

#: Decimals kept of each embedding component.
EMBEDDING_DECIMALS = 7


def _rounded(vectors: np.ndarray) -> list[Any]:
    return np.round(np.asarray(vectors, dtype=np.float64), EMBEDDING_DECIMALS).tolist()  # type: ignore[no-any-return]


def location_embeddings(aligner: GeoAligner, candidates: Sequence[Candidate]) -> np.ndarray:
    """The aligner's location embeddings ``(n, D)`` of the candidates (unit vectors)."""
    import torch

    points = torch.tensor([[c.lat, c.lon] for c in candidates], dtype=torch.float32, device=aligner.device)
    with torch.inference_mode():
        return aligner.encode_gps(points, validate=False).float().cpu().numpy()  # type: ignore[no-any-return]


def state_pool(
    state: Any, aligner: GeoAligner, *, pool_id: str = "query", truth: tuple[float, float] | None = None
) -> Pool:
    """The pool of a finished graph state (`g3.agent.graph.LocateState`): its candidates, the similar
    neighbours and the photo's GPS-aligned view."""
    candidates = state["candidates"]
    similar = state.get("similar")
    views = state.get("views")
    vectors: dict[str, Any] = {}
    if views is not None:
        vectors = {
            "query_gps": _rounded(views.gps_aligned),
            "candidate_embeddings": _rounded(location_embeddings(aligner, candidates)),
        }
    neighbours = similar.coordinates if similar is not None and len(similar.coordinates) else None
    return pool_from_candidates(pool_id, candidates, truth=truth, neighbours=neighbours, **vectors)
