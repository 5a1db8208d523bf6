"""`g3 eval`: benchmark runs, scoring prediction files, comparing runs, distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from g3.cli._common import RayAddress, RayCpus, RayFlag, RayGpus, RayWorkers, ray_options

if TYPE_CHECKING:
    from g3.agent.config import G3Config
    from g3.evaluation.metrics import Convention

eval_app = typer.Typer(help="Evaluation: IM2GPS3k / YFCC4k runs, scoring prediction files, comparing runs.",
                       no_args_is_help=True)  # fmt: skip


@eval_app.command("run")
def eval_run(
    dataset: Annotated[str, typer.Option(help="im2gps3k | yfcc4k | generic (IMG_ID, LAT, LON)")],
    metadata: Annotated[Path, typer.Option(help="The dataset's metadata CSV (e.g. im2gps3k_places365.csv).")],
    images: Annotated[Path, typer.Option(help="Folder of the dataset's images.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="G3 configuration (YAML), e.g. configs/eval/g3.yaml")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumable: run again to continue).")],
    batch_size: Annotated[int, typer.Option(help="Images per batch (one flush of predictions.jsonl).")] = 16,
    concurrency: Annotated[int, typer.Option(help="Images located at once.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Only the first N images (smoke runs).")] = None,
    convention: Annotated[str, typer.Option(help="geodesic-lt (G3) | haversine-le (GeoEstimation)")] = "geodesic-lt",
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
    fail_fast: Annotated[
        int,
        typer.Option(
            min=0,
            help="Stop (exit 2, nothing of them written) when the LMM failed for each of the "
            "first N photos: unreachable, timed out or erring. 0: never stop.",
        ),
    ] = 4,
    max_degraded: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 3 after writing everything when more than this share of the "
            "located photos is degraded (e.g. answered from retrieval only because the LMM failed).",
        ),
    ] = 0.02,
    ranker: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="A ranker folder from `g3 verify fit` (fitted on another split): it chooses the answers and "
            "gives their confidence, instead of the configuration's verify.ranker (recorded in the run's config.yaml).",
        ),
    ] = None,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    ray_workers: RayWorkers = None,
    ray_cpus_per_worker: RayCpus = 1.0,
    ray_gpus_per_worker: RayGpus = 0.0,
) -> None:
    """Evaluate a G3 configuration on a benchmark: predictions.jsonl, pools.jsonl, metrics.json, report.md, plots.

    Every prediction records whether and why it degraded; report.md counts the degraded photos by reason at
    its top. Exit status: 0 done, 2 error (e.g. the LMM failed for the first --fail-fast photos), 3 done but
    more than --max-degraded of the photos degraded.
    With --ray the photos are located by Ray workers, each holding a G3 (same predictions file, resumable)."""
    from g3.agent import G3
    from g3.errors import DegradedRunError
    from g3.evaluation.datasets import load_dataset
    from g3.evaluation.runner import run_evaluation

    data = load_dataset(dataset, images, csv=metadata) if dataset != "generic" else load_dataset(metadata, images)
    options = ray_options(ray, ray_address, ray_workers, ray_cpus_per_worker, ray_gpus_per_worker)
    settings = _with_ranker(config, ranker)
    try:
        if options is not None:
            from g3.evaluation.distributed import run_evaluation_ray

            result = run_evaluation_ray(settings, data, out, options=options, batch_size=batch_size,
                                        concurrency=concurrency, limit=limit, progress=progress,
                                        convention=_convention(convention), fail_fast=fail_fast,
                                        max_degraded=max_degraded)  # fmt: skip
        else:
            with G3.from_config(settings) as g3:
                result = run_evaluation(g3, data, out, batch_size=batch_size, concurrency=concurrency, limit=limit,
                                        progress=progress, convention=_convention(convention), fail_fast=fail_fast,
                                        max_degraded=max_degraded)  # fmt: skip
    except DegradedRunError as exc:
        typer.echo(_accuracy_line(exc.payload["metrics"]))  # type: ignore[arg-type]
        typer.echo(f"report: {out / 'report.md'}")
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(_accuracy_line(result["metrics"]))
    typer.echo(f"report: {out / 'report.md'}")


def _with_ranker(config: Path, ranker: Path | None) -> G3Config:
    """The `G3Config` of ``config`` with ``verify.ranker`` set to ``ranker`` (an absolute path) when given."""
    from g3.agent.config import G3Config

    settings = G3Config.load(config)
    if ranker is None:
        return settings
    verify = settings.verify.model_dump() | {"ranker": str(ranker.resolve())}
    return G3Config.model_validate(settings.model_dump() | {"verify": verify})


def _convention(name: str) -> Convention:
    """--convention as the metrics take it; an unknown one is refused before anything loads."""
    from g3.evaluation.metrics import CONVENTIONS

    if name not in CONVENTIONS:
        raise typer.BadParameter(f"unknown convention {name!r}; choose {', '.join(CONVENTIONS)}")
    return cast("Convention", name)


def _accuracy_line(metrics: dict[str, Any]) -> str:
    op = "≤" if metrics["convention"].endswith("le") else "<"
    cells = "  ".join(f"{op}{k}: {100 * v:.2f}%" for k, v in metrics["accuracy"].items())
    counts = f"{metrics['n']}/{metrics['denominator']}, {metrics['convention']}"
    return f"{cells}  median {metrics['median_km']:.1f} km  ({counts})"


@eval_app.command("score")
def eval_score(
    predictions: Annotated[Path, typer.Argument(help="CSV or JSONL of per-image predictions.")],
    convention: Annotated[str, typer.Option(help="geodesic-lt (G3) | haversine-le (GeoEstimation)")] = "geodesic-lt",
    radius_km: Annotated[float | None, typer.Option(help="Earth radius for haversine (GeoEstimation: 6371.0).")] = None,
    denominator: Annotated[int | None, typer.Option(help="Dataset size, if the file lacks rows for failures.")] = None,
    gt_lat: Annotated[str | None, typer.Option(help="Column of the true latitude (default: detected).")] = None,
    gt_lon: Annotated[str | None, typer.Option(help="Column of the true longitude.")] = None,
    pred_lat: Annotated[str | None, typer.Option(help="Column of the predicted latitude.")] = None,
    pred_lon: Annotated[str | None, typer.Option(help="Column of the predicted longitude.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Score a prediction file with g3's metrics (and compare with a summary stored in it, if any)."""
    from g3.evaluation.scoring import score_predictions, stored_summary_mismatches

    given = {"gt_lat": gt_lat, "gt_lon": gt_lon, "pred_lat": pred_lat, "pred_lon": pred_lon}
    columns = {k: v for k, v in given.items() if v is not None} or None
    report = score_predictions(predictions, convention=_convention(convention), radius_km=radius_km,
                               columns=columns, denominator=denominator)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    typer.echo(_accuracy_line(report))
    if report.get("stored_summary"):
        mismatches = stored_summary_mismatches(report)
        typer.echo("stored summary: " + ("reproduced exactly" if not mismatches else f"differs: {mismatches}"))


