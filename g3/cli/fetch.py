"""`g3 fetch`: get published artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from g3.cli._common import check_link

fetch_app = typer.Typer(help="Get published artifacts: G3's checkpoint and MP16-Pro index.", no_args_is_help=True)


@fetch_app.command("official")
def fetch_official_command(
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Bundle folder to write (default: <cache>/official, what --config paper uses)."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Folder with g3.pth, g3.index and MP16_Pro_filtered.csv downloaded by hand."),
    ] = None,
    clip: Annotated[
        str, typer.Option(help="CLIP G3 was trained with (configuration, tokenizer): hub id or local folder.")
    ] = "openai/clip-vit-large-patch14",
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow g3.pth to be a whole pickled model (only if you trust it).")
    ] = False,
    link: Annotated[
        str, typer.Option(help="How g3.index enters DIR/index: auto (hard link, else copy), hardlink, copy or symlink.")
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Download G3's published checkpoint, index and metadata (pinned, resumable, size and SHA-256 recorded),
    convert and import them, and write a bundle (g3.yaml) with the paper's settings. A second run is a no-op."""
    from g3.fetch.official import fetch_official

    result = fetch_official(to, source=source, clip=clip, trust_pickle=trust_pickle, link=check_link(link),
                            progress=progress)  # fmt: skip
    if not result.done:
        typer.echo(f"{result.folder} is complete (fetched {result.record.get('completed_at')}); nothing to do")
    else:
        typer.echo(f"wrote {result.folder} ({', '.join(result.done)})")
    typer.echo(f"use it: g3 locate --config {result.folder} photo.jpg --lmm-url http://127.0.0.1:8000/v1 "
               "(after `vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000`)")  # fmt: skip
