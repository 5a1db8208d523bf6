from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from geopy.distance import geodesic, great_circle

from g3 import geo
from g3.errors import InvalidCoordinatesError

CITIES = np.array(
    [
        [48.8566, 2.3522],  # Paris
        [51.5074, -0.1278],  # London
        [-33.8688, 151.2093],  # Sydney
        [40.7128, -74.0060],  # New York
        [64.1466, -21.9426],  # Reykjavik
        [-54.8019, -68.3030],  # Ushuaia
        [0.0, 179.9],
        [0.0, -179.9],
    ]
)


def test_haversine_matches_geopy_great_circle_with_same_radius() -> None:
    a, b = CITIES[:, None, :], CITIES[None, :, :]
    ours = geo.haversine_km(a[..., 0], a[..., 1], b[..., 0], b[..., 1])
    ref = np.array([[great_circle(p, q, radius=geo.EARTH_RADIUS_KM).km for q in CITIES] for p in CITIES])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-8)


def test_haversine_hand_computed_values() -> None:
    # a quarter and a half of a great circle
    assert geo.haversine_km(0.0, 0.0, 0.0, 90.0) == pytest.approx(math.pi / 2 * 6371.0088, rel=1e-12)
    assert geo.haversine_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(math.pi * 6371.0088, rel=1e-12)
    # across the antimeridian the short way round: 0.2 degrees of equator
    assert geo.haversine_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(0.2 / 180 * math.pi * 6371.0088, rel=1e-9)


def test_haversine_torch_equals_numpy_and_pairwise_shape() -> None:
    t = torch.tensor(CITIES, dtype=torch.float64)
    np_d = geo.pairwise_haversine_km(CITIES, CITIES)
    t_d = geo.pairwise_haversine_km(t, t)
    assert np_d.shape == (8, 8)
    np.testing.assert_allclose(t_d.numpy(), np_d, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.diag(np_d), 0.0, atol=1e-9)


