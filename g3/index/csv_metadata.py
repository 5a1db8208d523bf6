"""Streaming a corpus CSV (MP16_Pro_filtered layout) into an index's ``metadata.parquet``, block by block.

MP16-Pro's ``MP16_Pro_filtered.csv`` has the columns IMG_ID, AUTHOR, LAT, LON, neighbourhood, city,
county, state, region, country, continent; data row i describes row i of G3's ``g3.index``. The CSV is
read in blocks (never whole), every coordinate is checked, and the rows are written as they come with
the columns g3's metadata keeps (IMG_ID, LAT, LON and the location text).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from g3.errors import GeoIndexError
from g3.index.geo_index import TEXT_COLUMNS
from g3.index.manifest import SourceFile

REQUIRED = ("IMG_ID", "LAT", "LON")
MP16_PRO_COLUMNS = ("IMG_ID", "AUTHOR", "LAT", "LON", *TEXT_COLUMNS)


class _HashingReader(io.RawIOBase):
    """A read-only file that hashes what is read through it (the CSV is read once: parsed and hashed)."""

    def __init__(self, path: Path) -> None:
        self._fh = path.open("rb")
        self.digest = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


@dataclass(frozen=True)
class StreamedMetadata:
    """What streaming a CSV produced: its data rows and where it came from."""

    rows: int
    columns: tuple[str, ...]
    source: SourceFile


def csv_columns(path: Path) -> list[str]:
    """The header of a CSV (a UTF-8 byte-order mark is dropped)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise GeoIndexError(f"{path} is empty; expected a CSV with a header (IMG_ID, LAT, LON, …)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise GeoIndexError(f"{path} is not a UTF-8 CSV file: {exc}") from exc


def stream_csv_metadata(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, block_bytes: int = 16 << 20, progress: bool = True
) -> StreamedMetadata:
    """Write ``out`` (Parquet, g3's metadata columns) from the CSV ``path``, one block at a time.

    Raises `GeoIndexError` naming the file (and the data row, counted from 1) for missing columns,
    unreadable values, or coordinates that are missing, not finite or out of range.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise GeoIndexError(f"metadata CSV {path} does not exist")
    header = csv_columns(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise GeoIndexError(
            f"{path} lacks column(s) {missing}; its header is {header[:12]}. Expected the MP16_Pro_filtered layout: "
            f"{', '.join(MP16_PRO_COLUMNS)}"
        )
    keep = [*REQUIRED, *[c for c in TEXT_COLUMNS if c in header]]
    schema = pa.schema([pa.field("IMG_ID", pa.string()), pa.field("LAT", pa.float64()), pa.field("LON", pa.float64()),
                        *[pa.field(c, pa.string()) for c in keep[3:]]])  # fmt: skip
    size = path.stat().st_size
    reader_file = _HashingReader(path)
    rows = 0
    try:
        reader = pacsv.open_csv(
            reader_file,
            read_options=pacsv.ReadOptions(block_size=block_bytes),
            convert_options=pacsv.ConvertOptions(
                include_columns=keep, column_types={f.name: f.type for f in schema}, strings_can_be_null=False
            ),
        )
        with (
            pq.ParquetWriter(out, schema) as writer,
            tqdm(total=size, unit="B", unit_scale=True, desc="metadata", disable=not progress) as bar,
        ):
            for batch in reader:
                _check_coordinates(path, batch, rows)
                writer.write_table(pa.Table.from_batches([batch]).select(keep).cast(schema))
                rows += batch.num_rows
                bar.update(reader_file.bytes_read - bar.n)
    except pa.ArrowException as exc:
        raise GeoIndexError(f"{path} cannot be read as a metadata CSV: {str(exc).strip()}") from exc
    finally:
        reader_file.close()
    if reader_file.bytes_read != size:  # pyarrow stops at the end of the data; hash any trailing bytes too
        with path.open("rb") as fh:
            fh.seek(reader_file.bytes_read)
            while block := fh.read(8 << 20):
                reader_file.digest.update(block)
    source = SourceFile(name=path.name, path=str(path.resolve()), bytes=size, sha256=reader_file.digest.hexdigest())
    return StreamedMetadata(rows=rows, columns=tuple(keep), source=source)


def _check_coordinates(path: Path, batch: Any, first_row: int) -> None:
    for name, limit in (("LAT", 90.0), ("LON", 180.0)):
        values = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GeoIndexError(
                f"{path}: data row {first_row + i + 1} has {name} = {values[i]} (missing, not finite or outside "
                f"±{limit:g}); every index row needs the coordinates of its photo"
            )
