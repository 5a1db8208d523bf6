"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def default_cache_dir() -> Path:
    """g3's cache folder: ``$G3_CACHE_DIR``, else ``$XDG_CACHE_HOME/g3``, else ``~/.cache/g3``."""
    if os.environ.get("G3_CACHE_DIR"):
        return Path(os.environ["G3_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "g3"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success rename it to ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file 0600; give it a normal file's permissions
    try:
        fh: IO[Any]
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    """Serialise ``obj`` as JSON (sorted keys, trailing newline) and write it atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def replace_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a completely written folder ``staging`` to ``target``, replacing an existing ``target``.

    ``staging`` must be on the same file system (a sibling made with ``tempfile.mkdtemp(dir=...)``).
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling to fill; on success it replaces ``target``.

    On an exception the temporary folder is removed and ``target`` is left as it was.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes the folder 0700
    try:
        yield staging
        replace_folder(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def drop_partial_line(path: str | os.PathLike[str]) -> bool:
    """Cut an unfinished last line of an append-only text file (an interrupted write), so that appending
    starts on a fresh line; True when something was cut. A missing or empty file is left alone."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        fh.seek(0)
        fh.truncate(fh.read().rfind(b"\n") + 1)
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 8 MiB blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()
