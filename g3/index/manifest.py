"""``manifest.json`` of an index folder: what the index holds and how it was built."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from g3.errors import GeoIndexError

FORMAT = "g3-geo-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str


class IndexManifest(BaseModel):
    """Everything needed to trust and use an index folder."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    rows: int = Field(ge=0)
    dim: int = Field(gt=0)
    kind: str = Field(description="FAISS factory string, e.g. 'Flat', 'IVF4096,PQ64', 'HNSW32'")
    metric: str = "inner_product"
    key: str = Field(default="clip+text_aligned+gps_aligned", description="what the vectors are")
    aligner_fingerprint: str | None = None
    aligner_config: dict[str, Any] | None = None
    search_params: dict[str, int] = Field(default_factory=dict)
    built_at: str
    build_seconds: float | None = None
    g3_version: str
    faiss_version: str
    files: dict[str, FileEntry] = Field(default_factory=dict)
    build: dict[str, Any] = Field(default_factory=dict, description="corpus and skipped-image counts")


def file_entry(path: Path) -> FileEntry:
    """Size and SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return FileEntry(bytes=path.stat().st_size, sha256=digest.hexdigest())


def read_manifest(folder: Path) -> IndexManifest:
    """Parse and check ``manifest.json`` of an index folder."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise GeoIndexError(f"{folder} is not a g3 index: {MANIFEST_FILE} is missing (build one with `g3 index build`)")
    try:
        manifest = IndexManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise GeoIndexError(f"{path} is corrupt: {exc}") from exc
    if manifest.format != FORMAT:
        raise GeoIndexError(f"{path}: format {manifest.format!r} is not {FORMAT!r}")
    if manifest.format_version > FORMAT_VERSION:
        raise GeoIndexError(
            f"{path}: format version {manifest.format_version} is newer than this g3 reads ({FORMAT_VERSION}); "
            "upgrade g3"
        )
    return manifest


def check_files(folder: Path, manifest: IndexManifest, *, verify_checksums: bool) -> None:
    """Raise `GeoIndexError` when a listed file is missing, of the wrong size, or (optionally) altered."""
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise GeoIndexError(f"{folder}: {name} is missing; the index folder is incomplete")
        size = path.stat().st_size
        if size != entry.bytes:
            raise GeoIndexError(
                f"{folder}: {name} has {size} bytes, the manifest says {entry.bytes}; the file is truncated or "
                "was replaced — rebuild the index"
            )
        if verify_checksums and file_entry(path).sha256 != entry.sha256:
            raise GeoIndexError(f"{folder}: {name} does not match its checksum; the file is corrupt")
