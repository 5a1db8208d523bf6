"""Read GPS coordinates out of an LMM's free-text answer, and count what could not be read.

G3's prompts ask for ``{"latitude": …, "longitude": …}``, but sampled answers come in many shapes: fenced
JSON, Python dicts, prose with degrees-minutes-seconds or hemisphere letters, bare pairs, refusals. G3's
original code turned every unreadable answer into (0, 0); here such an answer is dropped (``None``) and
counted in `ParseStats` instead.

`parse_answer` tries these methods in order, and the first one that finds coordinates decides:

1. ``"json"``: the whole answer, or a fenced code block, is strict JSON with numeric ``latitude`` and
   ``longitude`` keys (extra keys allowed). ``"json_lenient"``: any other JSON-ish object in the text,
   read by a forgiving parser (single quotes, unquoted keys, trailing commas, ``=`` for ``:``, keys
   ``lat``/``lng``/``lon``/``long`` in any case, a nested location object, a ``coordinates``
   ``[lat, lon]`` array, numbers as strings such as ``"48.85"`` or ``"48.85 N"``). When the text holds
   several objects with coordinates, the **last** one wins: models correct themselves, and their final
   object is the answer. Inside one object the first location found (depth first) wins.
2. ``"dms"``: degrees-minutes(-seconds), ``48°51'24"N 2°21'03"E``, ``48° 51.4' N``, ``48 deg 51 min N``.
3. ``"hemisphere"``: decimal degrees with N/S/E/W letters or words, before or after the number.
4. ``"labelled"``: ``Latitude: 48.85, Longitude: 2.35`` in prose, either order.
5. ``"pair"``: a bare ``48.85, 2.35`` / ``(48.85, 2.35)`` / ``[48.85, 2.35]``, the first plausible one.

For methods 2–5 the first match in the text wins (prose tends to state the answer, then elaborate).

Decisions on ambiguous answers (we never guess):

* coordinates outside [-90, 90] × [-180, 180], NaN or infinite are rejected, never swapped or wrapped,
  even when swapping would make them valid; a bare pair that looks swapped (``151.2, -33.9``) rejects
  the answer rather than being skipped for a later pair;
* a sign together with a hemisphere letter (``-33.9 S``) and a hemisphere that contradicts its label
  (``"latitude": "2.3 E"``) are rejected;
* comma decimals are read only right before a hemisphere letter (``48,85 N; 2,35 E``); elsewhere
  ``48,85`` could be a decimal, a thousands separator or a list, and is not read;
* a bare pair of two integers is read only when bracketed or when it is the whole answer (``48, 2``),
  so that counts in prose (``I see 3, 4 boats``) are not coordinates; a pair inside a longer
  comma-separated list of numbers (``48.85, 2.35, 35``) is not read;
* one hemisphere letter before a whole number with no degree sign (``E 40``, ``N7``) is a road name,
  not a coordinate (``N 48.0``, ``N 48°`` and ``North 48`` are read);
* a JSON object with coordinate keys that is cut off before its closing brace (the answer hit
  ``max_tokens``) rejects the answer, since its last number may be truncated;
* GeoJSON (``{"type": "Point", "coordinates": [lon, lat]}``) and keys named ``lonlat``/``lnglat`` are
  read longitude first, as they declare;
* (0, 0) is accepted like any other answer but counted as ``null_island`` in the statistics.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: Method names, in the order `parse_answer` tries them.
METHODS: tuple[str, ...] = ("json", "json_lenient", "dms", "hemisphere", "labelled", "pair")

#: An unparseable answer that matches one of these (case-insensitive, after normalising curly
#: apostrophes) is counted as a refusal.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bsorry\b",
    r"\bi(?:'m| am) (?:unable|not able)\b",
    r"\bi (?:can't|cannot|can not|couldn't|could not)\b",
    r"\b(?:unable to|cannot|can't|can not) (?:determine|identify|provide|pinpoint|tell|locate)\b",
    r"\b(?:not possible|impossible) to\b",
    r"\bas an ai\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)

Axis = Literal["lat", "lon"]
_Status = Literal["parsed", "out_of_range", "truncated", "none"]


@dataclass(frozen=True)
class ParsedAnswer:
    """Coordinates read from one answer, in degrees, and the method (one of `METHODS`) that read them."""

    lat: float
    lon: float
    method: str


@dataclass
class ParseStats:
    """Counts over a list of answers.

    ``unparseable`` is ``answers - parsed``; ``out_of_range`` (numbers found, coordinates invalid) and
    ``refusals`` are disjoint parts of it. ``null_island`` counts parsed (0, 0) answers, ``by_method``
    the parsed answers per method.
    """

    answers: int = 0
    parsed: int = 0
    unparseable: int = 0
    out_of_range: int = 0
    refusals: int = 0
    null_island: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: ParseStats) -> ParseStats:
        methods = dict(self.by_method)
        for name, count in other.by_method.items():
            methods[name] = methods.get(name, 0) + count
        return ParseStats(
            answers=self.answers + other.answers,
            parsed=self.parsed + other.parsed,
            unparseable=self.unparseable + other.unparseable,
            out_of_range=self.out_of_range + other.out_of_range,
            refusals=self.refusals + other.refusals,
            null_island=self.null_island + other.null_island,
            by_method=methods,
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy (``by_method`` in `METHODS` order)."""
        order = {name: i for i, name in enumerate(METHODS)}
        return {
            "answers": self.answers,
            "parsed": self.parsed,
            "unparseable": self.unparseable,
            "out_of_range": self.out_of_range,
            "refusals": self.refusals,
            "null_island": self.null_island,
            "by_method": dict(sorted(self.by_method.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))),
        }


