"""Geolocalization benchmarks (IM2GPS3k, YFCC4k, any ``IMG_ID, LAT, LON`` CSV) with their image folders.

An `EvalDataset` keeps every row of its CSV. Rows whose image file is absent are listed in
`EvalDataset.missing` and still count: `EvalDataset.denominator` is the number of rows, so an image that
is missing (or that fails later) counts as a wrong answer, as in the published tables.

g3 ships no benchmark metadata: every path comes from the caller.

* IM2GPS3k: ``im2gps3k_places365.csv`` (TIBHannover/GeoEstimation, 2,997 rows) with columns
  ``IMG_ID, AUTHOR, LAT, LON, S3_Label, S16_Label, S365_Label, Prob_indoor, Prob_natural, Prob_urban``.
  Its pre-2020 version had LAT and LON swapped in the header; that file fails validation here.
* YFCC4k: ``yfcc4k_places365.csv`` (G3's checkpoint repo, 4,536 rows), whose header names the YFCC100M
  columns by position (``0, IMG_ID, 2, 3, …``) with **LON before LAT**; or a file with named
  ``IMG_ID, LAT, LON`` columns such as a derived ``yfcc4k_latlon.csv``. Both give the same frame.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from g3.errors import CorpusError

logger = logging.getLogger(__name__)

#: Columns every dataset frame has, first and in this order.
REQUIRED_COLUMNS: tuple[str, ...] = ("IMG_ID", "LAT", "LON")
#: Rows of the published benchmark CSVs; another count is logged as a warning.
EXPECTED_ROWS: dict[str, int] = {"im2gps3k": 2997, "yfcc4k": 4536}
#: Dataset names `load_dataset` knows.
KNOWN_DATASETS: tuple[str, ...] = ("im2gps3k", "yfcc4k")
#: YFCC100M columns of ``yfcc4k_places365.csv`` kept, by their numeric header name, and their new names.
YFCC_KEPT_COLUMNS: dict[str, str] = {
    "3": "AUTHOR",
    "17": "license",
    "18": "license_url",
    "15": "flickr_page",
    "0": "yfcc_line",
}

_NA_STRINGS = ["", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "null", "NULL", "None", "#N/A"]
_MAX_EXAMPLES = 5


@dataclasses.dataclass
class EvalDataset:
    """A benchmark: its rows (``IMG_ID, LAT, LON`` + metadata) and where its images are.

    Attributes:
        name: the dataset's name (``"im2gps3k"``, ``"yfcc4k"`` or the CSV's stem).
        frame: every row of the CSV: ``IMG_ID`` (str), ``LAT``, ``LON`` (float64 degrees), then the
            metadata columns as read (e.g. ``S3_Label``).
        image_dir: the folder holding ``<IMG_ID>`` files, or None when only the metadata was loaded.
        missing: IMG_IDs whose image file is absent from ``image_dir``, in frame order.
        source: the CSV the rows came from, when known.
    """

    name: str
    frame: pd.DataFrame
    image_dir: Path | None = None
    missing: list[str] = dataclasses.field(default_factory=list)
    source: Path | None = None

    def __post_init__(self) -> None:
        absent = [c for c in REQUIRED_COLUMNS if c not in self.frame.columns]
        if absent:
            raise CorpusError(f"dataset {self.name!r}: frame lacks columns {absent} (has {list(self.frame.columns)})")

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        where = "no images" if self.image_dir is None else f"images in {str(self.image_dir)!r}"
        return f"EvalDataset({self.name!r}, {len(self.frame)} rows, {where}, {len(self.missing)} missing)"

    @property
    def denominator(self) -> int:
        """Rows scored against: all of them. Missing images and failures count as wrong answers."""
        return len(self.frame)

    @property
    def latlon(self) -> np.ndarray:
        """``(N, 2)`` ground-truth (lat, lon) of every row, float64."""
        return self.frame[["LAT", "LON"]].to_numpy(dtype=np.float64)

    def image_path(self, img_id: str) -> Path:
        """The file of image ``img_id`` (which may not exist; see `missing`).

        Raises:
            CorpusError: the dataset has no image folder, or ``img_id`` would leave it.
        """
        if self.image_dir is None:
            raise CorpusError(f"dataset {self.name!r} was loaded without an image folder; pass image_dir=...")
        _check_relative(img_id, self.name)
        return self.image_dir / img_id

    def present(self) -> pd.DataFrame:
        """A copy of the rows whose image file exists, keeping `frame`'s index.

        Raises:
            CorpusError: the dataset has no image folder.
        """
        if self.image_dir is None:
            raise CorpusError(f"dataset {self.name!r} was loaded without an image folder; pass image_dir=...")
        if not self.missing:
            return self.frame.copy()
        return self.frame[~self.frame["IMG_ID"].isin(self.missing)].copy()


# --- loaders ---------------------------------------------------------------------------------------


def load_im2gps3k(csv: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None) -> EvalDataset:
    """IM2GPS3k from ``im2gps3k_places365.csv`` (and its image folder); every column is kept."""
    path = Path(csv)
    frame = _read_frame(path, what="IM2GPS3k CSV")
    return _finish("im2gps3k", frame, path, image_dir)


def load_yfcc4k(csv: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None) -> EvalDataset:
    """YFCC4k from ``yfcc4k_places365.csv`` (LON before LAT) or a CSV with named ``IMG_ID, LAT, LON``.

    From the YFCC100M-style file the columns kept are ``IMG_ID, LAT, LON, AUTHOR, license, license_url,
    flickr_page, yfcc_line`` (see `YFCC_KEPT_COLUMNS`), the columns of the derived ``yfcc4k_latlon.csv``;
    titles, descriptions and tags are dropped. Columns are taken by header name, never by position.
    """
    path = Path(csv)
    header = _read_header(path, what="YFCC4k CSV")
    if _is_yfcc100m_header(header):
        frame = _read_frame(path, what="YFCC4k CSV", all_text=True)
        absent = [c for c in YFCC_KEPT_COLUMNS if c not in frame.columns]
        if absent:
            raise CorpusError(f"YFCC4k CSV {str(path)!r} lacks YFCC100M columns {absent}")
        frame = frame[[*REQUIRED_COLUMNS, *YFCC_KEPT_COLUMNS]].rename(columns=YFCC_KEPT_COLUMNS)
        line = pd.to_numeric(frame["yfcc_line"], errors="coerce")
        if line.notna().all() and (line == line.round()).all():
            frame["yfcc_line"] = line.astype(np.int64)
    else:
        frame = _read_frame(path, what="YFCC4k CSV")
    return _finish("yfcc4k", frame, path, image_dir)


def load_generic(
    csv: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None, *, name: str | None = None
) -> EvalDataset:
    """Any CSV with ``IMG_ID, LAT, LON`` columns (names matched case-insensitively); other columns kept.

    The dataset is named ``name``, else after the CSV's stem.
    """
    path = Path(csv)
    frame = _read_frame(path, what="dataset CSV")
    return _finish(name or path.stem, frame, path, image_dir)


def load_dataset(
    name_or_csv: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
    *,
    csv: str | os.PathLike[str] | None = None,
) -> EvalDataset:
    """Load a benchmark by name (``"im2gps3k"``, ``"yfcc4k"``, with ``csv=`` its metadata file) or by CSV path.

    A CSV path picks its loader from the file: a YFCC100M-style header (``LON`` before ``LAT``) or a
    name containing ``yfcc4k`` → `load_yfcc4k`; a name containing ``im2gps3k`` → `load_im2gps3k`;
    anything else → `load_generic`.

    Raises:
        CorpusError: unknown name, a name without ``csv``, a missing file, or a CSV that does not load.
    """
    key = str(name_or_csv).strip().lower()
    if key in KNOWN_DATASETS:
        if csv is None:
            raise CorpusError(
                f"load_dataset({str(name_or_csv)!r}) needs the benchmark's metadata CSV: g3 ships none; "
                f"pass csv=... (e.g. {key}_places365.csv)"
            )
        return load_im2gps3k(csv, image_dir) if key == "im2gps3k" else load_yfcc4k(csv, image_dir)
    if csv is not None:
        raise CorpusError(f"unknown dataset name {str(name_or_csv)!r} with csv=...; known: {list(KNOWN_DATASETS)}")
    path = Path(name_or_csv)
    if not path.is_file():
        raise CorpusError(
            f"{str(name_or_csv)!r} is neither a known dataset name {list(KNOWN_DATASETS)} nor an existing CSV file"
        )
    stem = path.name.lower()
    if "yfcc4k" in stem or _is_yfcc100m_header(_read_header(path, what="dataset CSV")):
        return load_yfcc4k(path, image_dir)
    if "im2gps3k" in stem:
        return load_im2gps3k(path, image_dir)
    return load_generic(path, image_dir)


# --- helpers ---------------------------------------------------------------------------------------


def _read_header(path: Path, *, what: str) -> list[str]:
    if not path.is_file():
        raise CorpusError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise CorpusError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    return [str(c).strip() for c in header]


def _is_yfcc100m_header(header: list[str]) -> bool:
    """The YFCC100M-style header: numeric column names plus IMG_ID, LON and LAT, LON first."""
    if not {"IMG_ID", "LAT", "LON"} <= set(header):
        return False
    numeric = sum(c.isdigit() for c in header)
    return numeric >= 10 and header.index("LON") < header.index("LAT")


def _resolve_columns(header: list[str], path: Path, what: str) -> dict[str, str]:
    """Map each of `REQUIRED_COLUMNS` to the header's column of that name, ignoring case and spaces."""
    found: dict[str, str] = {}
    for want in REQUIRED_COLUMNS:
        matches = [c for c in header if c.strip().upper() == want]
        if not matches:
            raise CorpusError(
                f"{what} {str(path)!r} has no {want} column (case-insensitive); columns found: {header}; "
                f"required: {list(REQUIRED_COLUMNS)}"
            )
        if len(matches) > 1:
            raise CorpusError(f"{what} {str(path)!r} has several {want} columns: {matches}")
        found[want] = matches[0]
    return found


