"""Options and helpers shared by the command groups of ``g3``: logging, aligner checkpoints, devices,
the configuration and LMM options of `locate` and `serve`, Ray options, corpora.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from g3.agent.config import G3Config
    from g3.data import GeoCorpus
    from g3.index.importer import LinkMode
    from g3.ray_support import RayOptions


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("faiss.loader", "httpx", "httpx2", "openai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


#: The --min-image-bytes option of the commands that read a corpus.
MinImageBytes = Annotated[int, typer.Option(help="Drop images smaller than this (G3: 5120).")]


def corpus_options(
    csv: Path, images: Path, *, min_image_bytes: int, require_country: bool, verify_images: bool
) -> dict[str, Any]:
    """A corpus's options as `load_corpus` takes them (and a training run records them in corpus.json)."""
    return {
        "csv": str(csv),
        "images": str(images),
        "min_image_bytes": min_image_bytes,
        "require_country": require_country,
        "verify_images": verify_images,
    }


def load_corpus(options: dict[str, Any]) -> GeoCorpus:
    """The `GeoCorpus` of ``options`` (see `corpus_options`)."""
    from g3.data import GeoCorpus

    return GeoCorpus.load(
        options["csv"],
        options["images"],
        min_image_bytes=options["min_image_bytes"],
        require_country=options["require_country"],
        verify_images=options["verify_images"],
        tar_index_cache=options.get("tar_index_cache"),
    )


#: Help of every option that takes an aligner checkpoint.
CHECKPOINT_HELP = "g3 aligner checkpoint folder, or tiny://aligner (the offline tiny one, built on first use)"


def checkpoint_folder(value: str) -> Path:
    """The folder of an aligner checkpoint option: a path, or ``tiny://aligner`` (as in configurations)."""
    from g3.agent import tiny

    try:
        return Path(tiny.resolve(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def torch_device(name: str) -> str:
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


def load_settings(config: Path, lmm_url: str | None, lmm_model: str | None) -> G3Config:
    """The `G3Config` of --config with --lmm-url/--lmm-model applied; a bad configuration, or the paper's
    assets not fetched yet, is reported before the models are imported."""
    from g3.agent.config import G3Config, with_lmm
    from g3.agent.official import check_assets

    settings = with_lmm(G3Config.load(config), url=lmm_url, model=lmm_model)
    check_assets(settings)
    return settings


def ray_options(ray: bool, address: str | None, workers: int | None, cpus: float, gpus: float) -> RayOptions | None:
    """`RayOptions` when --ray or --ray-address is given, else None (a single-process run)."""
    if not ray and address is None:
        return None
    from g3.ray_support import RayOptions

    return RayOptions(address=address, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


def check_link(link: str) -> LinkMode:
    """--link as `g3.index.importer.place_file` takes it; a value it does not take is refused before anything
    loads."""
    if link not in ("auto", "hardlink", "copy", "symlink"):
        raise typer.BadParameter(f"--link must be auto, hardlink, copy or symlink, not {link!r}")
    return cast("LinkMode", link)
