"""The configurations shipped with g3, found by name from any folder (``g3 locate --config tiny``).

A name is a file's path below this folder without ``.yaml``: ``paper`` (the paper's setting, the default of
``g3 locate`` / ``g3 serve``), ``tiny`` (offline tiny models), ``eval/g3``, ``eval/zero_shot``,
``eval/tiny/g3``, … The repository's top-level ``configs/`` is a link to this folder.

The paper's setting names its aligner and index as ``official://aligner`` and ``official://index``: the
folder that ``g3 fetch official`` writes (see `g3.agent.official`), never a path inside the installed package.
"""

from __future__ import annotations

from pathlib import Path

#: The folder holding the shipped YAML files.
CONFIG_DIR = Path(__file__).resolve().parent
#: The configuration `g3 locate`, `g3 serve` and `G3Config.load` use when none is named.
DEFAULT_CONFIG = "paper"


def config_names() -> list[str]:
    """Every shipped configuration's name (``train_*`` files configure `g3 train` and are included)."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def shipped_config(name: str) -> Path | None:
    """The file of a shipped configuration named ``name`` (``tiny``, ``eval/g3``; ``.yaml`` may be given),
    or None when no shipped configuration has that name."""
    stem = name.removesuffix(".yaml").strip("/")
    if not stem or ".." in stem.split("/") or "\\" in stem:
        return None
    path = CONFIG_DIR / f"{stem}.yaml"
    return path if path.is_file() else None