def parse_answer(text: str) -> ParsedAnswer | None:
    """The coordinates an answer gives, or None when it gives none that are valid. Never raises."""
    return _parse(text)[0]


def parse_answers(texts: Sequence[str]) -> tuple[list[ParsedAnswer | None], ParseStats]:
    """`parse_answer` of every text (same order) and the statistics of the batch."""
    results: list[ParsedAnswer | None] = []
    stats = ParseStats(answers=len(texts))
    for text in texts:
        answer, status = _parse(text)
        results.append(answer)
        if answer is not None:
            stats.parsed += 1
            stats.by_method[answer.method] = stats.by_method.get(answer.method, 0) + 1
            stats.null_island += int(answer.lat == 0.0 and answer.lon == 0.0)
            continue
        stats.unparseable += 1
        if status == "out_of_range":
            stats.out_of_range += 1
        elif status == "none" and isinstance(text, str) and _REFUSAL.search(_normalise(text)):
            stats.refusals += 1
    return results, stats


# ----------------------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class _Found:
    lat: float
    lon: float
    method: str


class _Truncated:
    """Marker: the answer's final JSON object was cut off."""


_TRUNCATED = _Truncated()
_Result = _Found | _Truncated | None


def _parse(text: str) -> tuple[ParsedAnswer | None, _Status]:
    if not isinstance(text, str) or not text.strip():
        return None, "none"
    norm = _normalise(text)
    finders: tuple[Callable[[str], _Result], ...] = (_find_dms, _find_hemisphere, _find_labelled, _find_pair)
    found = _find_json(text, norm)
    for finder in finders:
        if found is not None:
            break
        found = finder(norm)
    if found is None:
        return None, "none"
    if isinstance(found, _Truncated):
        return None, "truncated"
    if not _valid(found.lat, found.lon):
        return None, "out_of_range"
    return ParsedAnswer(found.lat + 0.0, found.lon + 0.0, found.method), "parsed"


def _valid(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0


_TRANSLATION = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\ufe63": "-",  # small hyphen-minus
        "\uff0d": "-",  # fullwidth hyphen-minus
        "\u2032": "'",  # prime
        "\u2018": "'",
        "\u2019": "'",
        "\u02b9": "'",
        "\u00b4": "'",
        "\u2033": '"',  # double prime
        "\u201c": '"',
        "\u201d": '"',
        "\u02ba": '"',
        "\u00ba": "°",  # masculine ordinal, often typed for the degree sign
        "\u02da": "°",  # ring above
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
    }
)


