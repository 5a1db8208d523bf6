"""The web page of ``g3 serve``: ``GET /``, its static files, and thumbnails of the index's images.

* ``GET /`` and ``GET /static/{path}`` serve the page shipped in ``g3/serve/static/`` (plain HTML, CSS and
  JavaScript, Leaflet vendored in ``static/vendor/leaflet/``; no CDN, no build step), the world map
  ``g3/assets/countries-110m.json`` as ``/static/countries-110m.json``, the page's settings as
  ``/static/page-config.json`` (``{"map": {"tiles", "attribution", "maxZoom"}}``, from ``g3 serve --map-tiles``)
  and the step names the page switches on as ``/static/steps.js`` (generated from `g3.agent.progress.Step`).
  They need no API key (they hold no secrets; the page asks for the key and sends it to the API), and carry
  a strict content-security policy: scripts, styles and connections from this server only, no inline
  script; images from this server, plus the tile server's origin when tiles are configured.
* ``GET /v1/g3/images/{path}`` serves an image of the index from ``ServeSettings.image_root`` (``g3 serve
  --image-root``), by IMG_ID (``a/b.jpg`` is looked up as ``a_b.jpg``, then as ``a/b.jpg``, the way
  `g3.data.images.FolderImageStore` names images). Like every ``/v1`` route it needs the API key when
  keys are set. Refused: ``..`` segments, absolute paths, backslashes, ``%`` (a second encoding), control
  characters (400); anything that resolves outside the root, e.g. through a symlink (403); files that are
  not images by name or by content (415); missing files (404); files over ``max_image_bytes`` (413).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from g3.agent.progress import Step
from g3.data.images import image_file_name
from g3.media import HEAD_BYTES, sniff_image_type
from g3.serve.errors import APIError
from g3.serve.map_tiles import tile_origin

#: Where the page's files live (package-data ``static/*`` and its subfolders).
STATIC_DIR = Path(__file__).with_name("static")

#: Content-Security-Policy of the page and its files: everything from this server, no inline script.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-cache",
}
IMAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=3600",
}

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
#: File names the image route accepts, and the media types (sniffed from the bytes) it serves.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"})
SERVED_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"})
MAX_IMAGE_PATH = 1024


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _file(body: bytes, media_type: str) -> _File:
    return _File(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _load(path: Path) -> _File:
    return _file(path.read_bytes(), _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))


@dataclass(frozen=True)
class MapSettings:
    """What the page's map draws on: the offline outlines only, or tiles from ``tiles`` (a Leaflet URL
    template, checked by `g3.serve.map_tiles.tile_origin`) on top of them."""

    tiles: str | None = None
    attribution: str = ""
    max_zoom: int = 19

    def csp(self) -> str:
        """The page's content-security policy: `PAGE_CSP`, letting images come from the tile server too."""
        if self.tiles is None:
            return PAGE_CSP
        return PAGE_CSP.replace("img-src 'self' data: blob:", f"img-src 'self' data: blob: {tile_origin(self.tiles)}")

    def config(self) -> bytes:
        """``/static/page-config.json``: how the page sets up its map (the CSP forbids inline settings)."""
        attribution = self.attribution or (f"Tiles: {urlsplit(self.tiles).hostname}" if self.tiles else "")
        body = {"map": {"tiles": self.tiles, "attribution": attribution, "maxZoom": self.max_zoom}}
        return json.dumps(body, ensure_ascii=False).encode()


def static_files(map_settings: MapSettings | None = None) -> dict[str, _File]:
    """The page's files by path under ``static/`` (``index.html``, ``vendor/leaflet/leaflet.js``, …), plus
    the world map ``countries-110m.json`` and the page's settings ``page-config.json``."""
    files = {
        p.relative_to(STATIC_DIR).as_posix(): _load(p)
        for p in sorted(STATIC_DIR.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(STATIC_DIR).parts)
    }
    world = Path(str(resources.files("g3.assets").joinpath("countries-110m.json")))
    files["countries-110m.json"] = _load(world)
    files["page-config.json"] = _file((map_settings or MapSettings()).config(), "application/json")
    files["steps.js"] = _file(steps_script(), _MEDIA_TYPES[".js"])
    return files


def steps_script() -> bytes:
    """``/static/steps.js``: the names of the pipeline's steps (`g3.agent.progress.Step`) as ``window.G3Steps``
    (``{"RETRIEVE": "retrieve", …}``), so that the page switches on the names the server streams, not on copies."""
    names = json.dumps({step.name: step.value for step in Step})
    return f"/* Generated from g3.agent.progress.Step. */\nwindow.G3Steps = Object.freeze({names});\n".encode()


