"""`g3 fetch official`: G3's published checkpoint, index and metadata made into a bundle folder.

Steps, each skipped when an earlier run finished it (so the command is resumable and a second run is a no-op):

1. the three files (`g3.fetch.registry`) from the hub (pinned to the commit the first run resolved, resumable,
   size and SHA-256 checked, `g3.fetch.download`) into ``DIR/downloads/``, or taken from ``--from FOLDER``;
2. ``g3.pth`` converted into a g3 aligner checkpoint ``DIR/aligner`` (as ``g3 aligner convert``);
3. ``g3.index`` + the CSV imported as ``DIR/index`` (as ``g3 index import``: hard-linked, memory-mapped);
4. ``DIR/g3.yaml``: the shipped ``paper`` settings with ``aligner: ./aligner`` and ``index: ./index``, so
   ``G3.from_pretrained(DIR)``, ``g3 locate --config DIR`` and ``g3 serve --config DIR`` use them.

``DIR/fetch.json`` records every file (where from, revision, size, SHA-256) and every finished step. The default
``DIR`` is ``<cache>/official``, the folder that the shipped ``paper`` configuration's ``official://aligner``
and ``official://index`` name.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from g3.agent.config import BUNDLE_CONFIG
from g3.agent.official import default_official_dir
from g3.configs import shipped_config
from g3.errors import FetchError, HubUnreachableError
from g3.fetch.download import download, endpoint, hub_offline, part_path, remote_file
from g3.fetch.registry import OFFICIAL_CLIP, OFFICIAL_FILES, HubFile
from g3.io import atomic_folder, atomic_write_json, atomic_write_text, sha256_file

if TYPE_CHECKING:
    from g3.fetch.download import RemoteFile
    from g3.index.importer import LinkMode

log = logging.getLogger(__name__)

RECORD_FILE = "fetch.json"
DOWNLOADS = "downloads"
ALIGNER = "aligner"
INDEX = "index"
RECORD_FORMAT = 1


@dataclass
class FetchResult:
    """What `fetch_official` did: the bundle folder, its record, and the steps it ran (empty: nothing to do)."""

    folder: Path
    record: dict[str, Any]
    done: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.folder / BUNDLE_CONFIG


def fetch_official(
    to: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    clip: str = OFFICIAL_CLIP,
    trust_pickle: bool = False,
    link: LinkMode = "auto",
    progress: bool = True,
    files: tuple[HubFile, ...] = OFFICIAL_FILES,
) -> FetchResult:
    """Download (or take from ``source``), convert and import G3's published files into the bundle folder
    ``to`` (default ``<cache>/official``); return what was done. `HubUnreachableError` (offline) and
    `FetchError` (missing, interrupted or altered files) name the files, their sizes and where to put them."""
    folder = Path(to) if to is not None else default_official_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record = read_record(folder)
    result = FetchResult(folder, record)
    if _complete(folder, record):
        log.info("%s is complete (fetched %s); nothing to do", folder, record.get("completed_at"))
        return result
    record["complete"] = False
    checked = {k: v.get("sha256") for k, v in record["files"].items()}
    # CLIP's configuration and tokenizer (a few MB) are checked before gigabytes are downloaded or hashed
    preflight = None if (folder / ALIGNER).is_dir() and record.get("aligner") else (lambda: _check_clip(clip))
    paths = (
        _take_local(Path(source), folder, record, files, preflight)
        if source is not None
        else _download_all(folder, record, files, preflight)
    )
    if checked != {k: v.get("sha256") for k, v in record["files"].items()}:
        result.done.append("files")
    checkpoint, index_file, metadata = (paths[f.key] for f in files)
    checkpoint_sha = record["files"][files[0].key]["sha256"]
    aligner_dir = folder / ALIGNER
    if not (aligner_dir.is_dir() and record.get("aligner", {}).get("from_sha256") == checkpoint_sha):
        _convert(checkpoint, aligner_dir, clip=clip, trust_pickle=trust_pickle)
        record["aligner"] = {"from_sha256": checkpoint_sha, "clip": clip}
        write_record(folder, record)
        result.done.append("aligner")
    index_sha = record["files"][files[1].key]["sha256"]
    index_dir = folder / INDEX
    if not (index_dir.is_dir() and record.get("index", {}).get("from_sha256") == index_sha):
        from g3.index.importer import import_faiss_index

        index = import_faiss_index(
            index_file, metadata, aligner_dir, index_dir, progress=progress, link=link, known_sha256=index_sha
        )
        record["index"] = {"from_sha256": index_sha, "rows": len(index), "dim": index.dim}
        write_record(folder, record)
        result.done.append("index")
    write_bundle_config(folder)
    record.update(complete=True, completed_at=_now())
    write_record(folder, record)
    result.done.append("config")
    return result


# -- the files ------------------------------------------------------------------------------------------


def _download_all(
    folder: Path, record: dict[str, Any], files: tuple[HubFile, ...], preflight: Callable[[], None] | None
) -> dict[str, Path]:
    """Every file from the hub: all are looked up first (so an unreachable hub or a moved file fails in seconds,
    before gigabytes are spent), then downloaded one by one, each recorded as soon as it is checked."""
    hub = endpoint()
    if hub_offline():
        raise HubUnreachableError(missing_files_message(folder, files, f"HF_HUB_OFFLINE is set, {hub} is not asked"))
    downloads = folder / DOWNLOADS
    downloads.mkdir(exist_ok=True)
    todo: list[tuple[HubFile, RemoteFile]] = []
    paths = {}
    for file in files:
        target = downloads / file.name
        paths[file.key] = target
        if _recorded(record, file, target, folder):
            continue
        revision = record["files"].get(file.key, {}).get("revision") or file.revision  # the commit resolved first
        try:
            remote = remote_file(file, revision=revision, hub=hub)
        except HubUnreachableError as exc:
            raise HubUnreachableError(missing_files_message(folder, files, str(exc))) from exc
        _check_published(file, remote)
        if remote.commit:  # pin now: a resumed run asks for the same commit even if the branch moved
            record["files"][file.key] = {"revision": remote.commit}
            write_record(folder, record)
        todo.append((file, remote))
    if preflight is not None:
        preflight()
    for file, remote in todo:
        target = paths[file.key]
        log.info("downloading %s (%s) from %s", file.name, file.approx_size, remote.url)
        digest = download(file, remote, target, hub=hub, expected_sha256=file.sha256)
        record["files"][file.key] = _file_record(
            file, target, source="hub", revision=remote.commit, url=remote.url, sha256=digest
        ) | {"local_path": str(target.relative_to(folder))}
        write_record(folder, record)
    return paths


def _check_published(file: HubFile, remote: RemoteFile) -> None:
    """Refuse before downloading when the hub's file is not the one pinned in the registry."""
    if file.size is not None and remote.size is not None and remote.size != file.size:
        raise FetchError(
            f"the hub's {file.path} ({file.repo_id}) has {remote.size:,} bytes, G3's published file has "
            f"{file.size:,} (g3/fetch/registry.py): not downloading it"
        )
    if file.sha256 is not None and remote.sha256 is not None and remote.sha256 != file.sha256:
        raise FetchError(
            f"checksum mismatch before download: the hub's {file.path} ({file.repo_id}) has SHA-256 {remote.sha256}, "
            f"G3's published file has {file.sha256} (g3/fetch/registry.py): not downloading it"
        )


