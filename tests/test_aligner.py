from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from g3.errors import CheckpointError, InvalidCoordinatesError
from g3.models import AlignerConfig, GeoAligner, LossWeights, RFFEncoderConfig, SphericalHarmonicsConfig
from g3.models.aligner import symmetric_info_nce


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(n)]


CAPTIONS = ["A street view photo taken in Paris, France", "A street view photo taken in Tokyo, Japan"]
POINTS = [[48.85, 2.35], [35.68, 139.69]]


def test_views_are_unit_vectors_and_key_is_their_concatenation(tiny_aligner: GeoAligner) -> None:
    emb = tiny_aligner.encode_image(images(3))
    d = tiny_aligner.embed_dim
    assert d == 32 and tiny_aligner.key_dim == 96
    for view in (emb.clip, emb.text_aligned, emb.gps_aligned):
        assert view.shape == (3, d)
        torch.testing.assert_close(view.norm(dim=-1), torch.ones(3))
    assert emb.key.shape == (3, 3 * d)
    torch.testing.assert_close(emb.key[:, d : 2 * d], emb.text_aligned)
    torch.testing.assert_close(emb.key.norm(dim=-1), torch.full((3,), 3**0.5))
    # the three views really differ (three different maps of one CLIP vector)
    assert not torch.allclose(emb.clip, emb.text_aligned) and not torch.allclose(emb.text_aligned, emb.gps_aligned)


def test_pixel_values_and_pil_give_the_same_embedding(tiny_aligner: GeoAligner) -> None:
    imgs = images(2)
    pixels = tiny_aligner.preprocess(imgs)
    assert pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(tiny_aligner.encode_image(pixels).key, tiny_aligner.encode_image(imgs).key)


def test_text_and_gps_embeddings(tiny_aligner: GeoAligner) -> None:
    text = tiny_aligner.encode_text(CAPTIONS)
    gps = tiny_aligner.encode_gps(POINTS)
    assert text.shape == gps.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(gps.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(text[0], text[1]) and not torch.allclose(gps[0], gps[1])
    with pytest.raises(InvalidCoordinatesError, match=r"latitude at position 1 is 139\.69"):
        tiny_aligner.encode_gps([[48.85, 2.35], [139.69, 35.68]])


def test_clip_is_frozen_and_heads_train(tiny_aligner: GeoAligner) -> None:
    aligner = tiny_aligner.train()
    assert not aligner.clip.training and aligner.image_gps_head.training
    assert all(not p.requires_grad for p in aligner.clip.parameters())
    batch = aligner.tokenize(CAPTIONS)
    loss = aligner(aligner.preprocess(images(2)), batch["input_ids"], batch["attention_mask"], torch.tensor(POINTS))
    assert torch.isfinite(loss.total) and loss.text_gps is None
    torch.testing.assert_close(loss.total, loss.image_text + loss.image_gps)
    loss.total.backward()
    trained = {n for n, p in aligner.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("image_text_head.") for n in trained)
    assert any(n.startswith("image_gps_head.") for n in trained)
    assert any(n.startswith("text_head.") for n in trained)
    assert any(n.startswith("location_encoder.") for n in trained)
    assert any(n.startswith("location_head.") for n in trained)
    assert {"logit_scale_text", "logit_scale_gps"} <= trained
    assert not any(n.startswith("clip.") for n in trained)
    assert "logit_scale_text_gps" not in trained  # unused while its loss weight is 0


def test_text_gps_term_joins_when_weighted(tiny_clip_dir: Path, small_rff: RFFEncoderConfig) -> None:
    cfg = AlignerConfig(clip=str(tiny_clip_dir), location_encoder=small_rff, loss_weights=LossWeights(text_gps=0.5))
    aligner = GeoAligner.from_clip(cfg, seed=0)
    batch = aligner.tokenize(CAPTIONS)
    loss = aligner(aligner.preprocess(images(2)), batch["input_ids"], batch["attention_mask"], torch.tensor(POINTS))
    assert loss.text_gps is not None
    torch.testing.assert_close(loss.total, loss.image_text + loss.image_gps + 0.5 * loss.text_gps)


def test_symmetric_info_nce_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    logits = 10.0 * a @ b.T
    by_hand = -(torch.diag(logits.log_softmax(1)).mean() + torch.diag(logits.log_softmax(0)).mean()) / 2
    torch.testing.assert_close(symmetric_info_nce(a, b, scale), by_hand)
    assert symmetric_info_nce(a, a, torch.tensor(50.0)) < symmetric_info_nce(a, b, torch.tensor(50.0))


def _outputs(aligner: GeoAligner) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            aligner.encode_image(images(2)).key,
            aligner.encode_text(CAPTIONS),
            aligner.encode_gps(POINTS),
        ]