@eval_app.command("compare")
def eval_compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or their metrics.json).")],
    paper: Annotated[str | None, typer.Option(help="Add the paper's row: im2gps3k | yfcc4k")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for error-CDF and Recall-vs-Area plots of the runs together.")
    ] = None,
) -> None:
    """Print a Markdown table of several runs side by side; degraded runs (with their share) and tiny-setting
    runs are flagged in the table and the plots."""
    from g3.evaluation.compare import compare_plots, compare_table

    typer.echo(compare_table(list(runs), paper=paper))
    if plots is not None:
        for path in compare_plots(list(runs), plots).values():
            typer.echo(f"plot: {path}")


@eval_app.command("distribution")
def eval_distribution(
    folder: Annotated[Path, typer.Argument(help="A folder of images with no ground truth.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="G3 configuration (YAML).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumable).")],
    concurrency: Annotated[int, typer.Option(help="Images located at once.")] = 4,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Where do these images appear to be from? Countries, continents, entropy, coverage, map."""
    from g3.agent import G3
    from g3.evaluation.distribution import run_distribution

    with G3.from_config(config) as g3:
        summary = run_distribution(g3, folder, out, concurrency=concurrency, progress=progress)
    typer.echo(f"{summary['n']} images, {summary['distinct_countries']} countries, "
               f"country entropy {summary['country_entropy_bits']:.3f} bits; report: {out / 'report.md'}")  # fmt: skip
