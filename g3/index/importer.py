"""`g3 index import`: adopt a FAISS flat file built elsewhere (G3's ``g3.index``) as a `GeoIndex` folder.

Nothing is re-encoded and the vectors are never read into memory: the file's header is checked, a
sample of rows is read with ``pread``, the file is hard-linked (or copied, streamed) into the folder,
and `GeoIndex.load` memory-maps it. Refused, each with a message naming the problem: another FAISS
kind, a width other than the aligner's key width, a metric other than inner product, a row count other
than the CSV's, and sampled rows that are not finite or whose thirds (CLIP, text-aligned, GPS-aligned
views) are not unit vectors. ``verify_images`` goes further: it encodes corpus photos with the aligner
and compares their keys with their rows, which proves the key layout and the row order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from g3.errors import CorpusError, GeoIndexError
from g3.index.csv_metadata import stream_csv_metadata
from g3.index.flatfile import FlatFile
from g3.index.geo_index import GeoIndex, new_manifest
from g3.index.manifest import INDEX_FILE, MANIFEST_FILE, METADATA_FILE, FileEntry, SourceFile, file_entry
from g3.io import atomic_folder, atomic_write_json

if TYPE_CHECKING:
    from g3.data.images import ImageStore
    from g3.models import GeoAligner

log = logging.getLogger(__name__)

IMPORT_REPORT = "import_report.json"
#: A third of a key whose norm is further than this from 1 is not an L2-normalised view.
UNIT_TOLERANCE = 1e-3
#: ``verify_images``: least cosine between a photo's key and its row.
MIN_COSINE = 0.999
LinkMode = Literal["auto", "hardlink", "copy", "symlink"]


def import_faiss_index(
    faiss_file: str | os.PathLike[str],
    metadata_csv: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | GeoAligner,
    out: str | os.PathLike[str],
    *,
    verify_images: Path | None = None,
    samples: int = 16,
    progress: bool = True,
    link: LinkMode = "auto",
    check_rows: int = 4096,
    seed: int = 0,
    known_sha256: str | None = None,
) -> GeoIndex:
    """Write the index folder ``out`` from a FAISS flat file and its row-aligned metadata CSV; return it loaded.

    ``checkpoint`` is the aligner the keys were made with (a g3 checkpoint folder, or a loaded `GeoAligner`):
    its key width is checked and its fingerprint recorded. ``link``: how the FAISS file enters the folder —
    ``auto`` (a hard link where the file system allows, else a streamed copy), ``hardlink``, ``copy`` or
    ``symlink``. ``check_rows`` rows (the first, the last and a random sample) are checked for finite,
    unit-norm thirds. With ``verify_images`` (a folder or tar of corpus photos), ``samples`` of them are
    encoded and compared with their rows (cosine ≥ 0.999). ``known_sha256``: the FAISS file's SHA-256 when the
    caller has just computed it (`g3 fetch official`): a linked file is then not read again, and a copied
    one must match it. Raises `GeoIndexError` naming the problem; nothing is written then.
    """
    import torch

    started = time.perf_counter()
    faiss_file, metadata_csv, out = Path(faiss_file), Path(metadata_csv), Path(out)
    aligner = _aligner(checkpoint)
    flat = FlatFile.open(faiss_file)
    check_layout(flat, key_dim=aligner.key_dim, what=f"the aligner {_name(checkpoint)}")
    checked = check_key_sample(flat, rows=check_rows, seed=seed)
    with atomic_folder(out) as staging:
        meta = stream_csv_metadata(metadata_csv, staging / METADATA_FILE, progress=progress)
        if meta.rows != flat.rows:
            raise GeoIndexError(
                f"{faiss_file} holds {flat.rows:,} vectors but {metadata_csv} has {meta.rows:,} data rows: data row i "
                "of the CSV must describe index row i (for G3's g3.index: MP16_Pro_filtered.csv, unfiltered)"
            )
        verification = None
        if verify_images is not None:
            with torch.inference_mode():
                verification = verify_with_images(
                    flat, staging / METADATA_FILE, Path(verify_images), aligner, samples=samples, seed=seed
                )
        index_source, placed = place_file(
            faiss_file, staging / INDEX_FILE, link, progress=progress, known_sha256=known_sha256
        )
        files = {
            INDEX_FILE: FileEntry(bytes=index_source.bytes, sha256=index_source.sha256),
            METADATA_FILE: file_entry(staging / METADATA_FILE),
        }
        report = {
            "placed": placed,
            "checked_rows": checked,
            "metadata_columns": list(meta.columns),
            "verify_images": verification,
        }
        fingerprint = aligner.fingerprint()
        manifest = new_manifest(
            rows=flat.rows,
            dim=flat.dim,
            kind="Flat",
            fingerprint=fingerprint,
            aligner_config=aligner.config.model_dump(mode="json"),
            build_seconds=round(time.perf_counter() - started, 3),
            build={"imported": True, "placed": placed, "checked_rows": checked["rows"],
                   "verified_images": 0 if verification is None else verification["samples"]},
        ).model_copy(
            update={"keys_built_by": "external", "sources": {"index": index_source, "metadata": meta.source},
                    "files": files}
        ).with_version()  # fmt: skip
        atomic_write_json(staging / MANIFEST_FILE, manifest.model_dump(mode="json"))
        atomic_write_json(staging / IMPORT_REPORT, report)
    log.info("imported %s (%d rows, %s) as %s", faiss_file, flat.rows, placed, out)
    return GeoIndex.load(out, fingerprint=fingerprint)  # the fingerprint hashes every weight: once is enough


def _aligner(checkpoint: str | os.PathLike[str] | GeoAligner) -> GeoAligner:
    from g3.models import GeoAligner

    if isinstance(checkpoint, GeoAligner):
        return checkpoint
    return GeoAligner.from_pretrained(str(checkpoint)).eval()


def _name(checkpoint: object) -> str:
    return type(checkpoint).__name__ if not isinstance(checkpoint, str | os.PathLike) else str(checkpoint)


def check_layout(flat: FlatFile, *, key_dim: int, what: str) -> None:
    """Refuse a file whose width is not ``key_dim`` or whose metric is not inner product."""
    if flat.dim != key_dim:
        raise GeoIndexError(
            f"{flat.path} holds vectors of width {flat.dim}, but {what} makes keys of width {key_dim} (3 × "
            f"{key_dim // 3}): the file was built with another model. Import it with the checkpoint it was built "
            "with (G3's g3.index: G3's g3.pth, converted with `g3 aligner convert`)"
        )
    if flat.metric != "inner_product":
        raise GeoIndexError(
            f"{flat.path} uses the {flat.metric} metric, not inner product: G3 ranks keys by inner product "
            "(faiss.IndexFlatIP), and another metric ranks them differently. Rebuild the FAISS file as an "
            "IndexFlatIP over the same vectors"
        )


def check_key_sample(flat: FlatFile, *, rows: int, seed: int) -> dict[str, Any]:
    """Check that sampled rows are finite and made of three unit-norm thirds; returns what was checked."""
    n = flat.rows
    if n == 0:
        raise GeoIndexError(f"{flat.path} holds no vectors")
    picks = np.unique(np.concatenate([[0, n - 1], np.random.default_rng(seed).choice(n, min(n, rows), replace=False)]))
    keys = flat.take(picks)
    finite = np.isfinite(keys).all(axis=1)
    if not finite.all():
        bad = picks[~finite]
        raise GeoIndexError(
            f"{flat.path}: {len(bad)} of {len(picks)} sampled rows contain NaN or infinite values (rows "
            f"{_listed(bad)}); the file is corrupt or was not written from finished keys"
        )
    third = flat.dim // 3
    norms = np.linalg.norm(keys.reshape(len(keys), 3, third).astype(np.float64), axis=2)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        names = ("CLIP", "text-aligned", "GPS-aligned")
        which = [names[t] for t in range(3) if off[:, t].any()]
        bad = picks[off.any(axis=1)]
        worst = norms.reshape(-1)[np.argmax(np.abs(norms - 1.0))]
        raise GeoIndexError(
            f"{flat.path}: the {', '.join(which)} third(s) of {len(bad)} of {len(picks)} sampled rows are not unit "
            f"vectors (e.g. norm {worst:.4f} in rows {_listed(bad)}): G3's keys are three L2-normalised views "
            "(CLIP, text-aligned, GPS-aligned) concatenated, and this file holds something else"
        )
    return {"rows": len(picks), "seed": seed, "max_norm_error": float(np.abs(norms - 1.0).max())}


def _listed(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def place_file(
    source: Path, target: Path, link: LinkMode, *, progress: bool, known_sha256: str | None = None
) -> tuple[SourceFile, str]:
    """Put ``source`` at ``target`` (hard link, streamed copy or symbolic link) and describe it (size, SHA-256,
    hashed block by block); returns the description and how it was placed. With ``known_sha256`` a linked
    file is not read (the caller hashed it) and a copy must match it."""
    if link not in ("auto", "hardlink", "copy", "symlink"):
        raise ValueError(f"link must be auto, hardlink, copy or symlink, not {link!r}")
    placed = link
    if link in ("auto", "hardlink"):
        try:
            os.link(source, target)
            placed = "hardlink"
        except OSError as exc:
            if link == "hardlink":
                raise GeoIndexError(f"cannot hard-link {source} into {target.parent}: {exc}") from exc
            placed = "copy"
    elif link == "symlink":
        target.symlink_to(source.resolve())
    size = source.stat().st_size
    if known_sha256 is not None and placed in ("hardlink", "symlink"):
        return SourceFile(name=source.name, path=str(source.resolve()), bytes=size, sha256=known_sha256), placed
    digest = hashlib.sha256()
    with (
        _bar(size, f"{'copy' if placed == 'copy' else 'sha256'} {source.name}", progress) as bar,
        source.open("rb") as src,
        contextlib.ExitStack() as stack,
    ):
        dst = stack.enter_context(target.open("wb")) if placed == "copy" else None
        while block := src.read(8 << 20):
            digest.update(block)
            if dst is not None:
                dst.write(block)
            bar.update(len(block))
    if known_sha256 is not None and digest.hexdigest() != known_sha256:
        raise GeoIndexError(
            f"{source} changed since it was checked: its SHA-256 is {digest.hexdigest()}, not {known_sha256}; "
            "fetch or copy it again"
        )
    if placed == "copy":
        shutil.copystat(source, target)
    entry = SourceFile(name=source.name, path=str(source.resolve()), bytes=size, sha256=digest.hexdigest())
    return entry, placed


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress)


def verify_with_images(
    flat: FlatFile, metadata: Path, images: Path, aligner: GeoAligner, *, samples: int, seed: int
) -> dict[str, Any]:
    """Encode ``samples`` corpus photos found in ``images`` and compare their keys with their rows.

    Photos are decoded as G3's official code does (``Image.open(...).convert("RGB")``, no EXIF rotation),
    so that a photo's key is the one ``IndexSearch.py`` computed. Raises `GeoIndexError` listing the
    rows whose cosine is below 0.999, with the cosine of each third, when any is.
    """
    import pyarrow.parquet as pq

    from g3.data import open_image_store

    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    try:
        store = open_image_store(images, progress=False)
    except CorpusError as exc:
        raise GeoIndexError(f"--verify-images: {exc}") from exc
    ids = pq.read_table(metadata, columns=["IMG_ID"], memory_map=True).column("IMG_ID")
    rows = rows_with_images(ids, store, samples=samples, seed=seed)
    if not len(rows):
        raise GeoIndexError(
            f"none of the {len(ids):,} corpus photos named in the metadata CSV is in {images}; pass the folder (or "
            "tar) of the corpus photos, e.g. MP16-Pro's images"
        )
    photos, kept = [], []
    for row in rows:
        name = ids[int(row)].as_py()
        try:
            photos.append(_official_decode(store.read_bytes(name), name))
            kept.append(int(row))
        except CorpusError as exc:
            log.warning("verify-images: skipping row %d: %s", row, exc)
    if not kept:
        raise GeoIndexError(f"none of the {len(rows)} sampled corpus photos in {images} could be decoded")
    encoded = np.concatenate(
        [aligner.encode_image(photos[i : i + 16]).key.float().cpu().numpy() for i in range(0, len(photos), 16)]
    )
    stored = flat.take(kept)
    cosine = _cosine(encoded, stored)
    third = flat.dim // 3
    thirds = np.stack([_cosine(encoded[:, t * third : (t + 1) * third], stored[:, t * third : (t + 1) * third])
                       for t in range(3)], axis=1)  # fmt: skip
    checked = [
        {"row": r, "img_id": ids[r].as_py(), "cosine": round(float(c), 6), "thirds": [round(float(x), 6) for x in t]}
        for r, c, t in zip(kept, cosine, thirds, strict=True)
    ]
    failed = [c for c in checked if c["cosine"] < MIN_COSINE]
    if failed:
        shown = "; ".join(
            f"row {c['row']} ({c['img_id']}): {c['cosine']:.4f} (CLIP / text / GPS thirds "
            f"{' / '.join(f'{x:.3f}' for x in c['thirds'])})"
            for c in sorted(failed, key=lambda c: c["cosine"])[:5]
        )
        raise GeoIndexError(
            f"--verify-images: {len(failed)} of {len(checked)} corpus photos do not match their index rows (cosine "
            f"< {MIN_COSINE}): {shown}. {_diagnosis(thirds)}"
        )
    return {"images": str(images), "samples": len(checked), "min_cosine": min(c["cosine"] for c in checked),
            "rows": checked}  # fmt: skip


def _diagnosis(thirds: np.ndarray) -> str:
    if np.median(thirds[:, 0]) >= MIN_COSINE:
        return ("The CLIP thirds match but the aligned ones do not: the checkpoint's heads are not those the index "
                "was built with.")  # fmt: skip
    return (
        "Whole keys differ: the CSV rows are not in the index's order (a shuffled or filtered CSV), or the index "
        "was built with another CLIP model or preprocessing."
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)


def _official_decode(data: bytes, name: str) -> Any:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception as exc:  # PIL raises many types on corrupt data
        raise CorpusError(f"image {name!r} cannot be decoded: {type(exc).__name__}: {exc}") from exc


def rows_with_images(ids: Any, store: ImageStore, *, samples: int, seed: int) -> np.ndarray:
    """Up to ``samples`` rows (sorted) whose photo is in ``store``: random rows are probed first (a whole corpus
    folder answers at once), then every name is matched (a folder or tar holding a few corpus photos)."""
    from g3.data import image_sizes

    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    found: list[int] = []
    step = 4 * samples
    for start in range(0, min(n, 16 * step), step):
        picks = order[start : start + step]
        sizes = image_sizes(store, ids.take(picks).to_pylist())
        found.extend(int(i) for i in picks[sizes > 0])
        if len(found) >= samples:
            return np.sort(np.asarray(found[:samples], dtype=np.int64))
    if n > 16 * step:
        present = _rows_present(ids, store)
        found = [int(i) for i in order[np.isin(order, present)][:samples]]
    return np.sort(np.asarray(found[:samples], dtype=np.int64))


def _rows_present(ids: Any, store: ImageStore) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    from g3.data import FolderImageStore, image_sizes

    if not isinstance(store, FolderImageStore):  # a tar store looks names up in bulk
        return np.flatnonzero(image_sizes(store, ids.to_pylist()) > 0)
    names = [p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()]
    flat_names = pa.array([n.replace("/", "_") for n in names], pa.string())
    flattened = pc.replace_substring(ids, "/", "_")
    hit = pc.or_(pc.is_in(flattened, value_set=flat_names), pc.is_in(ids, value_set=pa.array(names, pa.string())))
    return np.flatnonzero(hit.to_numpy(zero_copy_only=False))
