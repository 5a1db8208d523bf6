"""Coordinates: validation, distances and map projections, vectorised for numpy and torch.

Conventions used throughout g3:

* a batch of points is an array of shape ``(N, 2)`` holding ``(latitude, longitude)`` in degrees;
* distances are in kilometres;
* projections are written in torch so that they run inside a model's forward pass on any device,
  with no per-point Python loop and no pyproj.

torch is imported only by the torch functions: numpy callers (the configuration, geocoding, scoring)
start without it.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Literal, TypeGuard, TypeVar, overload

import numpy as np

from g3.errors import InvalidCoordinatesError

if TYPE_CHECKING:
    import torch

#: Mean Earth radius (IUGG) in km, used by the haversine distance.
EARTH_RADIUS_KM = 6371.0088
#: Half the circumference of the WGS84 equator in metres: the Web-Mercator extent (EPSG:3857).
WEB_MERCATOR_EXTENT_M = 20037508.3427892
#: Latitude limit of Web-Mercator (the square world map), in degrees.
WEB_MERCATOR_MAX_LAT = 85.0511287798066

# Equal Earth projection coefficients (Šavrič, Patterson & Jenny 2018) and GeoCLIP's scale factor,
# which maps the projected longitude range to [-1, 1].
_EE_A1 = 1.340264
_EE_A2 = -0.081106
_EE_A3 = 0.000893
_EE_A4 = 0.003796
_EE_SF = 66.50336

Projection = Literal["mercator", "equal_earth"]
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is a torch tensor, without importing torch (no tensor exists before torch is loaded)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(value, torch_module.Tensor)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.ravel())[0])


def validate_coordinates(lat: object, lon: object, *, what: str = "coordinates") -> tuple[np.ndarray, np.ndarray]:
    """Check latitudes/longitudes and return them as float64 arrays.

    Args:
        lat: latitudes in degrees (scalar, sequence, numpy array or tensor).
        lon: longitudes in degrees, same shape as ``lat``.
        what: a name for the values, used in error messages.

    Raises:
        InvalidCoordinatesError: (a ``ValueError``) naming the first bad value and its position when a
            value is NaN or infinite, a latitude is outside [-90, 90] or a longitude outside [-180, 180].
    """
    lat_a = _as_float_array(lat, f"{what} latitude")
    lon_a = _as_float_array(lon, f"{what} longitude")
    if lat_a.shape != lon_a.shape:
        raise InvalidCoordinatesError(
            f"{what}: latitude shape {lat_a.shape} differs from longitude shape {lon_a.shape}"
        )
    for name, values, limit in (("latitude", lat_a, 90.0), ("longitude", lon_a, 180.0)):
        finite = np.isfinite(values)
        if not finite.all():
            i = _first_bad(~finite)
            raise InvalidCoordinatesError(
                f"{what}: {name} at position {i} is {float(values.ravel()[i])!r}; expected a finite number of degrees"
            )
        out = np.abs(values) > limit
        if out.any():
            i = _first_bad(out)
            raise InvalidCoordinatesError(
                f"{what}: {name} at position {i} is {float(values.ravel()[i])!r}, outside [-{limit:g}, {limit:g}] "
                "degrees (are latitude and longitude swapped?)"
            )
    return lat_a, lon_a


def validate_latlon(points: object, *, what: str = "coordinates") -> np.ndarray:
    """Check an ``(N, 2)`` array of ``(lat, lon)`` points; return it as float64. See `validate_coordinates`."""
    arr = _as_float_array(points, what)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidCoordinatesError(f"{what}: expected shape (N, 2) of (lat, lon), got {arr.shape}")
    validate_coordinates(arr[:, 0], arr[:, 1], what=what)
    return arr


def _as_float_array(values: object, what: str) -> np.ndarray:
    if is_tensor(values):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidCoordinatesError(f"{what}: cannot read {values!r} as numbers ({exc})") from exc


@overload
def wrap_longitude(lon: float) -> float: ...
@overload
def wrap_longitude(lon: ArrayT) -> ArrayT: ...
def wrap_longitude(lon: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Wrap longitudes in degrees into [-180, 180); 180 maps to -180, the same meridian."""
    if is_tensor(lon):
        import torch

        return torch.remainder(lon + 180.0, 360.0) - 180.0
    wrapped = np.remainder(np.asarray(lon, dtype=np.float64) + 180.0, 360.0) - 180.0
    return float(wrapped) if np.ndim(wrapped) == 0 else wrapped


