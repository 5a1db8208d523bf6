"""`g3 prompts`: the prompt templates of G3's ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

prompts_app = typer.Typer(help="The prompt templates of G3's ensemble.", no_args_is_help=True)


@prompts_app.command("export")
def prompts_export(
    folder: Annotated[Path, typer.Argument(help="Folder to copy the templates into (created).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Copy the shipped prompt templates into FOLDER to edit them (then set EnsembleConfig.prompt_dir)."""
    import shutil

    from g3.lmm.prompts import default_prompt_dir

    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(default_prompt_dir().iterdir()):
        target = folder / source.name
        if target.exists() and not force:
            raise typer.BadParameter(f"{target} exists; pass --force to overwrite")
        shutil.copyfile(source, target)
        typer.echo(f"wrote {target}")


@prompts_app.command("show")
def prompts_show(
    k: Annotated[int, typer.Option("-k", help="Neighbours shown per RAG prompt (example coordinates).")] = 3,
    prompt_dir: Annotated[Path | None, typer.Option(help="Template folder (default: the shipped one).")] = None,
) -> None:
    """Print every prompt of the paper's ensemble rendered with example neighbours."""
    import numpy as np

    from g3.lmm.prompts import EnsembleConfig, render_prompt
    from g3.neighbours import Neighbours

    config = EnsembleConfig(prompt_dir=prompt_dir)
    similar = Neighbours(np.array([[48.8584 + i * 0.01, 2.2945] for i in range(15)]), np.zeros(15),
                         places=["Paris, Ile-de-France, France"] * 15)  # fmt: skip
    dissimilar = Neighbours(np.array([[-33.8568, 151.2153 + i * 0.01] for i in range(15)]), np.zeros(15),
                            places=["Sydney, New South Wales, Australia"] * 15)  # fmt: skip
    for spec in config.prompts:
        shown = spec.model_copy(update={"k_similar": min(spec.k_similar, k), "k_dissimilar": min(spec.k_dissimilar, k)})
        typer.echo(f"--- {spec.name} (template {spec.template}, n={spec.samples}) ---")
        typer.echo(render_prompt(shown, similar, dissimilar, config.prompt_dir))
