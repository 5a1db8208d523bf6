"""A resumable CSV of located photos (``g3 locate DIR --out results.csv``).

One row per photo: `COLUMNS` (``p25``/``p200``/``p750``: the calibrated probability of the answer lying
within that many km, empty without a fitted ranker; a withheld answer has no coordinates and ``withheld``
says why). A file written before those columns existed is rewritten with them (empty) when opened.
Rows are appended chunk by chunk, each chunk flushed and fsynced, so an
interrupted run keeps every chunk it finished; an unfinished last line (a write cut short) is removed when
the file is opened again. A photo counts as done when it has a row without an error (with
``retry_degraded``, also without ``degraded``; a withheld row only while this run would withhold it again);
photos are matched by absolute path (paths are written as given, so rerun from the same folder). A photo
located again gets a new row, which wins over its older ones; `ResultsCSV.close` then rewrites the file
atomically with one row per photo.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from g3.errors import ResultsFileError
from g3.io import atomic_write_text, drop_partial_line

if TYPE_CHECKING:
    from g3.agent.prediction import GeoPrediction

#: The columns of a results file, in order.
COLUMNS = ("path", "lat", "lon", "place", "score", "source", "p25", "p200", "p750", "withheld", "degraded",
           "degradations", "warnings", "error")  # fmt: skip
#: The columns of files written before the confidence columns: read, then rewritten with `COLUMNS`.
LEGACY_COLUMNS = ("path", "lat", "lon", "place", "score", "source", "degraded", "degradations", "warnings", "error")


def photo_key(path: str | os.PathLike[str]) -> str:
    """How a photo is matched across runs: its absolute path."""
    return os.path.abspath(path)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _still_withheld(row: Mapping[str, str], requirements: Mapping[str, float]) -> bool:
    """Whether a withheld row's recorded probabilities miss one of ``requirements``."""
    from g3.agent.abstention import confidence_shortfalls

    recorded = {radius: float(row[f"p{radius}"]) for radius in requirements if row.get(f"p{radius}")}
    return bool(confidence_shortfalls(recorded, requirements))


def result_row(
    path: str | os.PathLike[str],
    result: GeoPrediction | BaseException | str,
    requirements: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """The CSV row of one photo: a prediction, or its error (an exception or a message). A prediction that
    misses one of ``requirements`` (radius → minimum probability) is written withheld: no coordinates, place,
    score or source, and ``withheld`` saying why."""
    from g3.agent.abstention import shortfalls, withheld_text

    row = dict.fromkeys(COLUMNS, "")
    row["path"] = os.fspath(path)
    if isinstance(result, BaseException | str):
        row["error"] = _one_line(result if isinstance(result, str) else f"{type(result).__name__}: {result}")
        return row
    missed = shortfalls(result, requirements or {})
    if not missed:
        row.update(lat=f"{result.lat:.6f}", lon=f"{result.lon:.6f}", place=result.place, score=f"{result.score:.6f}",
                   source=result.source)  # fmt: skip
    for radius, probability in (result.confidence or {}).items():
        if f"p{radius}" in row:
            row[f"p{radius}"] = f"{probability:.4f}"
    row.update(
        withheld=withheld_text(missed) if missed else "",
        degraded="true" if result.degraded else "false",
        degradations="; ".join(dict.fromkeys(d.reason for d in result.degradations)),
        warnings=" | ".join(_one_line(w) for w in result.warnings),
    )
    return row


class ResultsCSV:
    """The rows of a results file (read when opened) and appends to it. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, str]] = {}
        self._written = 0  # rows in the file, repeats included
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            drop_partial_line(self.path)
            with self.path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                legacy = reader.fieldnames is not None and tuple(reader.fieldnames) == LEGACY_COLUMNS
                if reader.fieldnames is not None and tuple(reader.fieldnames) != COLUMNS and not legacy:
                    raise ResultsFileError(
                        f"{self.path} is not a g3 locate results file (its columns are {', '.join(reader.fieldnames)}; "
                        f"expected {', '.join(COLUMNS)}); choose another --out"
                    )
                for row in reader:
                    self.rows[photo_key(row["path"])] = dict.fromkeys(COLUMNS, "") | row
                    self._written += 1
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResultsFileError(f"cannot read the results file {self.path}: {exc}") from exc
        if legacy:  # appended rows must match the header: rewrite it with the new columns first
            self._rewrite()

    def done(
        self,
        photo: str | os.PathLike[str],
        *,
        retry_degraded: bool = False,
        requirements: Mapping[str, float] | None = None,
    ) -> bool:
        """Whether ``photo`` has a row without an error (and, with ``retry_degraded``, not degraded). A withheld
        row holds no answer: it stays done only while ``requirements`` (this run's ``--min-confidence``) would
        withhold it again from its recorded probabilities, so a rerun asking for less locates it again."""
        row = self.rows.get(photo_key(photo))
        if row is None or row["error"] or (retry_degraded and row["degraded"] == "true"):
            return False
        return not row["withheld"] or _still_withheld(row, requirements or {})

    def append(self, rows: list[dict[str, str]]) -> None:
        """Append ``rows`` (a header first in a new file); flushed and fsynced before returning."""
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        if self._written == 0:
            writer.writeheader()
        writer.writerows(rows)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a" if self._written else "w", encoding="utf-8", newline="") as fh:
                fh.write(buffer.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise ResultsFileError(f"cannot write the results file {self.path}: {exc}") from exc
        for row in rows:
            self.rows[photo_key(row["path"])] = row
        self._written += len(rows)

    def close(self) -> None:
        """Rewrite the file atomically with one row per photo when photos were located again."""
        if self._written <= len(self.rows):
            return
        self._rewrite()

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        atomic_write_text(self.path, buffer.getvalue())
        self._written = len(self.rows)

    def __enter__(self) -> ResultsCSV:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
