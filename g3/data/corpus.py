"""An MP16-Pro-style geotagged training corpus: a CSV of ``IMG_ID, LAT, LON`` (+ address columns) and images.

`GeoCorpus.load` reads the CSV and drops, counts and reports every row it cannot use (bad coordinates,
duplicated ids, no country, missing, too small or unreadable images), the way G3 filters MP16-Pro. All
row-wise steps are vectorised; MP16 has 4.72M rows, MP16-Pro's filtered CSV 4.12M.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from g3.data.captions import captions_for_frame
from g3.data.images import (
    ImageStore,
    decode_image,
    image_file_name,
    image_sizes,
    open_image_store,
    verify_image,
)
from g3.errors import CorpusError
from g3.geo import validate_coordinates
from g3.io import atomic_write_json

logger = logging.getLogger(__name__)

#: Columns every corpus CSV must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("IMG_ID", "LAT", "LON")
#: MP16-Pro's reverse-geocoded address columns; absent ones are added empty.
TEXT_COLUMNS: tuple[str, ...] = ("neighbourhood", "city", "county", "state", "region", "country", "continent")
#: Why `GeoCorpus.load` drops a row, in the order the filters run.
DROP_REASONS: tuple[str, ...] = (
    "bad_coordinates",
    "duplicate_id",
    "missing_country",
    "missing_image",
    "too_small",
    "unreadable",
)
#: G3's minimum image file size in bytes (smaller files are placeholders or thumbnails).
MIN_IMAGE_BYTES = 5120
#: How many example IMG_IDs a report keeps per drop reason.
MAX_EXAMPLES = 20

_REASON_TEXT = {
    "bad_coordinates": "LAT/LON missing, not a number, infinite or out of range",
    "duplicate_id": "IMG_ID repeats an earlier row (the first is kept)",
    "missing_country": "empty country",
    "missing_image": "image not found in the store",
    "too_small": "image file smaller than min_image_bytes",
    "unreadable": "image cannot be decoded",
}
# pandas' default NA strings; used explicitly so that IMG_ID alone can opt out of them ("NA" is an id).
_NA_STRINGS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip


@dataclasses.dataclass
class CorpusReport:
    """What `GeoCorpus.load` kept and dropped. Invariant: ``kept + sum(dropped.values()) == total_rows``."""

    total_rows: int
    kept: int
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    examples: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {r: [] for r in DROP_REASONS})

    def __post_init__(self) -> None:
        unknown = (set(self.dropped) | set(self.examples)) - set(DROP_REASONS)
        if unknown:
            raise ValueError(f"unknown drop reason(s) {sorted(unknown)}; known: {list(DROP_REASONS)}")
        self.dropped = {r: int(self.dropped.get(r, 0)) for r in DROP_REASONS}
        self.examples = {r: list(self.examples.get(r, []))[:MAX_EXAMPLES] for r in DROP_REASONS}
        if self.kept + sum(self.dropped.values()) != self.total_rows:
            raise ValueError(
                f"inconsistent corpus report: kept {self.kept} + dropped {sum(self.dropped.values())} "
                f"!= total_rows {self.total_rows}"
            )

    @classmethod
    def clean(cls, n: int) -> CorpusReport:
        """A report of ``n`` rows, all kept."""
        return cls(total_rows=n, kept=n)

    @property
    def total_dropped(self) -> int:
        """Rows dropped for any reason."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "total_rows": self.total_rows,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "examples": {r: list(v) for r, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusReport:
        """Inverse of `to_dict`."""
        return cls(
            total_rows=int(data["total_rows"]),
            kept=int(data["kept"]),
            dropped=dict(data.get("dropped", {})),
            examples=dict(data.get("examples", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    def summary(self) -> str:
        """A header line, then one line per drop reason with its count and a few example IMG_IDs."""
        lines = [f"corpus: kept {self.kept} of {self.total_rows} rows, dropped {self.total_dropped}"]
        for reason in DROP_REASONS:
            line = f"  {reason}: {self.dropped[reason]} ({_REASON_TEXT[reason]})"
            if self.examples[reason]:
                shown = ", ".join(self.examples[reason][:3])
                more = len(self.examples[reason]) > 3 or self.dropped[reason] > 3
                line += f", e.g. {shown}{', ...' if more else ''}"
            lines.append(line)
        return "\n".join(lines)


class GeoCorpus:
    """Rows of (IMG_ID, LAT, LON, address columns, caption) with the store holding their images.

    Build with `GeoCorpus.load` (a CSV, filtered and reported) or `GeoCorpus.from_frame`. Picklable, so
    it can be handed to DataLoader worker processes.
    """

    def __init__(self, frame: pd.DataFrame, store: ImageStore, report: CorpusReport) -> None:
        """Wrap an already-validated frame; use `from_frame` or `load` instead."""
        self.frame = frame
        self.store = store
        self.report = report

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, store: ImageStore, report: CorpusReport | None = None) -> GeoCorpus:
        """A corpus of ``frame``'s rows as they are (no filtering).

        ``frame`` needs ``IMG_ID, LAT, LON``; absent address columns are added empty and a ``caption``
        column is computed when absent. Raises `CorpusError` for a missing column and
        `g3.errors.InvalidCoordinatesError` for a bad coordinate.
        """
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise CorpusError(f"corpus frame lacks column(s) {missing}; it has {list(map(str, frame.columns))}")
        out = frame.reset_index(drop=True).copy()
        out["IMG_ID"] = out["IMG_ID"].astype(str)
        lat, lon = validate_coordinates(out["LAT"].to_numpy(), out["LON"].to_numpy(), what="corpus frame")
        out["LAT"], out["LON"] = lat, lon
        out = _finish_frame(out)
        if report is None:
            report = CorpusReport.clean(len(out))
        elif report.kept != len(out):
            raise ValueError(f"report says {report.kept} rows were kept but the frame has {len(out)}")
        return cls(out, store, report)

    @classmethod
    def load(
        cls,
        csv_path: str | os.PathLike[str],
        images: str | os.PathLike[str] | ImageStore,
        *,
        min_image_bytes: int = MIN_IMAGE_BYTES,
        require_country: bool = True,
        verify_images: bool = False,
        progress: bool = True,
        tar_index_cache: str | os.PathLike[str] | None = None,
    ) -> GeoCorpus:
        """Read a corpus CSV, drop (and count) every unusable row, and pair it with its images.

        Args:
            csv_path: CSV with ``IMG_ID, LAT, LON`` and optionally the address columns; other columns
                are kept.
            images: an image folder, a tar file, or an `ImageStore`.
            min_image_bytes: drop images smaller than this (G3: 5120).
            require_country: drop rows with an empty ``country``; the CSV must then have that column.
            verify_images: also open every remaining image with PIL and drop unreadable ones (slow).
            progress: show progress bars.
            tar_index_cache: where to cache a tar's index (``.npz`` or ``.json``); tar paths only.

        Raises:
            CorpusError: the CSV or images cannot be read, a required column is missing, or no row is left.
        """
        if isinstance(min_image_bytes, bool) or not isinstance(min_image_bytes, int) or min_image_bytes < 0:
            raise ValueError(f"min_image_bytes must be an integer >= 0, not {min_image_bytes!r}")
        if isinstance(images, str | os.PathLike):
            store: ImageStore = open_image_store(images, index_cache=tar_index_cache, progress=progress)
        else:
            if tar_index_cache is not None:
                raise ValueError("tar_index_cache applies when images is a path; pass it to TarImageStore")
            store = images
        csv = Path(csv_path)
        df = _read_csv(csv, require_country=require_country)
        total = len(df)
        ids = df["IMG_ID"].to_numpy(dtype=object)
        keep = np.ones(total, dtype=bool)
        dropped: dict[str, int] = {}
        examples: dict[str, list[str]] = {}

        def drop(reason: str, bad: np.ndarray) -> None:
            bad = bad & keep
            keep[bad] = False
            dropped[reason] = int(bad.sum())
            rows = np.flatnonzero(bad)[:MAX_EXAMPLES]
            examples[reason] = [str(ids[r]) or f"<empty IMG_ID, CSV line {r + 2}>" for r in rows]

        lat = df["LAT"].to_numpy(dtype=np.float64)
        lon = df["LON"].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0)
        drop("bad_coordinates", ~good)

        dup = np.zeros(total, dtype=bool)
        kept_ids = df["IMG_ID"][keep]
        dup[np.flatnonzero(keep)] = (kept_ids.duplicated(keep="first") & (kept_ids != "")).to_numpy()
        drop("duplicate_id", dup)

        if require_country:
            drop("missing_country", (df["country"].str.strip() == "").to_numpy())
        else:
            drop("missing_country", np.zeros(total, dtype=bool))

        rows = np.flatnonzero(keep)
        sizes = np.full(total, -1, dtype=np.int64)
        sizes[rows] = image_sizes(store, ids[rows].tolist(), progress=progress)
        drop("missing_image", sizes < 0)
        drop("too_small", sizes < min_image_bytes)

        unreadable = np.zeros(total, dtype=bool)
        if verify_images:
            for r in tqdm(np.flatnonzero(keep), "verifying images", unit="img", disable=not progress):
                try:
                    verify_image(store.read_bytes(ids[r]), image_file_name(ids[r]))
                except CorpusError as exc:
                    logger.debug("unreadable image: %s", exc)
                    unreadable[r] = True
        drop("unreadable", unreadable)

        report = CorpusReport(total_rows=total, kept=int(keep.sum()), dropped=dropped, examples=examples)
        logger.info("loaded %s with images %r\n%s", csv, store, report.summary())
        if report.total_dropped:
            logger.warning(
                "%s: dropped %d of %d rows (%s); see the corpus report for examples",
                csv,
                report.total_dropped,
                total,
                ", ".join(f"{r}={n}" for r, n in report.dropped.items() if n),
            )
        if report.kept == 0:
            raise CorpusError(f"no usable rows left in {str(csv)!r} with images {store!r}:\n{report.summary()}")
        frame = _finish_frame(df[keep].reset_index(drop=True))
        return cls(frame, store, report)

    # --- access ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"GeoCorpus({len(self)} rows, store={self.store!r})"

    def coordinates(self) -> np.ndarray:
        """``(N, 2)`` float64 array of (lat, lon) in degrees."""
        return self.frame[["LAT", "LON"]].to_numpy(dtype=np.float64, copy=True)

    def captions(self) -> list[str]:
        """The caption of every row."""
        return [str(c) for c in self.frame["caption"].tolist()]

    def image_id(self, i: int) -> str:
        """``IMG_ID`` of row ``i``."""
        return str(self.frame["IMG_ID"].iloc[i])

    def image_name(self, i: int) -> str:
        """File name of row ``i``'s image (``IMG_ID`` with ``/`` replaced by ``_``)."""
        return image_file_name(self.image_id(i))

    def read_image(self, i: int) -> Image.Image:
        """Row ``i``'s image as upright 8-bit RGB (see `decode_image`)."""
        img_id = self.image_id(i)
        return decode_image(self.store.read_bytes(img_id), image_file_name(img_id))

    def subset(self, indices: Sequence[int] | np.ndarray) -> GeoCorpus:
        """The rows at ``indices`` (integer positions or a boolean mask), sharing the store.

        The subset's report counts its own rows (all kept).
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask has shape {idx.shape}; expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"subset indices must be integers or a boolean mask, not {idx.dtype}")
        frame = self.frame.iloc[idx.ravel()].reset_index(drop=True)
        return GeoCorpus(frame, self.store, CorpusReport.clean(len(frame)))

    def split(self, val_fraction: float, seed: int) -> tuple[GeoCorpus, GeoCorpus]:
        """Deterministic random (train, val) split; ``round(len * val_fraction)`` rows go to val.

        Both parts keep the original row order and share the store. Raises ``ValueError`` unless
        ``0 < val_fraction < 1`` and both parts get at least one row.
        """
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, int | float)
            or not math.isfinite(val_fraction)
            or not 0.0 < val_fraction < 1.0
        ):
            raise ValueError(f"val_fraction must be a number strictly between 0 and 1, not {val_fraction!r}")
        n = len(self)
        n_val = round(n * val_fraction)
        if n_val < 1 or n_val > n - 1:
            raise ValueError(
                f"val_fraction={val_fraction} of {n} rows gives {n_val} validation and {n - n_val} training "
                "rows; both parts need at least one row"
            )
        perm = np.random.default_rng(seed).permutation(n)
        val = np.sort(perm[:n_val])
        train = np.sort(perm[n_val:])
        return self.subset(train), self.subset(val)


def _read_csv(csv: Path, *, require_country: bool) -> pd.DataFrame:
    """Read the CSV with IMG_ID and address columns as text and LAT/LON as float (NaN where unparseable)."""
    if not csv.is_file():
        raise CorpusError(f"corpus CSV {str(csv)!r} does not exist")
    try:
        header = pd.read_csv(csv, nrows=0, skipinitialspace=True).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise CorpusError(f"cannot read corpus CSV {str(csv)!r}: {exc}") from exc
    columns = [str(c) for c in header]
    for col in REQUIRED_COLUMNS:
        if col not in columns:
            near = [c for c in columns if c.strip().lower() == col.lower()]
            hint = f" (did you mean {near[0]!r}? column names are case-sensitive)" if near else ""
            raise CorpusError(
                f"corpus CSV {str(csv)!r} has no {col!r} column{hint}; columns found: {columns}; "
                f"required: {list(REQUIRED_COLUMNS)}"
            )
    if require_country and "country" not in columns:
        raise CorpusError(
            f"corpus CSV {str(csv)!r} has no 'country' column (columns found: {columns}); pass "
            "require_country=False to keep rows without a country"
        )
    text = [c for c in columns if c in TEXT_COLUMNS]
    na_values: dict[str, list[str]] = {c: _NA_STRINGS for c in columns}
    na_values["IMG_ID"] = [""]
    try:
        df = pd.read_csv(
            csv,
            dtype={"IMG_ID": str, "LAT": str, "LON": str, **dict.fromkeys(text, str)},
            keep_default_na=False,
            na_values=na_values,
            skipinitialspace=True,
            low_memory=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise CorpusError(f"cannot read corpus CSV {str(csv)!r}: {exc}") from exc
    df["IMG_ID"] = df["IMG_ID"].fillna("").astype(str).str.strip()
    for col in ("LAT", "LON"):
        df[col] = pd.to_numeric(df[col].str.strip(), errors="coerce").astype(np.float64)
    for col in text:
        df[col] = df[col].fillna("").astype(str)
    return df


def _finish_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Add absent address columns (empty) and the caption column when absent; fill empty captions."""
    for col in TEXT_COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
        else:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    computed = captions_for_frame(frame)
    if "caption" not in frame.columns:
        frame["caption"] = computed
    else:
        existing = frame["caption"].astype(object).where(frame["caption"].notna(), "").astype(str)
        frame["caption"] = existing.where(existing.str.strip() != "", computed)
    return frame
