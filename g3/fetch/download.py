"""Downloading one published file from the model hub: pinned, resumable across runs, size and SHA-256 checked.

`huggingface_hub` resolves where the file is (``HEAD …/resolve/REVISION/PATH``: the commit the revision names,
the file's size and, for large files, its SHA-256 as ETag) and streams it (`http_get`, which also resumes within
a run after a dropped connection). The bytes go to ``NAME.part`` beside the target and are appended to on the
next run, so an interrupted 38 GB download continues where it stopped instead of starting over (the hub client's
own ``hf_hub_download`` discards a partial file). Only a file whose size and SHA-256 match is renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from g3.errors import FetchError, HubUnreachableError
from g3.io import sha256_file

if TYPE_CHECKING:
    from g3.fetch.registry import HubFile

log = logging.getLogger(__name__)

#: Seconds to wait for the hub's answer about one file (a missing network fails at once or after this).
METADATA_TIMEOUT_S = 10.0
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about a file at a revision."""

    url: str  # where to GET it (the hub, or the storage it redirects to)
    commit: str | None  # the commit the revision resolved to (X-Repo-Commit)
    size: int | None
    sha256: str | None  # the ETag of a large (LFS/Xet) file is its SHA-256; None for small git files


def endpoint() -> str:
    """The hub's address: ``$HF_ENDPOINT`` (read now, so a test or a mirror can set it) else huggingface_hub's."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``): it would refuse every request."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def remote_file(file: HubFile, *, revision: str, hub: str, timeout: float = METADATA_TIMEOUT_S) -> RemoteFile:
    """Ask the hub about ``file`` at ``revision``. `HubUnreachableError` when the hub cannot be reached,
    `FetchError` when it answers that the file, revision or repository is not there."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    url = hf_hub_url(file.repo_id, file.path, repo_type=file.repo_type, revision=revision, endpoint=hub)
    try:
        meta = get_hf_file_metadata(url, timeout=timeout, endpoint=hub)
    except OfflineModeIsEnabled as exc:
        raise HubUnreachableError(f"huggingface_hub is in offline mode (HF_HUB_OFFLINE): {exc}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise FetchError(
            f"the hub at {hub} has no {file.path} in the {file.repo_type} repository {file.repo_id} at revision "
            f"{revision} (HTTP {status}: {str(exc).splitlines()[0]}); g3/fetch/registry.py says where G3's files "
            "are: if the authors moved them, download them by hand and use --from FOLDER"
        ) from exc
    except Exception as exc:
        if _transport_error(exc):
            raise HubUnreachableError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
        raise
    etag = (meta.etag or "").strip('"').removeprefix("W/").strip('"')
    sha256 = etag.lower() if len(etag) == 64 and all(c in "0123456789abcdefABCDEF" for c in etag) else None
    location = meta.location or url
    if meta.commit_hash and location == url:  # served by the hub itself: ask for the pinned commit, not the branch
        location = hf_hub_url(
            file.repo_id, file.path, repo_type=file.repo_type, revision=meta.commit_hash, endpoint=hub
        )
    return RemoteFile(url=location, commit=meta.commit_hash, size=meta.size, sha256=sha256)


def _transport_error(exc: BaseException) -> bool:
    """A network failure (refused, DNS, timeout, dropped) of whichever HTTP library huggingface_hub uses."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"TransportError", "RequestError", "ConnectionError"})


def part_path(target: Path) -> Path:
    """Where the bytes of ``target`` accumulate until they are complete and checked."""
    return target.with_name(target.name + PART_SUFFIX)


def download(file: HubFile, remote: RemoteFile, target: Path, *, hub: str, expected_sha256: str | None) -> str:
    """Download ``remote`` to ``target``, resuming ``target.part`` if an earlier run left one; check the size
    and the SHA-256 (``expected_sha256``, else the hub's) before moving it into place. `FetchError` when the
    download stops (the partial file is kept: running again resumes) or the file is not the published one (the
    partial file is deleted: resuming it would only repeat the mismatch). Returns the file's SHA-256."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    expected = expected_sha256 or remote.sha256
    if expected is None:
        log.warning("no SHA-256 to check %s against (the hub's ETag is not one): only its size is checked", file.name)
    if target.is_file() and target.stat().st_size == remote.size and expected and sha256_file(target) == expected:
        log.info("%s is already there and checks out", target)
        return expected
    part = part_path(target)
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:
        log.warning("%s holds %d bytes, more than the %d published: starting over", part, have, remote.size)
        part.unlink()
        have = 0
    _check_disk_space(target.parent, (remote.size or 0) - have, file)
    same_host = urlparse(remote.url).netloc == urlparse(hub).netloc
    headers = build_hf_headers() if same_host else {}  # the hub's token never goes to a storage host
    headers["Accept-Encoding"] = "identity"
    if have:
        log.info("resuming %s at byte %d of %s", file.name, have, remote.size)
    try:
        with part.open("ab") as fh:
            if remote.size is None or have < remote.size:
                http_get(remote.url, fh, resume_size=have, headers=headers, expected_size=remote.size,
                         displayed_filename=file.name)  # fmt: skip
    except Exception as exc:
        got = part.stat().st_size if part.is_file() else 0
        if not (_transport_error(exc) or exc.__class__.__name__ == "HfHubHTTPError"):
            raise
        raise FetchError(
            f"the download of {file.name} from {remote.url} stopped after {got:,} of {_size(remote.size)} bytes "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); run the same "
            f"command again to resume from there ({part} is kept)"
        ) from exc
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        raise FetchError(f"{part} has {size:,} bytes, the hub announced {remote.size:,}; run again to resume")
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink()
        raise FetchError(
            f"checksum mismatch: the downloaded {file.name} has SHA-256 {digest}, the published file has {expected} "
            f"({'pinned in g3/fetch/registry.py' if expected_sha256 else 'the hub ETag'}); the download was "
            "deleted. A proxy or mirror that alters files, or a file replaced on the hub, gives this: check "
            "HF_ENDPOINT and run again"
        )
    os.replace(part, target)
    return digest


def _check_disk_space(folder: Path, needed: int, file: HubFile) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(
            f"{file.name} needs {_size(needed)} more bytes but {folder} has {_size(free)} free; free some space or "
            "use --to on a larger disk"
        )


def _size(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "an unknown number of"
