"""Candidate pools as JSON lines: the exchange format between evaluation runs and `g3 verify fit`.

One JSON object per line, one line per query::

    {"id": str, "truth": [lat, lon],
     "candidates": [{"lat": f, "lon": f, "source": str, "rank"?: int, "sample"?: int,
                     "retrieval_score"?: f}, ...],
     "neighbours"?: [[lat, lon], ...], "query_gps"?: [f, ...], "candidate_embeddings"?: [[f, ...], ...]}

* ``source``: where the candidate comes from: ``"retrieval"``, ``"gallery"`` or the name of the prompt
  that generated it (``"zero_shot"``, ``"rag_5"``, ``"rag_10"``, …).
* ``rank``: position among the retrieved (or gallery) results, 0 = best; ``sample``: index of the answer
  among its prompt's samples. ``retrieval_score``: the neighbour's similarity (inner product).
* ``neighbours``: the retrieved photos' locations, best first (they support a candidate's consensus).
* ``query_gps`` (D,) and ``candidate_embeddings`` (one (D,) row per candidate): the photo's GPS-aligned
  vector and each candidate's location embedding, for G3's cosine rule. Both or neither.

Coordinates are degrees: latitude in [-90, 90], longitude in [-180, 180]. Every number must be finite.
``truth`` may be left out of pools that are only scored (a running query); fitting needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from g3.errors import PoolFormatError
from g3.io import atomic_open

if TYPE_CHECKING:
    from g3.verify.scoring import Candidate

#: Sources whose candidates carry a ``rank`` (retrieved results); the others are generated (``sample``).
RANKED_SOURCES = frozenset({"retrieval", "gallery"})
#: Version of the line format (not written into lines: a new optional key keeps it).
POOL_FORMAT = 1

Latitude = Annotated[float, Field(strict=True, ge=-90.0, le=90.0, allow_inf_nan=False)]
Longitude = Annotated[float, Field(strict=True, ge=-180.0, le=180.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Index = Annotated[int, Field(strict=True, ge=0)]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class PoolCandidate(BaseModel):
    """One candidate location of a pool (see the module docstring for the fields)."""

    model_config = _STRICT

    lat: Latitude
    lon: Longitude
    source: Annotated[str, Field(strict=True, min_length=1)]
    rank: Index | None = None
    sample: Index | None = None
    retrieval_score: Finite | None = None


class Pool(BaseModel):
    """Every candidate for one query, its true location (when known) and what the rules score it with."""

    model_config = _STRICT

    id: Annotated[str, Field(strict=True, min_length=1)]
    truth: tuple[Latitude, Longitude] | None = None
    candidates: Annotated[list[PoolCandidate], Field(min_length=1)]
    neighbours: list[tuple[Latitude, Longitude]] | None = None
    query_gps: Annotated[list[Finite], Field(min_length=1)] | None = None
    candidate_embeddings: list[list[Finite]] | None = None

    @model_validator(mode="after")
    def _embeddings_fit(self) -> Pool:
        if (self.query_gps is None) != (self.candidate_embeddings is None):
            given, missing = ("query_gps", "candidate_embeddings")[:: 1 if self.query_gps is not None else -1]
            raise ValueError(f"{given} is given without {missing}: give both (for the cosine rule) or neither")
        if self.query_gps is None or self.candidate_embeddings is None:
            return self
        dim, n = len(self.query_gps), len(self.candidates)
        if len(self.candidate_embeddings) != n:
            raise ValueError(f"candidate_embeddings has {len(self.candidate_embeddings)} rows for {n} candidates")
        for i, row in enumerate(self.candidate_embeddings):
            if len(row) != dim:
                raise ValueError(f"candidate_embeddings row {i} has {len(row)} values, query_gps has {dim}")
            if not any(row):
                raise ValueError(f"candidate_embeddings row {i} is a zero vector (no direction for a cosine)")
        if not any(self.query_gps):
            raise ValueError("query_gps is a zero vector (no direction for a cosine)")
        return self

    @property
    def has_embeddings(self) -> bool:
        """Whether the pool carries the vectors of G3's cosine rule."""
        return self.query_gps is not None


