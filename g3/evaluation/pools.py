"""``pools.jsonl`` of an evaluation run: every located photo's candidate pool with its truth (`g3.verify.Pool`),
one line per photo, beside ``predictions.jsonl``; `g3 verify fit` learns a ranker from it.

The file follows the predictions file: a batch's pools are appended (flushed and fsynced) just before its
predictions, so every photo in ``predictions.jsonl`` located without an error has its pool, and a resumed run
first drops the pools of photos the predictions file does not hold (an interrupt between the two writes) and
an unfinished last line, so that each photo keeps one pool. A photo that failed has no pool.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from g3.errors import EvaluationError
from g3.io import atomic_open, drop_partial_line

log = logging.getLogger(__name__)

POOLS = "pools.jsonl"
#: Key of a located record (`g3.evaluation.runner.locate_chunk`) carrying its pool line until it is written.
POOL_FIELD = "pool"


def _pool_ids(path: Path) -> list[str | None]:
    """The ``id`` of each non-blank line of a pools file (None for a line that is not a JSON object)."""
    ids: list[str | None] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    ids.append(json.loads(line).get("id"))
                except (json.JSONDecodeError, AttributeError):
                    ids.append(None)
    return ids


def reconcile_pools(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Make a run's pools file fit its predictions before appending: drop an unfinished last line, the pools of
    photos the predictions do not hold and repeated ones (rewritten atomically). Returns how many photos
    located without an error have no pool (located by a g3 that wrote none); they are logged."""
    located = {str(r["img_id"]) for r in records if r.get("error") is None}
    held = {str(r["img_id"]) for r in records}
    if not path.is_file():
        if located:
            log.warning("%s: %d photos of this run were located before pools were written and have none; fit on a "
                        "fresh run folder to use them all", path, len(located))  # fmt: skip
        return len(located)
    if drop_partial_line(path):
        log.warning("%s: removed an unfinished last line (interrupted write)", path)
    ids = _pool_ids(path)
    seen: set[str] = set()
    keep = []
    for pool_id in ids:
        keep.append(pool_id is not None and pool_id in held and pool_id not in seen)
        if pool_id is not None:
            seen.add(pool_id)
    if not all(keep):
        log.warning("%s: dropping %d pools of photos that predictions.jsonl does not hold (an interrupted batch, "
                    "located again) or that repeat", path, keep.count(False))  # fmt: skip
        with path.open(encoding="utf-8") as source, atomic_open(path, "w") as out:
            lines = (line for line in source if line.strip())
            for line, kept in zip(lines, keep, strict=True):
                if kept:
                    out.write(line if line.endswith("\n") else line + "\n")
    missing = len(located - seen)
    if missing:
        log.warning("%s: %d photos of this run have no pool (located by a g3 that wrote none)", path, missing)
    return missing


class PoolAppender:
    """Appends pool lines to a pools file, flushed and fsynced per `append`. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> PoolAppender:
        try:
            self.out = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise EvaluationError(f"cannot write the candidate pools to {self.path}: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()
        os.fsync(self.out.fileno())
