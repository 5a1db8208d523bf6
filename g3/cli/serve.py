"""`g3 serve`: G3 behind an OpenAI-compatible API and a web page."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from g3.cli._common import ConfigOption, LMMModel, LMMUrl, load_settings


def serve(
    config: ConfigOption = Path("paper"),
    lmm_url: LMMUrl = None,
    lmm_model: LMMModel = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (vLLM's servers default to 8000).")] = 8080,
    model_id: Annotated[str, typer.Option(help="Model id clients ask for.")] = "g3",
    allow_url_host: Annotated[
        list[str] | None, typer.Option(help="Host whose http(s) image URLs may be fetched (repeat; *.suffix ok).")
    ] = None,
    file_root: Annotated[Path | None, typer.Option(help="Folder from which file:// image URLs may be read.")] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Folder of the index's images: the web page at / shows them as thumbnails of the evidence.",
        ),
    ] = None,
    max_concurrent: Annotated[int, typer.Option(help="Photos located at once.")] = 4,
    max_waiting: Annotated[int, typer.Option(help="Requests queued before answering 429.")] = 32,
    timeout: Annotated[float, typer.Option(help="Per-request time limit in seconds (504 past it).")] = 300.0,
    max_body_mb: Annotated[float, typer.Option(help="Request body limit (413 past it).")] = 32.0,
    max_image_mb: Annotated[float, typer.Option(help="Image size limit (413 past it).")] = 20.0,
    map_tiles: Annotated[
        str | None,
        typer.Option(
            metavar="URL_TEMPLATE",
            help="Tile server for the web page's map, e.g. 'https://tile.example/{z}/{x}/{y}.png' (Leaflet syntax; "
            "{s} subdomains, {r}): zooms to street level around each candidate. Default: the offline Natural Earth "
            "outlines only.",
        ),
    ] = None,
    map_attribution: Annotated[
        str, typer.Option(help="Credit line the map shows for the tiles (most tile providers require one).")
    ] = "",
    map_max_zoom: Annotated[int, typer.Option(help="Deepest zoom level the tile server has.")] = 19,
) -> None:
    """Serve G3 behind an OpenAI-compatible API (POST /v1/chat/completions with an image_url part).

    API keys: set G3_API_KEYS to a comma-separated list to require `Authorization: Bearer <key>` on /v1.
    A web page to try it in a browser is served at / (see docs/web.md).
    """
    import os

    import uvicorn

    from g3.agent import G3
    from g3.serve.app import ServeSettings, create_app

    keys = tuple(k.strip() for k in os.environ.get("G3_API_KEYS", "").split(",") if k.strip())
    settings = ServeSettings(
        model_id=model_id,
        api_keys=keys,
        allowed_url_hosts=tuple(allow_url_host or ()),
        file_root=file_root,
        image_root=image_root,
        max_concurrent=max_concurrent,
        max_waiting=max_waiting,
        request_timeout_s=timeout,
        max_body_bytes=int(max_body_mb * 2**20),
        max_image_bytes=int(max_image_mb * 2**20),
        map_tiles=map_tiles,
        map_attribution=map_attribution,
        map_max_zoom=map_max_zoom,
    )
    if map_tiles and not map_attribution:
        logging.getLogger(__name__).warning(
            "--map-tiles without --map-attribution: the map credits the tile host by name only; most tile "
            "providers require their own credit line"
        )
    with G3.from_config(load_settings(config, lmm_url, lmm_model)) as g3:
        logging.getLogger(__name__).info(
            "serving %s on http://%s:%d/v1 (API keys %s); web page at http://%s:%d/", model_id, host, port,
            "required" if keys else "off", host, port,
        )  # fmt: skip
        grace = int(settings.shutdown_grace_s)
        uvicorn.run(create_app(g3, settings), host=host, port=port, timeout_graceful_shutdown=grace, log_level="info")
