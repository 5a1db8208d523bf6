"""The ``g3`` command line: training the geo-aligner, converting checkpoints, checking corpora.

Errors raised on purpose by g3 are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from g3 import __version__
from g3.errors import G3Error, TrainingError

app = typer.Typer(
    name="g3",
    help="Worldwide image geolocalization with retrieval-augmented large multimodal models (G3).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
aligner_app = typer.Typer(help="Geo-aligner checkpoints: convert G3's official weights, inspect.", no_args_is_help=True)
corpus_app = typer.Typer(help="Training corpora (MP16-Pro style CSV + images).", no_args_is_help=True)
index_app = typer.Typer(help="Geo index: build from a corpus, inspect, search.", no_args_is_help=True)
prompts_app = typer.Typer(help="The prompt templates of G3's ensemble.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
eval_app = typer.Typer(help="Evaluation: IM2GPS3k / YFCC4k runs, scoring prediction files, comparing runs.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(eval_app, name="eval")
app.add_typer(aligner_app, name="aligner")
app.add_typer(corpus_app, name="corpus")
app.add_typer(index_app, name="index")
fetch_app = typer.Typer(help="Get published artifacts: G3's checkpoint and MP16-Pro index.", no_args_is_help=True)
app.add_typer(fetch_app, name="fetch")
verify_app = typer.Typer(help="Geo-verification: learn the ranker that chooses answers, from pools.jsonl.",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(verify_app, name="verify")

CORPUS_FILE = "corpus.json"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("faiss.loader", "httpx", "httpx2", "openai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the g3 version."""
    typer.echo(__version__)


def _load_corpus(options: dict[str, Any]) -> Any:
    from g3.data import GeoCorpus

    return GeoCorpus.load(
        options["csv"],
        options["images"],
        min_image_bytes=options["min_image_bytes"],
        require_country=options["require_country"],
        verify_images=options["verify_images"],
        tar_index_cache=options.get("tar_index_cache"),
    )


@app.command()
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
    min_image_bytes: Annotated[int, typer.Option(help="Drop images smaller than this (G3: 5120).")] = 5120,
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
        corpus_options = json.loads((out / CORPUS_FILE).read_text(encoding="utf-8"))
        if corpus is not None or images is not None:
            corpus_options.update({k: str(v) for k, v in (("csv", corpus), ("images", images)) if v is not None})
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
        corpus_options = {
            "csv": str(corpus),
            "images": str(images),
            "min_image_bytes": min_image_bytes,
            "require_country": require_country,
            "verify_images": verify_images,
        }
    train_config = TrainConfig.model_validate({**train_data, **overrides})
    if init is not None:
        aligner = GeoAligner.from_pretrained(str(_checkpoint(init)), clip_source=clip)
    else:
        aligner = GeoAligner.from_clip(AlignerConfig.model_validate(aligner_data), seed=train_config.seed)
    data = _load_corpus(corpus_options)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CORPUS_FILE, corpus_options)
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

    folder = _checkpoint(checkpoint)
    meta = read_checkpoint_config(folder)
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        meta["trained_parameters"] = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    typer.echo(json.dumps(meta, indent=2, sort_keys=True))


