"""Reading coordinates out of LMM answers: a table of real-world shapes, statistics, and properties."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from g3.lmm.parse import METHODS, ParsedAnswer, ParseStats, parse_answer, parse_answers

PARIS_DMS = (48 + 51 / 60 + 24 / 3600, 2 + 21 / 60 + 3 / 3600)

# (id, answer text, expected (lat, lon, method) or None)
CASES: list[tuple[str, str, tuple[float, float, str] | None]] = [
    # --- strict JSON
    ("plain_json", '{"latitude": 48.8566, "longitude": 2.3522}', (48.8566, 2.3522, "json")),
    ("json_whitespace", '\n  {"latitude": 48.85, "longitude": 2.35}  \n', (48.85, 2.35, "json")),
    (
        "json_extra_keys",
        '{"latitude": 48.85, "longitude": 2.35, "city": "Paris", "confidence": 0.8}',
        (48.85, 2.35, "json"),
    ),
    ("json_fenced", '```json\n{"latitude": 48.85, "longitude": 2.35}\n```', (48.85, 2.35, "json")),
    (
        "json_fenced_after_prose",
        'The architecture is Haussmannian.\n```json\n{"latitude": 48.85, "longitude": 2.35}\n```',
        (48.85, 2.35, "json"),
    ),
    ("json_negative", '{"latitude": -33.8688, "longitude": 151.2093}', (-33.8688, 151.2093, "json")),
    ("json_integers", '{"latitude": 48, "longitude": 2}', (48.0, 2.0, "json")),
    ("json_exponent", '{"latitude": 4.885e1, "longitude": 2.35E0}', (48.85, 2.35, "json")),
    ("null_island", '{"latitude": 0, "longitude": 0}', (0.0, 0.0, "json")),
    ("json_edges", '{"latitude": -90, "longitude": 180}', (-90.0, 180.0, "json")),
    # --- JSON-ish objects
    (
        "json_after_reasoning",
        'The signs are in French and the tower is the Eiffel Tower, so: {"latitude": 48.858, "longitude": 2.294}',
        (48.858, 2.294, "json_lenient"),
    ),
    (
        "json_self_correction_last_wins",
        'My first guess: {"latitude": 40.7, "longitude": -74.0}\nActually, the street signs are French: '
        '{"latitude": 48.85, "longitude": 2.35}',
        (48.85, 2.35, "json_lenient"),
    ),
    (
        "two_fenced_blocks_last_wins",
        '```json\n{"latitude": 1.5, "longitude": 2.5}\n```\nCorrection:\n'
        '```json\n{"latitude": 3.5, "longitude": 4.5}\n```',
        (3.5, 4.5, "json"),
    ),
    (
        "prompt_template_echoed",
        'Format: {"latitude": float, "longitude": float}\n{"latitude": 48.85, "longitude": 2.35}',
        (48.85, 2.35, "json_lenient"),
    ),
    ("only_the_template", 'Answer as {"latitude": float, "longitude": float}.', None),
    (
        "json_then_object_without_coordinates",
        '{"latitude": 48.85, "longitude": 2.35} {"confidence": "high"}',
        (48.85, 2.35, "json_lenient"),
    ),
    ("python_repr", "{'latitude': 48.85, 'longitude': 2.35}", (48.85, 2.35, "json_lenient")),
    ("trailing_comma", '{"latitude": 48.85, "longitude": 2.35,}', (48.85, 2.35, "json_lenient")),
    ("unquoted_keys", "{latitude: 48.85, longitude: 2.35}", (48.85, 2.35, "json_lenient")),
    ("equals_signs", "Location{lat=48.85, lon=2.35}", (48.85, 2.35, "json_lenient")),
    ("lat_lng", '{"lat": 48.85, "lng": 2.35}', (48.85, 2.35, "json_lenient")),
    ("capitalised_keys", '{"Latitude": 48.85, "Longitude": 2.35}', (48.85, 2.35, "json_lenient")),
    ("lon_key_first", '{"lon": 2.35, "lat": 48.85}', (48.85, 2.35, "json_lenient")),
    (
        "nested_location",
        '{"city": "Paris", "location": {"lat": 48.85, "long": 2.35}}',
        (48.85, 2.35, "json_lenient"),
    ),
    ("coordinates_array", '{"coordinates": [48.85, 2.35]}', (48.85, 2.35, "json_lenient")),
    ("geojson_is_lon_lat", '{"type": "Point", "coordinates": [2.35, 48.85]}', (48.85, 2.35, "json_lenient")),
    ("numbers_as_strings", '{"latitude": "48.85", "longitude": "2.35"}', (48.85, 2.35, "json_lenient")),
    (
        "hemisphere_strings",
        '{"latitude": "33.87 S", "longitude": "151.21 E"}',
        (-33.87, 151.21, "json_lenient"),
    ),
    ("unicode_minus_in_json", '{"latitude": −33.87, "longitude": 151.21}', (-33.87, 151.21, "json_lenient")),
    (
        "truncated_outer_complete_inner",
        '{"answer": {"latitude": 1.5, "longitude": 2.5}, "reason": "the architect',
        (1.5, 2.5, "json_lenient"),
    ),
    # --- degrees, minutes, seconds
    ("dms_symbols", "48°51'24\"N 2°21'03\"E", (*PARIS_DMS, "dms")),
    ("dms_primes", "48°51′24″N, 2°21′03″E", (*PARIS_DMS, "dms")),
    ("dms_spaces_words", "48° 51' 24\" North, 2° 21' 3\" East", (*PARIS_DMS, "dms")),
    ("dms_unit_words", "48 deg 51 min 24 sec N, 2 deg 21 min 3 sec E", (*PARIS_DMS, "dms")),
    ("dms_decimal_minutes", "48° 51.4' N, 2° 21.05' E", (48 + 51.4 / 60, 2 + 21.05 / 60, "dms")),
    ("dms_hemisphere_first", "N 48°51'24\" E 2°21'03\"", (*PARIS_DMS, "dms")),
    ("dms_south_west", "22°54'S 43°12'W", (-(22 + 54 / 60), -(43 + 12 / 60), "dms")),
    ("dms_minutes_over_60", "48°75'N 2°21'E", None),
    # --- hemisphere letters and words
    ("hemisphere_after", "The photo was taken at 48.85 N, 2.35 E.", (48.85, 2.35, "hemisphere")),
    ("hemisphere_degrees", "33.9° S 151.2° E", (-33.9, 151.2, "hemisphere")),
    ("hemisphere_before", "S 33.87, E 151.21", (-33.87, 151.21, "hemisphere")),
    ("hemisphere_west", "Coordinates: 40.7128° N, 74.0060° W", (40.7128, -74.006, "hemisphere")),
    ("hemisphere_lon_first", "2.35 E, 48.85 N", (48.85, 2.35, "hemisphere")),
    ("hemisphere_words", "latitude 48.85 north, longitude 2.35 east", (48.85, 2.35, "hemisphere")),
    ("hemisphere_comma_decimals", "48,85 N; 2,35 E", (48.85, 2.35, "hemisphere")),
    ("hemisphere_markdown", "**48.8566° N**, **2.3522° E**", (48.8566, 2.3522, "hemisphere")),
    ("hemisphere_slash", "48.85°N/2.35°E", (48.85, 2.35, "hemisphere")),
    ("road_names_are_not_coordinates", "Road signs for the E 40 and N 7 suggest Belgium.", None),
    ("hemisphere_sign_and_letter", "-33.87 S, 151.21 E", None),
    # --- labelled prose
    ("labelled", "Latitude: 48.85, Longitude: 2.35", (48.85, 2.35, "labelled")),
    ("labelled_lon_first", "Longitude: 2.35\nLatitude: 48.85", (48.85, 2.35, "labelled")),
    (
        "labelled_in_sentence",
        "I estimate the latitude is approximately -22.95 and the longitude is about -43.21.",
        (-22.95, -43.21, "labelled"),
    ),
    ("labelled_short", "lat: 48.85 lon: 2.35", (48.85, 2.35, "labelled")),
    ("labelled_markdown", "**Latitude:** 48.85, **Longitude:** 2.35", (48.85, 2.35, "labelled")),
    ("labelled_markdown_long", "**Long**: 2.35\n**Lat**: 48.85", (48.85, 2.35, "labelled")),
    ("labelled_truncated_json_missing_brace_is_rejected", '{"latitude": 48.85, "longitude": 2.3', None),
    ("labelled_swapped_is_rejected", "Latitude: 151.21, Longitude: -33.87", None),
    # --- bare pairs
    ("pair_parentheses", "I believe this is Paris (48.8566, 2.3522).", (48.8566, 2.3522, "pair")),
    ("pair_brackets", "Final answer: [-33.87, 151.21]", (-33.87, 151.21, "pair")),
    ("pair_whole_answer", "48.85, 2.35", (48.85, 2.35, "pair")),
    ("pair_no_space", "48.85,2.35", (48.85, 2.35, "pair")),
    ("pair_space_separated_decimals", "48.8566 2.3522", (48.8566, 2.3522, "pair")),
    ("pair_integers_whole_answer", "48, 2", (48.0, 2.0, "pair")),
    ("pair_unicode_minus", "−33.87, −70.65", (-33.87, -70.65, "pair")),
    ("pair_en_dash", "(–22.9, –43.2)", (-22.9, -43.2, "pair")),
    ("pair_skips_implausible_years", "Built between (1889, 1890); location (48.85, 2.35)", (48.85, 2.35, "pair")),
    ("pair_after_thousands", "Population 2,161,000; the centre is at 48.85, 2.35", (48.85, 2.35, "pair")),
    ("pair_after_label_for_both", "Lat/Long: 48.85, 2.35", (48.85, 2.35, "pair")),
    ("triple_is_not_a_pair", "(48.85, 2.35, 35)", None),
    ("pair_looks_swapped_is_rejected", "(151.21, -33.87)", None),
    ("pair_integer_count_in_prose", "I can see 3, 4 boats in the harbour.", None),
    ("pair_in_longer_list", "The values were 1.5, 2.5, 3.5.", None),
    ("comma_decimals_without_hemisphere", "48,85, 2,35", None),
    ("comma_decimals_labelled", "Latitude: 48,85, Longitude: 2,35", None),
    # --- no answer
    ("refusal", "I'm sorry, but I can't determine the location of this image.", None),
    ("refusal_curly_apostrophe", "I’m unable to identify where this photo was taken.", None),
    ("garbage", "asdfgh", None),
    ("empty", "", None),
    ("blank", "   \n\t", None),
    ("description_only", "The image shows a beach.", None),
    ("year_in_prose", "Taken in 2015 near the coast", None),
    ("out_of_range_json", '{"latitude": 123, "longitude": 45}', None),
    ("longitude_out_of_range", '{"latitude": 45, "longitude": 200}', None),
    ("nan_json", '{"latitude": NaN, "longitude": 2.35}', None),
    ("infinity_json", '{"latitude": Infinity, "longitude": 2.35}', None),
    ("null_values", '{"latitude": null, "longitude": null}', None),
    ("boolean_values", '{"latitude": true, "longitude": false}', None),
    ("mismatched_hemisphere_string", '{"latitude": "2.35 E", "longitude": "48.85 N"}', None),
    (
        "later_object_cut_off",
        '{"latitude": 48.85, "longitude": 2.35}\nOn reflection: {"latitude": 45.76, "longitude": 4.8',
        None,
    ),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in CASES])
def test_answer_shapes(text: str, expected: tuple[float, float, str] | None) -> None:
    got = parse_answer(text)
    if expected is None:
        assert got is None
        return
    assert got is not None
    lat, lon, method = expected
    assert got.lat == pytest.approx(lat, abs=1e-4)
    assert got.lon == pytest.approx(lon, abs=1e-4)
    assert got.method == method


def test_table_covers_every_method() -> None:
    assert len(CASES) >= 30
    assert {e[2] for _, _, e in CASES if e is not None} == set(METHODS)
    assert len({i for i, _, _ in CASES}) == len(CASES)


def test_refusal_with_a_guess_is_parsed() -> None:
    text = "I can't be certain, but my best guess is 48.85 N, 2.35 E."
    answers, stats = parse_answers([text])
    assert answers == [ParsedAnswer(48.85, 2.35, "hemisphere")]
    assert stats.refusals == 0 and stats.parsed == 1


def test_negative_zero_is_plain_zero() -> None:
    got = parse_answer('{"latitude": -0.0, "longitude": -0.0}')
    assert got is not None and math.copysign(1.0, got.lat) == 1.0 and math.copysign(1.0, got.lon) == 1.0


MIXED = [
    '{"latitude": 48.85, "longitude": 2.35}',  # json
    "33.9° S 151.2° E",  # hemisphere
    '{"latitude": 0, "longitude": 0}',  # json, null island
    "I'm sorry, but I cannot provide the location.",  # refusal
    "asdfgh",  # garbage
    '{"latitude": 123, "longitude": 45}',  # out of range
    "(151.21, -33.87)",  # looks swapped: out of range
    '{"latitude": 48.85, "longitude": 2.3',  # cut off: unparseable, neither refusal nor out of range
    "",
]


def test_stats_on_a_mixed_list() -> None:
    answers, stats = parse_answers(MIXED)
    assert len(answers) == len(MIXED)
    assert [a is not None for a in answers] == [True, True, True, False, False, False, False, False, False]
    assert answers[1] == ParsedAnswer(-33.9, 151.2, "hemisphere")
    assert stats.to_dict() == {
        "answers": 9,
        "parsed": 3,
        "unparseable": 6,
        "out_of_range": 2,
        "refusals": 1,
        "null_island": 1,
        "by_method": {"json": 2, "hemisphere": 1},
    }
    json.dumps(stats.to_dict())


def test_stats_add() -> None:
    _, first = parse_answers(MIXED)
    _, second = parse_answers(["48.85, 2.35", "Sorry, not possible to tell.", "Latitude: 1, Longitude: 2"])
    total = first + second
    assert total.answers == 12 and total.parsed == 5 and total.unparseable == 7
    assert total.refusals == 2 and total.out_of_range == 2 and total.null_island == 1
    assert total.by_method == {"json": 2, "hemisphere": 1, "pair": 1, "labelled": 1}
    by_method = total.to_dict()["by_method"]
    assert isinstance(by_method, dict) and list(by_method) == ["json", "hemisphere", "labelled", "pair"]
    assert first + ParseStats() == first
    assert first.by_method == {"json": 2, "hemisphere": 1}  # operands unchanged


def test_parse_answers_empty() -> None:
    assert parse_answers([]) == ([], ParseStats())


# ----------------------------------------------------------------------------------------------------------
# Properties

LAT = st.floats(min_value=-90, max_value=90, allow_nan=False)
LON = st.floats(min_value=-180, max_value=180, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(lat=LAT, lon=LON)
def test_json_round_trip(lat: float, lon: float) -> None:
    got = parse_answer(json.dumps({"latitude": lat, "longitude": lon}))
    assert got is not None and got.method == "json"
    assert (got.lat, got.lon) == (lat + 0.0, lon + 0.0)


@settings(max_examples=300, deadline=None)
@given(lat=LAT, lon=LON, style=st.sampled_from(["suffix", "prefix", "words", "degrees"]))
def test_hemisphere_round_trip(lat: float, lon: float, style: str) -> None:
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    a, b = f"{abs(lat):.5f}", f"{abs(lon):.5f}"
    text = {
        "suffix": f"{a} {ns}, {b} {ew}",
        "prefix": f"{ns} {a}, {ew} {b}",
        "words": f"The photo was taken at {a} {'north' if ns == 'N' else 'south'} and {b} "
        f"{'east' if ew == 'E' else 'west'}.",
        "degrees": f"{a}°{ns} {b}°{ew}",
    }[style]
    got = parse_answer(text)
    assert got is not None and got.method == "hemisphere", text
    assert abs(got.lat - lat) <= 5e-6 + 1e-12 and abs(got.lon - lon) <= 5e-6 + 1e-12, text


def _dms(value: float, positive: str, negative: str) -> str:
    hundredths = round(abs(value) * 360000)  # hundredths of an arc second
    degrees, rest = divmod(hundredths, 360000)
    minutes, centis = divmod(rest, 6000)
    return f"{degrees}°{minutes:02d}'{centis / 100:05.2f}\"{positive if value >= 0 else negative}"


@settings(max_examples=300, deadline=None)
@given(lat=LAT, lon=LON, sep=st.sampled_from([" ", ", ", "; ", " and "]))
def test_dms_round_trip(lat: float, lon: float, sep: str) -> None:
    text = _dms(lat, "N", "S") + sep + _dms(lon, "E", "W")
    got = parse_answer(text)
    assert got is not None and got.method == "dms", text
    tolerance = 0.005 / 3600 + 1e-9
    assert abs(got.lat - lat) <= tolerance and abs(got.lon - lon) <= tolerance, text


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    got = parse_answer(text)
    assert got is None or (abs(got.lat) <= 90 and abs(got.lon) <= 180)


TRICKY = st.text(alphabet=list("{}[]()\"':,;.-−–+0123456789 \nNSEWnsewlatitudeongLATINF°′″`\\"), max_size=80)


@settings(max_examples=500, deadline=None)
@given(TRICKY)
def test_never_raises_on_coordinate_like_text(text: str) -> None:
    got = parse_answer(text)
    assert got is None or (math.isfinite(got.lat) and abs(got.lat) <= 90 and abs(got.lon) <= 180)
    answers, stats = parse_answers([text])
    assert answers == [got] and stats.answers == 1 and stats.parsed + stats.unparseable == 1
