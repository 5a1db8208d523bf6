"""`g3 fetch official` against a fake model hub on 127.0.0.1 (``HF_ENDPOINT``) that answers as the hub does:
G3's three files (small versions built as the official code builds them) fetched, pinned, an interrupted
download resumed, a checksum mismatch refused, a second run a no-op, a photo located through the bundle; offline
it fails in seconds naming the files; ``--from`` takes files downloaded by hand."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_index_import import Official
from test_official_checkpoint import official_replica
from typer.testing import CliRunner

from g3.agent import G3
from g3.agent.config import G3Config
from g3.cli import app
from g3.errors import CheckpointError, FetchError, HubUnreachableError
from g3.fetch.official import fetch_official, read_record
from g3.fetch.registry import OFFICIAL_FILES
from g3.index.manifest import read_manifest

faiss = pytest.importorskip("faiss")
pytest.importorskip("pyproj")

COMMIT = hashlib.sha1(b"G3-checkpoint").hexdigest()  # what the fake hub's main branch resolves to


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Iterator[Official]:
    """Small g3.pth, g3.index (built as G3's IndexSearch.py does, over real photos) and MP16_Pro_filtered.csv."""
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("published")
    with official_replica(root, tiny_clip_dir) as model:
        yield Official(root, model, CLIPImageProcessor.from_pretrained(tiny_clip_dir), tiny_clip_dir)


class FakeHub(ThreadingHTTPServer):
    """``HEAD/GET /[datasets/]OWNER/NAME/resolve/REVISION/PATH`` as the hub answers them (X-Repo-Commit,
    X-Linked-Etag = SHA-256, X-Linked-Size, ranges), with faults per file name: ``cut`` (the first GET stops
    half-way, later ones get 503 until the fault is cleared) and ``corrupt`` (other bytes than announced)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files = files  # "[datasets/]OWNER/NAME/PATH" -> content
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _lookup(self) -> tuple[str, bytes] | None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        match = re.fullmatch(r"/((?:datasets/)?[^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        if match is None or match[2] not in ("main", COMMIT):
            self._status(404, "RevisionNotFound")
            return None
        content = self.server.files.get(f"{match[1]}/{match[3]}")
        if content is None:
            self._status(404, "EntryNotFound")
            return None
        return match[3].rsplit("/", 1)[-1], content

    def _status(self, code: int, error: str | None = None) -> None:
        self.send_response(code)
        if error:
            self.send_header("X-Error-Code", error)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _headers(self, content: bytes) -> None:
        sha = hashlib.sha256(content).hexdigest()
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(content)))
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self) -> None:
        found = self._lookup()
        if found is not None:
            self.send_response(200)
            self._headers(found[1])
            self.send_header("Content-Length", str(len(found[1])))
            self.end_headers()

    def do_GET(self) -> None:
        found = self._lookup()
        if found is None:
            return
        name, content = found
        fault = self.server.faults.get(name)
        if fault == "down":
            self._status(503)
            return
        body = content if fault != "corrupt" else bytes([content[0] ^ 1]) + content[1:]
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))[1])  # type: ignore[index]
        self.send_response(206 if start else 200)
        self._headers(content)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault == "cut":  # half the bytes, then the connection drops; the hub stays down until cleared
            self.wfile.write(body[start : len(body) // 2])
            self.wfile.flush()
            self.server.faults[name] = "down"
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture()
def hub(published: Official, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants

    contents = {"g3.pth": published.index_file.with_name("g3.pth"), "g3.index": published.index_file,
                "MP16_Pro_filtered.csv": published.csv}  # fmt: skip
    files = {f"{'datasets/' if f.repo_type == 'dataset' else ''}{f.repo_id}/{f.path}": contents[f.name].read_bytes()
             for f in OFFICIAL_FILES}  # fmt: skip
    server = FakeHub(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest keeps tests off the hub
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # 10 MB: these files are KB
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def fetch(to: Path, clip: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["fetch", "official", "--to", str(to), "--clip", str(clip), "--no-progress", *extra])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # locates a photo with the paper's ensemble on the tiny LLaVA (≈ 8 s)
def test_fetch_resumes_pins_checks_then_locates_through_the_bundle(
    published: Official, hub: FakeHub, tmp_path: Path, tiny_clip_dir: Path, tiny_assets: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    bundle = tmp_path / "official"
    index_size = published.index_file.stat().st_size
    hub.faults["g3.index"] = "cut"
    first = fetch(bundle, tiny_clip_dir)
    assert isinstance(first.exception, FetchError), first.output
    assert "stopped after" in str(first.exception) and "run the same command again to resume" in str(first.exception)
    part = bundle / "downloads" / "g3.index.part"
    kept = part.stat().st_size
    assert 0 < kept <= index_size // 2  # the bytes that came are kept (in the hub client's chunks)
    record = read_record(bundle)
    assert record["files"]["checkpoint"]["sha256"] == sha256(published.index_file.with_name("g3.pth"))
    assert {record["files"][k]["revision"] for k in ("index", "metadata")} == {COMMIT}  # pinned before downloading

    hub.faults.clear()
    hub.requests.clear()
    second = fetch(bundle, tiny_clip_dir)
    assert second.exit_code == 0, second.output
    gets = [(path, rng) for method, path, rng in hub.requests if method == "GET"]
    assert ("/Jia-py/G3-checkpoint/resolve/" + COMMIT + "/g3.index", f"bytes={kept}-") in gets  # resumed there
    assert not any(path.endswith("/g3.pth") for path, _ in gets)  # recorded as complete: not asked again
    assert all(f"/resolve/{COMMIT}/" in path for _, path, _ in hub.requests)  # the pinned commit, never "main"
    record = read_record(bundle)
    for file, local in zip(OFFICIAL_FILES, (published.index_file.with_name("g3.pth"), published.index_file,
                                            published.csv), strict=True):  # fmt: skip
        entry = record["files"][file.key]
        assert (entry["size"], entry["sha256"], entry["revision"]) == (local.stat().st_size, sha256(local), COMMIT)
    assert record["complete"] and record["index"]["rows"] == len(published.rows)
    assert not part.exists()

    hub.requests.clear()
    third = fetch(bundle, tiny_clip_dir)
    assert third.exit_code == 0 and "nothing to do" in third.output and hub.requests == []

    config = G3Config.load(bundle)  # the bundle's own parts, the paper's settings
    assert (config.aligner, config.index) == (str(bundle / "aligner"), str(bundle / "index"))
    assert config.ensemble == G3Config.load("paper").ensemble and config.verify == G3Config.load("paper").verify

    with G3.from_pretrained(bundle) as g3:  # the paper's LMM (an OpenAI-compatible server) is named, not called
        assert g3.runtime.index is not None and len(g3.runtime.index) == len(published.rows)
        assert g3.runtime.aligner.fingerprint() == read_manifest(bundle / "index").aligner_fingerprint

    monkeypatch.setenv("G3_CACHE_DIR", str(tiny_assets.parent))  # where tiny://llava was built
    located = CliRunner().invoke(
        app, ["locate", str(published.query), "--config", str(bundle), "--lmm-model", "tiny://llava", "--json"]
    )
    assert located.exit_code == 0, located.output
    prediction = json.loads(located.stdout[located.stdout.index("{") :])
    if isinstance(prediction, list):
        prediction = prediction[0]
    # the neighbours are those the official search finds in the published index
    _, rows = faiss.read_index(str(published.index_file)).search(published.query_key, 5)
    got = [c for n in prediction["similar"][:5] for c in (n["lat"], n["lon"])]
    assert got == pytest.approx([float(published.rows[r][c]) for r in rows[0] for c in ("LAT", "LON")])
    assert {"zero_shot", "rag_5", "rag_10"} <= set(prediction["raw_answers"])  # the paper's ensemble ran
    # rag_15's prompt plus the paper's max_tokens (200) exceed the tiny LLaVA's 1024-token context: reported
    assert [d["reason"] for d in prediction["degradations"]] == ["prompts_failed"]
    why = prediction["degradations"][0]["message"]
    assert "rag_15" in why and "context" in why


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(
    published: Official, hub: FakeHub, tmp_path: Path, tiny_clip_dir: Path
) -> None:
    hub.faults["g3.pth"] = "corrupt"
    result = fetch(tmp_path / "b", tiny_clip_dir)
    assert isinstance(result.exception, FetchError)
    assert "checksum mismatch" in str(result.exception) and sha256(published.index_file.with_name("g3.pth")) in str(
        result.exception
    )
    downloads = tmp_path / "b" / "downloads"
    assert not (downloads / "g3.pth").exists() and not (downloads / "g3.pth.part").exists()
    assert not (tmp_path / "b" / "aligner").exists() and not (tmp_path / "b" / "g3.yaml").exists()


def test_offline_it_fails_in_seconds_listing_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import huggingface_hub.constants

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    with pytest.raises(HubUnreachableError) as refused:
        fetch_official(tmp_path / "b", progress=False)
    assert time.perf_counter() - started < 10
    message = str(refused.value)
    for file in OFFICIAL_FILES:
        assert file.name in message and file.approx_size in message and file.url(f"http://127.0.0.1:{port}") in message
    assert f"--to {tmp_path / 'b'} --from FOLDER" in message

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        fetch_official(tmp_path / "b", progress=False)


def test_from_a_folder_of_files_downloaded_by_hand(published: Official, tmp_path: Path, tiny_clip_dir: Path) -> None:
    by_hand = tmp_path / "by-hand"
    (by_hand / "metadata").mkdir(parents=True)
    (by_hand / "g3.pth").symlink_to(published.index_file.with_name("g3.pth"))
    (by_hand / "g3.index").symlink_to(published.index_file)
    missing = fetch(tmp_path / "b", tiny_clip_dir, "--from", str(by_hand))
    message = str(missing.exception)
    assert isinstance(missing.exception, FetchError) and "lacks MP16_Pro_filtered.csv" in message
    assert OFFICIAL_FILES[2].approx_size in message and OFFICIAL_FILES[2].path in message  # its size, where it is

    (by_hand / "metadata" / "MP16_Pro_filtered.csv").symlink_to(published.csv)  # its path in the repository
    no_clip = fetch(tmp_path / "c", tmp_path / "no-clip", "--from", str(by_hand))
    assert isinstance(no_clip.exception, CheckpointError) and "no-clip" in str(no_clip.exception)
    assert read_record(tmp_path / "c")["files"] == {}  # refused before any file was hashed or converted
    done = fetch(tmp_path / "b", tiny_clip_dir, "--from", str(by_hand), "--link", "copy")
    assert done.exit_code == 0, done.output
    record = read_record(tmp_path / "b")
    assert {e["source"] for e in record["files"].values()} == {"local"}
    assert record["files"]["index"]["sha256"] == sha256(published.index_file)
    assert record["index"]["rows"] == len(published.rows) and (tmp_path / "b" / "g3.yaml").is_file()
