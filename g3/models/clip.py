"""Loading CLIP (model, image processor, tokenizer) from a hub id or a local folder, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from g3.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel


def _explain(source: str, exc: Exception) -> CheckpointError:
    where = (
        f"the local folder {source!r}"
        if Path(source).exists()
        else f"{source!r} (no local folder of that name, so it was looked up on the Hugging Face hub)"
    )
    return CheckpointError(
        f"could not load CLIP from {where} ({str(exc).rstrip('.')}). Pass a hub id that is reachable or cached, "
        "or a local folder saved with CLIPModel.save_pretrained (with its tokenizer and preprocessor_config.json)."
    )


def load_clip_processors(source: str) -> tuple[Any, Any]:
    """Image processor and tokenizer of a CLIP checkpoint.

    The PIL image backend is used on every machine so that preprocessing (hence every embedding) is
    identical with and without torchvision.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        processor = AutoImageProcessor.from_pretrained(source, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _explain(source, exc) from exc
    return processor, tokenizer


def load_clip_config(source: str) -> CLIPConfig:
    """The ``CLIPConfig`` of a checkpoint, without its weights."""
    from transformers import CLIPConfig

    try:
        return CLIPConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _explain(source, exc) from exc


def load_clip(source: str) -> tuple[CLIPModel, Any, Any]:
    """``(CLIPModel in eval mode, image processor, tokenizer)`` from a hub id or local folder."""
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _explain(source, exc) from exc
    processor, tokenizer = load_clip_processors(source)
    return model.eval(), processor, tokenizer


def clip_from_config(config: CLIPConfig) -> CLIPModel:
    """A CLIPModel with the given architecture and random weights (to be overwritten by a checkpoint)."""
    from transformers import CLIPModel

    return CLIPModel(config).eval()
