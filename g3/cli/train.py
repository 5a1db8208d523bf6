"""`g3 train`, `g3 aligner` and `g3 corpus`: training the geo-aligner, its checkpoints, its corpora."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from g3.cli._common import CHECKPOINT_HELP, MinImageBytes, checkpoint_folder, corpus_options, load_corpus
from g3.errors import TrainingError

aligner_app = typer.Typer(help="Geo-aligner checkpoints: convert G3's official weights, inspect.", no_args_is_help=True)
corpus_app = typer.Typer(help="Training corpora (MP16-Pro style CSV + images).", no_args_is_help=True)

CORPUS_FILE = "corpus.json"


def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics, final model).")],
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus CSV (IMG_ID, LAT, LON, address).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Image folder or tar of the corpus.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with `train:` (and `aligner:`).")] = None,
    clip: Annotated[str | None, typer.Option("--clip", help="CLIP hub id or local folder.")] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init", help="Start from this aligner checkpoint instead of fresh heads (a folder or tiny://aligner)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Epochs (paper: 10).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size (paper: 256).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (paper: 3e-5).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Held-out share of the corpus.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading worker processes.")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="no | fp16 | bf16")] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Turn augmentation off.")] = False,
    require_country: Annotated[bool, typer.Option(help="Drop rows without a country (G3).")] = True,
    min_image_bytes: MinImageBytes = 5120,
    verify_images: Annotated[bool, typer.Option(help="Decode every image once before training.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Train the geo-aligner (G3 geo-alignment) on a corpus; multi-GPU via `accelerate launch -m g3.cli train`."""
    import yaml

    from g3.io import atomic_write_json
    from g3.models import AlignerConfig, GeoAligner
    from g3.train import TrainConfig, train_aligner

    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "max_steps": max_steps,
        "save_every_steps": save_every,
        "val_fraction": val_fraction,
        "num_workers": workers,
        "mixed_precision": mixed_precision,
        "progress": progress,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}

    if resume:
        if not (out / "train_config.json").is_file():
            raise TrainingError(f"cannot resume: {out} has no train_config.json; is it a g3 training run?")
        train_data = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
        aligner_data = json.loads((out / "aligner_config.json").read_text(encoding="utf-8"))
        corpus_args = json.loads((out / CORPUS_FILE).read_text(encoding="utf-8"))
        if corpus is not None or images is not None:
            corpus_args.update({k: str(v) for k, v in (("csv", corpus), ("images", images)) if v is not None})
    else:
        if corpus is None or images is None:
            raise typer.BadParameter("--corpus and --images are required (except with --resume)")
        file_data = yaml.safe_load(config.read_text(encoding="utf-8")) if config else {}
        train_data = dict(file_data.get("train", {}) if isinstance(file_data, dict) else {})
        aligner_data = dict(file_data.get("aligner", {}) if isinstance(file_data, dict) else {})
        if clip:
            aligner_data["clip"] = clip
        if init is not None:
            train_data["init_location_encoder"] = "keep"
        if no_augment:
            train_data.setdefault("augment", {})["enabled"] = False
        corpus_args = corpus_options(corpus, images, min_image_bytes=min_image_bytes, require_country=require_country,
                                    verify_images=verify_images)  # fmt: skip
    train_config = TrainConfig.model_validate({**train_data, **overrides})
    if init is not None:
        aligner = GeoAligner.from_pretrained(str(checkpoint_folder(init)), clip_source=clip)
    else:
        aligner = GeoAligner.from_clip(AlignerConfig.model_validate(aligner_data), seed=train_config.seed)
    data = load_corpus(corpus_args)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CORPUS_FILE, corpus_args)
    result = train_aligner(aligner, data, train_config, out, resume=resume)
    if result.validations:
        typer.echo(json.dumps(result.validations[-1], indent=2))
    if result.final_checkpoint:
        typer.echo(f"trained aligner: {result.final_checkpoint}")


@aligner_app.command("convert")
def aligner_convert(
    official: Annotated[Path, typer.Argument(help="G3's official g3.pth.")],
    out: Annotated[Path, typer.Argument(help="Folder for the g3 checkpoint.")],
    clip: Annotated[
        str, typer.Option(help="CLIP the checkpoint was trained with (config, tokenizer, preprocessing).")
    ] = ("openai/clip-vit-large-patch14"),
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow a whole pickled model (only for files you trust).")
    ] = False,
    include_clip: Annotated[bool, typer.Option(help="Write the CLIP folder into the checkpoint.")] = True,
) -> None:
    """Convert G3's official checkpoint into a g3 aligner checkpoint (safetensors + config)."""
    from g3.models.official import load_official_g3

    aligner = load_official_g3(official, clip_source=clip, trust_pickle=trust_pickle)
    aligner.save_pretrained(str(out), include_clip=include_clip)
    typer.echo(f"wrote {out}")


@aligner_app.command("info")
def aligner_info(checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP + ".")]) -> None:
    """Print a checkpoint's configuration and the size of its weights, without loading CLIP."""
    from safetensors import safe_open

    from g3.models.checkpoint import WEIGHTS_FILE, read_checkpoint_config

    folder = checkpoint_folder(checkpoint)
    meta = read_checkpoint_config(folder)
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        meta["trained_parameters"] = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    typer.echo(json.dumps(meta, indent=2, sort_keys=True))


@corpus_app.command("check")
def corpus_check(
    csv: Annotated[Path, typer.Argument(help="Corpus CSV.")],
    images: Annotated[Path, typer.Option("--images", help="Image folder or tar.")],
    require_country: Annotated[bool, typer.Option(help="Drop rows without a country (G3).")] = True,
    min_image_bytes: MinImageBytes = 5120,
    verify_images: Annotated[bool, typer.Option(help="Decode every image (slow).")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
) -> None:
    """Load a corpus as training would and print what would be kept and dropped, and why."""
    data = load_corpus(corpus_options(csv, images, min_image_bytes=min_image_bytes, require_country=require_country,
                                      verify_images=verify_images))  # fmt: skip
    typer.echo(data.report.summary())
    if report is not None:
        data.report.save(report)