def _normalise(text: str) -> str:
    """Map look-alike characters to ASCII ones, one character for one (positions are kept)."""
    return text.translate(_TRANSLATION)


# ----------------------------------------------------------------------------------------------------------
# JSON


class _Incomplete(Exception):
    """The text ended inside a value."""


class _Invalid(Exception):
    """Not a JSON-ish value."""


_MAX_DEPTH = 32
_LENIENT_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_LENIENT_CONSTANTS: dict[str, object] = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "null": None,
    "None": None,
    "NaN": math.nan,
    "nan": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "inf": math.inf,
    "-inf": -math.inf,
}
_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$\-]*")
_BARE_VALUE = re.compile(r"-?[A-Za-z_][\w .\-]*")
_WS = re.compile(r"\s*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class _Lenient:
    """A forgiving reader of JSON, JSON5-ish and Python-literal objects (one value from a position)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def skip(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        return match.end() if match else pos

    def peek(self, pos: int) -> str:
        if pos >= len(self.text):
            raise _Incomplete
        return self.text[pos]

    def value(self, pos: int, depth: int) -> tuple[object, int]:
        if depth > _MAX_DEPTH:
            raise _Invalid
        pos = self.skip(pos)
        char = self.peek(pos)
        if char == "{":
            return self.mapping(pos, depth)
        if char in "[(":
            return self.sequence(pos, depth)
        if char in "\"'":
            return self.string(pos)
        for name, constant in _LENIENT_CONSTANTS.items():
            if self.text.startswith(name, pos) and not self.text[pos + len(name) : pos + len(name) + 1].isalnum():
                return constant, pos + len(name)
        number = _LENIENT_NUMBER.match(self.text, pos)
        if number:
            return float(number.group()), number.end()
        bare = _BARE_VALUE.match(self.text, pos)
        if bare:
            return bare.group().strip(), bare.end()
        raise _Invalid

    def mapping(self, pos: int, depth: int) -> tuple[dict[str, object], int]:
        out: dict[str, object] = {}
        pos = self.skip(pos + 1)
        while self.peek(pos) != "}":
            char = self.peek(pos)
            if char in "\"'":
                key, pos = self.string(pos)
            else:
                ident = _IDENTIFIER.match(self.text, pos)
                if not ident:
                    raise _Invalid
                key, pos = ident.group(), ident.end()
            pos = self.skip(pos)
            if self.peek(pos) not in ":=":
                raise _Invalid
            out[key], pos = self.value(pos + 1, depth + 1)
            pos = self.skip(pos)
            char = self.peek(pos)
            if char == ",":
                pos = self.skip(pos + 1)
            elif char != "}":
                raise _Invalid
        return out, pos + 1

    def sequence(self, pos: int, depth: int) -> tuple[list[object], int]:
        close = "]" if self.text[pos] == "[" else ")"
        out: list[object] = []
        pos = self.skip(pos + 1)
        while self.peek(pos) != close:
            item, pos = self.value(pos, depth + 1)
            out.append(item)
            pos = self.skip(pos)
            char = self.peek(pos)
            if char == ",":
                pos = self.skip(pos + 1)
            elif char != close:
                raise _Invalid
        return out, pos + 1

    def string(self, pos: int) -> tuple[str, int]:
        quote = self.text[pos]
        chars: list[str] = []
        pos += 1
        while True:
            char = self.peek(pos)
            if char == quote:
                return "".join(chars), pos + 1
            if char == "\n":
                raise _Invalid
            if char == "\\":
                escaped = self.peek(pos + 1)
                if escaped == "u":
                    digits = self.text[pos + 2 : pos + 6]
                    if len(digits) < 4:
                        raise _Incomplete
                    try:
                        chars.append(chr(int(digits, 16)))
                    except ValueError as exc:
                        raise _Invalid from exc
                    pos += 6
                    continue
                chars.append(_ESCAPES.get(escaped, escaped))
                pos += 2
                continue
            chars.append(char)
            pos += 1


_FENCE = re.compile(r"```[ \t]*(?:[A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_COORD_KEY = re.compile(r"\b(?:lat|latitude|lon|lng|long|longitude|coordinates?|coords?|location)\b", re.IGNORECASE)
_LAT_KEYS = ("latitude", "lat")
_LON_KEYS = ("longitude", "lon", "lng", "long")
_LATLON_KEYS = (
    "coordinates",
    "coordinate",
    "coords",
    "coord",
    "latlon",
    "lat_lon",
    "latlng",
    "lat_lng",
    "latlong",
    "lat_long",
    "location",
    "position",
    "gps",
    "point",
    "center",
)
_LONLAT_KEYS = ("lonlat", "lon_lat", "lnglat", "lng_lat")
_MAX_NESTING = 4


def _find_json(raw: str, norm: str) -> _Result:
    """The coordinates of the last JSON-ish object that has some; `_TRUNCATED` if a later one is cut off."""
    stripped = raw.strip()
    if stripped.startswith("{"):
        whole = _strict_json(stripped)
        if isinstance(whole, dict):
            got = _from_mapping(whole, 0)
            if got is not None:
                return _Found(*got, "json" if _canonical(whole) else "json_lenient")
    reader = _Lenient(norm)
    objects: list[tuple[int, int, dict[str, object]]] = []
    truncated_at = -1
    pos = norm.find("{")
    while pos != -1:
        try:
            value, end = reader.mapping(pos, 0)
        except _Incomplete:
            if _COORD_KEY.search(norm, pos):
                truncated_at = pos  # the last cut-off object with coordinate keys
            pos = norm.find("{", pos + 1)
            continue
        except (_Invalid, RecursionError, ValueError, OverflowError):
            pos = norm.find("{", pos + 1)
            continue
        objects.append((pos, end, value))
        pos = norm.find("{", end)
    for start, end, obj in reversed(objects):
        got = _from_mapping(obj, 0)
        if got is None:
            continue
        if start < truncated_at:
            return _TRUNCATED
        return _Found(*got, "json" if _fenced_strict(raw, start, end) else "json_lenient")
    return _TRUNCATED if truncated_at >= 0 else None


def _strict_json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _canonical(obj: dict[str, object]) -> bool:
    return all(type(obj.get(key)) in (int, float) for key in ("latitude", "longitude"))


def _fenced_strict(raw: str, start: int, end: int) -> bool:
    """Whether ``raw[start:end]`` is the whole content of a fenced block, strict JSON in the canonical form."""
    for fence in _FENCE.finditer(raw):
        if fence.start(1) <= start and end <= fence.end(1) and fence.group(1).strip() == raw[start:end]:
            obj = _strict_json(raw[start:end])
            return isinstance(obj, dict) and _canonical(obj)
    return False


def _norm_key(key: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _from_mapping(obj: dict[str, object], depth: int) -> tuple[float, float] | None:
    """(lat, lon) from a parsed object; NaN marks a value that was found but is invalid."""
    keys: dict[str, object] = {}
    for key, val in obj.items():
        keys.setdefault(_norm_key(key), val)
    lat_key = next((k for k in _LAT_KEYS if k in keys), None)
    lon_key = next((k for k in _LON_KEYS if k in keys), None)
    if lat_key is not None and lon_key is not None:
        lat, lon = _coordinate_value(keys[lat_key], "lat"), _coordinate_value(keys[lon_key], "lon")
        return (lat, lon) if lat is not None and lon is not None else None
    geojson = _norm_key(keys.get("type", "")) == "point"
    for key in (*_LATLON_KEYS, *_LONLAT_KEYS):
        if key not in keys:
            continue
        reverse = key in _LONLAT_KEYS or (geojson and key == "coordinates")
        got = _pair_value(keys[key], reverse)
        if got is not None:
            return got
    if depth < _MAX_NESTING:
        for val in obj.values():
            items = val if isinstance(val, list) else [val]
            for item in items:
                if isinstance(item, dict):
                    got = _from_mapping(item, depth + 1)
                    if got is not None:
                        return got
    return None


def _pair_value(value: object, reverse: bool) -> tuple[float, float] | None:
    if isinstance(value, list) and len(value) == 2:
        first, second = _coordinate_value(value[0], None), _coordinate_value(value[1], None)
        if first is None or second is None:
            return None
        return (second, first) if reverse else (first, second)
    if isinstance(value, dict):
        return _from_mapping(value, _MAX_NESTING)
    if isinstance(value, str) and not reverse:
        for finder in (_find_dms, _find_hemisphere, _find_pair):
            found = finder(_normalise(value))
            if isinstance(found, _Found):
                return found.lat, found.lon
    return None


def _coordinate_value(value: object, axis: Axis | None) -> float | None:
    """A number, or a string holding one coordinate (plain, with a hemisphere, or DMS); None if unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = _normalise(value).strip()
    if re.fullmatch(r"[-+]?\d+(?:\.\d+)?\s*°?", text):
        return float(text.rstrip("°").strip())
    for pattern in (_DMS_SUFFIX, _DMS_PREFIX, _HEMI_SUFFIX, _HEMI_PREFIX):
        match = pattern.fullmatch(text)
        if match:
            number, token_axis = _token_value(match)
            if axis is not None and token_axis is not None and token_axis != axis:
                return math.nan
            return number
    return None


# ----------------------------------------------------------------------------------------------------------
# Prose: degrees-minutes-seconds and hemisphere letters

_HEMI = r"(?:(?<![A-Za-z])[NSEW](?![A-Za-z])|(?i:north|south|east|west)(?![A-Za-z]))"
_DEG_MARK = r"(?:°|(?i:deg(?:rees?)?)\.?(?![A-Za-z])|d(?![A-Za-z]))"
_MIN_MARK = r"(?:'|(?i:min(?:utes?)?)\.?(?![A-Za-z])|m(?![A-Za-z]))"
_SEC_MARK = r"(?:''|\"|(?i:sec(?:onds?)?)\.?(?![A-Za-z])|s(?![a-z]))"
_DMS_BODY = (
    r"(?<![\d.])(?P<sign>-)?(?P<deg>\d{1,3})\s*"
    + _DEG_MARK
    + r"\s*(?P<min>(?>\d{1,2}(?:\.\d+)?))\s*"
    + _MIN_MARK
    + r"(?:\s*(?P<sec>(?>\d{1,2}(?:\.\d+)?))\s*"
    + _SEC_MARK
    + r")?"
)
_DMS_SUFFIX = re.compile(_DMS_BODY + r"(?:\s*(?P<hemi>" + _HEMI + r"))?")
_DMS_PREFIX = re.compile(r"(?P<hemi>" + _HEMI + r")\s*" + _DMS_BODY)

# A decimal number of degrees; a comma decimal is allowed here only (it is always next to a hemisphere).
_HEMI_NUMBER = r"(?P<sign>-)?(?P<num>(?>\d{1,3}(?:[.,]\d+)?))(?!\d|[.,]\d|\s*°?\s*\d|\s*['\"])"
_DEG_WORD = r"(?:\s*°)?(?:\s*(?i:deg(?:rees?)?)\.?)?"
_HEMI_SUFFIX = re.compile(r"(?<![\w.])(?<!\d,)" + _HEMI_NUMBER + _DEG_WORD + r"\s*(?P<hemi>" + _HEMI + r")")
_HEMI_PREFIX = re.compile(r"(?P<hemi>" + _HEMI + r")\s*[:=]?\s*" + _HEMI_NUMBER + _DEG_WORD + r"(?![A-Za-z])")

_MAX_GAP = 40


@dataclass(frozen=True)
class _Token:
    value: float
    axis: Axis | None
    start: int
    end: int


def _token_value(match: re.Match[str]) -> tuple[float, Axis | None]:
    """The signed degrees of a DMS or hemisphere match (NaN when inconsistent) and its axis, if named."""
    groups = match.groupdict()
    if groups.get("deg") is not None:
        minutes = float(groups["min"])
        seconds = float(groups["sec"]) if groups.get("sec") else 0.0
        value = int(groups["deg"]) + minutes / 60 + seconds / 3600
        if minutes >= 60 or seconds >= 60:
            value = math.nan
    else:
        value = float(groups["num"].replace(",", "."))
    hemi = groups.get("hemi")
    if hemi is None:
        return (-value if groups.get("sign") else value), None
    letter = hemi[0].upper()
    if groups.get("sign"):
        value = math.nan  # "-33.9 S": which sign is meant?
    axis: Axis = "lat" if letter in "NS" else "lon"
    return (-value if letter in "SW" else value), axis


def _road_name(match: re.Match[str]) -> bool:
    """``E 40``, ``N7``: one letter before a whole number with no degree sign reads as a road, not a coordinate."""
    hemi, num = match.groupdict().get("hemi"), match.groupdict().get("num")
    if match.re is not _HEMI_PREFIX or hemi is None or num is None or len(hemi) != 1:
        return False
    return not any(c in num for c in ".,") and "°" not in match.group()


def _tokens(pattern: re.Pattern[str], text: str) -> list[_Token]:
    out = []
    for match in pattern.finditer(text):
        if _road_name(match):
            continue
        value, axis = _token_value(match)
        out.append(_Token(value, axis, match.start(), match.end()))
    return out


def _first_pair(tokens: list[_Token], text: str) -> tuple[int, float, float] | None:
    """The first two neighbouring tokens that make a (lat, lon): (start, lat, lon)."""
    for a, b in itertools.pairwise(tokens):
        gap = text[a.end : b.start]
        if len(gap) > _MAX_GAP or any(c.isdigit() for c in gap):
            continue
        axes = (a.axis, b.axis)
        if a.axis is None and b.axis is None:
            axes = ("lat", "lon")
        elif a.axis is None:
            axes = ("lon" if b.axis == "lat" else "lat", b.axis)
        elif b.axis is None:
            axes = (a.axis, "lon" if a.axis == "lat" else "lat")
        if axes[0] == axes[1]:
            continue
        return (a.start, a.value, b.value) if axes[0] == "lat" else (a.start, b.value, a.value)
    return None


def _earliest(text: str, method: str, *patterns: re.Pattern[str]) -> _Result:
    """The pair that starts earliest among the token styles (suffix style first on ties)."""
    pairs = [p for p in (_first_pair(_tokens(pattern, text), text) for pattern in patterns) if p is not None]
    if not pairs:
        return None
    _, lat, lon = min(pairs, key=lambda p: p[0])
    return _Found(lat, lon, method)


def _find_dms(text: str) -> _Result:
    return _earliest(text, "dms", _DMS_SUFFIX, _DMS_PREFIX)


def _find_hemisphere(text: str) -> _Result:
    return _earliest(text, "hemisphere", _HEMI_SUFFIX, _HEMI_PREFIX)


# ----------------------------------------------------------------------------------------------------------
# Prose: labelled values and bare pairs

_LABELLED = re.compile(
    r"(?<![A-Za-z])(?P<label>(?i:latitude|longitude|lat|lon|lng)|(?i:long)(?=[\"'*]*\s*[:=]))(?![A-Za-z])[\"']?"
    r"(?:\s*(?:[*:=~≈]|(?i:is|of|at|be|would|about|around|approximately|roughly|near|circa)(?![A-Za-z])|(?i:approx|ca)\.))*"
    r"\s*(?P<sign>[-+])?(?P<num>(?>\d+(?:\.\d+)?))(?!\d|[.,]\d)" + _DEG_WORD + r"(?:\s*(?P<hemi>" + _HEMI + r"))?"
)


def _find_labelled(text: str) -> _Result:
    values: dict[Axis, float] = {}
    for match in _LABELLED.finditer(text):
        axis: Axis = "lat" if match.group("label").lower().startswith("lat") else "lon"
        if axis in values:
            continue
        value = float(match.group("num"))
        if match.group("sign") == "-":
            value = -value
        hemi = match.group("hemi")
        if hemi is not None:
            letter = hemi[0].upper()
            if match.group("sign") or ("lat" if letter in "NS" else "lon") != axis:
                value = math.nan
            elif letter in "SW":
                value = -value
        values[axis] = value
        if len(values) == 2:
            return _Found(values["lat"], values["lon"], "labelled")
    return None


_BLOB = re.compile(r"(?<![\w.])(?P<sign>[-+])?(?P<body>(?>\d+(?:[.,]\d+)*))(?![A-Za-z_])(?:\s*°)?")
_DECIMAL = re.compile(r"\d+\.\d+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PAIR_SEP = re.compile(r"\s*[,;]\s*")
_BEFORE_WHOLE = re.compile(r"[\s(\[]*")
_AFTER_WHOLE = re.compile(r"[\s)\].]*")


@dataclass(frozen=True)
class _Number:
    value: float
    integer: bool
    start: int
    end: int
    ambiguous: bool
    joined_to_previous: bool  # separated from the previous number by a comma inside one blob ("1.5,2.5")


def _numbers(text: str) -> list[_Number]:
    out: list[_Number] = []
    for match in _BLOB.finditer(text):
        body, sign = match.group("body"), -1.0 if match.group("sign") == "-" else 1.0
        parts = body.split(",")
        if len(parts) == 1 and _NUMBER.fullmatch(body):
            out.append(_Number(sign * float(body), "." not in body, match.start(), match.end(), False, False))
        elif len(parts) > 1 and all(_DECIMAL.fullmatch(p) for p in parts):
            pos = match.start("body")
            for i, part in enumerate(parts):
                start = match.start() if i == 0 else pos
                value = float(part) * (sign if i == 0 else 1.0)
                end = match.end() if i == len(parts) - 1 else pos + len(part)
                out.append(_Number(value, False, start, end, False, i > 0))
                pos += len(part) + 1
        else:
            out.append(_Number(math.nan, False, match.start(), match.end(), True, False))
    return out


def _separated(text: str, a: _Number, b: _Number) -> bool:
    """Whether two numbers read as one pair: a comma or semicolon between them (or a space, for decimals)."""
    if b.joined_to_previous:
        return True
    gap = text[a.end : b.start]
    if _PAIR_SEP.fullmatch(gap):
        return True
    return bool(gap) and gap.isspace() and not a.integer and not b.integer


def _find_pair(text: str) -> _Result:
    numbers = _numbers(text)
    for i in range(len(numbers) - 1):
        a, b = numbers[i], numbers[i + 1]
        if a.ambiguous or b.ambiguous or not _separated(text, a, b):
            continue
        if (i > 0 and _separated(text, numbers[i - 1], a)) or (
            i + 2 < len(numbers) and _separated(text, b, numbers[i + 2])
        ):
            continue  # part of a longer list of numbers
        if a.integer and b.integer:
            bracketed = text[: a.start].rstrip().endswith(("(", "[")) and text[b.end :].lstrip().startswith((")", "]"))
            whole = _BEFORE_WHOLE.fullmatch(text[: a.start]) and _AFTER_WHOLE.fullmatch(text[b.end :])
            if not (bracketed or whole):
                continue
        if _valid(a.value, b.value):
            return _Found(a.value, b.value, "pair")
        if 90.0 < abs(a.value) <= 180.0 and abs(b.value) <= 90.0:
            return _Found(math.nan, math.nan, "pair")  # looks swapped: reject rather than guess
    return None