def _read_frame(path: Path, *, what: str, all_text: bool = False) -> pd.DataFrame:
    """Read the CSV: IMG_ID as text, LAT/LON validated float64, the rest as pandas reads it (or as text)."""
    header = _read_header(path, what=what)
    columns = _resolve_columns(header, path, what)
    raw_id, raw_lat, raw_lon = (columns[c] for c in REQUIRED_COLUMNS)
    text_columns = header if all_text else [raw_id, raw_lat, raw_lon]
    na_values = {c: ([] if c in text_columns else _NA_STRINGS) for c in header}
    try:
        frame = pd.read_csv(
            path,
            dtype=dict.fromkeys(text_columns, str),
            keep_default_na=False,
            na_values=na_values,
            encoding="utf-8-sig",
            low_memory=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise CorpusError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.rename(columns={raw_id: "IMG_ID", raw_lat: "LAT", raw_lon: "LON"})
    if frame.empty:
        raise CorpusError(f"{what} {str(path)!r} has a header but no rows")
    frame["IMG_ID"] = frame["IMG_ID"].astype(str).str.strip()
    _check_ids(frame, path, what)
    _check_coordinates(frame, path, what)
    rest = [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    return frame[[*REQUIRED_COLUMNS, *rest]].reset_index(drop=True)


def _line(i: int) -> int:
    """The CSV line number of row ``i`` (line 1 is the header)."""
    return i + 2


def _check_ids(frame: pd.DataFrame, path: Path, what: str) -> None:
    ids = frame["IMG_ID"]
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        lines = [_line(int(i)) for i in empty[:_MAX_EXAMPLES]]
        raise CorpusError(f"{what} {str(path)!r}: {len(empty)} rows have an empty IMG_ID (CSV lines {lines})")
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)
        examples = [f"{ids.iloc[i]!r} (line {_line(int(i))})" for i in first[: 2 * _MAX_EXAMPLES]]
        n_ids = ids[dup].nunique()
        raise CorpusError(
            f"{what} {str(path)!r}: {n_ids} IMG_IDs occur more than once ({int(dup.sum())} rows), e.g. "
            f"{', '.join(examples)}; every image must have exactly one row"
        )
    for i, img_id in enumerate(ids):
        if not _is_relative(img_id):
            raise CorpusError(
                f"{what} {str(path)!r} line {_line(i)}: IMG_ID {img_id!r} is not a relative file name inside "
                "the image folder (absolute, or with '..')"
            )


def _check_coordinates(frame: pd.DataFrame, path: Path, what: str) -> None:
    raw = {c: frame[c].astype(str).str.strip() for c in ("LAT", "LON")}
    lat = pd.to_numeric(raw["LAT"], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(raw["LON"], errors="coerce").to_numpy(dtype=np.float64)
    bad_lat = ~np.isfinite(lat) | (np.abs(np.nan_to_num(lat)) > 90)
    bad_lon = ~np.isfinite(lon) | (np.abs(np.nan_to_num(lon)) > 180)
    bad = np.flatnonzero(bad_lat | bad_lon)
    if len(bad):
        examples = [
            f"line {_line(int(i))} IMG_ID {frame['IMG_ID'].iloc[i]!r}: LAT={raw['LAT'].iloc[i]!r} "
            f"LON={raw['LON'].iloc[i]!r}"
            for i in bad[:_MAX_EXAMPLES]
        ]
        hint = ""
        if bad_lat.any() and not bad_lon.any() and np.isfinite(lat).all() and (np.abs(lat) <= 180).all():
            hint = "; latitudes beyond ±90 suggest LAT and LON are swapped in the header"
        raise CorpusError(
            f"{what} {str(path)!r}: {len(bad)} rows have a missing, non-numeric or out-of-range coordinate "
            f"(LAT in [-90, 90], LON in [-180, 180]): {'; '.join(examples)}{hint}"
        )
    frame["LAT"] = lat
    frame["LON"] = lon


def _is_relative(img_id: str) -> bool:
    parts = PurePosixPath(img_id.replace("\\", "/"))
    return not parts.is_absolute() and ".." not in parts.parts and not Path(img_id).is_absolute()


def _check_relative(img_id: str, name: str) -> None:
    if not isinstance(img_id, str) or not img_id or not _is_relative(img_id):
        raise CorpusError(f"dataset {name!r}: {img_id!r} is not a relative image file name inside the image folder")


def _finish(name: str, frame: pd.DataFrame, source: Path, image_dir: str | os.PathLike[str] | None) -> EvalDataset:
    """Check the row count, scan the image folder for missing files and build the dataset."""
    expected = EXPECTED_ROWS.get(name)
    if expected is not None and len(frame) != expected:
        logger.warning("%s: %s has %d rows; the published benchmark has %d", name, source, len(frame), expected)
    folder: Path | None = None
    missing: list[str] = []
    if image_dir is not None:
        folder = Path(image_dir)
        if not folder.is_dir():
            raise CorpusError(f"image folder {str(folder)!r} of dataset {name!r} does not exist or is not a folder")
        missing = [img_id for img_id in frame["IMG_ID"] if not (folder / img_id).is_file()]
        if missing:
            logger.warning(
                "%s: %d of %d images are missing from %s; they count as wrong answers (denominator %d)",
                name,
                len(missing),
                len(frame),
                folder,
                len(frame),
            )
        else:
            logger.info("%s: all %d images found in %s", name, len(frame), folder)
    return EvalDataset(name=name, frame=frame, image_dir=folder, missing=missing, source=source)
