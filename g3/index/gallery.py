"""`GPSGallery`: a database of coordinates without images, searched by a query image's GPS-aligned vector.

GeoCLIP-style image → GPS retrieval: a fixed set of candidate points (GeoCLIP's 100K gallery, the
GeoEstimation cell centres, any LAT/LON table) is embedded once by the aligner's location encoder and
location head into the GPS-aligned space; a query image's ``gps_aligned`` vector is compared with
every one of them (exact cosine similarity) and the best points are its candidate locations.

Embedding 100K points is cheap next to CLIP but not free, so `GPSGallery.build` caches the embeddings
as a ``.npy`` file named after the aligner's fingerprint and a hash of the coordinates.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
import torch.nn.functional as F

from g3.errors import GeoIndexError, InvalidCoordinatesError
from g3.geo import validate_latlon
from g3.index.geo_index import as_float32_matrix
from g3.io import atomic_open, default_cache_dir

if TYPE_CHECKING:
    from g3.models import GeoAligner

log = logging.getLogger(__name__)

#: ``source`` value of `load_gallery_coordinates` that selects GeoCLIP's 100K gallery.
GEOCLIP_SOURCE: Final = "geoclip"

#: Coordinate column pairs recognised in a gallery CSV (compared case-insensitively), in order of preference.
COORDINATE_COLUMNS: Final = (("lat", "lon"), ("latitude", "longitude"), ("latitude_mean", "longitude_mean"))

#: Lines scanned for the header row of a gallery CSV (GeoEstimation cell files start with two comment lines).
_HEADER_SCAN_LINES: Final = 32

#: Query rows scored per block in `GPSGallery.search`, bounding the (block, M) score matrix.
_SEARCH_BLOCK_ELEMENTS: Final = 1 << 26

#: Tolerance on the norm of cached embedding rows (they are unit vectors).
_CACHE_NORM_TOLERANCE: Final = 1e-3


class _Default(enum.Enum):
    TOKEN = 0


#: Sentinel for "use `gallery_cache_dir()`" in `GPSGallery.build`.
DEFAULT_CACHE: Final = _Default.TOKEN


# -- coordinates -------------------------------------------------------------------------------------


def load_gallery_coordinates(source: str | os.PathLike[str]) -> np.ndarray:
    """Gallery points as a float64 ``(M, 2)`` array of (lat, lon) degrees.

    ``source`` is ``"geoclip"`` (GeoCLIP's 100K gallery from the installed ``geoclip`` package) or a CSV
    path with ``LAT``/``LON``, ``latitude``/``longitude`` or ``latitude_mean``/``longitude_mean``
    columns (case-insensitive). Lines before the header that do not name such columns — ``#``
    comments, or the ``num_images: …`` lines of GeoEstimation's ``cells_50_*.csv`` — are skipped.
    Raises `GeoIndexError` for a missing or unreadable file or one without coordinate columns, and
    `g3.errors.InvalidCoordinatesError` for NaN or out-of-range coordinates.
    """
    if isinstance(source, str) and source.lower() == GEOCLIP_SOURCE:
        from g3.models.geoclip_weights import load_geoclip_gallery

        coords = load_geoclip_gallery()
        what = "GeoCLIP's gallery"
    else:
        coords = _read_coordinate_csv(Path(source))
        what = str(source)
    if len(coords) == 0:
        raise GeoIndexError(f"{what} holds no coordinates; a gallery needs at least one point")
    return validate_latlon(coords, what=what)


def _read_coordinate_csv(path: Path) -> np.ndarray:
    """The (lat, lon) columns of a CSV whose header may follow a few comment lines."""
    import pandas as pd

    if not path.is_file():
        raise GeoIndexError(
            f"gallery source {str(path)!r} is neither {GEOCLIP_SOURCE!r} nor an existing CSV file; check the path"
        )
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            head = [line for _, line in zip(range(_HEADER_SCAN_LINES), fh, strict=False)]
    except (OSError, UnicodeDecodeError) as exc:
        raise GeoIndexError(f"{path} cannot be read as a text CSV ({exc})") from exc

    first_header: list[str] | None = None
    for skip, line in enumerate(head):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        names = [c.strip().strip('"').strip() for c in stripped.split(",")]
        if first_header is None and len(names) > 1:
            first_header = names
        pair = _coordinate_pair(names)
        if pair is None:
            continue
        try:
            frame = pd.read_csv(path, skiprows=skip, usecols=list(pair), encoding="utf-8-sig")
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise GeoIndexError(f"{path}: cannot read columns {list(pair)} ({exc})") from exc
        try:
            return frame[list(pair)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidCoordinatesError(f"{path}: columns {list(pair)} are not all numbers ({exc})") from exc

    expected = " or ".join(f"{lat}/{lon}" for lat, lon in COORDINATE_COLUMNS)
    raise GeoIndexError(
        f"{path} has no coordinate columns: expected {expected} (any case), found columns {first_header or []}"
    )


def _coordinate_pair(names: list[str]) -> tuple[str, str] | None:
    """The header's own spelling of the first recognised (lat, lon) column pair, if any."""
    lower = {n.lower(): n for n in names}
    for lat, lon in COORDINATE_COLUMNS:
        if lat in lower and lon in lower:
            return lower[lat], lower[lon]
    return None


# -- cache -------------------------------------------------------------------------------------------


#: Folder of cached gallery embeddings in a cache folder.
GALLERY_FOLDER: Final = "galleries"


def gallery_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of cached gallery embeddings: ``<cache>/galleries``, ``<cache>`` being ``cache_dir`` (a
    configuration's ``cache_dir``), else g3's cache folder (`g3.io.default_cache_dir`: ``$G3_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/g3``, else ``~/.cache/g3``)."""
    return Path(cache_dir or default_cache_dir()) / GALLERY_FOLDER


def coordinates_digest(coordinates: np.ndarray) -> str:
    """SHA-256 (hex) of the float64 C-order bytes of ``(M, 2)`` coordinates."""
    arr = np.ascontiguousarray(coordinates, dtype=np.float64)
    return hashlib.sha256(arr.tobytes()).hexdigest()


def cache_file_name(fingerprint: str, coordinates: np.ndarray) -> str:
    """``gps-gallery-<aligner fingerprint[:16]>-<coordinates sha256[:16]>.npy``."""
    return f"gps-gallery-{fingerprint[:16]}-{coordinates_digest(coordinates)[:16]}.npy"


def _read_cache(path: Path, rows: int, dim: int) -> np.ndarray | None:
    """Cached ``(rows, dim)`` float32 unit vectors, or None (with a warning) for an unusable file."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable gallery cache %s (%s); re-embedding", path, exc)
        return None
    if arr.shape != (rows, dim) or arr.dtype != np.float32:
        log.warning(
            "ignoring gallery cache %s: it holds %s %s, expected (%d, %d) float32; re-embedding",
            path,
            arr.shape,
            arr.dtype,
            rows,
            dim,
        )
        return None
    norms = np.linalg.norm(arr, axis=1)
    if not np.all(np.abs(norms - 1.0) < _CACHE_NORM_TOLERANCE):  # also catches NaN/inf
        log.warning("ignoring gallery cache %s: its rows are not finite unit vectors; re-embedding", path)
        return None
    return arr


def _write_cache(path: Path, embeddings: np.ndarray) -> None:
    try:
        with atomic_open(path, "wb") as fh:
            np.save(fh, embeddings, allow_pickle=False)
    except OSError as exc:  # a read-only or full cache folder must not fail the build
        log.warning("could not write gallery cache %s (%s); the embeddings are not cached", path, exc)
        return
    log.info("cached %d gallery embeddings in %s", len(embeddings), path)


# -- gallery -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GallerySearchResult:
    """The k best gallery points of each of Q queries; every array is ``(Q, k)``, best first.

    ``scores`` are cosine similarities in the GPS-aligned space, ``rows`` int64 gallery rows,
    ``lat``/``lon`` float64 degrees.
    """

    scores: np.ndarray
    rows: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    @property
    def coordinates(self) -> np.ndarray:
        """``(Q, k, 2)`` (lat, lon) degrees."""
        return np.stack([self.lat, self.lon], axis=-1)


class GPSGallery:
    """Coordinates ``(M, 2)`` with their GPS-aligned embeddings ``(M, D)`` (unit rows), searched exactly.

    Build with `GPSGallery.build` / `GPSGallery.from_source` (embeds with an aligner, cached on disk);
    the constructor does no I/O. ``fingerprint`` records the aligner that produced the embeddings.
    """

    def __init__(self, coordinates: np.ndarray, embeddings: np.ndarray, *, fingerprint: str | None = None) -> None:
        coords = validate_latlon(coordinates, what="gallery coordinates")
        emb = as_float32_matrix(embeddings, "gallery embeddings")
        if len(coords) == 0:
            raise ValueError("a gallery needs at least one point; got 0 coordinates")
        if len(emb) != len(coords):
            raise ValueError(f"{len(coords)} gallery coordinates but {len(emb)} embeddings; they must be row-aligned")
        if not emb.flags.writeable:
            emb = emb.copy()  # torch cannot share a read-only buffer
        self._embeddings = emb  # not copied: shared with the caller's array and with torch
        self._embeddings_t = torch.from_numpy(emb)
        self._coordinates = np.ascontiguousarray(coords, dtype=np.float64)
        self.fingerprint = fingerprint

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        coordinates: np.ndarray,
        aligner: GeoAligner,
        *,
        cache_dir: str | os.PathLike[str] | _Default | None = DEFAULT_CACHE,
        batch_size: int = 8192,
        progress: bool = False,
    ) -> GPSGallery:
        """Embed ``coordinates`` ``(M, 2)`` (lat, lon degrees) with ``aligner.encode_gps``, in batches.

        The embeddings are cached as ``.npy`` in ``cache_dir`` (default `gallery_cache_dir()`; None: no
        cache) under a name made from the aligner's fingerprint and the coordinates' hash, so a second
        build with the same aligner and points loads them instead. An unusable cache file is rewritten.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        coords = validate_latlon(coordinates, what="gallery coordinates")
        if len(coords) == 0:
            raise ValueError("a gallery needs at least one point; got 0 coordinates")
        fingerprint = aligner.fingerprint()
        folder = gallery_cache_dir() if cache_dir is DEFAULT_CACHE else cache_dir
        path = None if folder is None else Path(folder) / cache_file_name(fingerprint, coords)

        if path is not None:
            cached = _read_cache(path, len(coords), aligner.embed_dim)
            if cached is not None:
                log.info("loaded %d gallery embeddings from cache %s", len(cached), path)
                return cls(coords, cached, fingerprint=fingerprint)

        log.info("embedding %d gallery points with aligner %s…", len(coords), fingerprint[:12])
        embeddings = embed_coordinates(coords, aligner, batch_size=batch_size, progress=progress)
        if path is not None:
            _write_cache(path, embeddings)
        return cls(coords, embeddings, fingerprint=fingerprint)

    @classmethod
    def from_source(cls, source: str | os.PathLike[str], aligner: GeoAligner, **kwargs: Any) -> GPSGallery:
        """`load_gallery_coordinates` (``"geoclip"`` or a CSV path) then `build` with ``kwargs``."""
        return cls.build(load_gallery_coordinates(source), aligner, **kwargs)

    # -- access -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._coordinates)

    def __repr__(self) -> str:
        fp = f"{self.fingerprint[:12]}…" if self.fingerprint else None
        return f"GPSGallery(points={len(self)}, dim={self.dim}, aligner={fp})"

    @property
    def dim(self) -> int:
        """Width ``D`` of the GPS-aligned space."""
        return int(self._embeddings.shape[1])

    @property
    def coordinates(self) -> np.ndarray:
        """``(M, 2)`` float64 (lat, lon) degrees (a read-only view)."""
        return _read_only(self._coordinates)

    @property
    def embeddings(self) -> np.ndarray:
        """``(M, D)`` float32 unit vectors in the GPS-aligned space (a read-only view)."""
        return _read_only(self._embeddings)

    # -- search -----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 5) -> GallerySearchResult:
        """The ``k`` gallery points most similar to each GPS-aligned query ``(Q, D)`` (or ``(D,)``).

        Queries are L2-normalised, so ``scores`` are cosine similarities. ``k`` above the gallery
        size is clamped to it. Exact: one matrix product per block of queries, then top-k.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = as_float32_matrix(queries, "gallery queries")
        if q.shape[1] != self.dim:
            raise ValueError(
                f"queries have width {q.shape[1]} but the gallery's embeddings have width {self.dim}; query with "
                "GPS-aligned image vectors (`aligner.encode_image(...).gps_aligned`) of the aligner that built it"
            )
        k = min(k, len(self))
        qt = F.normalize(torch.tensor(q), dim=-1)  # a copy: the caller's array may be read-only
        block = max(1, _SEARCH_BLOCK_ELEMENTS // len(self))
        scores = np.empty((len(q), k), dtype=np.float32)
        rows = np.empty((len(q), k), dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(q), block):
                sims = qt[start : start + block] @ self._embeddings_t.T
                top = torch.topk(sims, k, dim=1, largest=True, sorted=True)
                scores[start : start + block] = top.values.numpy()
                rows[start : start + block] = top.indices.numpy()
        lat = self._coordinates[rows, 0]
        lon = self._coordinates[rows, 1]
        return GallerySearchResult(scores=scores, rows=rows, lat=lat, lon=lon)


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def embed_coordinates(
    coordinates: np.ndarray, aligner: GeoAligner, *, batch_size: int = 8192, progress: bool = False
) -> np.ndarray:
    """GPS-aligned embeddings ``(M, D)`` float32 of already validated ``(M, 2)`` (lat, lon) degrees.

    Runs ``aligner.encode_gps`` without gradients in eval mode (the aligner's mode is restored).
    """
    from tqdm.auto import tqdm

    out = np.empty((len(coordinates), aligner.embed_dim), dtype=np.float32)
    was_training = aligner.training
    aligner.eval()
    try:
        with torch.no_grad():
            starts = range(0, len(coordinates), batch_size)
            for start in tqdm(starts, desc="embedding gallery", unit="batch", disable=not progress):
                batch = torch.from_numpy(np.ascontiguousarray(coordinates[start : start + batch_size]))
                emb = aligner.encode_gps(batch, validate=False)
                out[start : start + len(batch)] = emb.detach().float().cpu().numpy()
    finally:
        aligner.train(was_training)
    return out