def _take_local(
    source: Path,
    folder: Path,
    record: dict[str, Any],
    files: tuple[HubFile, ...],
    preflight: Callable[[], None] | None,
) -> dict[str, Path]:
    """The files downloaded by hand, in ``source`` (by name, or by their path in the repository), checked
    against the registry's size and SHA-256 where it has them; used in place (the index is hard-linked)."""
    found = {f.key: next((p for p in (source / f.name, source / f.path) if p.is_file()), None) for f in files}
    missing = [f for f in files if found[f.key] is None]
    if missing:
        raise FetchError(missing_files_message(folder, missing, f"{source} lacks {', '.join(f.name for f in missing)}"))
    if preflight is not None:
        preflight()
    paths = {}
    for file in files:
        path = found[file.key]
        assert path is not None
        paths[file.key] = path
        if _recorded(record, file, path, folder):
            continue
        size = path.stat().st_size
        if file.size is not None and size != file.size:
            raise FetchError(f"{path} has {size:,} bytes, G3's published {file.name} has {file.size:,}")
        log.info("checking %s (SHA-256 of %s bytes)", path, f"{size:,}")
        entry = _file_record(file, path, source="local", revision=None, url=None)
        if file.sha256 is not None and entry["sha256"] != file.sha256:
            raise FetchError(
                f"checksum mismatch: {path} has SHA-256 {entry['sha256']}, G3's published {file.name} has "
                f"{file.sha256} (g3/fetch/registry.py)"
            )
        record["files"][file.key] = entry
        write_record(folder, record)
    return paths


def _file_record(
    file: HubFile, path: Path, *, source: str, revision: str | None, url: str | None, sha256: str | None = None
) -> dict[str, Any]:
    stat = path.stat()
    return {
        "repo_id": file.repo_id, "repo_type": file.repo_type, "path_in_repo": file.path,
        "revision": revision, "url": url, "source": source, "local_path": str(path.absolute()),
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or sha256_file(path), "fetched_at": _now(),
    }  # fmt: skip


