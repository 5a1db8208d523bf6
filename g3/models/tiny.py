"""Tiny random CLIP models built offline, for tests and CPU smoke runs (no model hub needed).

The folder written by `build_tiny_clip` has the same layout as a hub CLIP checkpoint (weights, config,
tokenizer, image processor), so every loading path of g3 runs on it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Words the tiny tokenizer is trained on: caption words and common place names.
_TINY_CORPUS = [
    "A street view photo taken in",
    "Paris, Ile-de-France, France",
    "New York, New York, United States",
    "Tokyo, Tokyo, Japan",
    "Sydney, New South Wales, Australia",
    "Cape Town, Western Cape, South Africa",
    "Rio de Janeiro, Rio de Janeiro, Brazil",
    "Moscow, Moscow, Russia",
    "Cairo, Cairo Governorate, Egypt",
    "Mumbai, Maharashtra, India",
    "Reykjavik, Capital Region, Iceland",
    "Lima, Lima, Peru",
    "Toronto, Ontario, Canada",
    "Beijing, Beijing, China",
    "Nairobi, Nairobi County, Kenya",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def build_tiny_clip(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 32,
    max_text_len: int = 32,
    seed: int = 0,
    intermediate_size: int | None = None,
) -> Path:
    """Write a randomly initialised, tiny CLIP (model, tokenizer, image processor) to ``out_dir``.

    Both towers share ``hidden_size``, ``layers``, ``heads`` and ``intermediate_size`` (default
    ``2 * hidden_size``); benchmarks give them a real model's shape for its compute per image.

    Returns the folder, loadable with ``CLIPModel.from_pretrained`` / ``AutoTokenizer`` /
    ``AutoImageProcessor`` and by `g3.models.GeoAligner`. Deterministic for a given ``seed``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{specials[0]} $A {specials[1]}", special_tokens=[(specials[0], bos), (specials[1], eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[1],
        unk_token=specials[1],
        model_max_length=max_text_len,
    )
    tokenizer.save_pretrained(out)

    config = CLIPConfig(
        text_config={
            "vocab_size": tok.get_vocab_size(),
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size or 2 * hidden_size,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": max_text_len,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size or 2 * hidden_size,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(out)
    return out