def mount_web(
    app: FastAPI, *, image_root: Path | None, max_image_bytes: int, auth: Callable[[Request], None],
    map_settings: MapSettings | None = None,
) -> None:  # fmt: skip
    """Add the page (``/``, ``/static/…``, no auth) and ``/v1/g3/images/{path}`` (with ``auth``) to ``app``."""
    map_settings = map_settings or MapSettings()
    files = static_files(map_settings)
    page_headers = {**PAGE_HEADERS, "Content-Security-Policy": map_settings.csp()}

    def send(file: _File, request: Request) -> Response:
        headers = {**page_headers, "ETag": file.etag}
        if request.headers.get("if-none-match") == file.etag:
            return Response(status_code=304, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(file.body))
            return Response(b"", media_type=file.media_type, headers=headers)
        return Response(file.body, media_type=file.media_type, headers=headers)

    page = APIRouter(include_in_schema=False)

    @page.api_route("/", methods=["GET", "HEAD"])
    async def index(request: Request) -> Response:
        return send(files["index.html"], request)

    @page.api_route("/static/{name:path}", methods=["GET", "HEAD"])
    async def static(name: str, request: Request) -> Response:
        file = files.get(name)
        if file is None:
            raise APIError(404, f"no static file {name[:100]!r}", code="not_found")
        return send(file, request)

    images = APIRouter(prefix="/v1/g3", dependencies=[Depends(auth)])

    @images.get(
        "/images/{path:path}",
        summary="An image of the index (thumbnails of retrieved neighbours)",
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image file"}},
    )
    async def image(path: str) -> Response:
        if image_root is None:
            raise APIError(404, "this server has no image folder (start it with `g3 serve --image-root FOLDER`)",
                           code="no_image_root")  # fmt: skip
        body, media_type = await asyncio.to_thread(read_image, image_root, path, max_bytes=max_image_bytes)
        return Response(body, media_type=media_type, headers=IMAGE_HEADERS)

    app.include_router(page)
    app.include_router(images)


def check_image_path(name: str) -> PurePosixPath:
    """``name`` as a relative path, or `APIError` 400/415 when it could leave the folder or is no image name."""
    if not name or len(name) > MAX_IMAGE_PATH:
        raise APIError(400, f"an image path has 1 to {MAX_IMAGE_PATH} characters", code="bad_image_path")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name or "%" in name:
        raise APIError(400, "the image path has a control character, a backslash or '%'", code="bad_image_path")
    rel = PurePosixPath(name)
    if rel.is_absolute() or PureWindowsPath(name).drive or ".." in rel.parts:
        raise APIError(400, "the image path must be relative to the image folder, without '..'",
                       code="path_traversal")  # fmt: skip
    if rel.suffix.lower() not in IMAGE_SUFFIXES:
        raise APIError(415, f"only images are served ({', '.join(sorted(IMAGE_SUFFIXES))})", code="not_an_image")
    return rel


def find_image(root: Path, name: str) -> Path:
    """The real path of image ``name`` under ``root`` (flattened name first, then the relative path)."""
    rel = check_image_path(name)
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise APIError(404, "the server's image folder does not exist", code="no_image_root") from exc
    for candidate in dict.fromkeys([real_root / image_file_name(name), real_root / rel]):
        try:
            real = candidate.resolve(strict=True)
            mode = real.stat().st_mode
        except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
            continue
        if not real.is_relative_to(real_root):
            raise APIError(403, "the image path leads outside the image folder", code="outside_image_root")
        if stat.S_ISREG(mode):
            return real
    raise APIError(404, f"no image {name[:200]!r} in the image folder", code="image_not_found")


def read_image(root: Path, name: str, *, max_bytes: int) -> tuple[bytes, str]:
    """The bytes and media type of image ``name`` under ``root``; `APIError` for anything refused."""
    path = find_image(root, name)
    with path.open("rb") as fh:
        body = fh.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise APIError(413, f"the image is over {max_bytes:,} bytes", code="image_too_large")
    media_type = sniff_image_type(body[:HEAD_BYTES])
    if media_type is None or media_type not in SERVED_TYPES:
        raise APIError(415, "the file is not an image", code="not_an_image")
    return body, media_type
