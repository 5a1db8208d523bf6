"""``official://NAME`` in configurations: the G3 authors' published model, as ``g3 fetch official`` installs it.

``g3 fetch official`` downloads G3's checkpoint, index and MP16-Pro metadata, converts and imports them, and
writes a bundle folder (``g3.yaml``, ``aligner/``, ``index/``) — by default ``<cache>/official``, where
``<cache>`` is the configuration's ``cache_dir`` or g3's cache folder (``$G3_CACHE_DIR``, else
``~/.cache/g3``). The shipped ``paper`` configuration names its parts ``official://aligner`` and
``official://index``, so it works from any folder once they are fetched, and says which command gets them
while they are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from g3.errors import AssetMissingError
from g3.io import default_cache_dir

if TYPE_CHECKING:
    from g3.agent.config import G3Config

SCHEME = "official://"
#: What ``official://NAME`` may name: folders of the bundle that ``g3 fetch official`` writes.
ASSETS = {"aligner": "the paper's aligner (G3's g3.pth, converted)", "index": "the paper's MP16-Pro index (g3.index)"}
#: The folder under the cache folder where ``g3 fetch official`` writes the bundle by default.
FOLDER = "official"
FETCH_COMMAND = "g3 fetch official"


def default_official_dir(cache_dir: str | Path | None = None) -> Path:
    """Where ``g3 fetch official`` writes the bundle by default: ``<cache>/official``."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / FOLDER


def is_official(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SCHEME)


def official_path(value: str, cache_dir: str | Path | None = None) -> Path:
    """The folder ``official://NAME`` stands for (whether or not it exists)."""
    name = value[len(SCHEME) :]
    if name not in ASSETS:
        raise ValueError(f"unknown official asset {value!r}; available: {', '.join(SCHEME + a for a in ASSETS)}")
    return default_official_dir(cache_dir) / name


def resolve(value: str, cache_dir: str | Path | None = None) -> str:
    """The local folder of ``official://NAME`` (`AssetMissingError` naming the command that gets it while it is
    not there); any other value passes through."""
    if not is_official(value):
        return value
    path = official_path(value, cache_dir)
    if not path.exists():
        raise AssetMissingError(_missing_message(value, path))
    return str(path)


def check_assets(config: G3Config) -> None:
    """Raise `AssetMissingError` when an ``official://`` part the configuration uses is not fetched yet (a quick
    check before anything heavy loads)."""
    used = [config.aligner] + ([config.index] if config.pipeline.mode != "gallery" and config.index else [])
    for value in used:
        resolve(value, config.cache_dir)


def _missing_message(value: str, path: Path) -> str:
    name = value[len(SCHEME) :]
    return (
        f"{ASSETS[name]} ({value}) is not there: {path} is missing. Get G3's published checkpoint and index with "
        f"`{FETCH_COMMAND}` (about 40 GB of downloads; the README's section \"The paper's model, for real\" lists "
        f"them), or `{FETCH_COMMAND} --from FOLDER` with files downloaded by hand. If you fetched them with "
        f"--to DIR, use --config DIR. To try g3 offline with tiny random models: --config tiny."
    )