@corpus_app.command("check")
def corpus_check(
    csv: Annotated[Path, typer.Argument(help="Corpus CSV.")],
    images: Annotated[Path, typer.Option("--images", help="Image folder or tar.")],
    require_country: Annotated[bool, typer.Option(help="Drop rows without a country (G3).")] = True,
    min_image_bytes: Annotated[int, typer.Option(help="Drop images smaller than this (G3: 5120).")] = 5120,
    verify_images: Annotated[bool, typer.Option(help="Decode every image (slow).")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
) -> None:
    """Load a corpus as training would and print what would be kept and dropped, and why."""
    data = _load_corpus(
        {
            "csv": str(csv),
            "images": str(images),
            "min_image_bytes": min_image_bytes,
            "require_country": require_country,
            "verify_images": verify_images,
        }
    )
    typer.echo(data.report.summary())
    if report is not None:
        data.report.save(report)


#: Help of every option that takes an aligner checkpoint.
CHECKPOINT_HELP = "g3 aligner checkpoint folder, or tiny://aligner (the offline tiny one, built on first use)"


def _checkpoint(value: str) -> Path:
    """The folder of an aligner checkpoint option: a path, or ``tiny://aligner`` (as in configurations)."""
    from g3.agent import tiny

    try:
        return Path(tiny.resolve(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# Ray options shared by `index build` and `eval run` (see docs/scaling.md)
RayFlag = Annotated[bool, typer.Option("--ray", help="Run on Ray workers: a local Ray unless --ray-address.")]
RayAddress = Annotated[
    str | None, typer.Option(help="Ray cluster to join: auto | HOST:6379 | ray://HOST:10001 (implies --ray).")
]
RayWorkers = Annotated[int | None, typer.Option(help="Ray workers (actors); default: as many as fit.")]
RayCpus = Annotated[float, typer.Option(help="CPUs reserved per Ray worker.")]
RayGpus = Annotated[float, typer.Option(help="GPUs per Ray worker (> 0 runs the models on CUDA).")]

# The configuration and LMM options of `locate` and `serve`
ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="G3 configuration: a YAML file, a bundle folder (g3 fetch official --to DIR), or a shipped name "
        "(paper: G3's published model from `g3 fetch official`; tiny: offline; eval/g3, eval/zero_shot, ...).",
    ),
]
LMMUrl = Annotated[
    str | None,
    typer.Option(
        "--lmm-url",
        help="Use this OpenAI-compatible LMM server instead of the configuration's, e.g. http://127.0.0.1:8000/v1 "
        "(vllm serve MODEL --port 8000).",
    ),
]
LMMModel = Annotated[
    str | None,
    typer.Option(
        "--lmm-model",
        help="Use this LMM instead of the configuration's: with --lmm-url, the server's model name; without, a hub "
        "id or folder run in-process by vLLM (the gpu extra).",
    ),
]


def _settings(config: Path, lmm_url: str | None, lmm_model: str | None) -> Any:
    """The `G3Config` of --config with --lmm-url/--lmm-model applied; a bad configuration, or the paper's
    assets not fetched yet, is reported before the models are imported."""
    from g3.agent.config import G3Config, with_lmm
    from g3.agent.official import check_assets

    settings = with_lmm(G3Config.load(config), url=lmm_url, model=lmm_model)
    check_assets(settings)
    return settings


def _ray_options(ray: bool, address: str | None, workers: int | None, cpus: float, gpus: float) -> Any:
    """`RayOptions` when --ray or --ray-address is given, else None (a single-process run)."""
    if not ray and address is None:
        return None
    from g3.index.distributed import RayOptions

    return RayOptions(address=address, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus CSV (IMG_ID, LAT, LON, optional address).")],
    images: Annotated[Path, typer.Option("--images", help="Image folder or tar of the corpus.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help=CHECKPOINT_HELP + ".")],
    out: Annotated[Path, typer.Option("--out", help="Index folder to write, e.g. indices/mp16.")],
    kind: Annotated[str, typer.Option(help="FAISS factory string: Flat (exact, G3), IVF4096,PQ64, HNSW32.")] = "Flat",
    batch_size: Annotated[int, typer.Option(help="Images per encoding batch.")] = 256,
    shard_size: Annotated[int, typer.Option(help="Corpus rows per resumable shard.")] = 65_536,
    workers: Annotated[int, typer.Option(help="Image-decoding worker processes.")] = 4,
    train_size: Annotated[int | None, typer.Option(help="Training sample for IVF/PQ kinds.")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per search (stored as default).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (stored as default).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (--ray: see --ray-gpus-per-worker)")] = "auto",
    require_country: Annotated[bool, typer.Option(help="Drop corpus rows without a country.")] = False,
    min_image_bytes: Annotated[int, typer.Option(help="Drop images smaller than this (G3: 5120).")] = 5120,
    fill_location_text: Annotated[bool, typer.Option(help="Fill missing city/state/country offline.")] = True,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an unfinished build of --out.")] = False,
    keep_shards: Annotated[bool, typer.Option(help="Keep the encoded shards after assembling.")] = False,
    tf32: Annotated[bool, typer.Option(help="CUDA: TF32 matmuls, about 2x faster (keys within ~1e-3).")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads per encoding process (the keys' last bits depend on it); default: "
            "torch's (--ray: --ray-cpus-per-worker); a resumed build keeps its own.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    ray_workers: RayWorkers = None,
    ray_cpus_per_worker: RayCpus = 1.0,
    ray_gpus_per_worker: RayGpus = 0.0,
) -> None:
    """Encode a corpus with an aligner and write a FAISS geo index (resumable: run again after an interruption).

    With --ray the shards are encoded by Ray workers (same shards, same index; resumable either way)."""
    from g3.index import IndexBuildConfig, build_index
    from g3.models import GeoAligner

    params = {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    config = IndexBuildConfig(
        kind=kind,
        batch_size=batch_size,
        shard_size=shard_size,
        num_workers=workers,
        train_size=train_size,
        search_params=params,
        keep_shards=keep_shards,
        fill_location_text=fill_location_text,
        tf32=tf32,
        threads=threads,
    )
    options = _ray_options(ray, ray_address, ray_workers, ray_cpus_per_worker, ray_gpus_per_worker)
    data = _load_corpus(
        {
            "csv": str(corpus),
            "images": str(images),
            "min_image_bytes": min_image_bytes,
            "require_country": require_country,
            "verify_images": False,
        }
    )
    if options is not None:
        from g3.index.distributed import build_index_ray

        index = build_index_ray(_checkpoint(checkpoint), data, out, config, options=options, restart=restart,
                                progress=progress)  # fmt: skip
    else:
        aligner = GeoAligner.from_pretrained(str(_checkpoint(checkpoint))).to(_device(device))
        index = build_index(aligner, data, out, config, restart=restart, progress=progress)
    typer.echo(f"wrote {out}: {len(index)} rows, kind {index.kind}")


@index_app.command("import")
def index_import(
    faiss_file: Annotated[Path, typer.Argument(help="A FAISS flat index file, e.g. G3's g3.index (IndexFlatIP).")],
    metadata: Annotated[
        Path, typer.Option("--metadata", help="CSV whose data row i describes index row i (MP16_Pro_filtered.csv).")
    ],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="The aligner the keys were made with: " + CHECKPOINT_HELP + ".")
    ],
    out: Annotated[Path, typer.Option("--out", help="Index folder to write, e.g. indices/mp16.")],
    verify_images: Annotated[
        Path | None,
        typer.Option("--verify-images", help="Folder or tar of corpus photos: encode some, compare with their rows."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Photos encoded by --verify-images.")] = 16,
    link: Annotated[
        str, typer.Option(help="How the FAISS file enters --out: auto (hard link, else copy), hardlink, copy, symlink.")
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Adopt a FAISS index built elsewhere (G3's g3.index) without re-encoding: checks its width, metric, rows and
    a sample of keys, streams the CSV to the metadata and memory-maps the vectors."""
    from g3.index.importer import import_faiss_index

    _check_link(link)
    index = import_faiss_index(faiss_file, metadata, _checkpoint(checkpoint), out, verify_images=verify_images,
                               samples=samples, progress=progress, link=link)  # type: ignore[arg-type]  # fmt: skip
    verified = index.manifest.build.get("verified_images", 0)
    note = f"; {verified} photos verified against their rows" if verified else ""
    typer.echo(f"wrote {out}: {len(index)} rows of width {index.dim} imported ({index.manifest.build['placed']}){note}")


def _check_link(link: str) -> None:
    """Refuse a --link value that `g3.index.importer.place_file` does not take (before anything loads)."""
    if link not in ("auto", "hardlink", "copy", "symlink"):
        raise typer.BadParameter(f"--link must be auto, hardlink, copy or symlink, not {link!r}")


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

    _check_link(link)
    result = fetch_official(to, source=source, clip=clip, trust_pickle=trust_pickle, link=link,  # type: ignore[arg-type]
                            progress=progress)  # fmt: skip
    if not result.done:
        typer.echo(f"{result.folder} is complete (fetched {result.record.get('completed_at')}); nothing to do")
    else:
        typer.echo(f"wrote {result.folder} ({', '.join(result.done)})")
    typer.echo(f"use it: g3 locate --config {result.folder} photo.jpg --lmm-url http://127.0.0.1:8000/v1 "
               "(after `vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000`)")  # fmt: skip


@index_app.command("convert")
def index_convert(
    src: Annotated[Path, typer.Argument(help="Index folder to convert (built, imported or converted).")],
    kind: Annotated[
        str,
        typer.Option(
            help="FAISS factory string (HNSW32, IVF4096,PQ64, …), or two-stage / two-stage:FACTORY: compressed codes "
            "in memory, exact re-ranking from vectors on disk."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Index folder to write.")],
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows read and added at a time (bounds memory).")] = 65_536,
    train_size: Annotated[int | None, typer.Option(min=1, help="Training sample (default ≤100,000 rows).")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per search (stored as default).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (stored as default).")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="Two-stage: rows re-scored exactly per query.")] = 1024,
    rerank_dtype: Annotated[
        str, typer.Option(help="Two-stage: float32 or float16 vectors on disk (half the disk, ~4.5 ms more a query).")
    ] = "float32",
    queries: Annotated[int, typer.Option(min=0, help="Held-out queries for the report's recall@k.")] = 500,
    k: Annotated[int, typer.Option("-k", min=1, help="The k of the report's recall@k.")] = 20,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an unfinished conversion of --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Turn an index into another FAISS kind without re-encoding (streamed in chunks, resumable: run again after an
    interruption); writes convert_report.json with recall@k against the source on held-out queries."""
    from g3.index.convert import CONVERT_REPORT, ConvertConfig, convert_index

    if rerank_dtype not in ("float16", "float32"):
        raise typer.BadParameter(f"--rerank-dtype must be float16 or float32, not {rerank_dtype!r}")
    params = {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    config = ConvertConfig(kind=kind, chunk_rows=chunk_rows, train_size=train_size, search_params=params,
                           candidates=candidates, rerank_dtype=rerank_dtype, queries=queries, k=k)  # type: ignore[arg-type]  # fmt: skip
    index = convert_index(src, out, config, restart=restart, progress=progress)
    report = json.loads((out / CONVERT_REPORT).read_text(encoding="utf-8"))
    recall = report["recall"]
    shown = f"recall@{recall['k']} {recall['recall']:.3f} on {recall['queries']} held-out queries" if recall[
        "recall"] is not None else "recall not measured (too few rows)"  # fmt: skip
    rerank = " + exact re-ranking from disk" if report["two_stage"] else ""
    typer.echo(
        f"wrote {out}: {len(index)} rows, kind {report['faiss_kind']}{rerank}"
        f"; {report['memory_bytes_per_row']:,.0f} bytes/row in memory, {report['disk_bytes_per_row']:,.0f} on disk; "
        f"{shown}"
    )


@index_app.command("info")
def index_info(index: Annotated[Path, typer.Argument(help="Index folder.")]) -> None:
    """Print an index's manifest (rows, width, kind, aligner fingerprint, build counts)."""
    from g3.index.manifest import read_manifest

    typer.echo(json.dumps(read_manifest(index).model_dump(mode="json"), indent=2, sort_keys=True))


def _encode_photos(checkpoint: str, device: str, images: list[Path]) -> tuple[Any, Any]:
    """Load an aligner checkpoint on ``device`` and embed the photos: ``(aligner, ImageEmbeddings)``."""
    import torch

    from g3.data import decode_image
    from g3.models import GeoAligner

    aligner = GeoAligner.from_pretrained(str(_checkpoint(checkpoint))).to(_device(device))
    with torch.inference_mode():
        views = aligner.encode_image([decode_image(p.read_bytes(), str(p)) for p in images])
    return aligner, views


@index_app.command("search")
def index_search(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Query photos.")],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="The aligner the index was built with: " + CHECKPOINT_HELP + ".")
    ],
    k: Annotated[int, typer.Option("-k", help="Similar neighbours per photo.")] = 5,
    dissimilar: Annotated[int, typer.Option(help="Dissimilar neighbours per photo.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Print the nearest (and least similar) database images of each photo, with coordinates, as JSON."""
    from g3.index import GeoIndex, Neighbours

    aligner, views = _encode_photos(checkpoint, device, images)
    geo_index = GeoIndex.load(index, aligner=aligner)
    keys = views.key.float().cpu().numpy()
    result = geo_index.search(keys, k, dissimilar=dissimilar > 0, dissimilar_k=dissimilar or None)

    def rows(n: Neighbours, q: int) -> list[dict[str, Any]]:
        names, ids = geo_index.place_names(n.rows[q]), n.ids[q]
        return [
            {"img_id": ids[j], "lat": float(n.lat[q, j]), "lon": float(n.lon[q, j]), "score": float(n.scores[q, j]),
             "place": names[j]}
            for j in range(n.rows.shape[1]) if n.rows[q, j] >= 0
        ]  # fmt: skip

    out = [
        {"image": str(p), "similar": rows(result.similar, q)}
        | ({"dissimilar": rows(result.dissimilar, q)} if result.dissimilar is not None else {})
        for q, p in enumerate(images)
    ]
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))


@index_app.command("gallery")
def index_gallery(
    source: Annotated[str, typer.Argument(help="'geoclip' (GeoCLIP's 100K gallery) or a CSV of coordinates.")],
    images: Annotated[list[Path], typer.Argument(help="Query photos.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help=CHECKPOINT_HELP + ".")],
    k: Annotated[int, typer.Option("-k", help="Gallery points per photo.")] = 5,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Image→GPS retrieval against a GPS gallery (GeoCLIP style); gallery embeddings are cached per aligner."""
    from g3.index import GPSGallery

    aligner, views = _encode_photos(checkpoint, device, images)
    gallery = GPSGallery.from_source(source, aligner, progress=True)
    queries = views.gps_aligned
    found = gallery.search(queries, k)
    out = [
        {"image": str(p), "points": [
            {"lat": float(found.lat[q, j]), "lon": float(found.lon[q, j]), "score": float(found.scores[q, j])}
            for j in range(found.rows.shape[1])
        ]}
        for q, p in enumerate(images)
    ]  # fmt: skip
    typer.echo(json.dumps(out, indent=2))


@app.command()
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
    outcomes: dict[Path, Any] = {}
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
        settings = _settings(config, lmm_url, lmm_model)  # a bad configuration is reported before models import
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


def _withheld_count(outcomes: dict[Path, Any], requirements: dict[str, float]) -> int:
    from g3.agent.abstention import shortfalls

    return sum(1 for r in outcomes.values() if not isinstance(r, BaseException) and shortfalls(r, requirements))


def _locate_files(
    photos: list[Path], config: Any, results_file: Any, *, concurrency: int, chunk_size: int, explain: bool,
    quiet: bool, progress: bool, requirements: dict[str, float] | None = None,
) -> dict[Path, Any]:  # fmt: skip
    """Load G3 and locate ``photos`` chunk by chunk, printing each result (only errors, degradations and
    withheld answers when ``quiet``) and appending each chunk to ``results_file``; each photo's prediction or
    `G3Error`. A prediction missing a ``requirements`` probability is printed and written as withheld."""
    from tqdm.auto import tqdm

    from g3.agent import G3
    from g3.agent.results import result_row

    outcomes: dict[Path, Any] = {}
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
    photo: Path, result: Any, say: Any, *, explain: bool, quiet: bool, requirements: dict[str, float] | None = None
) -> None:
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


def _json_entry(photo: Path, result: Any, requirements: dict[str, float] | None = None) -> dict[str, Any]:
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


def _explanation(prediction: Any) -> str:
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


@app.command()
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
    with G3.from_config(_settings(config, lmm_url, lmm_model)) as g3:
        logging.getLogger(__name__).info(
            "serving %s on http://%s:%d/v1 (API keys %s); web page at http://%s:%d/", model_id, host, port,
            "required" if keys else "off", host, port,
        )  # fmt: skip
        grace = int(settings.shutdown_grace_s)
        uvicorn.run(create_app(g3, settings), host=host, port=port, timeout_graceful_shutdown=grace, log_level="info")


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
    options = _ray_options(ray, ray_address, ray_workers, ray_cpus_per_worker, ray_gpus_per_worker)
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


def _with_ranker(config: Path, ranker: Path | None) -> Any:
    """The `G3Config` of ``config`` with ``verify.ranker`` set to ``ranker`` (an absolute path) when given."""
    from g3.agent.config import G3Config

    settings = G3Config.load(config)
    if ranker is None:
        return settings
    verify = settings.verify.model_dump() | {"ranker": str(ranker.resolve())}
    return G3Config.model_validate(settings.model_dump() | {"verify": verify})


def _convention(name: str) -> Any:
    from g3.evaluation.metrics import CONVENTIONS

    if name not in CONVENTIONS:
        raise typer.BadParameter(f"unknown convention {name!r}; choose {', '.join(CONVENTIONS)}")
    return name


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

    from g3.lmm.prompts import EnsembleConfig, Evidence, render_prompt

    config = EnsembleConfig(prompt_dir=prompt_dir)
    example = Evidence(
        similar=np.array([[48.8584 + i * 0.01, 2.2945] for i in range(15)]),
        dissimilar=np.array([[-33.8568, 151.2153 + i * 0.01] for i in range(15)]),
        similar_places=["Paris, Ile-de-France, France"] * 15,
        dissimilar_places=["Sydney, New South Wales, Australia"] * 15,
    )
    for spec in config.prompts:
        shown = spec.model_copy(update={"k_similar": min(spec.k_similar, k), "k_dissimilar": min(spec.k_dissimilar, k)})
        typer.echo(f"--- {spec.name} (template {spec.template}, n={spec.samples}) ---")
        typer.echo(render_prompt(shown, example, config.prompt_dir))


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


if __name__ == "__main__":
    main()
