"""``manifest.json`` of an index folder: what the index holds and how it was built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from g3.errors import GeoIndexError
from g3.io import sha256_file

FORMAT = "g3-geo-index"
#: Version 2 added what imported and two-stage indexes need (``keys_built_by``, ``sources``, ``rerank``,
#: ``converted_from``); a folder without them is written as version 1, which older g3 versions read.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str


class SourceFile(BaseModel):
    """A file an index was made from (an imported FAISS file, a metadata CSV), as it was when read."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="file name as given")
    path: str = Field(description="absolute path when it was read")
    bytes: int
    sha256: str
    streamed: bool = Field(default=True, description="read chunk by chunk, never whole into memory")


class RerankSpec(BaseModel):
    """Two-stage search: the FAISS index finds ``candidates`` rows per query, which are re-scored exactly
    from the full vectors in ``file`` (``rows × dim`` of ``dtype``, C order, memory-mapped)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    dtype: Literal["float16", "float32"]
    candidates: int = Field(gt=0)


class IndexManifest(BaseModel):
    """Everything needed to trust and use an index folder."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = 1
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
    keys_built_by: Literal["g3", "external"] = Field(
        default="g3", description="'external': the vectors were imported (`g3 index import`), not encoded by g3"
    )
    sources: dict[str, SourceFile] = Field(default_factory=dict, description="imported files: 'index', 'metadata'")
    rerank: RerankSpec | None = Field(default=None, description="two-stage search (`g3 index convert`)")
    converted_from: dict[str, Any] | None = Field(default=None, description="the index this one was converted from")

    def with_version(self) -> IndexManifest:
        """This manifest with the lowest format version that holds its fields (older g3 reads version 1)."""
        v2 = self.keys_built_by != "g3" or self.sources or self.rerank is not None or self.converted_from is not None
        return self.model_copy(update={"format_version": 2 if v2 else 1})


def file_entry(path: Path) -> FileEntry:
    """Size and SHA-256 of a file, read in 8 MiB blocks."""
    return FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))


def read_manifest(folder: Path) -> IndexManifest:
    """Parse and check ``manifest.json`` of an index folder."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise GeoIndexError(f"{folder} is not a g3 index: {MANIFEST_FILE} is missing (build one with `g3 index build`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GeoIndexError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(raw, dict):
        raise GeoIndexError(f"{path} is corrupt: not a JSON object")
    if raw.get("format", FORMAT) != FORMAT:
        raise GeoIndexError(f"{path}: format {raw['format']!r} is not {FORMAT!r}")
    version = raw.get("format_version", 1)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise GeoIndexError(
            f"{path}: format version {version} is newer than this g3 reads ({FORMAT_VERSION}); upgrade g3"
        )
    try:
        return IndexManifest.model_validate(raw)
    except ValidationError as exc:
        raise GeoIndexError(f"{path} is corrupt: {exc}") from exc


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
