"""GeoCLIP's pretrained location encoder and GPS gallery, as shipped inside the ``geoclip`` PyPI package.

The package is located without importing it (importing ``geoclip`` pulls in its image model and
torchvision); only its weight and gallery files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from g3.errors import CheckpointError, MissingDependencyError
from g3.models.location_encoder import LocationEncoder, RFFEncoderConfig

_WEIGHTS = Path("model") / "weights" / "location_encoder_weights.pth"
_GALLERY = Path("model") / "gps_gallery" / "coordinates_100K.csv"


def geoclip_package_dir() -> Path:
    """Folder of the installed ``geoclip`` package."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the geoclip package is not installed; install it with `pip install --no-deps geoclip` "
            "(its declared torchvision dependency is not needed for the location encoder)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def geoclip_weights_path() -> Path:
    """Path of GeoCLIP's ``location_encoder_weights.pth`` inside the installed package."""
    path = geoclip_package_dir() / _WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall geoclip (`pip install --no-deps --force geoclip`)")
    return path


def load_geoclip_location_encoder(projection: str = "equal_earth") -> LocationEncoder:
    """GeoCLIP's pretrained location encoder as a `LocationEncoder` (eval mode).

    ``projection="equal_earth"`` reproduces GeoCLIP exactly; ``"mercator"`` gives G3's starting point
    (G3 initialises its location encoder from these weights and then trains it on Mercator input).
    """
    from g3.models.checkpoint import load_checked

    path = geoclip_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = LocationEncoder(RFFEncoderConfig(projection=projection))  # type: ignore[arg-type]
    load_checked(encoder, state, source=str(path))
    return encoder.eval()


def load_geoclip_gallery() -> np.ndarray:
    """GeoCLIP's 100K GPS gallery as a float64 ``(100000, 2)`` array of (lat, lon) degrees."""
    import pandas as pd

    path = geoclip_package_dir() / _GALLERY
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall geoclip (`pip install --no-deps --force geoclip`)")
    frame = pd.read_csv(path, usecols=["LAT", "LON"])
    return frame[["LAT", "LON"]].to_numpy(dtype=np.float64)