@pytest.mark.parametrize("include_clip", [True, False])
def test_checkpoint_round_trip_gives_identical_outputs(
    tiny_aligner: GeoAligner, tmp_path: Path, include_clip: bool
) -> None:
    with torch.no_grad():  # make the heads differ from a fresh init
        tiny_aligner.logit_scale_gps.fill_(2.5)
        tiny_aligner.location_head[0].weight.mul_(1.5)
    tiny_aligner.save_pretrained(str(tmp_path / "ckpt"), include_clip=include_clip)
    assert (tmp_path / "ckpt" / "clip").is_dir() == include_clip
    loaded = GeoAligner.from_pretrained(str(tmp_path / "ckpt"))
    for x, y in zip(_outputs(tiny_aligner.eval()), _outputs(loaded), strict=True):
        assert torch.equal(x, y)
    assert loaded.logit_scale_gps.item() == 2.5
    assert loaded.config == tiny_aligner.config
    # saving again over the folder replaces it atomically and leaves no temporary folders
    tiny_aligner.save_pretrained(str(tmp_path / "ckpt"), include_clip=include_clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_spherical_harmonics_aligner_round_trip(tiny_clip_dir: Path, tmp_path: Path) -> None:
    cfg = AlignerConfig(
        clip=str(tiny_clip_dir),
        location_encoder=SphericalHarmonicsConfig(degree=6, hidden_dim=32, out_dim=48),
    )
    aligner = GeoAligner.from_clip(cfg, seed=1)
    assert aligner.encode_gps([[90.0, 0.0], [-90.0, 10.0]]).shape == (2, 32)
    aligner.save_pretrained(str(tmp_path / "sh"), include_clip=False)
    meta = json.loads((tmp_path / "sh" / "config.json").read_text())
    assert meta["aligner"]["location_encoder"]["kind"] == "spherical_harmonics"
    loaded = GeoAligner.from_pretrained(str(tmp_path / "sh"))
    assert torch.equal(_outputs(aligner.eval())[2], _outputs(loaded)[2])


def test_loading_refuses_broken_checkpoints(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    tiny_aligner.save_pretrained(str(folder), include_clip=False)
    weights = folder / "model.safetensors"
    good = load_file(str(weights))

    bad = dict(good)
    bad["image_gps_head.0.weight"] = torch.zeros(5, 5)
    save_file(bad, str(weights))
    with pytest.raises(CheckpointError, match=r"image_gps_head\.0\.weight: checkpoint has \(5, 5\), model expects"):
        GeoAligner.from_pretrained(str(folder))

    missing = {k: v for k, v in good.items() if k != "location_head.2.bias"}
    save_file(missing, str(weights))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): location_head\.2\.bias"):
        GeoAligner.from_pretrained(str(folder))

    save_file({**good, "extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): extra\.weight"):
        GeoAligner.from_pretrained(str(folder))

    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        GeoAligner.from_pretrained(str(folder))

    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        GeoAligner.from_pretrained(str(folder))

    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        GeoAligner.from_pretrained(str(tmp_path / "nowhere"))


def test_config_mismatch_is_named(tiny_aligner: GeoAligner, tmp_path: Path) -> None:
    tiny_aligner.save_pretrained(str(tmp_path / "ckpt"), include_clip=False)
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    meta["aligner"]["location_encoder"]["hidden_dim"] = 128
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"LocEnc0\.capsule\.1\.weight: checkpoint has \(64, 64\)"):
        GeoAligner.from_pretrained(str(tmp_path / "ckpt"))


def test_missing_clip_source_is_explained(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="could not load CLIP from"):
        GeoAligner.from_clip(AlignerConfig(clip=str(tmp_path / "no-such-clip")))