def pool_from_candidates(
    pool_id: str,
    candidates: Sequence[Candidate],
    *,
    truth: tuple[float, float] | None = None,
    neighbours: object = None,
    query_gps: object = None,
    candidate_embeddings: object = None,
) -> Pool:
    """The pool of a query from the pipeline's `Candidate` objects (what the verify step scores).

    A retrieved or gallery candidate's ``sample`` becomes its ``rank``. ``neighbours`` are all retrieved
    locations ``(m, 2)``, best first; ``query_gps`` ``(D,)`` and ``candidate_embeddings`` ``(n, D)`` are
    the vectors of G3's cosine rule (numpy arrays or lists). Raises `PoolFormatError` when the result is
    not a valid pool.
    """

    def numbers(values: object) -> object:
        return None if values is None else np.asarray(values, dtype=np.float64).tolist()

    rows = [
        PoolCandidate(
            lat=c.lat,
            lon=c.lon,
            source=c.source,
            rank=c.sample if c.source in RANKED_SOURCES else None,
            sample=None if c.source in RANKED_SOURCES else c.sample,
            retrieval_score=c.retrieval_score,
        )
        for c in candidates
    ]
    fields = {
        "id": pool_id,
        "truth": truth,
        "candidates": rows,
        "neighbours": numbers(neighbours),
        "query_gps": numbers(query_gps),
        "candidate_embeddings": numbers(candidate_embeddings),
    }
    try:
        return Pool.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise PoolFormatError(f"pool {pool_id!r}: {_describe(exc)}") from None


def _describe(error: ValidationError) -> str:
    """The first few problems of a validation error, one short clause each."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    more = len(error.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_pool(line: str, *, where: str = "pool") -> Pool:
    """One pool from one JSON line. Raises `PoolFormatError` naming ``where`` and what is wrong."""
    try:
        return Pool.model_validate_json(line)
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise PoolFormatError(f"{where}: not a JSON object ({exc.errors()[0]['msg']})") from None
        raise PoolFormatError(f"{where}: {_describe(exc)}") from None


def read_pools(path: str | os.PathLike[str], *, labelled: bool = True) -> Iterator[Pool]:
    """The pools of a JSONL file, one per non-blank line, checked as they are read.

    Args:
        path: the ``pools.jsonl`` file.
        labelled: require ``truth`` on every line (fitting and scoring need it).

    Raises:
        PoolFormatError: naming the file and line of the first bad line (bad JSON, a missing or unknown key,
            an out-of-range or non-finite number, embeddings that do not fit, a missing truth, an id seen
            on an earlier line), or a file that cannot be read.
    """
    source = Path(path)
    seen: dict[str, int] = {}
    try:
        handle = source.open(encoding="utf-8")
    except OSError as exc:
        raise PoolFormatError(f"cannot read pools from {source}: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{source}, line {number}"
            pool = parse_pool(line, where=where)
            if labelled and pool.truth is None:
                raise PoolFormatError(f"{where}: pool {pool.id!r} has no 'truth'; fitting needs labelled pools")
            if pool.id in seen:
                raise PoolFormatError(
                    f"{where}: id {pool.id!r} is already used on line {seen[pool.id]}; every query needs its own id"
                )
            seen[pool.id] = number
            yield pool


def pool_line(pool: Pool) -> str:
    """The pool as one JSON line, without the trailing newline; keys that are None are left out."""
    line = json.dumps(pool.model_dump(mode="json", exclude_none=True), ensure_ascii=False, separators=(",", ":"))
    if "\n" in line:  # cannot happen with json.dumps; guards the one-line contract
        raise PoolFormatError(f"pool {pool.id!r} does not fit on one line")
    return line


def write_pools(path: str | os.PathLike[str], pools: Iterable[Pool]) -> int:
    """Write pools to a JSONL file atomically (a reader never sees half a file); returns how many."""
    count = 0
    with atomic_open(path, "w") as handle:
        for pool in pools:
            handle.write(pool_line(pool) + "\n")
            count += 1
    return count