def test_geodesic_matches_geopy() -> None:
    ours = geo.geodesic_km(CITIES[:-1, 0], CITIES[:-1, 1], CITIES[1:, 0], CITIES[1:, 1])
    ref = [geodesic(tuple(p), tuple(q)).km for p, q in itertools.pairwise(CITIES)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # broadcasting a scalar point against many
    assert geo.geodesic_km(48.8566, 2.3522, CITIES[:, 0], CITIES[:, 1]).shape == (8,)
    # ellipsoid vs sphere differ by up to ~0.5 %
    assert abs(ours[0] - geo.haversine_km(*CITIES[0], *CITIES[1])) / ours[0] < 0.006


def test_mercator_against_hand_values_and_order() -> None:
    pts = torch.tensor([[0.0, 0.0], [0.0, 180.0], [0.0, -90.0], [geo.WEB_MERCATOR_MAX_LAT, 0.0], [45.0, 0.0]])
    out = geo.mercator_projection(pts)
    assert out.shape == (5, 2) and out.dtype == torch.float32
    y, x = out[:, 0].double(), out[:, 1].double()
    torch.testing.assert_close(x, torch.tensor([0.0, 1.0, -0.5, 0.0, 0.0], dtype=torch.float64))
    # y = ln(tan(pi/4 + phi/2)) / pi; 45 degrees: ln(tan(67.5 deg)) / pi = 0.28054...
    expected_y = [0.0, 0.0, 0.0, 1.0, math.log(math.tan(math.radians(67.5))) / math.pi]
    torch.testing.assert_close(y, torch.tensor(expected_y, dtype=torch.float64), atol=1e-6, rtol=0)


def test_mercator_matches_pyproj_and_clamps_the_poles() -> None:
    pyproj = pytest.importorskip("pyproj")
    rng = np.random.default_rng(0)
    lat = rng.uniform(-85, 85, 500)
    lon = rng.uniform(-180, 180, 500)
    tr = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x_m, y_m = tr.transform(lon, lat)
    ours = geo.mercator_projection(torch.tensor(np.stack([lat, lon], 1), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours[:, 0], np.asarray(y_m) / geo.WEB_MERCATOR_EXTENT_M, atol=1e-9)
    np.testing.assert_allclose(ours[:, 1], np.asarray(x_m) / geo.WEB_MERCATOR_EXTENT_M, atol=1e-12)
    poles = geo.mercator_projection(torch.tensor([[90.0, 10.0], [-90.0, 10.0], [89.0, 10.0]]))
    assert torch.isfinite(poles).all()
    torch.testing.assert_close(poles[0], geo.mercator_projection(torch.tensor([[85.0511287798066, 10.0]]))[0])
    torch.testing.assert_close(poles[1], -poles[0] * torch.tensor([1.0, -1.0]))


def test_equal_earth_hand_values_and_pyproj() -> None:
    out = geo.equal_earth_projection(torch.tensor([[0.0, 180.0], [0.0, 0.0], [90.0, 0.0]], dtype=torch.float64))
    a1, a2, a3, a4, sf = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336
    x_max = 2 * math.sqrt(3) * math.pi / (3 * a1) * sf / 180
    theta = math.asin(math.sqrt(3) / 2)
    y_pole = (a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta) * sf / 180
    torch.testing.assert_close(out, torch.tensor([[x_max, 0.0], [0.0, 0.0], [0.0, y_pole]], dtype=torch.float64))
    assert x_max == pytest.approx(1.0, abs=1e-5)  # GeoCLIP's scale factor normalises x to [-1, 1]

    pyproj = pytest.importorskip("pyproj")
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)
    x, y = pyproj.Proj("+proj=eqearth +R=1")(lon, lat)  # forward projection on the unit sphere
    ours = geo.equal_earth_projection(torch.tensor(np.stack([lat, lon], 1), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, np.stack([x, y], 1) * sf / 180, atol=1e-9)


def test_project_dispatch_and_unknown() -> None:
    pts = torch.tensor([[10.0, 20.0]])
    torch.testing.assert_close(geo.project(pts, "mercator"), geo.mercator_projection(pts))
    torch.testing.assert_close(geo.project(pts, "equal_earth"), geo.equal_earth_projection(pts))
    with pytest.raises(ValueError, match="unknown projection"):
        geo.project(pts, "robinson")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ([10.0, float("nan")], [0.0, 0.0], r"latitude at position 1 is nan"),
        ([10.0, 0.0], [0.0, float("inf")], r"longitude at position 1 is inf"),
        ([91.0], [0.0], r"latitude at position 0 is 91\.0, outside \[-90, 90\]"),
        ([0.0, 0.0, 0.0], [0.0, 1.0, -180.5], r"longitude at position 2 is -180\.5"),
        (["north"], [0.0], r"cannot read"),
    ],
)
def test_validation_names_the_bad_value(lat: list, lon: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        geo.validate_coordinates(lat, lon)


def test_validation_accepts_edges_and_checks_shapes() -> None:
    lat, lon = geo.validate_coordinates(torch.tensor([90.0, -90.0]), [180.0, -180.0])
    assert lat.dtype == np.float64 and lon.tolist() == [180.0, -180.0]
    with pytest.raises(InvalidCoordinatesError, match="shape"):
        geo.validate_coordinates([1.0, 2.0], [1.0])
    with pytest.raises(InvalidCoordinatesError, match=r"\(N, 2\)"):
        geo.validate_latlon(np.zeros((3, 3)))
    assert geo.validate_latlon([[1.0, 2.0]]).shape == (1, 2)


def test_wrap_longitude() -> None:
    assert geo.wrap_longitude(180.0) == -180.0
    assert geo.wrap_longitude(190.0) == pytest.approx(-170.0)
    assert geo.wrap_longitude(-190.0) == pytest.approx(170.0)
    assert geo.wrap_longitude(720.0 + 45.0) == pytest.approx(45.0)
    np.testing.assert_allclose(geo.wrap_longitude(np.array([0.0, 359.0, -361.0])), [0.0, -1.0, -1.0])
    torch.testing.assert_close(geo.wrap_longitude(torch.tensor([181.0, -181.0])), torch.tensor([-179.0, 179.0]))
