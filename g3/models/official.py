"""Loading the official G3 checkpoint (``g3.pth`` as published with the paper) into a `GeoAligner`.

The official model (``utils/G3.py`` of the G3 repository) names its parts differently; this module maps
them onto ours and refuses any key it cannot place. ``g3.pth`` may be a plain state dict (read safely
with ``weights_only=True``) or a whole pickled module (``torch.save(model)``). The latter needs
``trust_pickle=True``: it is unpickled with the official classes replaced by inert stand-ins, which
only works on files you trust.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from g3.errors import CheckpointError
from g3.models.aligner import GeoAligner
from g3.models.checkpoint import load_checked
from g3.models.config import DEFAULT_CLIP, AlignerConfig
from g3.models.location_encoder import RFFEncoderConfig

#: Official prefix → our prefix (no official prefix is a prefix of another key's).
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("vision_model.", "clip.vision_model."),
    ("text_model.", "clip.text_model."),
    ("vision_projection.", "clip.visual_projection."),
    ("text_projection.", "clip.text_projection."),
    ("vision_projection_else_1.", "image_text_head."),
    ("text_projection_else.", "text_head."),
    ("vision_projection_else_2.", "image_gps_head."),
    ("location_projection_else.", "location_head."),
    ("location_encoder.", "location_encoder."),
    ("logit_scale1", "logit_scale_text"),
    ("logit_scale2", "logit_scale_gps"),
    ("logit_scale3", "logit_scale_text_gps"),
)
#: Buffers that older transformers versions saved and current ones recompute.
_IGNORABLE = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")


def official_config(clip_source: str = DEFAULT_CLIP) -> AlignerConfig:
    """The configuration of the official G3 model: Mercator location encoder with GeoCLIP's sizes."""
    return AlignerConfig(clip=clip_source, location_encoder=RFFEncoderConfig(projection="mercator"))


def map_official_key(key: str) -> str | None:
    """Our name for an official state-dict key, or None when the key is not part of G3's model."""
    for official, ours in KEY_MAP:
        if key == official or key.startswith(official):
            return ours + key[len(official) :]
    return None


class _Stub(nn.Module):
    """Stand-in for any class of the pickle that is not torch's: keeps modules, parameters, buffers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and "_modules" in state:
            super().__setstate__(state)
        else:
            super().__init__()


_ALLOWED_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "object", "int", "float", "str", "bool",
                     "slice", "complex", "bytes", "bytearray"}  # fmt: skip


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol 2 names
        if module == "torch" or module.startswith("torch."):
            return super().find_class(module, name)
        if (module, name) in (("collections", "OrderedDict"), ("copyreg", "_reconstructor")):
            return super().find_class(module, name)
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        return type(name, (_Stub,), {"__module__": f"g3_stub.{module}"})


_stub_pickle = ModuleType("g3_stub_pickle")
_stub_pickle.Unpickler = _StubUnpickler  # type: ignore[attr-defined]
_stub_pickle.load = pickle.load  # type: ignore[attr-defined]
_stub_pickle.__name__ = "pickle"


def read_official_state_dict(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> dict[str, Any]:
    """The tensors of an official ``g3.pth`` under their official names (``module.`` prefixes removed)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist; download g3.pth from the G3 authors' checkpoint repo")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{file} is a pickled Python object, not a plain state dict, so it cannot be read safely "
                f"({str(exc).splitlines()[0]}). If you trust the file, pass trust_pickle=True "
                "(`--trust-pickle` on the command line)."
            ) from exc
        obj = torch.load(file, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}); the file is truncated or corrupt") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, not a state dict or a model")
    if isinstance(obj.get("state_dict"), Mapping):  # a training checkpoint wrapping the weights
        obj = obj["state_dict"]
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_official_g3(
    path: str | os.PathLike[str], *, clip_source: str = DEFAULT_CLIP, trust_pickle: bool = False
) -> GeoAligner:
    """Build a `GeoAligner` from G3's official checkpoint.

    When the checkpoint contains the CLIP weights (it normally does), only CLIP's config, tokenizer and
    preprocessor are read from ``clip_source``; otherwise the CLIP weights are loaded from there too.
    Every key must map onto the model and every model tensor must be present, else `CheckpointError`.
    """
    from g3.models.clip import clip_from_config, load_clip, load_clip_config, load_clip_processors

    source = str(path)
    official = read_official_state_dict(path, trust_pickle=trust_pickle)
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official.items():
        if _IGNORABLE.match(key):
            continue
        ours = map_official_key(key)
        if ours is None or not isinstance(value, torch.Tensor):
            unknown.append(key)
        else:
            state[ours] = value
    if unknown:
        raise CheckpointError(
            f"{source} has {len(unknown)} key(s) that are not part of G3's model: {', '.join(sorted(unknown)[:8])}"
        )

    config = official_config(clip_source)
    has_clip = any(k.startswith("clip.") for k in state)
    if has_clip:
        processor, tokenizer = load_clip_processors(clip_source)
        clip = clip_from_config(load_clip_config(clip_source))
    else:
        clip, processor, tokenizer = load_clip(clip_source)
    aligner = GeoAligner(config, clip, image_processor=processor, tokenizer=tokenizer)
    expected = set(aligner.state_dict()) if has_clip else set(aligner.trainable_state_dict())
    # CLIP's own logit scale is not used by G3 and is absent from its checkpoint.
    expected.discard("clip.logit_scale")
    load_checked(aligner, state, source=source, expected_keys=expected)
    return aligner.eval()
