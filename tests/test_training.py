"""Geo-alignment training on CPU with real components: tiny CLIP, a synthetic corpus with a location signal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from synthetic import make_corpus, region_image

from g3.data import GeoCorpus
from g3.errors import TrainingError
from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
from g3.train import AugmentConfig, TrainConfig, gps_retrieval_accuracy, train_aligner
from g3.train.augment import augment
from g3.train.checkpoints import list_checkpoints
from g3.train.dataset import EpochBatchSampler


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> GeoCorpus:
    csv, images = make_corpus(tmp_path_factory.mktemp("synthetic"), per_region=40)
    return GeoCorpus.load(csv, images, min_image_bytes=0, progress=False)


def fresh_aligner(clip_dir: Path) -> GeoAligner:
    rff = RFFEncoderConfig(rff_features=32, hidden_dim=64, out_dim=64)
    return GeoAligner.from_clip(AlignerConfig(clip=str(clip_dir), location_encoder=rff), seed=0)


def quick_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "epochs": 100,
        "batch_size": 24,
        "lr": 1e-3,
        "val_fraction": 0.25,
        "val_every_steps": 1000,
        "save_every_steps": 10,
        "num_workers": 0,
        "init_location_encoder": "keep",
        "progress": False,
        "log_every_steps": 5,
    }
    return TrainConfig.model_validate({**base, **overrides})


def test_training_improves_image_to_gps_retrieval(corpus: GeoCorpus, tiny_clip_dir: Path, tmp_path: Path) -> None:
    aligner = fresh_aligner(tiny_clip_dir)
    config = quick_config(max_steps=150, val_every_steps=150)
    _, val = corpus.split(config.val_fraction, config.seed)
    before = gps_retrieval_accuracy(aligner, val)
    result = train_aligner(aligner, corpus, config, tmp_path / "run")
    after = gps_retrieval_accuracy(aligner, val)
    # 6 regions ≥ 2,500 km apart: chance is about 1/6 at 2,500 km
    assert before["acc@2500km"] < 0.5
    assert after["acc@2500km"] >= 0.9 and after["acc@2500km"] - before["acc@2500km"] >= 0.5
    assert after["median_km"] < before["median_km"] / 10
    assert result.state.step == 150
    assert result.validations[-1]["step"] == 150 and result.validations[-1]["val"]["acc@2500km"] == after["acc@2500km"]
    # the trained model is saved and reloads to the same numbers
    assert result.final_checkpoint is not None
    reloaded = GeoAligner.from_pretrained(str(result.final_checkpoint))
    assert gps_retrieval_accuracy(reloaded, val) == after
    # run folder bookkeeping
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [rec["loss"] for rec in lines if "loss" in rec]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 150
    assert len((run / "val_ids.txt").read_text().split()) == len(val)
    # 180 training images / 24 = 7 steps an epoch: the epoch ending at step 147 and the last step are kept
    assert [p.name for p in list_checkpoints(run)] == ["step-00000147", "step-00000150"]


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "final" / "model.safetensors"))


def test_resume_continues_exactly(corpus: GeoCorpus, tiny_clip_dir: Path, tmp_path: Path) -> None:
    # 180 training images / 24 = 7 batches an epoch: the interruption at step 13 falls mid-epoch
    straight = train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=24), tmp_path / "a")
    first = train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=13), tmp_path / "b")
    assert (first.state.step, first.state.epoch, first.state.batch_in_epoch) == (13, 1, 6)
    resumed = train_aligner(
        fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=24), tmp_path / "b", resume=True
    )
    assert resumed.state.step == straight.state.step == 24
    a, b = _trainable(tmp_path / "a"), _trainable(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and a run that was not resumed from the same point differs (the test can fail)
    assert not torch.equal(
        a["image_gps_head.0.weight"],
        load_file(str(list_checkpoints(tmp_path / "b")[0] / "trainable.safetensors"))["image_gps_head.0.weight"],
    )


def test_interrupt_saves_a_checkpoint_to_resume_from(corpus: GeoCorpus, tiny_clip_dir: Path, tmp_path: Path) -> None:
    def stop_at_7(state, losses):  # type: ignore[no-untyped-def]
        if state.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_aligner(
            fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=12), tmp_path / "run", on_step=stop_at_7
        )
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000007"]
    assert not (tmp_path / "run" / "final").exists()
    result = train_aligner(
        fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=12), tmp_path / "run", resume=True
    )
    assert result.state.step == 12 and result.final_checkpoint is not None


def test_run_folder_guards(corpus: GeoCorpus, tiny_clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="holds no complete checkpoint"):
        train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=2), tmp_path / "run", resume=True)
    train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=2), tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(max_steps=2), tmp_path / "run")
    with pytest.raises(TrainingError, match="differ from the saved run: batch_size, lr"):
        train_aligner(
            fresh_aligner(tiny_clip_dir),
            corpus,
            quick_config(max_steps=4, batch_size=12, lr=1e-2),
            tmp_path / "run",
            resume=True,
        )
    with pytest.raises(TrainingError, match="fewer than one batch"):
        train_aligner(fresh_aligner(tiny_clip_dir), corpus, quick_config(batch_size=200), tmp_path / "other")


def test_unreadable_images_are_skipped_and_counted(tiny_clip_dir: Path, tmp_path: Path) -> None:
    csv, images = make_corpus(tmp_path / "data", per_region=5)  # 30 rows: 24 train = 4 full batches, 6 val
    corpus = GeoCorpus.load(csv, images, min_image_bytes=0, progress=False)
    broken = [corpus.image_name(i) for i in range(0, len(corpus), 4)]
    for name in broken:
        (images / name).write_bytes(b"not an image at all")
    config = quick_config(batch_size=6, val_fraction=0.2, epochs=2, val_every_steps=None)
    result = train_aligner(fresh_aligner(tiny_clip_dir), corpus, config, tmp_path / "run")
    train_rows, val_rows = corpus.split(0.2, 0)
    broken_train = sum(name in set(broken) for name in map(train_rows.image_name, range(len(train_rows))))
    assert broken_train > 0
    assert result.state.skipped_images == 2 * broken_train  # every epoch meets them again
    assert result.validations[-1]["val"]["skipped"] == sum(
        name in set(broken) for name in map(val_rows.image_name, range(len(val_rows)))
    )


def test_batches_are_shuffled_deterministic_and_sharded() -> None:
    epoch0 = list(EpochBatchSampler(100, 10, seed=1, epoch=0))
    assert len(epoch0) == 10 and sorted(i for b in epoch0 for i, _ in b) == list(range(100))
    assert [i for i, _ in epoch0[0]] != list(range(10))  # shuffled
    assert epoch0 == list(EpochBatchSampler(100, 10, seed=1, epoch=0))
    assert epoch0 != list(EpochBatchSampler(100, 10, seed=1, epoch=1))
    assert list(EpochBatchSampler(100, 10, seed=1, epoch=0, start_batch=7)) == epoch0[7:]
    shards = [list(EpochBatchSampler(100, 10, seed=1, epoch=0, rank=r, world_size=2)) for r in range(2)]
    for b, (left, right) in enumerate(zip(*shards, strict=True)):
        assert left + right == epoch0[b]
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(100, 10, seed=1, epoch=0, world_size=3)


def test_augmentation_is_applied_and_reproducible() -> None:
    image = region_image(2, np.random.default_rng(0), size=64)
    config = AugmentConfig()
    out1 = augment(image, random.Random(5), config)
    out2 = augment(image, random.Random(5), config)
    out3 = augment(image, random.Random(6), config)
    assert np.array_equal(np.asarray(out1), np.asarray(out2))
    assert out1.size != image.size or not np.array_equal(np.asarray(out1), np.asarray(image))
    assert not np.array_equal(np.asarray(out1.resize((32, 32))), np.asarray(out3.resize((32, 32))))
    assert augment(image, random.Random(5), AugmentConfig(enabled=False)) is image
    # crops keep at least the configured share of the area
    areas = [np.prod(augment(image, random.Random(s), config).size) / 64**2 for s in range(50)]
    assert min(areas) >= 0.5 * 0.9 and max(areas) <= 1.0
    assert all(augment(image, random.Random(s), config).mode == "RGB" for s in range(20))
    assert isinstance(out1, Image.Image)


def test_train_config_yaml(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  batch_size: 64\n  augment:\n    hflip_p: 0.0\n")
    cfg = TrainConfig.from_yaml(path)
    assert cfg.batch_size == 64 and cfg.augment.hflip_p == 0.0 and cfg.lr == 3e-5 and cfg.lr_decay == 0.87
    path.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(TrainingError, match="batch_sise"):
        TrainConfig.from_yaml(path)


def test_paper_config_file_matches_the_defaults() -> None:
    import yaml

    from g3.models import AlignerConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "train_paper.yaml"
    data = yaml.safe_load(path.read_text())
    assert AlignerConfig.model_validate(data["aligner"]) == AlignerConfig()
    assert TrainConfig.from_yaml(path) == TrainConfig()
