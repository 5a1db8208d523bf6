"""Evaluation outputs: per-group breakdowns, the TopoJSON decoder, the PNG plots and the Markdown/JSON report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from g3.evaluation.breakdown import OTHER, UNKNOWN, breakdown, continent_of, locate_truth
from g3.evaluation.datasets import load_generic
from g3.evaluation.metrics import THRESHOLDS_KM, summarize
from g3.evaluation.plots import (
    LAND_COLOR,
    OCEAN_COLOR,
    PRED_COLOR,
    TRUTH_COLOR,
    WORLD_MAP_SIZE_IN,
    TopoJSONError,
    _pair_segments,
    decode_topojson,
    error_cdf,
    recall_area_curve,
    topojson_features,
    world_map,
    world_map_pixel,
)
from g3.evaluation.report import fmt_km, fmt_percent, write_metrics_json, write_report

PARIS, TOKYO, SYDNEY, PACIFIC = (48.8566, 2.3522), (35.6762, 139.6503), (-33.8688, 151.2093), (0.0, -140.0)


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int64)


def _records(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Synthetic per-image records: truths, noisy predictions (some failed), a skewed group column."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-60, 60, n)
    lon = rng.uniform(-170, 170, n)
    scale = rng.choice([0.005, 0.1, 1.0, 5.0, 20.0], n)
    records = pd.DataFrame(
        {
            "gt_lat": lat,
            "gt_lon": lon,
            "pred_lat": np.clip(lat + rng.normal(0, 1, n) * scale, -89, 89),
            "pred_lon": np.clip(lon + rng.normal(0, 1, n) * scale, -179, 179),
            "country": rng.choice(["A", "B", "C", "D", "E", "F", ""], n, p=[0.35, 0.25, 0.15, 0.1, 0.08, 0.02, 0.05]),
            "S3_Label": rng.integers(0, 3, n),
        }
    )
    records.loc[[3, 17, 40, 41], ["pred_lat", "pred_lon"]] = np.nan  # failed images
    return records


# --- breakdown -------------------------------------------------------------------------------------


def test_continent_of() -> None:
    got = continent_of(["fr", " JP ", "AU", "NA", "VA", "", None, "ZZ", "BR", "US"])
    assert got.tolist() == [
        "Europe",
        "Asia",
        "Oceania",
        "Africa",  # Namibia, not a missing value
        "Europe",  # Vatican, absent from the pycountry-convert table
        UNKNOWN,
        UNKNOWN,
        UNKNOWN,
        "South America",
        "North America",
    ]


def test_locate_truth() -> None:
    pytest.importorskip("reverse_geocode")
    frame = pd.DataFrame([PARIS, TOKYO, SYDNEY, PACIFIC], columns=["LAT", "LON"], index=[10, 11, 12, 13])
    frame["IMG_ID"] = ["p", "t", "s", "o"]
    out = locate_truth(frame)
    assert out["country"].tolist() == ["France", "Japan", "Australia", ""]
    assert out["country_code"].tolist() == ["FR", "JP", "AU", ""]
    assert out["continent"].tolist() == ["Europe", "Asia", "Oceania", "Unknown"]
    assert out.index.tolist() == [10, 11, 12, 13] and out["IMG_ID"].tolist() == ["p", "t", "s", "o"]
    assert "country" not in frame.columns  # a copy
    by_gt = locate_truth(frame.rename(columns={"LAT": "gt_lat", "LON": "gt_lon"}))
    assert by_gt["continent"].tolist() == out["continent"].tolist()
    with pytest.raises(KeyError, match="LAT, LON"):
        locate_truth(frame[["IMG_ID"]])


@pytest.mark.parametrize("convention", ["haversine-le", "geodesic-lt"])
def test_breakdown_equals_summarize_per_group(convention: str) -> None:
    records = _records()
    table = breakdown(records, "country", convention=convention, min_count=20)
    names = records["country"].where(records["country"] != "", UNKNOWN)
    counts = names.value_counts()
    listed = [g for g in table["country"] if g != OTHER]
    assert listed == sorted(listed, key=lambda g: (-counts[g], g))  # by n, descending
    assert table["country"].iloc[-1] == OTHER
    assert set(counts[counts < 20].index) == set(names) - set(listed)
    assert table.attrs["other_groups"] == int((counts < 20).sum())
    assert table["n"].sum() == len(records)
    for row in table.to_dict("records"):
        mask = names.isin(set(names) - set(listed)) if row["country"] == OTHER else names == row["country"]
        subset = records[mask.to_numpy()]
        ok = subset.dropna(subset=["pred_lat"])
        expected = summarize(
            ok[["gt_lat", "gt_lon"]].to_numpy(),
            ok[["pred_lat", "pred_lon"]].to_numpy(),
            convention=convention,  # type: ignore[arg-type]
            thresholds=THRESHOLDS_KM,
            denominator=len(subset),
        )
        assert row["n"] == len(subset) and row["scored"] == len(ok)
        for key, value in expected["accuracy"].items():
            assert row[key] == value
        assert row["median_km"] == expected["median_km"]


def test_breakdown_labels_top_and_errors() -> None:
    records = _records()
    scenes = breakdown(records, "S3_Label", convention="haversine-le")
    assert set(scenes["S3_Label"]) == {"indoor", "natural", "urban"}
    assert list(scenes.columns) == ["S3_Label", "n", "scored", "1km", "25km", "200km", "750km", "2500km", "median_km"]
    top2 = breakdown(records, "country", convention="haversine-le", min_count=1, top=2)
    assert top2["country"].tolist() == ["A", "B", OTHER]
    # a short run: every group is below min_count, yet the largest ones are listed and "other" names the rest
    short = breakdown(records.head(30), "country", convention="haversine-le", min_listed=3)
    counts = records.head(30)["country"].replace("", UNKNOWN).value_counts()
    assert short["country"].tolist()[:3] == sorted(counts.index, key=lambda g: (-counts[g], g))[:3]
    assert short["country"].iloc[-1] == OTHER and short.attrs["other_groups"] == len(counts) - 3
    assert sorted(short.attrs["other_members"]) == sorted([g, int(counts[g])] for g in counts.index[3:])
    custom = breakdown(records, "S3_Label", convention="haversine-le", labels={0: "in", 1: "nat", 2: "urb"})
    assert set(custom["S3_Label"]) == {"in", "nat", "urb"}
    all_failed = records.assign(pred_lat=np.nan)
    failed = breakdown(all_failed, "S3_Label", convention="haversine-le")
    assert (failed["1km"] == 0).all() and failed["median_km"].isna().all() and (failed["scored"] == 0).all()
    with pytest.raises(KeyError, match="pred_lon"):
        breakdown(records.drop(columns="pred_lon"), "country", convention="haversine-le")
    with pytest.raises(ValueError, match="min_count"):
        breakdown(records, "country", convention="haversine-le", min_count=0)


# --- TopoJSON --------------------------------------------------------------------------------------


def test_decode_bundled_countries() -> None:
    features = topojson_features()
    assert len(features) == 177
    rings = decode_topojson()
    assert 177 <= len(rings) <= 400
    points = np.concatenate(rings)
    assert points[:, 0].min() >= -180 and points[:, 0].max() <= 180
    assert points[:, 1].min() >= -90 and points[:, 1].max() <= 90
    assert all(len(r) >= 4 and np.allclose(r[0], r[-1]) for r in rings)  # closed rings
    france = next(f for f in features if f.name == "France")
    outer = [p[0] for p in france.polygons]
    mainland = max(outer, key=len)
    (lon0, lat0), (lon1, lat1) = mainland.min(axis=0), mainland.max(axis=0)
    assert -5.5 < lon0 < -4 and 7.5 < lon1 < 10  # Brittany .. Alsace
    assert 41.5 < lat0 < 43.5 and 50.5 < lat1 < 51.5  # Pyrenees .. Dunkirk
    assert any(p[:, 0].max() < -50 for p in outer)  # French Guiana is a separate polygon


def test_decode_quantized_reversed_arcs(tmp_path: Path) -> None:
    # Two unit squares sharing the arc x=1: the second uses it reversed (~0 == -1).
    topology = {
        "type": "Topology",
        "transform": {"scale": [0.5, 0.25], "translate": [10.0, 20.0]},
        "objects": {
            "shapes": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Polygon", "arcs": [[0, 1]], "properties": {"name": "left"}},
                    {"type": "MultiPolygon", "arcs": [[[-1, 2]]], "id": "7", "properties": {"name": "right"}},
                    {"type": None},
                ],
            }
        },
        # arc 0: (2,0) -> (2,4); arc 1: (2,4) -> (0,4) -> (0,0) -> (2,0); arc 2: (2,0) -> (4,0) -> (4,4) -> (2,4)
        "arcs": [[[2, 0], [0, 4]], [[2, 4], [-2, 0], [0, -4], [2, 0]], [[2, 0], [2, 0], [0, 4], [-2, 0]]],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(topology), encoding="utf-8")
    left, right, empty = topojson_features(path, object_name="shapes")
    assert empty.polygons == []
    assert (left.name, right.name, right.id) == ("left", "right", "7")
    np.testing.assert_allclose(left.polygons[0][0], [[11, 20], [11, 21], [10, 21], [10, 20], [11, 20]])
    np.testing.assert_allclose(right.polygons[0][0], [[11, 21], [11, 20], [12, 20], [12, 21], [11, 21]])
    assert len(decode_topojson(path, object_name="shapes")) == 2
    with pytest.raises(TopoJSONError, match="no object"):
        topojson_features(path, object_name="countries")
    topology["objects"]["shapes"]["geometries"][0]["arcs"] = [[0, 5]]  # type: ignore[index]
    path.write_text(json.dumps(topology), encoding="utf-8")
    with pytest.raises(TopoJSONError, match="out of range"):
        decode_topojson(path, object_name="shapes")
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(TopoJSONError, match="not a TopoJSON"):
        decode_topojson(path)


# --- plots -----------------------------------------------------------------------------------------


def _png(path: Path, min_bytes: int = 10_000) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return np.asarray(image.convert("RGB"), dtype=np.int64)


def _colour_near(pixels: np.ndarray, lat: float, lon: float, color: str, *, radius: int = 1, tol: int = 30) -> bool:
    x, y = world_map_pixel(lat, lon)
    col, row = int(x), int(y)
    patch = pixels[row - radius : row + radius + 1, col - radius : col + radius + 1].reshape(-1, 3)
    return bool((np.abs(patch - _rgb(color)).max(axis=1) <= tol).any())


def test_world_map_pixels(tmp_path: Path) -> None:
    truth = np.array([PARIS, SYDNEY, (-20.0, -100.0)])
    pred = np.array([TOKYO, (np.nan, np.nan), (-20.0, -60.0)])
    path = world_map(truth, pred, tmp_path / "maps" / "world.png")
    assert path == tmp_path / "maps" / "world.png"
    pixels = _png(path)
    assert pixels.shape == (round(WORLD_MAP_SIZE_IN[1] * 100), round(WORLD_MAP_SIZE_IN[0] * 100), 3)
    for lat, lon in truth:
        assert _colour_near(pixels, lat, lon, TRUTH_COLOR), (lat, lon)
    assert _colour_near(pixels, *TOKYO, PRED_COLOR)
    assert _colour_near(pixels, -20.0, -60.0, PRED_COLOR)  # the prediction lands on land in Bolivia/Paraguay
    # Controls: open ocean and inland Australia, away from every point and line, show the background.
    assert _colour_near(pixels, -50.0, -130.0, OCEAN_COLOR, radius=0, tol=3)
    assert _colour_near(pixels, -25.0, 130.0, LAND_COLOR, radius=0, tol=3)
    assert not _colour_near(pixels, -50.0, -130.0, TRUTH_COLOR, radius=3)
    assert [p.name for p in path.parent.iterdir()] == ["world.png"]  # no temporary file left


def test_world_map_lines_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.column_stack((rng.uniform(-60, 70, 300), rng.uniform(-180, 180, 300)))
    pred = np.column_stack((rng.uniform(-60, 70, 300), rng.uniform(-180, 180, 300)))
    _png(world_map(truth, pred, tmp_path / "w.png", max_lines=50))
    _png(world_map(truth, pred, tmp_path / "w0.png", max_lines=0))
    with pytest.raises(ValueError, match="shape"):
        world_map(truth, pred[:5], tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_lines"):
        world_map(truth, pred, tmp_path / "x.png", max_lines=-1)
    # A pair across the antimeridian is drawn the short way, as two pieces.
    pieces = _pair_segments(np.array([[10.0, 170.0]]), np.array([[20.0, -170.0]]))
    assert len(pieces) == 2
    np.testing.assert_allclose(pieces[0], [[170, 10], [180, 15]])
    np.testing.assert_allclose(pieces[1], [[-180, 15], [-170, 20]])


def test_error_cdf_and_recall_area(tmp_path: Path) -> None:
    d = np.array([0.0, 0.5, 3.0, 30.0, 300.0, 3000.0, 19000.0, np.inf])
    path = error_cdf({"a": d, "b": d[:4] * 2}, tmp_path / "cdf.png", denominators={"a": 10})
    _png(path)
    with pytest.raises(ValueError, match="negative"):
        error_cdf({"a": [-1.0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="denominator"):
        error_cdf({"a": d}, tmp_path / "x.png", denominators={"a": 3})
    with pytest.raises(ValueError, match="at least one"):
        error_cdf({}, tmp_path / "x.png")
    areas = np.geomspace(1.0, 5.1e8, 50)
    recall = np.linspace(0.05, 0.95, 50)
    curves = {"pair": (areas, recall), "mapping": {"areas_km2": areas.tolist(), "recall": (recall / 2).tolist()}}
    _png(recall_area_curve(curves, tmp_path / "rva.png"))
    with pytest.raises(ValueError, match="recall"):
        recall_area_curve({"bad": {"areas_km2": [1.0]}}, tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdf.png", "rva.png"]


# --- report ----------------------------------------------------------------------------------------


def _metrics() -> dict:
    truth = np.array([PARIS, TOKYO, SYDNEY, (40.0, -74.0)])
    pred = np.array([(48.86, 2.35), (35.0, 135.0), (-37.8, 145.0), (51.5, -0.1)])
    return summarize(truth, pred, convention="haversine-le", thresholds=THRESHOLDS_KM, denominator=10)


def test_write_report(tmp_path: Path) -> None:
    metrics = _metrics()
    records = _records()
    breakdowns = {
        "continent": breakdown(
            records.rename(columns={"country": "continent"}), "continent", convention="haversine-le"
        ),
        "S3_Label": breakdown(records, "S3_Label", convention="haversine-le"),
    }
    plot = error_cdf({"x": [1.0, 2.0]}, tmp_path / "run" / "error_cdf.png")
    rva = {
        "n": 4,
        "denominator": 10,
        "areas_km2": {"1km": 3.14159, "25km": 1963.5},
        "recall": {"1km": 0.1, "25km": 0.2},
        "median_area_km2": math.inf,
    }
    csv = tmp_path / "bench.csv"
    csv.write_text("IMG_ID,LAT,LON\n" + "".join(f"i{k},1,2\n" for k in range(10)), encoding="utf-8")
    (tmp_path / "imgs").mkdir()
    for k in range(7):
        (tmp_path / "imgs" / f"i{k}").write_bytes(b"x")
    dataset = load_generic(csv, tmp_path / "imgs")
    path = write_report(
        tmp_path / "run",
        title="Test run",
        dataset=dataset,
        metrics=metrics,
        rvA=rva,
        breakdowns=breakdowns,
        plots={"error_cdf": plot},
        config_summary={"mode": "rag", "aligner": {"clip": "tiny", "dim": 32}},
        git_sha="0123abc",
        notes=["3 images are missing from disk"],
    )
    assert path == tmp_path / "run" / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Test run\n")
    assert "**Convention**: `haversine-le`" in text and "**≤ t**" in text
    assert "**Denominator**: 10 images" in text
    assert "4 images with a prediction; 6 without (3 images missing from disk, 3 failed)" in text
    acc = metrics["accuracy"]
    expected_row = "| accuracy (%) | " + " | ".join(f"{100 * acc[k]:.2f}" for k in acc) + " |"
    assert expected_row in text
    header = "|  | ≤ 1 km (street) | ≤ 25 km (city) | ≤ 200 km (region) | ≤ 750 km (country) | ≤ 2500 km (continent) |"
    assert header in text
    assert f"| {fmt_km(metrics['median_km'])} | {fmt_km(metrics['mean_km'])} | {fmt_km(metrics['geoscore'])} |" in text
    assert "| 1 km disk | 3.1 | 10.00 |" in text and "median area needed: ∞ km²" in text
    urban = next(r for r in breakdowns["S3_Label"].to_dict("records") if r["S3_Label"] == "urban")
    assert f"| urban | {int(urban['n'])} | {int(urban['scored'])} | {fmt_percent(urban['1km'])} |" in text
    assert "### By scene (S3_Label: indoor / natural / urban)" in text
    members = breakdowns["continent"].attrs["other_members"]
    assert members and f"*other* gathers {len(members)} smaller groups: {members[0][0]} ({members[0][1]})" in text
    assert "![Error distribution](error_cdf.png)" in text
    assert '| aligner | `{"clip": "tiny", "dim": 32}` |' in text
    assert "| git commit | `0123abc` |" in text
    assert "- 3 images are missing from disk" in text
    # geodesic-lt is stated with its strict comparison.
    geodesic = dict(metrics, convention="geodesic-lt", radius_km=None)
    text2 = write_report(tmp_path / "run2", title="t", dataset="im2gps3k", metrics=geodesic).read_text("utf-8")
    assert "`geodesic-lt`" in text2 and "**< t**" in text2 and "| < 25 km (city) |" in text2
    assert "| git commit | unknown (not a git checkout) |" in text2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["error_cdf.png", "report.md"]


def test_formatters() -> None:
    assert fmt_percent(0.105105) == "10.51" and fmt_percent(1) == "100.00" and fmt_percent(math.nan) == "—"
    assert fmt_km(1234.56) == "1,234.6" and fmt_km(None) == "—"


@dataclasses.dataclass
class _Settings:
    k: int = 3
    where: float = math.nan


def test_write_metrics_json(tmp_path: Path) -> None:
    payload = {
        "dataset": "im2gps3k",
        "metrics": _metrics() | {"median_km": math.nan},
        "area": math.inf,
        "array": np.arange(3),
        "scalar": np.float32(0.5),
        "count": np.int64(7),
        "path": tmp_path / "x",
        "table": pd.DataFrame({"g": ["a"], "n": [3]}),
        "settings": _Settings(),
    }
    path = write_metrics_json(tmp_path, payload)
    assert path == tmp_path / "metrics.json"
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert list(loaded) == list(payload)  # order kept
    assert loaded["metrics"]["median_km"] is None and loaded["area"] is None
    assert loaded["array"] == [0, 1, 2] and loaded["scalar"] == 0.5 and loaded["count"] == 7
    assert loaded["path"] == str(tmp_path / "x") and loaded["table"] == [{"g": "a", "n": 3}]
    assert loaded["metrics"]["accuracy"] == _metrics()["accuracy"]
    assert loaded["settings"] == {"k": 3, "where": None}
    with pytest.raises(TypeError, match=r"payload\.bad"):
        write_metrics_json(tmp_path, {"bad": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left
