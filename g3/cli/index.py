"""`g3 index`: build, import, convert, inspect and search geo indexes, and GPS galleries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from g3.cli._common import (
    CHECKPOINT_HELP,
    MinImageBytes,
    RayAddress,
    RayCpus,
    RayFlag,
    RayGpus,
    RayWorkers,
    check_link,
    checkpoint_folder,
    corpus_options,
    load_corpus,
    ray_options,
    torch_device,
)

if TYPE_CHECKING:
    from g3.models import GeoAligner
    from g3.models.aligner import ImageEmbeddings

index_app = typer.Typer(help="Geo index: build from a corpus, inspect, search.", no_args_is_help=True)

# FAISS search parameters of `index build` and `index convert`
NProbe = Annotated[int | None, typer.Option(help="IVF lists probed per search (stored as default).")]
EfSearch = Annotated[int | None, typer.Option(help="HNSW efSearch (stored as default).")]


def search_params(nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    """The FAISS search parameters given on the command line, as an index stores them."""
    return {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}


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
    nprobe: NProbe = None,
    ef_search: EfSearch = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (--ray: see --ray-gpus-per-worker)")] = "auto",
    require_country: Annotated[bool, typer.Option(help="Drop corpus rows without a country.")] = False,
    min_image_bytes: MinImageBytes = 5120,
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

    config = IndexBuildConfig(kind=kind, batch_size=batch_size, shard_size=shard_size, num_workers=workers,
                              train_size=train_size, search_params=search_params(nprobe, ef_search),
                              keep_shards=keep_shards, fill_location_text=fill_location_text, tf32=tf32,
                              threads=threads)  # fmt: skip
    options = ray_options(ray, ray_address, ray_workers, ray_cpus_per_worker, ray_gpus_per_worker)
    data = load_corpus(corpus_options(corpus, images, min_image_bytes=min_image_bytes, require_country=require_country,
                                      verify_images=False))  # fmt: skip
    if options is not None:
        from g3.index.distributed import build_index_ray

        index = build_index_ray(checkpoint_folder(checkpoint), data, out, config, options=options, restart=restart,
                                progress=progress)  # fmt: skip
    else:
        aligner = GeoAligner.from_pretrained(str(checkpoint_folder(checkpoint))).to(torch_device(device))
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

    mode = check_link(link)
    index = import_faiss_index(faiss_file, metadata, checkpoint_folder(checkpoint), out, verify_images=verify_images,
                               samples=samples, progress=progress, link=mode)  # fmt: skip
    verified = index.manifest.build.get("verified_images", 0)
    note = f"; {verified} photos verified against their rows" if verified else ""
    typer.echo(f"wrote {out}: {len(index)} rows of width {index.dim} imported ({index.manifest.build['placed']}){note}")


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
    nprobe: NProbe = None,
    ef_search: EfSearch = None,
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
    config = ConvertConfig(kind=kind, chunk_rows=chunk_rows, train_size=train_size,
                           search_params=search_params(nprobe, ef_search),
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


def _encode_photos(checkpoint: str, device: str, images: list[Path]) -> tuple[GeoAligner, ImageEmbeddings]:
    """Load an aligner checkpoint on ``device`` and embed the photos: ``(aligner, ImageEmbeddings)``."""
    import torch

    from g3.data import decode_image
    from g3.models import GeoAligner

    aligner = GeoAligner.from_pretrained(str(checkpoint_folder(checkpoint))).to(torch_device(device))
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
    from g3.index import GeoIndex, SearchHits

    aligner, views = _encode_photos(checkpoint, device, images)
    geo_index = GeoIndex.load(index, aligner=aligner)
    keys = views.key.float().cpu().numpy()
    result = geo_index.search(keys, k, dissimilar=dissimilar > 0, dissimilar_k=dissimilar or None)

    def rows(hits: SearchHits, q: int) -> list[dict[str, Any]]:
        return [{"img_id": img_id, "lat": lat, "lon": lon, "score": score, "place": place}
                for lat, lon, score, place, img_id in hits.neighbours(q).rows()]  # fmt: skip

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
