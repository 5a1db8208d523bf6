"""Image stores (a folder or a tar file) and robust decoding of image bytes to RGB.

A store is addressed by a corpus row's ``IMG_ID``. The image of ``IMG_ID`` is the file named
``IMG_ID.replace("/", "_")`` (see `image_file_name`); a folder store also accepts the raw relative path
``root/IMG_ID``, and a tar store indexes its members by basename, wherever they sit in the archive.

Stores are picklable and safe in torch DataLoader workers: open file handles belong to the process
that opened them (keyed by ``os.getpid()``) and are never pickled.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import tarfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from g3.errors import CorpusError
from g3.io import atomic_open, atomic_write_json

logger = logging.getLogger(__name__)

#: Version of the tar index cache layout; a cache with another version is rebuilt.
TAR_INDEX_VERSION = 1

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def image_file_name(img_id: str) -> str:
    """File name of the image of ``img_id``: ``"3f/ab/123.jpg"`` → ``"3f_ab_123.jpg"``."""
    return img_id.replace("/", "_")


@runtime_checkable
class ImageStore(Protocol):
    """Where a corpus's images live. Names are ``IMG_ID`` values or flattened file names."""

    def exists(self, name: str) -> bool:
        """Whether the image ``name`` is in the store."""
        ...

    def size(self, name: str) -> int | None:
        """Size of the image ``name`` in bytes, or None when it is missing."""
        ...

    def read_bytes(self, name: str) -> bytes:
        """The bytes of image ``name``; raises `CorpusError` naming the image and the store if missing."""
        ...


def image_sizes(store: ImageStore, names: Sequence[str], *, progress: bool = False) -> np.ndarray:
    """Sizes in bytes of ``names`` as an int64 array, -1 where an image is missing.

    Uses the store's own bulk ``sizes`` method when it has one (both g3 stores do).
    """
    bulk = getattr(store, "sizes", None)
    if callable(bulk):
        return np.asarray(bulk(names, progress=progress), dtype=np.int64)
    out = np.fromiter(
        (-1 if (s := store.size(n)) is None else s for n in tqdm(names, "image sizes", disable=not progress)),
        dtype=np.int64,
        count=len(names),
    )
    return out


