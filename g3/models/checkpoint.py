"""Saving and loading aligner checkpoints, strictly.

A g3 aligner checkpoint is a folder::

    config.json          {"format": "g3-aligner", "format_version": 1, "aligner": AlignerConfig, ...}
    model.safetensors    heads, location encoder, temperatures (everything but CLIP)
    clip/                the frozen CLIP model with its tokenizer and preprocessor (optional)

Loading never leaves a half-initialised model: a missing, unexpected or mis-shaped tensor is a
`CheckpointError` that names the key and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from torch import nn

from g3 import __version__
from g3.errors import CheckpointError
from g3.io import atomic_folder, atomic_write_json

if TYPE_CHECKING:
    from g3.models.aligner import GeoAligner

FORMAT = "g3-aligner"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CLIP_SUBFOLDER = "clip"


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    expected_keys: set[str] | None = None,
) -> None:
    """Raise `CheckpointError` unless ``state_dict`` has exactly the expected keys with matching shapes.

    ``expected_keys`` defaults to every key of ``module.state_dict()``.
    """
    own = module.state_dict()
    expected = set(own) if expected_keys is None else expected_keys
    got = set(state_dict)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    wrong = [
        f"{k}: checkpoint has {tuple(state_dict[k].shape)}, model expects {tuple(own[k].shape)}"
        for k in sorted(expected & got)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) with a wrong shape: {_listing(wrong, 5)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: " + "; ".join(problems) + ". Check that the checkpoint was "
            "saved by the same model configuration (location encoder, CLIP variant)."
        )


def load_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    expected_keys: set[str] | None = None,
) -> None:
    """`check_state_dict`, then copy the tensors into ``module`` (keys outside ``expected_keys`` untouched)."""
    check_state_dict(module, state_dict, source=source, expected_keys=expected_keys)
    module.load_state_dict(dict(state_dict), strict=expected_keys is None)


def save_aligner(aligner: GeoAligner, path: str | os.PathLike[str], *, include_clip: bool = True) -> Path:
    """Write ``aligner`` as a checkpoint folder at ``path``, atomically (an existing folder is replaced).

    With ``include_clip=False`` only the trained parts are written (a few tens of MB for ViT-L) and the
    CLIP source named in the config is loaded again at load time.
    """
    from safetensors.torch import save_file

    target = Path(path)
    with atomic_folder(target) as staging:
        state = {k: v.detach().contiguous().cpu() for k, v in aligner.trainable_state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        if include_clip:
            clip_dir = staging / CLIP_SUBFOLDER
            aligner.clip.save_pretrained(clip_dir)
            for part in (aligner.image_processor, aligner.tokenizer):
                if part is None:
                    raise CheckpointError("cannot include CLIP: the aligner has no image processor/tokenizer attached")
                part.save_pretrained(clip_dir)
        atomic_write_json(
            staging / CONFIG_FILE,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "g3_version": __version__,
                "aligner": aligner.config.model_dump(mode="json"),
                "clip_subfolder": CLIP_SUBFOLDER if include_clip else None,
            },
        )
    return target


def aligner_fingerprint(aligner: GeoAligner) -> str:
    """SHA-256 of an aligner's configuration and every weight (CLIP included), as hex.

    Two aligners with the same fingerprint embed identically; an index records the fingerprint of
    the aligner that built it. Hashes ~1.7 GB for ViT-L/14 (a few seconds); cache it where it matters.
    """
    import hashlib

    digest = hashlib.sha256()
    config = aligner.config.model_dump(mode="json")
    config.pop("clip")  # the source's name is irrelevant: its weights are hashed below
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(aligner.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict:
    """The parsed ``config.json`` of a checkpoint folder, with its format checked."""
    folder = Path(path)
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{folder} is not a g3 aligner checkpoint: {CONFIG_FILE} is missing. Save one with "
            "GeoAligner.save_pretrained, or convert G3's official g3.pth with `g3 aligner convert`."
        )
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({exc}); the checkpoint is corrupt") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_file} has format version {meta['format_version']}, newer than this g3 reads "
            f"({FORMAT_VERSION}); upgrade g3"
        )
    return meta


def load_aligner(path: str | os.PathLike[str], *, clip_source: str | None = None) -> GeoAligner:
    """Load a checkpoint folder written by `save_aligner`.

    CLIP comes from ``clip_source`` when given, else from the folder's ``clip/`` subfolder when present,
    else from the hub id / folder recorded in the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from g3.models.aligner import GeoAligner
    from g3.models.clip import load_clip
    from g3.models.config import AlignerConfig

    folder = Path(path)
    meta = read_checkpoint_config(folder)
    try:
        config = AlignerConfig.model_validate(meta["aligner"])
    except (KeyError, ValidationError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid aligner config: {exc}") from exc
    if clip_source is None:
        sub = meta.get("clip_subfolder")
        clip_source = str(folder / sub) if sub and (folder / sub).is_dir() else config.clip
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the checkpoint folder is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read ({exc}); the file is truncated or corrupt") from exc

    clip, processor, tokenizer = load_clip(clip_source)
    aligner = GeoAligner(config, clip, image_processor=processor, tokenizer=tokenizer)
    expected = set(aligner.trainable_state_dict())
    load_checked(aligner, state, source=str(weights), expected_keys=expected)
    return aligner.eval()
