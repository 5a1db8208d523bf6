"""`Neighbours`: one photo's retrieved database images, the one shape they keep from the index to the answer.

The index's batched search result gives one per query (`g3.index.geo_index.SearchHits.neighbours`); the
prompts show them (`g3.lmm.prompts`), the agent keeps them in its state, and `Neighbours.rows` is the one
place they become JSON (stream steps, `GeoPrediction.similar` / ``dissimilar``, the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class Neighbours:
    """k neighbours of one photo, best first (dissimilar ones: least similar first).

    ``coordinates`` ``(k, 2)`` (lat, lon) degrees; ``scores`` ``(k,)`` inner products with the query;
    ``ids`` the IMG_IDs (None where unknown) and ``places`` "City, State, Country" ("" where unknown), both
    filled in with those blanks when not given; ``index_rows`` the `GeoIndex` rows they come from (empty
    when they come from no index, e.g. example coordinates).
    """

    coordinates: np.ndarray
    scores: np.ndarray
    ids: list[str | None] = field(default_factory=list)
    places: list[str] = field(default_factory=list)
    index_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        coordinates = np.asarray(self.coordinates, dtype=np.float64).reshape(-1, 2)
        k = len(coordinates)
        object.__setattr__(self, "coordinates", coordinates)
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "ids", list(self.ids) or [None] * k)
        object.__setattr__(self, "places", list(self.places) or [""] * k)
        object.__setattr__(self, "index_rows", np.asarray(self.index_rows, dtype=np.int64).reshape(-1))
        sizes = {"scores": len(self.scores), "ids": len(self.ids), "places": len(self.places)}
        if len(self.index_rows):
            sizes["index_rows"] = len(self.index_rows)
        wrong = {name: size for name, size in sizes.items() if size != k}
        if wrong:
            raise ValueError(f"Neighbours of {k} coordinates need as many of each field, got {wrong}")

    @classmethod
    def empty(cls) -> Neighbours:
        """No neighbours (no retrieval, e.g. a zero-shot prompt or a GPS gallery)."""
        return cls(np.zeros((0, 2)), np.zeros(0))

    def __len__(self) -> int:
        return len(self.coordinates)

    def head(self, n: int) -> Neighbours:
        """The first ``n`` neighbours."""
        return Neighbours(self.coordinates[:n], self.scores[:n], self.ids[:n], self.places[:n], self.index_rows[:n])

    def rows(self, limit: int | None = None) -> list[list[Any]]:
        """``[lat, lon, score, place, img_id]`` of the first ``limit`` (all: None) neighbours, plain Python:
        the one JSON form of neighbours (stream steps, `GeoPrediction`, the CLI)."""
        found = self if limit is None else self.head(limit)
        return [
            [float(lat), float(lon), float(score), place, img_id]
            for (lat, lon), score, place, img_id in zip(found.coordinates, found.scores, found.places, found.ids,
                                                        strict=True)
        ]  # fmt: skip