class FolderImageStore:
    """Images in a folder: ``root/<flattened name>`` first, then the raw relative path ``root/IMG_ID``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorpusError(f"image folder {str(self.root)!r} does not exist or is not a folder")

    def __repr__(self) -> str:
        return f"FolderImageStore({str(self.root)!r})"

    def _candidates(self, name: str) -> list[Path]:
        paths = [self.root / image_file_name(name)]
        if "/" in name:
            rel = Path(name)
            # A raw path must stay inside the folder: no absolute paths, no "..".
            if not rel.is_absolute() and ".." not in rel.parts:
                paths.append(self.root / rel)
        return paths

    def _stat(self, name: str) -> tuple[Path, int] | None:
        for path in self._candidates(name):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISREG(st.st_mode):
                return path, st.st_size
        return None

    def exists(self, name: str) -> bool:
        """Whether the image ``name`` is in the folder."""
        return self._stat(name) is not None

    def size(self, name: str) -> int | None:
        """Size in bytes of the image ``name``, or None when it is missing."""
        found = self._stat(name)
        return None if found is None else found[1]

    def sizes(self, names: Iterable[str], *, progress: bool = False) -> np.ndarray:
        """Sizes in bytes of ``names`` (one ``stat`` each), -1 where missing."""
        names = list(names)
        return np.fromiter(
            (
                -1 if (s := self.size(n)) is None else s
                for n in tqdm(names, "stat images", unit="img", disable=not progress, mininterval=1.0)
            ),
            dtype=np.int64,
            count=len(names),
        )

    def read_bytes(self, name: str) -> bytes:
        """The bytes of image ``name``; raises `CorpusError` when it is missing or cannot be read."""
        found = self._stat(name)
        if found is None:
            raise CorpusError(f"image {image_file_name(name)!r} (IMG_ID {name!r}) not found in {self!r}")
        try:
            return found[0].read_bytes()
        except OSError as exc:
            raise CorpusError(f"cannot read image {str(found[0])!r} in {self!r}: {exc}") from exc


# Serialises opening a per-process tar handle; re-created in a forked child, where a copy of a lock
# held by another parent thread would stay locked forever.
_OPEN_LOCK = threading.Lock()


def _reset_open_lock() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_open_lock)


class TarImageStore:
    """Images inside a tar file (plain or compressed), indexed by member basename.

    The index (basename → data offset, size) is built by one sequential pass over the tar headers. With
    ``index_cache`` (a ``.npz`` or ``.json`` path) it is saved there atomically and reused while the tar's
    size and modification time are unchanged. Reading a plain tar uses ``os.pread`` (no shared file
    offset); a compressed tar is readable but every read decompresses from the previous position, so
    random access is slow.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        index_cache: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"tar file {str(self.path)!r} does not exist")
        if not tarfile.is_tarfile(self.path):
            raise CorpusError(f"{str(self.path)!r} is not a tar file (plain or compressed)")
        self.index_cache = None if index_cache is None else Path(index_cache)
        self.compressed = _is_compressed_tar(self.path)
        if self.compressed:
            logger.warning(
                "%s is a compressed tar: random access to its images is slow; an uncompressed .tar is "
                "much faster for training",
                self.path,
            )
        st = os.stat(self.path)
        key = (st.st_size, st.st_mtime_ns)
        index = self._load_cache(key) if self.index_cache is not None else None
        if index is None:
            index = self._build_index(progress)
            if self.index_cache is not None:
                self._save_cache(key, *index)
        self._names, self._offsets, self._sizes = index
        self._pid: int | None = None
        self._fd: int | None = None
        self._tar: tarfile.TarFile | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TarImageStore({str(self.path)!r}, {len(self._names)} images)"

    def __len__(self) -> int:
        return len(self._names)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _fd=None, _tar=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- index -------------------------------------------------------------------------------------

    def _build_index(self, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names: list[bytes] = []
        offsets: list[int] = []
        sizes: list[int] = []
        total = None if self.compressed else os.path.getsize(self.path)
        try:
            with (
                tarfile.open(self.path, "r:*") as tf,
                tqdm(
                    total=total,
                    desc=f"indexing {self.path.name}",
                    unit="B",
                    unit_scale=True,
                    disable=not progress,
                    mininterval=1.0,
                ) as bar,
            ):
                last = 0
                while (member := tf.next()) is not None:
                    # TarFile keeps every TarInfo it reads; with millions of members that is gigabytes.
                    tf.members.clear()  # type: ignore[attr-defined]
                    if member.isreg() and not member.issparse():
                        names.append(os.path.basename(member.name).encode("utf-8", "surrogateescape"))
                        offsets.append(member.offset_data)
                        sizes.append(member.size)
                    bar.update(tf.offset - last)
                    last = tf.offset
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CorpusError(f"cannot read tar file {str(self.path)!r}: {exc}") from exc
        return _sorted_index(names, offsets, sizes, self.path)

    def _load_cache(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        assert self.index_cache is not None
        cache = self.index_cache
        if not cache.is_file():
            return None
        try:
            if cache.suffix.lower() == ".json":
                data = json.loads(cache.read_text(encoding="utf-8"))
                meta = {k: data[k] for k in ("version", "tar_size", "tar_mtime_ns")}
                names = np.array([n.encode("utf-8", "surrogateescape") for n in data["names"]], dtype=np.bytes_)
                offsets = np.asarray(data["offsets"], dtype=np.int64)
                sizes = np.asarray(data["sizes"], dtype=np.int64)
            else:
                with np.load(cache, allow_pickle=False) as npz:
                    meta = json.loads(str(npz["meta"]))
                    names, offsets, sizes = npz["names"], npz["offsets"], npz["sizes"]
        except Exception as exc:  # any unreadable cache is rebuilt, never trusted
            logger.warning("tar index cache %s is unreadable (%s); rebuilding it", cache, exc)
            return None
        if (meta.get("version"), meta.get("tar_size"), meta.get("tar_mtime_ns")) != (TAR_INDEX_VERSION, *key):
            logger.info("tar index cache %s is stale (the tar changed); rebuilding it", cache)
            return None
        consistent = (
            len(names) == len(offsets) == len(sizes)
            and (len(names) == 0 or names.dtype.kind == "S")
            and bool(np.all(names[:-1] < names[1:]))  # sorted and unique, as lookups assume
        )
        if not consistent:
            logger.warning("tar index cache %s is inconsistent; rebuilding it", cache)
            return None
        if len(names) == 0:
            names = np.array([], dtype="S1")
        logger.info("reusing tar index cache %s (%d images)", cache, len(names))
        return names, offsets, sizes

    def _save_cache(self, key: tuple[int, int], names: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> None:
        assert self.index_cache is not None
        meta = {
            "version": TAR_INDEX_VERSION,
            "tar": str(self.path),
            "tar_size": key[0],
            "tar_mtime_ns": key[1],
        }
        try:
            if self.index_cache.suffix.lower() == ".json":
                atomic_write_json(
                    self.index_cache,
                    {
                        **meta,
                        "names": [n.decode("utf-8", "surrogateescape") for n in names.tolist()],
                        "offsets": offsets.tolist(),
                        "sizes": sizes.tolist(),
                    },
                    indent=0,
                )
            else:
                with atomic_open(self.index_cache, "wb") as fh:
                    np.savez(fh, meta=np.array(json.dumps(meta)), names=names, offsets=offsets, sizes=sizes)
        except (OSError, ValueError, UnicodeError) as exc:
            # The index is in memory and usable; failing the whole load over the cache would be worse.
            logger.warning("could not write tar index cache %s: %s", self.index_cache, exc)

    def _lookup(self, names: Sequence[str]) -> np.ndarray:
        """Positions of ``names`` in the index, -1 where missing."""
        if len(names) == 0 or len(self._names) == 0:
            return np.full(len(names), -1, dtype=np.int64)
        keys = np.array([image_file_name(n).encode("utf-8", "surrogateescape") for n in names], dtype=np.bytes_)
        pos = np.minimum(np.searchsorted(self._names, keys), len(self._names) - 1)
        # Compare against the query itself, so a query longer than the index's width never matches a prefix.
        return np.where(self._names[pos] == keys, pos, -1).astype(np.int64)

    # --- store API ---------------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """Whether the image ``name`` is in the tar."""
        return bool(self._lookup([name])[0] >= 0)

    def size(self, name: str) -> int | None:
        """Size in bytes of the image ``name``, or None when it is missing."""
        i = int(self._lookup([name])[0])
        return None if i < 0 else int(self._sizes[i])

    def sizes(self, names: Iterable[str], *, progress: bool = False) -> np.ndarray:
        """Sizes in bytes of ``names`` from the index (vectorised), -1 where missing."""
        pos = self._lookup(list(names))
        out = np.full(len(pos), -1, dtype=np.int64)
        hit = pos >= 0
        out[hit] = self._sizes[pos[hit]]
        return out

    def read_bytes(self, name: str) -> bytes:
        """The bytes of image ``name``; raises `CorpusError` when it is missing or cannot be read."""
        i = int(self._lookup([name])[0])
        if i < 0:
            raise CorpusError(f"image {image_file_name(name)!r} (IMG_ID {name!r}) not found in {self!r}")
        offset, size = int(self._offsets[i]), int(self._sizes[i])
        try:
            data = self._read_at(offset, size)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise CorpusError(f"cannot read image {image_file_name(name)!r} from {self!r}: {exc}") from exc
        if len(data) != size:
            raise CorpusError(
                f"image {image_file_name(name)!r} in {self!r} is truncated ({len(data)} of {size} bytes); "
                "the tar changed after it was indexed?"
            )
        return data

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._pid == os.getpid():
            if self._fd is not None:
                os.close(self._fd)
            if self._tar is not None:
                self._tar.close()
        self._pid, self._fd, self._tar = None, None, None

    def _ensure_open(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with _OPEN_LOCK:
            if self._pid == pid:
                return
            # A handle inherited through fork is left alone: the parent still owns it.
            self._fd, self._tar = None, None
            self._lock = threading.Lock()
            if self.compressed or not hasattr(os, "pread"):
                self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 (kept open for reads)
            else:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = pid

    def _read_at(self, offset: int, size: int) -> bytes:
        self._ensure_open()
        if self._fd is not None:
            chunks: list[bytes] = []
            got = 0
            while got < size:
                chunk = os.pread(self._fd, size - got, offset + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)
        assert self._tar is not None and self._tar.fileobj is not None
        with self._lock:
            self._tar.fileobj.seek(offset)
            return self._tar.fileobj.read(size)


def _is_compressed_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:"):
            return False
    except tarfile.ReadError:
        return True
    except OSError as exc:
        raise CorpusError(f"cannot open tar file {str(path)!r}: {exc}") from exc


def _sorted_index(
    names: list[bytes], offsets: list[int], sizes: list[int], path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not names:
        logger.warning("tar file %s holds no regular files", path)
        return np.array([], dtype="S1"), np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    name_arr = np.array(names, dtype=np.bytes_)
    uniq, first = np.unique(name_arr, return_index=True)  # sorted; index of each name's first member
    if len(uniq) < len(name_arr):
        logger.warning(
            "tar file %s holds %d members whose basename repeats an earlier one; using the first of each",
            path,
            len(name_arr) - len(uniq),
        )
    return uniq, np.asarray(offsets, dtype=np.int64)[first], np.asarray(sizes, dtype=np.int64)[first]


def open_image_store(
    path: str | os.PathLike[str],
    *,
    index_cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> FolderImageStore | TarImageStore:
    """A `FolderImageStore` for a folder, a `TarImageStore` for a tar (``.tar``, ``.tar.gz``, …).

    ``index_cache`` and ``progress`` apply to a tar only. Raises `CorpusError` for anything else.
    """
    p = Path(path)
    if p.is_dir():
        if index_cache is not None:
            logger.warning("ignoring index_cache=%s: %s is a folder, not a tar file", index_cache, p)
        return FolderImageStore(p)
    if not p.exists():
        raise CorpusError(f"image location {str(p)!r} does not exist; pass an image folder or a tar file")
    if p.is_file() and tarfile.is_tarfile(p):
        return TarImageStore(p, index_cache=index_cache, progress=progress)
    raise CorpusError(f"image location {str(p)!r} is neither a folder nor a tar file")


def _decode_error(name: str, exc: BaseException) -> CorpusError:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return CorpusError(
            f"image {name!r} is too large to decode safely ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "only if you trust the data"
        )
    return CorpusError(f"image {name!r} cannot be decoded: {type(exc).__name__}: {exc}")


def verify_image(data: bytes, name: str) -> None:
    """Check that ``data`` is an image PIL can identify (``Image.verify``); raise `CorpusError` if not."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    # PIL raises many exception types on corrupt data (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        raise _decode_error(name, exc) from exc


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes to an upright 3-channel 8-bit RGB image.

    Applies the EXIF orientation, composites any alpha/transparency on white, scales 16-bit and
    32-bit grayscale to 8 bits, and converts palette/CMYK/grayscale to RGB. PIL's decompression-bomb
    guard stays on. Raises `CorpusError` naming ``name`` when the data cannot be decoded.
    """
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        img.load()
        return to_upright_rgb(img, name)
    except Exception as exc:
        raise _decode_error(name, exc) from exc


def to_upright_rgb(img: Image.Image, name: str) -> Image.Image:
    """A loaded image of any mode as upright 8-bit RGB (see `decode_image`); ``name`` is for logs only.

    Call ``img.load()`` first: this function ignores a broken EXIF block, and must not hide a decoding
    error behind it. Raises PIL's own errors (e.g. ``ValueError``) for modes PIL cannot convert.
    """
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not make a good image unreadable
        logger.debug("ignoring unreadable EXIF orientation of %s: %s", name, exc)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale → 8-bit ``L`` (PIL's own conversion clips at 255).

    16-bit data is divided by 257 (65535 → 255); float data in [0, 1] is multiplied by 255; data already
    in [0, 255] is kept; any other range (32-bit integers, negative or large floats) is stretched linearly
    from its minimum and maximum to [0, 255]. NaN and infinities become 0.
    """
    arr = np.asarray(img).astype(np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif img.mode.startswith("I;16") or (img.mode == "I" and 255.0 < hi <= 65535.0 and lo >= 0.0):
        arr = arr / 257.0  # 65535 → 255
    elif lo < 0.0 or hi > 255.0:
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    out = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(out)
