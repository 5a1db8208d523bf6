"""`g3 verify`: learn the verification ranker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

verify_app = typer.Typer(help="Geo-verification: learn the ranker that chooses answers, from pools.jsonl.",
                         no_args_is_help=True)  # fmt: skip


@verify_app.command("fit")
def verify_fit(
    pools: Annotated[
        Path, typer.Argument(help="Labelled candidate pools, one JSON object a line (g3 eval run writes pools.jsonl).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Ranker folder to write (verify.ranker, g3 eval run --ranker).")],
    cv: Annotated[int, typer.Option("--cv", min=0, help="Folds of the cross-validation by query (0: none).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds and of LightGBM.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"queries", "folds", "accuracy": {METHOD: {"1": f, ...}}} only.')
    ] = False,
) -> None:
    """Learn the verification ranker (LightGBM) from labelled pools: cross-validation first (the ranker and every
    built-in rule on the same folds, share of queries within 1 / 25 / 200 / 750 / 2500 km), then the ranker fitted
    on all pools with its calibrated confidence, written to --out."""
    from g3.verify.pools import read_pools
    from g3.verify.ranker import cross_validate, cv_table, fit_ranker

    labelled = list(read_pools(pools))
    summary: dict[str, Any] = {"queries": len(labelled), "folds": cv, "accuracy": {}}
    ranker_info: dict[str, Any] = {}
    if cv:
        result = cross_validate(labelled, folds=cv, seed=seed)
        summary = result.to_json()
        ranker_info = {"cross_validation": {**summary, "ece": result.ece()}}
        if not as_json:
            typer.echo(cv_table(result))
    ranker = fit_ranker(labelled, seed=seed)
    ranker.info.update(ranker_info)
    ranker.save(out)
    if as_json:
        typer.echo(json.dumps(summary))
    done = f"wrote {out}: ranker fitted on {len(labelled)} queries ({ranker.info['training']['candidates']} candidates)"
    typer.echo(done, err=as_json)
