"""Photo files named on a command line: folders expanded to their image files, and a cheap check of each file
(it exists, is readable, and its header is an image's) that runs before any model is imported or loaded.

Only the standard library and PIL are imported here, so that a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: File suffixes taken as photos when a folder is expanded (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def image_files(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """The image files (by suffix) in ``folder``, sorted by path; with ``recursive``, also in its sub-folders
    (hidden files and folders, whose names start with a dot, are skipped)."""
    root = Path(folder)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def expand_photos(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """``paths`` with each folder replaced by its `image_files` (a folder holding none stays, so that
    `check_photo` reports it); anything else is kept as given. Order is kept; repeats are dropped."""
    out: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        for photo in (image_files(path, recursive=recursive) or [path]) if path.is_dir() else [path]:
            out.setdefault(os.path.abspath(photo), photo)
    return list(out.values())


def check_photo(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be located, or None when it looks like an image: a missing path, a folder, an
    unreadable or empty file, or a header that PIL does not recognise as an image (only the header is read;
    a truncated or corrupt body is found when the photo is decoded)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        return "does not exist; check the path"
    if p.is_dir():
        return (
            f"is a folder holding no image file ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "pass --recursive to look in its sub-folders"
        )
    try:
        with p.open("rb") as fh:
            head = fh.read(16)
            if not head:
                return "is empty; pass a JPEG, PNG, WebP or other image file"
            fh.seek(0)
            with Image.open(fh):
                return None
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError):
            if head[4:8] == b"ftyp":
                return "looks like HEIC/HEIF or AVIF, which this PIL cannot read; convert it to JPEG or PNG"
            return "is not an image PIL can read; pass a JPEG, PNG, WebP, GIF, TIFF or BMP file"
        return f"cannot be read: {exc.strerror or exc}"
    except Exception as exc:  # PIL raises many types on corrupt headers (SyntaxError, struct.error, ...)
        return f"has a corrupt image header ({type(exc).__name__}: {exc})"
