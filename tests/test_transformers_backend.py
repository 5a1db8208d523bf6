"""The transformers LMM backend on a tiny random LLaVA: real batched ``generate`` with real images."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from g3.errors import CheckpointError
from g3.lmm.base import COORDINATE_SCHEMA, LMMRequest, LMMResponse, encode_image
from g3.lmm.parse import parse_answer
from g3.lmm.tiny import build_tiny_llava, export_for_vllm
from g3.lmm.transformers_backend import TransformersBackend

PHOTOS = SHARED_DATA / "im2gps3k" / "images_cc_subset500"
PROMPT = 'Where was this photo taken? Answer as JSON: {"latitude": ..., "longitude": ...}'


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels))


def real_photo() -> bytes:
    """One real im2gps3k photo when the shared data is here, else a synthetic JPEG."""
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    return photos[0].read_bytes() if photos else jpeg(99, (320, 240))


def request(prompt: str = PROMPT, image: bytes | None = None, **kwargs: object) -> LMMRequest:
    defaults: dict[str, object] = {"n": 3, "temperature": 1.0, "max_tokens": 12, "seed": 0, "tag": "q"}
    defaults.update(kwargs)
    return LMMRequest(prompt=prompt, image=image if image is not None else jpeg(0), **defaults)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def backend(tiny_llava_dir: Path) -> Iterator[TransformersBackend]:
    with TransformersBackend(str(tiny_llava_dir), batch_size=8) as b:
        b.load()
        yield b


def ensemble() -> list[LMMRequest]:
    """Different prompts about the same image and about different images, as one call would carry."""
    photo, other = real_photo(), jpeg(1)
    return [
        request(PROMPT, photo, seed=1, tag="zs"),
        request(PROMPT + " Candidates: (48.85, 2.35), (35.68, 139.69)", photo, seed=2, tag="rag_5"),
        request("Guess the GPS coordinates.", other, seed=3, tag="other_image"),
        request("Guess the GPS coordinates.", photo, seed=3, tag="same_seed_other_image"),
    ]


def assert_well_formed(responses: list[LMMResponse], requests: list[LMMRequest]) -> None:
    assert [r.tag for r in responses] == [q.tag for q in requests]
    for resp, req in zip(responses, requests, strict=True):
        assert resp.ok, resp.error
        assert len(resp.texts) == req.n and all(isinstance(t, str) for t in resp.texts)
        assert resp.usage.prompt_tokens > 0
        assert req.n <= resp.usage.completion_tokens <= req.n * req.max_tokens
        assert resp.latency_s > 0


def test_responses_have_n_texts_usage_and_tags_in_order(backend: TransformersBackend) -> None:
    requests = [*ensemble(), request(n=1, max_tokens=5, tag="short"), request(n=2, max_tokens=7, tag="mid")]
    responses = backend.generate(requests)
    assert_well_formed(responses, requests)
    # prompt tokens: the chat-templated prompt with its expanded image tokens, counted once (not × n)
    processor = backend._processor
    for resp, req in zip(responses, requests, strict=True):
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": req.prompt}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        image = Image.open(io.BytesIO(req.image)).convert("RGB")
        ids = processor(text=[text], images=[image], add_special_tokens=False)["input_ids"][0]
        assert resp.usage.prompt_tokens == len(ids)


def test_batched_equals_one_by_one(backend: TransformersBackend) -> None:
    requests = ensemble()
    batched = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert [b.texts for b in batched] == [a.texts for a in alone]
    assert [b.usage for b in batched] == [a.usage for a in alone]
    # a batch smaller than the call: still the same texts
    small = TransformersBackend(backend.model_path, batch_size=2)
    small._model, small._processor = backend._model, backend._processor
    assert [r.texts for r in small.generate(requests)] == [b.texts for b in batched]


def test_shared_prefill_gives_the_plain_generate_answers(backend: TransformersBackend) -> None:
    assert backend._shares_prefill()  # automatic for LLaVA
    plain = TransformersBackend(backend.model_path, share_prefill=False)
    plain._model, plain._processor = backend._model, backend._processor
    requests = [*ensemble(), request(temperature=0.0, tag="greedy")]
    shared, unshared = backend.generate(requests), plain.generate(requests)
    assert [r.texts for r in shared] == [r.texts for r in unshared]
    assert [r.usage for r in shared] == [r.usage for r in unshared]


def test_seeds_make_sampling_reproducible(backend: TransformersBackend) -> None:
    first = backend.generate([request(seed=7, max_tokens=16)])[0]
    again = backend.generate([request(seed=7, max_tokens=16)])[0]
    other = backend.generate([request(seed=8, max_tokens=16)])[0]
    assert first.texts == again.texts
    assert first.texts != other.texts
    assert len(set(first.texts)) > 1  # the n samples of one request differ
    unseeded = [backend.generate([request(seed=None, max_tokens=16)])[0].texts for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_global_rng_is_untouched(backend: TransformersBackend) -> None:
    state = torch.get_rng_state()
    backend.generate([request(seed=None)])
    assert torch.equal(torch.get_rng_state(), state)


def test_temperature_zero_is_greedy(backend: TransformersBackend) -> None:
    # free text (no schema), to compare with transformers' own greedy decoding; constrained greedy decoding
    # is compared with xgrammar's own transformers integration in test_schema_greedy_matches_xgrammars_own_processor
    greedy = [backend.generate([request(temperature=0.0, seed=s, max_tokens=10, json_schema=None)])[0] for s in (0, 1)]
    assert len(set(greedy[0].texts)) == 1
    assert greedy[0].texts == greedy[1].texts
    # the same as transformers' own greedy decoding
    processor, model = backend._processor, backend._model
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    image = Image.open(io.BytesIO(jpeg(0))).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=10)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert greedy[0].texts[0] == expected
    # greedy and sampled requests batch together without changing each other
    sampled = request(seed=7, max_tokens=10, json_schema=None)
    mixed = backend.generate([request(temperature=0.0, max_tokens=10, json_schema=None), sampled])
    assert mixed[0].texts == greedy[0].texts
    assert mixed[1].texts == backend.generate([sampled])[0].texts


def test_broken_image_fails_only_its_request(backend: TransformersBackend) -> None:
    good = [request(seed=1, tag="a"), request(seed=2, tag="c")]
    broken = LMMRequest(prompt=PROMPT, image=b"not an image", n=2, seed=0, tag="b")
    responses = backend.generate([good[0], broken, good[1]])
    assert [r.tag for r in responses] == ["a", "b", "c"]
    assert not responses[1].ok and responses[1].texts == ()
    assert "UnidentifiedImageError" in (responses[1].error or "")
    assert [r.texts for r in (responses[0], responses[2])] == [r.texts for r in backend.generate(good)]


def test_prompt_beyond_the_context_fails_only_its_request(backend: TransformersBackend) -> None:
    too_long = request(prompt="latitude " * 2000, tag="long")  # beyond the 1024 positions of the tiny model
    fine = request(seed=4, tag="fine")  # in the same generate batch
    responses = backend.generate([too_long, fine])
    assert not responses[0].ok and "exceeds the context of 1024 tokens" in (responses[0].error or "")
    assert responses[1].texts == backend.generate([fine])[0].texts


def test_generation_error_is_reported_not_raised(backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_generate = backend._model.generate

    def flaky_generate(**kwargs: object) -> object:
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real_generate(**kwargs)

    monkeypatch.setattr(backend._model, "generate", flaky_generate)
    first = request(tag="first")
    other_group = request(n=1, max_tokens=4, tag="other")  # another (n, max_tokens): its own generate call
    responses = backend.generate([first, other_group])
    assert len(calls) == 2
    assert responses[0].error == "generation failed: RuntimeError: out of memory" and responses[0].texts == ()
    assert responses[1].ok and len(responses[1].texts) == 1


def test_max_image_side_shrinks_big_images(backend: TransformersBackend) -> None:
    capped = TransformersBackend(backend.model_path, max_image_side=64)
    capped._model, capped._processor = backend._model, backend._processor
    image = capped._prepare_image(jpeg(5, (400, 100)))
    assert max(image.size) == 64
    assert capped.generate([request(image=real_photo())])[0].ok


def test_bad_model_path_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    backend = TransformersBackend(str(missing))  # no I/O yet
    assert not backend.loaded
    with pytest.raises(CheckpointError, match="no-such-model"):
        backend.load()
    with pytest.raises(CheckpointError, match="no-such-model"):
        backend.generate([request()])


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TransformersBackend("x", batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TransformersBackend("x", dtype="int3")


def test_agenerate_runs_off_the_event_loop(backend: TransformersBackend) -> None:
    async def main() -> tuple[list[LMMResponse], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        responses = await backend.agenerate([request(max_tokens=48)])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return responses, ticks

    responses, ticks = asyncio.run(main())
    assert responses[0].ok and ticks > 1
    assert asyncio.run(backend.agenerate([])) == []


def test_lazy_load_on_first_use(tiny_llava_dir: Path) -> None:
    backend = TransformersBackend(str(tiny_llava_dir), dtype="float32")
    assert not backend.loaded
    assert backend.generate([request(n=1, max_tokens=3)])[0].ok
    assert backend.loaded
    backend.close()
    assert not backend.loaded


def test_tiny_llava_is_deterministic_and_exports_for_vllm(tiny_llava_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = build_tiny_llava(tmp_path / "again")
    original = load_file(tiny_llava_dir / "model.safetensors")
    rebuilt = load_file(again / "model.safetensors")
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)
    different = load_file(build_tiny_llava(tmp_path / "seed1", seed=1) / "model.safetensors")
    assert not torch.equal(
        original["multi_modal_projector.linear_1.weight"], different["multi_modal_projector.linear_1.weight"]
    )

    exported = export_for_vllm(tiny_llava_dir, tmp_path / "vllm")
    weights = load_file(exported / "model.safetensors")
    assert len(weights) == len(original)
    vision = [k for k in weights if "vision_tower" in k]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert torch.equal(
        weights["vision_tower.vision_model.embeddings.class_embedding"],
        original["vision_tower.embeddings.class_embedding"],
    )
    assert {p.name for p in exported.iterdir()} == {p.name for p in tiny_llava_dir.iterdir()}
    # exporting an exported folder changes nothing
    twice = load_file(export_for_vllm(exported, tmp_path / "vllm2") / "model.safetensors")
    assert twice.keys() == weights.keys()


def test_from_model_answers_as_the_folder_loaded_backend(tiny_llava_dir: Path, backend: TransformersBackend) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    adopted = TransformersBackend.from_model(model, AutoProcessor.from_pretrained(tiny_llava_dir))
    assert adopted.loaded and adopted.device == "cpu"
    requests = ensemble()
    assert [r.texts for r in adopted.generate(requests)] == [r.texts for r in backend.generate(requests)]


def test_from_model_rejects_a_processor_without_chat_template(tiny_llava_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    processor.chat_template = None
    with pytest.raises(CheckpointError, match="chat template"):
        TransformersBackend.from_model(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir), processor)


# --- JSON-schema constrained decoding (xgrammar) ------------------------------------------------------------

#: A schema much narrower than the coordinates': a random model's free numbers would fall outside it.
NARROW_SCHEMA = {
    "type": "object",
    "properties": {
        "latitude": {"type": "number", "minimum": 10, "maximum": 12},
        "longitude": {"type": "number", "minimum": -3, "maximum": 0},
    },
    "required": ["latitude", "longitude"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("schema", [COORDINATE_SCHEMA, NARROW_SCHEMA], ids=["coordinates", "narrow"])
def test_every_sample_is_json_of_the_schema(backend: TransformersBackend, schema: dict[str, object]) -> None:
    # as the ensemble samples: several prompts, n answers each at temperature 1.2, batched in one call
    requests = [replace(r, json_schema=schema, temperature=1.2, n=8, max_tokens=48) for r in ensemble()]
    responses = backend.generate(requests)
    assert_well_formed(responses, requests)
    for response in responses:
        assert len(set(response.texts)) > 1  # still sampled: the n answers differ
        for text in response.texts:
            answer = json.loads(text)
            jsonschema.validate(answer, schema)
            assert not any(c.isspace() for c in text)  # as vLLM's disable_any_whitespace answers
            parsed = parse_answer(text)
            assert parsed is not None and parsed.method == "json"
            assert (parsed.lat, parsed.lon) == (answer["latitude"], answer["longitude"])
    # without the schema, the same requests answer random text that never parses
    free = backend.generate([replace(r, json_schema=None) for r in requests])
    assert all(parse_answer(text) is None for r in free for text in r.texts)


def test_schema_greedy_matches_xgrammars_own_processor(backend: TransformersBackend) -> None:
    # xgrammar's reference transformers integration, on plain greedy `generate`, decides the same tokens
    # as the backend's row masks with its shared prefill and its own sampler
    import xgrammar as xgr

    greedy = backend.generate([request(temperature=0.0, max_tokens=40)])[0]
    processor, model = backend._processor, backend._model
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    image = Image.open(io.BytesIO(jpeg(0))).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
    reference = xgr.contrib.hf.LogitsProcessor(backend._grammar(COORDINATE_SCHEMA))
    out = model.generate(**inputs, do_sample=False, max_new_tokens=40, logits_processor=[reference])
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert greedy.texts == (expected,) * 3
    jsonschema.validate(json.loads(expected), COORDINATE_SCHEMA)


def test_constrained_and_free_requests_batch_together(backend: TransformersBackend) -> None:
    requests = [
        *(replace(r, max_tokens=40) for r in ensemble()),
        request(json_schema=None, seed=5, max_tokens=40, tag="free"),
        request(json_schema=NARROW_SCHEMA, max_tokens=40, tag="narrow"),
    ]
    batched = backend.generate(requests)
    assert [r.texts for r in batched] == [backend.generate([r])[0].texts for r in requests]
    assert parse_answer(batched[-2].texts[0]) is None  # the free request stayed free
    assert all(json.loads(t)["latitude"] >= 10 for t in batched[-1].texts)  # each request keeps its own schema


def test_grammars_compile_once_per_schema(tiny_llava_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xgrammar as xgr

    compiled: list[str] = []
    real = xgr.GrammarCompiler.compile_json_schema

    def counting(self: object, schema: str, **kwargs: object) -> object:
        compiled.append(schema)
        return real(self, schema, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(xgr.GrammarCompiler, "compile_json_schema", counting)
    backend = TransformersBackend(str(tiny_llava_dir))
    for _ in range(2):
        backend.generate([request(n=1, max_tokens=4), request(n=2, max_tokens=4), request(json_schema=NARROW_SCHEMA)])
    backend.generate([request(json_schema=dict(reversed(COORDINATE_SCHEMA.items())), n=1, max_tokens=4)])
    assert len(compiled) == 2  # the coordinates' schema (in any key order) and the narrow one, once each
    backend.close()  # a reloaded model may have another tokenizer: its grammars are compiled again
    backend.generate([request(n=1, max_tokens=4)])
    assert len(compiled) == 3


def test_a_schema_that_cannot_compile_fails_only_its_request(backend: TransformersBackend) -> None:
    bad = request(json_schema={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, tag="bad")
    good = request(tag="good")
    responses = backend.generate([bad, good])
    assert not responses[0].ok and responses[0].texts == ()
    assert "cannot compile the JSON schema" in (responses[0].error or "") and "nowhere" in (responses[0].error or "")
    assert responses[1].texts == backend.generate([good])[0].texts
