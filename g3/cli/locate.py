"""`g3 locate`: locate photos and print (or write) their answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from g3.cli._common import ConfigOption, LMMModel, LMMUrl, load_settings
from g3.errors import G3Error

if TYPE_CHECKING:
    from collections.abc import Callable

    from g3.agent.config import G3Config
    from g3.agent.prediction import GeoPrediction
    from g3.agent.results import ResultsCSV

    #: A photo's outcome: its prediction, or the error that stopped it.
    Outcome = GeoPrediction | BaseException


def locate(
    photos: Annotated[
        list[Path], typer.Argument(help="Photos, or folders of photos (their image files, sorted by path).")
    ],
    config: ConfigOption = Path("paper"),
    lmm_url: LMMUrl = None,
    lmm_model: LMMModel = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print the full predictions as JSON (every entry has its "path").')
    ] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also print the candidates and the evidence.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Photos located at once.")] = 4,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write a CSV, one row per photo (path, lat, lon, place, score, source, degraded, degradations, "
            "warnings, error), chunk by chunk. Resumable: photos it holds without an error are skipped.",
        ),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Folders: also their sub-folders.")] = False,
    retry_degraded: Annotated[
        bool, typer.Option("--retry-degraded", help="--out: also locate again the photos whose row is degraded.")
    ] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="Photos per chunk (one write of --out).")] = 16,
    progress: Annotated[bool, typer.Option(help="Progress bar (on stderr) when there is more than one chunk.")] = True,
    min_confidence: Annotated[
        list[str] | None,
        typer.Option(
            "--min-confidence",
            metavar="RADIUS=P",
            help="Withhold answers below this calibrated probability of lying within RADIUS km (25, 200 or 750), "
            "e.g. 200=0.8; repeatable. Needs a fitted ranker (verify.ranker in the configuration). A withheld "
            "photo is reported as WITHHELD with its probability, never with coordinates.",
        ),
    ] = None,
) -> None:
    """Locate photos: coordinates, place, relative score, calibrated confidence (with a fitted ranker) and where
    the answer came from.

    The score is the answer's verification score, min-max normalised within the photo's candidates (1.0 for the
    winner, 0 for a lone candidate): it ranks one photo's candidates and is not a confidence. Every file is
    checked (exists, readable, an image header) before any model loads. Exit status 1 if any photo failed.
    """
    from g3.data.photo_files import check_photo, expand_photos

    requirements = _requirements(min_confidence)
    inputs = expand_photos(photos, recursive=recursive)
    results_file = None
    if out is not None:
        from g3.agent.results import ResultsCSV

        results_file = ResultsCSV(out)
    todo = [
        p
        for p in inputs
        if results_file is None or not results_file.done(p, retry_degraded=retry_degraded, requirements=requirements)
    ]
    outcomes: dict[Path, Outcome] = {}
    for photo in todo:
        problem = check_photo(photo)
        if problem is not None:
            from g3.errors import InvalidImageError

            outcomes[photo] = InvalidImageError(f"{photo} {problem}")
            typer.echo(f"error: {outcomes[photo]}", err=True)
    if results_file is not None:
        from g3.agent.results import result_row

        results_file.append([result_row(p, e) for p, e in outcomes.items()])
    runnable = [p for p in todo if p not in outcomes]
    if runnable:
        settings = load_settings(config, lmm_url, lmm_model)  # a bad configuration is reported before models import
        if requirements and settings.verify.ranker is None:
            raise typer.BadParameter(
                f"--min-confidence needs calibrated confidences, and the configuration {config} names no ranker "
                "(verify.ranker: a folder written by g3 verify fit)"
            )
        outcomes |= _locate_files(runnable, settings, results_file, concurrency=concurrency, chunk_size=chunk_size,
                                  explain=explain, quiet=as_json, progress=progress,
                                  requirements=requirements)  # fmt: skip
    if results_file is not None:
        results_file.close()
        degraded = sum(getattr(r, "degraded", False) for r in outcomes.values())
        failed_here = sum(isinstance(r, BaseException) for r in outcomes.values())
        withheld = f", {_withheld_count(outcomes, requirements)} withheld" if requirements else ""
        typer.echo(f"{out}: {len(outcomes)} photos written ({failed_here} failed, {degraded} degraded{withheld}), "
                   f"{len(inputs) - len(todo)} already there", err=True)  # fmt: skip
    if as_json:
        entries = [_json_entry(p, outcomes[p], requirements) for p in todo]
        single = len(photos) == 1 and not photos[0].is_dir() and len(entries) == 1
        typer.echo(json.dumps(entries[0] if single else entries, indent=2, ensure_ascii=False))
    if any(isinstance(r, BaseException) for r in outcomes.values()):
        raise typer.Exit(1)


def _requirements(specs: list[str] | None) -> dict[str, float]:
    """--min-confidence's radius → minimum probability (empty: every answer is given)."""
    from g3.agent.abstention import parse_min_confidence

    try:
        return parse_min_confidence(specs or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--min-confidence") from None


def _withheld_count(outcomes: dict[Path, Outcome], requirements: dict[str, float]) -> int:
    from g3.agent.abstention import shortfalls

    return sum(1 for r in outcomes.values() if not isinstance(r, BaseException) and shortfalls(r, requirements))


def _locate_files(
    photos: list[Path], config: G3Config, results_file: ResultsCSV | None, *, concurrency: int, chunk_size: int,
    explain: bool, quiet: bool, progress: bool, requirements: dict[str, float] | None = None,
) -> dict[Path, Outcome]:  # fmt: skip
    """Load G3 and locate ``photos`` chunk by chunk, printing each result (only errors, degradations and
    withheld answers when ``quiet``) and appending each chunk to ``results_file``; each photo's prediction or
    `G3Error`. A prediction missing a ``requirements`` probability is printed and written as withheld."""
    from tqdm.auto import tqdm

    from g3.agent import G3
    from g3.agent.results import result_row

    outcomes: dict[Path, Outcome] = {}
    bar = tqdm(total=len(photos), unit="photo", desc="locate", disable=not progress or len(photos) <= chunk_size)

    def say(text: str, err: bool = False) -> None:
        if bar.disable:
            typer.echo(text, err=err)
        else:  # above the bar
            bar.write(text, file=sys.stderr if err else sys.stdout)

    with G3.from_config(config) as g3, bar:
        for start in range(0, len(photos), chunk_size):
            chunk = photos[start : start + chunk_size]
            results = g3.locate_batch(chunk, concurrency=concurrency, return_exceptions=True)
            bugs = [r for r in results if isinstance(r, BaseException) and not isinstance(r, G3Error)]
            done = [(p, r) for p, r in zip(chunk, results, strict=True) if not any(r is b for b in bugs)]
            if results_file is not None:
                results_file.append([result_row(p, r, requirements) for p, r in done])
            for photo, result in done:
                outcomes[photo] = result
                _print_result(photo, result, say, explain=explain, quiet=quiet, requirements=requirements)
            if bugs:
                raise bugs[0]  # a bug, not a bad photo: stop (the chunk's other rows are written)
            bar.update(len(chunk))
    return outcomes


def _print_result(
    photo: Path, result: Outcome, say: Callable[..., None], *, explain: bool, quiet: bool,
    requirements: dict[str, float] | None = None,
) -> None:  # fmt: skip
    """One photo's lines: an error or its answer (or WITHHELD, with the probability, instead of an answer), its
    degradations (loud, on stderr), confidence, notes, explanation."""
    from g3.agent.abstention import confidence_text, shortfalls, withheld_text

    if isinstance(result, BaseException):
        say(f"error: {photo}: {result}", err=True)
        return
    for degradation in result.degradations:  # loud on stderr, also beside --json
        say(f"DEGRADED ({degradation.reason}): {photo}: {degradation.message}", err=True)
    missed = shortfalls(result, requirements or {})
    if missed:  # loud on stderr too, also beside --json
        say(f"{photo}: {withheld_text(missed)}", err=True)
    if quiet:
        return
    confidence = confidence_text(result.confidence)
    if missed:
        say(f"{photo}: {withheld_text(missed)}" + (f" ({confidence})" if confidence else ""))
    else:
        place = f" — {result.place}" if result.place else ""
        say(f"{photo}: {result.lat:.5f}, {result.lon:.5f}{place} "
            f"(relative score {result.score:.3f}, from {result.source}"
            f"{'; ' + confidence if confidence else ''})")  # fmt: skip
    for warning in result.warnings:
        say(f"  note: {warning}")
    if explain:
        say(_explanation(result))


def _json_entry(photo: Path, result: Outcome, requirements: dict[str, float] | None = None) -> dict[str, Any]:
    """A --json entry: the photo's path, then its prediction, its withheld prediction (no answer fields, a
    ``withheld`` list) or its error."""
    from g3.agent.abstention import shortfalls, withheld_payload

    if isinstance(result, BaseException):
        return {"path": str(photo), "error": str(result), "error_type": type(result).__name__}
    missed = shortfalls(result, requirements or {})
    if missed:
        return {"path": str(photo), **withheld_payload(result, missed)}
    return {"path": str(photo), **result.model_dump(mode="json")}


def _shown_text(text: str, limit: int = 100) -> str:
    """One line of an LMM's text for a terminal: control characters escaped, cut at ``limit`` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _explanation(prediction: GeoPrediction) -> str:
    """--explain's lines: candidates, similar images, LMM usage and first answers, timings."""
    lines = ["  candidates (best first):"]
    for c in prediction.candidates:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in c.components.items())
        lines.append(f"    #{c.rank} {c.lat:9.4f} {c.lon:10.4f}  {c.source:<10} score {c.score:.3f}  ({parts})")
    if prediction.similar:
        lines.append("  similar database images:")
        lines += [f"    {n.lat:9.4f} {n.lon:10.4f}  {n.score:.3f}  {n.place}" for n in prediction.similar[:5]]
    usage = prediction.usage
    if usage.prompts:
        tokens = f"{usage.prompt_tokens} + {usage.completion_tokens} tokens"
        lines.append(
            f"  LMM: {usage.prompts} prompts ({usage.failed_prompts} failed), {tokens}; parsing: {prediction.parse}"
        )
    if prediction.raw_answers:
        lines.append("  raw LMM answers (the first of each prompt; --json has them all):")
        for prompt, texts in prediction.raw_answers.items():
            first = _shown_text(texts[0]) if texts else "(no answer: the prompt failed)"
            lines.append(f"    {prompt} ({len(texts)}): {first}")
    lines.append("  timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in prediction.timings.items()))
    return "\n".join(lines)
