"""The densest-cluster rule: consensus that keeps the precision of the retrieved photos.

`g3.verify.consensus_select` answers the candidate with the most kernel mass around it. That wins at 25 km and
beyond (agreeing answers are rarely all wrong) but loses against the top retrieved neighbour at 1 km: the
point with the most mass around it is seldom the exact one. `cluster_select` separates the two questions:

1. **where**: the densest cluster, found coarse to fine. Every candidate (mass 1) and every retrieved
   neighbour (mass ``neighbour_weight``) adds a Gaussian around itself. First the *region*: the point (a
   candidate or a neighbour) with the highest summed density at ``region_scale_km``; the region holds the
   points within ``region_radius_km`` of it (answers that agree on a country outvote a lone photo far
   away). Then, inside the region, the point with the highest density at ``scale_km`` is the cluster's
   centre, and the cluster holds the points within ``radius_km`` of it. At both levels, when the top
   retrieved photo's density is at least ``top_ratio`` times the best one, it is the centre: the
   best-ranked evidence is kept unless the others clearly gather elsewhere.
2. **which point**: the cluster's best-ranked retrieved photo (the lowest retrieval rank among its
   neighbours and retrieval candidates): a real photo's location, exact when retrieval found the place.
   A cluster with no retrieved photo answers its candidate with the most company within ``fine_km``
   (then the highest density, then the first given).

So when the top neighbour sits in the densest cluster the answer *is* the top neighbour, and the rule can
only differ from top-1 when the other evidence gathers elsewhere. Coordinates only, no model.

Defaults (`ClusterParams`, chosen on simulated pools, `bench/verify.py`): the region at a 2,500 km scale
with a 750 km radius and ``region_top_ratio`` 1 (the densest region wins; the top photo's only when it is
at least as dense), the cluster at 25 km with a 50 km radius and ``top_ratio`` 0.35 (inside the region the
top photo stays the centre unless another point is about three times as dense), ``fine_km`` 1,
``neighbour_weight`` 1.
Coordinates are ``(lat, lon)`` in degrees; distances and scales in km.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from g3.geo import pairwise_haversine_km, validate_latlon

#: Name of the rule (`RULES`).
CLUSTER = "cluster"


@dataclass(frozen=True)
class ClusterChoice:
    """What `cluster_select` chose.

    Attributes:
        lat, lon: the answer, in degrees.
        candidate: row of the candidate answered, or None when the answer is a retrieved neighbour that is not
            among the candidates (snapped to its location).
        neighbour: rank of the retrieved photo answered (its row in ``neighbours``, or a retrieval
            candidate's rank), or None when the answer is a generated candidate.
        density: ``(n,)`` each candidate's density (summed kernel mass, itself included).
        members: ``(n,)`` whether each candidate lies in the chosen cluster.
    """

    lat: float
    lon: float
    candidate: int | None
    neighbour: int | None
    density: np.ndarray
    members: np.ndarray


@dataclass(frozen=True)
class ClusterParams:
    """Settings of `cluster_select` (defaults: see the module docstring)."""

    scale_km: float = 25.0
    radius_km: float = 50.0
    fine_km: float = 1.0
    neighbour_weight: float = 1.0
    top_ratio: float = 0.35
    region_scale_km: float = 2500.0
    region_radius_km: float = 750.0
    region_top_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("scale_km", "radius_km", "fine_km", "region_scale_km", "region_radius_km"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"cluster rule: {name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.neighbour_weight) and self.neighbour_weight >= 0):
            weight = self.neighbour_weight
            raise ValueError(f"cluster rule: neighbour_weight must be a finite number ≥ 0, got {weight!r}")
        for name in ("top_ratio", "region_top_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"cluster rule: {name} must lie in [0, 1], got {value!r}")


DEFAULT_CLUSTER_PARAMS = ClusterParams()


def _ranks(ranks: object, n: int) -> np.ndarray:
    """Retrieval ranks ``(n,)`` as floats, +inf for generated candidates (None or negative)."""
    out = np.full(n, np.inf)
    if ranks is None:
        return out
    values = list(ranks)  # type: ignore[call-overload]
    if len(values) != n:
        raise ValueError(f"ranks: expected {n} values (one per candidate), got {len(values)}")
    for i, value in enumerate(values):
        if value is not None and value >= 0:
            out[i] = float(value)
    return out


def _centre(density: np.ndarray, alive: np.ndarray, rank: np.ndarray, top_ratio: float) -> int:
    """The top retrieved photo among ``alive`` points when its density is at least ``top_ratio`` times the best,
    else the densest point (ties: the better-ranked, then the first given)."""
    best = float(density[alive].max())
    ranked = np.flatnonzero(np.isfinite(rank) & alive)
    top = int(ranked[np.argmin(rank[ranked])]) if len(ranked) else None
    if top is not None and density[top] >= top_ratio * best:
        return top
    order = np.lexsort((np.arange(len(density)), rank, -np.where(alive, density, -np.inf)))
    return int(order[0])


def cluster_select(
    coords: object,
    *,
    ranks: object = None,
    neighbours: object = None,
    params: ClusterParams = DEFAULT_CLUSTER_PARAMS,
) -> ClusterChoice:
    """The answer of the densest-cluster rule (see the module docstring).

    Args:
        coords: candidates ``(n, 2)``, n ≥ 1.
        ranks: ``(n,)`` each candidate's retrieval rank (0 = best), None (or negative) for generated
            candidates; default: all generated.
        neighbours: retrieved photos' locations ``(m, 2)``, best first (row = rank); they add density and may
            be answered. A retrieval candidate of rank r < m is the same photo as neighbour r.
        params: the rule's settings.

    Raises:
        ValueError: for an empty set, invalid coordinates or ranks of the wrong length.
    """
    points = validate_latlon(coords, what="candidates")
    n = len(points)
    if n == 0:
        raise ValueError("cluster rule: the candidate set is empty; there is nothing to choose")
    cand_rank = _ranks(ranks, n)
    support = np.empty((0, 2)) if neighbours is None else validate_latlon(neighbours, what="neighbours")
    m = len(support)
    # a retrieval candidate that is also a given neighbour counts once (as the neighbour, with the neighbour's mass)
    duplicate = np.isfinite(cand_rank) & (cand_rank < m)
    everything = np.concatenate([points, support])
    mass = np.concatenate([np.where(duplicate, 0.0, 1.0), np.full(m, params.neighbour_weight)])
    rank = np.concatenate([cand_rank, np.arange(m, dtype=np.float64)])

    distance = pairwise_haversine_km(everything, everything)
    alive = (mass > 0) | np.isfinite(rank)  # a zero-mass point still counts as a place when it is a retrieved photo
    region_density = np.exp(-0.5 * (distance / params.region_scale_km) ** 2) @ mass
    region = distance[_centre(region_density, alive, rank, params.region_top_ratio)] <= params.region_radius_km
    density = np.exp(-0.5 * (distance / params.scale_km) ** 2) @ mass
    centre = _centre(density, alive & region, rank, params.top_ratio)
    members = (distance[centre] <= params.radius_km) & region
    retrieved = np.flatnonzero(members & np.isfinite(rank))
    if len(retrieved):
        pick = int(retrieved[np.argmin(rank[retrieved])])
        snapped = int(rank[pick])
        lat, lon = everything[pick]
        same = np.flatnonzero(cand_rank == snapped)
        candidate = int(same[0]) if len(same) else None
        return ClusterChoice(float(lat), float(lon), candidate, snapped, density[:n], members[:n])
    inside = np.flatnonzero(members[:n])
    company = (distance[np.ix_(inside, inside)] <= params.fine_km).sum(axis=1)
    order = np.lexsort((inside, -density[inside], -company))
    pick = int(inside[order[0]])
    return ClusterChoice(float(points[pick, 0]), float(points[pick, 1]), pick, None, density[:n], members[:n])
