"""The ``g3`` command line: the app, its registered commands and groups, and the console entry point.

One module per command group: `train` (train, aligner, corpus), `index`, `fetch`, `locate`, `serve`, `evaluate`
(eval), `prompts`, `verify`; options shared by several live in `_common`. Commands import their heavy libraries
inside their bodies, so ``g3 --help`` loads no torch. Errors raised on purpose by g3 are printed as one line (no
traceback) with exit status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from g3 import __version__
from g3.cli import evaluate, fetch, index, locate, prompts, serve, train, verify
from g3.cli._common import setup_logging
from g3.errors import G3Error

app = typer.Typer(
    name="g3",
    help="Worldwide image geolocalization with retrieval-augmented large multimodal models (G3).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the g3 version."""
    typer.echo(__version__)


# registered in this order, which is the order of `g3 --help`
app.command()(train.train)
app.command()(locate.locate)
app.command()(serve.serve)
app.add_typer(prompts.prompts_app, name="prompts")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(train.aligner_app, name="aligner")
app.add_typer(train.corpus_app, name="corpus")
app.add_typer(index.index_app, name="index")
app.add_typer(fetch.fetch_app, name="fetch")
app.add_typer(verify.verify_app, name="verify")


def main() -> None:
    """Console entry point."""
    import yaml
    from pydantic import ValidationError

    try:
        app()
    except G3Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except ValidationError as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise SystemExit(2) from None
    except yaml.YAMLError as exc:
        typer.echo(f"error: cannot parse the YAML configuration: {exc}", err=True)
        raise SystemExit(2) from None
