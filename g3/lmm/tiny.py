"""A tiny random LLaVA built offline, for tests and CPU benchmarks of the LMM backends (no model hub needed).

`build_tiny_llava` writes a folder laid out like a hub LLaVA checkpoint (weights, config, tokenizer with an
``<image>`` token and a chat template, image processor, processor config), loadable with
``AutoModelForImageTextToText`` / ``AutoProcessor``. Its answers are random text, but every code path of a
real LLaVA runs: image preprocessing, image-token expansion, chat templating, batched sampling.
`export_for_vllm` copies such a folder with its weights renamed the way vLLM's LLaVA loader expects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

#: Text the tiny tokenizer is trained on: prompt words, place names and JSON answers, so that prompts and
#: coordinate answers tokenize into a few hundred tokens rather than thousands of single bytes.
_TINY_CORPUS = [
    "You are an expert in geolocalization. Given an image, predict where it was taken.",
    "Output the latitude and longitude of the place where the photo was taken as a JSON object.",
    "For reference, here are the GPS coordinates of similar images and of dissimilar images:",
    "Candidate coordinates: (48.8566, 2.3522), (40.7128, -74.0060), (35.6762, 139.6503)",
    '{"latitude": 48.8566, "longitude": 2.3522}',
    '{"latitude": -33.8688, "longitude": 151.2093}',
    '{"latitude": -22.9068, "longitude": -43.1729}',
    '{"latitude": 55.7558, "longitude": 37.6173}',
    '{"latitude": 0.0, "longitude": -0.0}',
    "USER: ASSISTANT: system user assistant",
    "Paris, France; New York, United States; Tokyo, Japan; Sydney, Australia; Cape Town, South Africa",
    "Rio de Janeiro, Brazil; Moscow, Russia; Cairo, Egypt; Mumbai, India; Reykjavik, Iceland; Lima, Peru",
    "the quick brown fox jumps over the lazy dog 0123456789 -+.,:;{}[]()\"' \n",
]

#: Special tokens of the tiny tokenizer.
BOS, EOS, PAD, IMAGE = "<s>", "</s>", "<pad>", "<image>"

#: A short LLaVA-1.5-style chat template. Message content is a string or OpenAI-style parts:
#: ``{"type": "image"}`` (or ``"image_url"``) becomes the ``<image>`` placeholder, ``{"type": "text"}`` its text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url'] %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    max_positions: int = 1024,
) -> Path:
    """Write a randomly initialised tiny LLaVA (CLIP vision tower + Llama) with its processor to ``out_dir``.

    Text attention heads are 32-d (vLLM's CPU attention supports no smaller head), so ``hidden`` must be a
    multiple of 32. An image becomes ``(image_size / patch_size)²`` image tokens (16 by default). Returns the
    folder. Deterministic for a given ``seed``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    if hidden % 32:
        raise ValueError(f"hidden must be a multiple of 32 (32-d attention heads), got {hidden}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    specials = [BOS, EOS, PAD, IMAGE]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    ids: dict[str, int] = {}
    for special in specials:
        token_id = tok.token_to_id(special)
        if token_id is None:  # pragma: no cover - trainers always keep special tokens
            raise RuntimeError(f"the trained tokenizer lost the special token {special}")
        ids[special] = token_id
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=max_positions,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )

    heads = hidden // 32
    grid = image_size // patch_size
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=32,
            max_position_embeddings=max_positions,
            bos_token_id=ids[BOS],
            eos_token_id=ids[EOS],
            pad_token_id=ids[PAD],
            tie_word_embeddings=False,
        ),
        image_token_index=ids[IMAGE],
        image_seq_length=grid * grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[EOS]
    model.generation_config.pad_token_id = ids[PAD]
    model.save_pretrained(out)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    processor.save_pretrained(out)
    return out


def export_for_vllm(src: str | Path, dst: str | Path) -> Path:
    """Copy a LLaVA folder saved by transformers 5 to ``dst``, with weights renamed as vLLM loads them.

    transformers 5 flattens the CLIP vision tower (``model.vision_tower.embeddings…``); vLLM's LLaVA builds a
    ``CLIPVisionModel`` wrapper and looks for ``model.vision_tower.vision_model.embeddings…``. Its own
    mapper turns the other transformers ≥ 4.52 prefixes (``model.language_model.``,
    ``model.multi_modal_projector.``, ``lm_head.``) into its names, so only the vision tower is renamed.
    Every other file is copied unchanged. Returns ``dst``.
    """
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    weight_files = sorted(src.glob("*.safetensors"))
    if not weight_files:
        raise FileNotFoundError(f"no *.safetensors weights in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "model.safetensors.index.json":
            shutil.copy2(path, dst / path.name)

    weight_map: dict[str, str] = {}
    for path in weight_files:
        tensors = load_file(path)
        renamed = {_vllm_name(name): t.contiguous() for name, t in tensors.items()}
        save_file(renamed, dst / path.name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(renamed, path.name))
    index = src / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        (dst / index.name).write_text(json.dumps(data, indent=2) + "\n")
    return dst


def _vllm_name(name: str) -> str:
    """The name vLLM's LLaVA loader expects for one transformers-5 weight name."""
    for prefix in ("model.vision_tower.", "vision_tower."):
        if name.startswith(prefix) and not name.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + name[len(prefix) :]
    return name