def haversine_km(
    lat1: ArrayT, lon1: ArrayT, lat2: ArrayT, lon2: ArrayT, *, radius_km: float = EARTH_RADIUS_KM
) -> ArrayT:
    """Great-circle distance in km on a sphere of radius ``radius_km`` (default `EARTH_RADIUS_KM`), broadcasting
    its inputs.

    Works on numpy arrays (float64) and torch tensors (their dtype and device). Inputs in degrees.
    """
    if "torch" in sys.modules:  # else no tensor exists
        import torch

        if isinstance(lat1, torch.Tensor):
            p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
            dphi = p2 - p1
            dlmb = torch.deg2rad(lon2) - torch.deg2rad(lon1)
            a = torch.sin(dphi / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlmb / 2) ** 2
            return 2 * radius_km * torch.asin(torch.sqrt(torch.clamp(a, 0.0, 1.0)))
    p1n, p2n = np.radians(np.asarray(lat1, np.float64)), np.radians(np.asarray(lat2, np.float64))
    dphi_n = p2n - p1n
    dlmb_n = np.radians(np.asarray(lon2, np.float64)) - np.radians(np.asarray(lon1, np.float64))
    an = np.sin(dphi_n / 2) ** 2 + np.cos(p1n) * np.cos(p2n) * np.sin(dlmb_n / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(an, 0.0, 1.0)))


def pairwise_haversine_km(a: ArrayT, b: ArrayT) -> ArrayT:
    """Distances in km between every point of ``a`` (N, 2) and every point of ``b`` (M, 2): shape (N, M)."""
    return haversine_km(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])


def geodesic_km(lat1: object, lon1: object, lat2: object, lon2: object) -> np.ndarray:
    """Ellipsoidal (WGS-84) distance in km via geopy, as G3's evaluation computes it.

    geopy has no vectorised call, so this loops over pairs in Python (about 10 µs a pair); use
    `haversine_km` inside models and for large matrices. Inputs broadcast like numpy arrays.
    """
    from geopy.distance import geodesic

    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (lat1, lon1, lat2, lon2)))
    a1, o1, a2, o2 = (x.ravel() for x in arrays)
    out = np.fromiter(
        (geodesic((p, q), (r, s)).km for p, q, r, s in zip(a1, o1, a2, o2, strict=True)),
        dtype=np.float64,
        count=a1.size,
    )
    return out.reshape(arrays[0].shape)


def mercator_projection(latlon: torch.Tensor) -> torch.Tensor:
    """Web-Mercator (EPSG:3857) of ``(N, 2)`` (lat, lon) degrees, as G3 feeds its location encoder.

    Returns ``(N, 2)`` ordered **(y, x)** and divided by `WEB_MERCATOR_EXTENT_M`, so both lie in
    [-1, 1]. Latitudes are clamped to ±`WEB_MERCATOR_MAX_LAT` (the poles are at infinity otherwise).
    Computed in float64 and returned in the input's floating dtype (float32 for integer input).
    """
    import torch

    out_dtype = latlon.dtype if latlon.is_floating_point() else torch.float32
    x64 = latlon.to(torch.float64)
    lat = torch.clamp(x64[..., 0], -WEB_MERCATOR_MAX_LAT, WEB_MERCATOR_MAX_LAT)
    # y_m / extent = ln(tan(pi/4 + phi/2)) / pi and x_m / extent = lambda / pi.
    y = torch.log(torch.tan(math.pi / 4 + torch.deg2rad(lat) / 2)) / math.pi
    x = x64[..., 1] / 180.0
    return torch.stack((y, x), dim=-1).to(out_dtype)


def equal_earth_projection(latlon: torch.Tensor) -> torch.Tensor:
    """Equal Earth projection of ``(N, 2)`` (lat, lon) degrees, scaled as GeoCLIP does.

    Returns ``(N, 2)`` ordered **(x, y)** times ``66.50336 / 180`` so that x spans [-1, 1]. The
    operations follow GeoCLIP's order in the input dtype so that GeoCLIP's weights see the same inputs
    bit for bit (high-frequency Fourier features amplify any rounding difference).
    """
    import torch

    if not latlon.is_floating_point():
        latlon = latlon.to(torch.float32)
    lat = torch.deg2rad(latlon[:, 0])
    lon = torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, dtype=latlon.dtype, device=latlon.device))
    theta = torch.asin(sqrt3 / 2 * torch.sin(lat))
    denominator = 3 * (9 * _EE_A4 * theta**8 + 7 * _EE_A3 * theta**6 + 3 * _EE_A2 * theta**2 + _EE_A1)
    x = (2 * sqrt3 * lon * torch.cos(theta)) / denominator
    y = _EE_A4 * theta**9 + _EE_A3 * theta**7 + _EE_A2 * theta**3 + _EE_A1 * theta
    return (torch.stack((x, y), dim=1) * _EE_SF) / 180


def project(latlon: torch.Tensor, projection: Projection) -> torch.Tensor:
    """Apply the named projection (``"mercator"`` or ``"equal_earth"``) to ``(N, 2)`` (lat, lon) degrees."""
    if projection == "mercator":
        return mercator_projection(latlon)
    if projection == "equal_earth":
        return equal_earth_projection(latlon)
    raise ValueError(f"unknown projection {projection!r}; choose 'mercator' or 'equal_earth'")
