"""`g3 serve --map-tiles`: the tile URL template is checked when the server starts, and only its origin is let
into the page's content-security policy (the page itself is tested in Chromium in test_web.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from g3.serve.app import ServeSettings
from g3.serve.map_tiles import tile_origin
from g3.serve.web import PAGE_CSP, static_files


@pytest.mark.parametrize(
    ("template", "origin"),
    [
        ("https://tile.example/{z}/{x}/{y}.png", "https://tile.example"),
        ("https://{s}.tile.example/{z}/{x}/{y}{r}.png?key=abc", "https://*.tile.example"),
        ("http://127.0.0.1:8080/tiles/{z}/{x}/{-y}.png", "http://127.0.0.1:8080"),
        ("http://[::1]:9000/{z}/{x}/{y}.png", "http://[::1]:9000"),
    ],
)
def test_tile_origin(template: str, origin: str) -> None:
    assert tile_origin(template) == origin
    csp = ServeSettings(map_tiles=template).map_settings().csp()
    assert f"img-src 'self' data: blob: {origin};" in csp and csp.count(origin) == 1


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("ftp://tile.example/{z}/{x}/{y}.png", "http:// or https://"),
        ("https://tile.example/{z}/{x}.png", "needs the placeholders"),
        ("https://tile.example/{z}/{x}/{y}/{key}.png", "unknown placeholders {key}"),
        ("https://a{s}.example/{z}/{x}/{y}.png", "leftmost label"),
        ("https://user:pw@tile.example/{z}/{x}/{y}.png", "credentials"),
        ("https://tile.example/{z}/{x}/{y}.png; script-src *", "space"),
        ("https://tile.example:99999/{z}/{x}/{y}.png", "invalid port"),
    ],
)
def test_bad_templates_are_refused(template: str, why: str) -> None:
    with pytest.raises(ValueError, match="--map-tiles") as info:
        ServeSettings(map_tiles=template)
    assert why in str(info.value)


def test_page_config_and_csp_without_tiles() -> None:
    settings = ServeSettings()
    assert settings.map_settings().csp() == PAGE_CSP
    files = static_files(settings.map_settings())
    assert json.loads(files["page-config.json"].body) == {"map": {"tiles": None, "attribution": "", "maxZoom": 19}}
    # the vendored Leaflet ships inside the package and is served by path under /static/
    assert {"vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css", "vendor/leaflet/LICENSE"} <= set(files)
    tiles = ServeSettings(map_tiles="https://tile.example/{z}/{x}/{y}.png", map_max_zoom=18)
    config = json.loads(static_files(tiles.map_settings())["page-config.json"].body)["map"]
    assert config == {"tiles": tiles.map_tiles, "attribution": "Tiles: tile.example", "maxZoom": 18}


def test_every_page_file_ships_in_the_package() -> None:
    """The wheel holds what setuptools' package-data globs match: every file of the page, Leaflet included."""
    import tomllib

    from g3.serve.web import STATIC_DIR

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["g3.serve"]
    package = STATIC_DIR.parent
    shipped = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    served = {p for p in STATIC_DIR.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert served and served <= shipped, sorted(str(p.relative_to(package)) for p in served - shipped)


@pytest.mark.slow
def test_g3_serve_map_tiles_reaches_the_page(tmp_path: Path) -> None:
    """`g3 serve --map-tiles … --map-attribution …` (the real command, tiny setting): the page's settings and CSP
    name the tile server; a bad template is refused before anything loads."""
    import subprocess
    import sys
    import time

    import httpx
    from vllm_server import free_port

    root = Path(__file__).resolve().parents[1]
    g3 = [sys.executable, "-c", "from g3.cli import main; main()"]
    bad = subprocess.run([*g3, "serve", "-c", "configs/tiny.yaml", "--map-tiles", "https://tiles.example/{z}.png"],
                         cwd=root, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--map-tiles" in bad.stderr and "needs the placeholders" in bad.stderr

    port = free_port()
    template = "https://{s}.tiles.example/{z}/{x}/{y}.png"
    args = ["serve", "-c", "configs/tiny.yaml", "--port", str(port), "--map-tiles", template,
            "--map-attribution", "© Example tiles", "--map-max-zoom", "18"]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([*g3, *args], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "g3 serve did not start"
                time.sleep(0.5)
        assert "img-src 'self' data: blob: https://*.tiles.example;" in page.headers["content-security-policy"]
        config = httpx.get(f"http://127.0.0.1:{port}/static/page-config.json").json()
        assert config == {"map": {"tiles": template, "attribution": "© Example tiles", "maxZoom": 18}}
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