def _recorded(record: dict[str, Any], file: HubFile, path: Path, folder: Path) -> bool:
    """Whether ``path`` is the file recorded as checked (same path, size and modification time; a download's
    path is recorded relative to the bundle folder, which may have been moved)."""
    entry = record["files"].get(file.key, {})
    if "sha256" not in entry or not path.is_file():
        return False
    stored = Path(entry["local_path"])
    if (stored if stored.is_absolute() else folder / stored).absolute() != path.absolute():
        return False
    stat = path.stat()
    return bool(stat.st_size == entry["size"] and stat.st_mtime_ns == entry["mtime_ns"])


def _complete(folder: Path, record: dict[str, Any]) -> bool:
    """A finished bundle: nothing to do (even when the downloads were deleted afterwards to save space)."""
    return bool(record.get("complete")) and all(
        p.exists() for p in (folder / ALIGNER, folder / INDEX, folder / BUNDLE_CONFIG)
    )


def missing_files_message(folder: Path, files: tuple[HubFile, ...] | list[HubFile], why: str) -> str:
    """Why the files cannot be had, each file with its size and address, and where to put files got by hand."""
    hub = endpoint()
    lines = [f"{why}. g3 fetch official needs these files:"]
    for f in files:
        lines.append(f"  {f.name:<24} {f.approx_size}\n    {f.url(hub)}\n    ({f.what})")
    lines.append(
        f"Download them on a machine with access to the hub (e.g. `hf download {files[0].repo_id} "
        f"{files[0].path}`), put them in one folder (by name, or under their path in the repository) and run "
        f"`g3 fetch official --to {folder} --from FOLDER`. Converting g3.pth also reads the configuration and "
        f"tokenizer of {OFFICIAL_CLIP} (a few MB; offline: --clip LOCAL_FOLDER)."
    )
    return "\n".join(lines)


# -- the steps after the files ---------------------------------------------------------------------------


def _check_clip(clip: str) -> None:
    """`CheckpointError` now, not after the downloads, when CLIP's configuration cannot be read."""
    from g3.models.clip import load_clip_config

    load_clip_config(clip)


def _convert(checkpoint: Path, out: Path, *, clip: str, trust_pickle: bool) -> None:
    from g3.models.official import load_official_g3

    log.info("converting %s into %s (CLIP configuration from %s)", checkpoint, out, clip)
    aligner = load_official_g3(checkpoint, clip_source=clip, trust_pickle=trust_pickle)
    with atomic_folder(out) as staging:
        aligner.save_pretrained(str(staging), include_clip=True)


def write_bundle_config(folder: Path) -> Path:
    """``folder/g3.yaml``: the shipped paper settings, with the bundle's own aligner and index."""
    paper = shipped_config("paper")
    assert paper is not None, "g3 ships configs/paper.yaml"
    settings = yaml.safe_load(paper.read_text(encoding="utf-8"))
    settings.update(aligner=f"./{ALIGNER}", index=f"./{INDEX}")
    header = (
        "# G3's published model (g3 fetch official): the paper's settings (the shipped `paper` configuration)\n"
        "# over this folder's aligner and index. Name the LMM with --lmm-url URL [--lmm-model NAME], or edit lmm:.\n"
        "#   g3 locate --config THIS_FOLDER photo.jpg   ·   G3.from_pretrained(THIS_FOLDER)\n"
    )
    path = folder / BUNDLE_CONFIG
    atomic_write_text(path, header + yaml.safe_dump(settings, sort_keys=False, width=120))
    return path


# -- the record ---------------------------------------------------------------------------------------------


def read_record(folder: Path) -> dict[str, Any]:
    """``folder/fetch.json`` (an empty record when there is none)."""
    import json

    path = folder / RECORD_FILE
    if not path.is_file():
        return {"format": RECORD_FORMAT, "files": {}}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FetchError(f"{path} cannot be read ({exc}); delete it to start the fetch over") from exc
    if not (
        isinstance(record, dict) and record.get("format") == RECORD_FORMAT and isinstance(record.get("files"), dict)
    ):
        raise FetchError(f"{path} is not a g3 fetch record (format {RECORD_FORMAT}); delete it to start over")
    return record


def write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_json(folder / RECORD_FILE, record)


def partial_downloads(folder: Path, files: tuple[HubFile, ...] = OFFICIAL_FILES) -> dict[str, int]:
    """Bytes already downloaded of each unfinished file (what the next run resumes from)."""
    parts = {f.name: part_path(folder / DOWNLOADS / f.name) for f in files}
    return {name: p.stat().st_size for name, p in parts.items() if p.is_file()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
