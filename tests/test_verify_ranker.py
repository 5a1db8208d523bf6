"""The learned verification ranker (g3.verify.ranker): grouped folds (no query in two folds), cross-validation
against every fixed rule, calibration, the artefact's round trip and refusals, `g3 verify fit` on the pools of a
tiny evaluation run, and the ranker choosing the answer (with its confidence) in the real graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA
from scripted import ScriptedLMM
from typer.testing import CliRunner

from g3.agent import G3, G3Config
from g3.errors import RankerError
from g3.index import GeoIndex
from g3.lmm.batching import BatchingBackend
from g3.models import GeoAligner
from g3.verify import FEATURES, RULES, Pool, PoolCandidate, read_pools
from g3.verify.calibration import expected_calibration_error, fit_isotonic
from g3.verify.ranker import MANIFEST, Ranker, cross_validate, fit_ranker, group_folds

PHOTOS = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))[:2]
needs_photos = pytest.mark.skipif(not PHOTOS, reason="the shared IM2GPS3k photos are not available")
PHOTO = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
ROUNDS = 30  # fewer boosting rounds than the default: the tests check behaviour, not the best accuracy


def moved(rng: np.random.Generator, point: tuple[float, float], km: float) -> tuple[float, float]:
    """``point`` moved ``km`` in a random direction."""
    bearing = rng.uniform(0, 2 * np.pi)
    lat = float(np.clip(point[0] + km * np.cos(bearing) / 111.2, -89.0, 89.0))
    lon = point[1] + km * np.sin(bearing) / (111.2 * max(np.cos(np.radians(lat)), 0.2))
    return lat, float((lon + 180.0) % 360.0 - 180.0)


def synthetic_pools(count: int, *, seed: int, skill: float = 0.5, embeddings: bool = True) -> list[Pool]:
    """Pools of a G3-like run: 10 neighbours (near the truth, around a decoy place, or anywhere), the top 5 as
    retrieval candidates, 3 prompts × 3 answers of an LMM right with probability ``skill`` (RAG prompts sometimes
    copy a neighbour), and optionally a coarse embedding cosine (random Fourier features of a noisy belief)."""
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(99).normal(size=(3, 16))

    def embed(point: tuple[float, float]) -> np.ndarray:
        lat, lon = np.radians(point)
        v = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)]) @ weights
        return np.concatenate([np.cos(3 * v), np.sin(3 * v)])

    pools = []
    for q in range(count):
        truth = (float(rng.uniform(-50, 60)), float(rng.uniform(-170, 170)))
        decoy = (float(rng.uniform(-50, 60)), float(rng.uniform(-170, 170)))
        hard = rng.uniform()
        neighbours = []
        for _ in range(10):
            u = rng.uniform()
            if u < 0.6 - 0.4 * hard:
                neighbours.append(moved(rng, truth, rng.choice([0.1, 3.0, 20.0, 150.0]) * rng.exponential()))
            elif u < 0.8:
                neighbours.append(moved(rng, decoy, 30 * rng.exponential()))
            else:
                neighbours.append((float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))))
        candidates = [
            PoolCandidate(
                lat=a, lon=b, source="retrieval", rank=k, retrieval_score=0.9 - 0.02 * k + 0.05 * rng.normal()
            )
            for k, (a, b) in enumerate(neighbours[:5])
        ]
        right = rng.uniform() < skill * (1 - 0.5 * hard)
        guess = moved(rng, truth, (5 if right else 800) * rng.exponential())
        for prompt in ("zero_shot", "rag_5", "rag_10"):
            for sample in range(3):
                answer = guess if rng.uniform() < 0.7 else moved(rng, guess, 300 * rng.exponential())
                if prompt != "zero_shot" and rng.uniform() < 0.3:
                    answer = neighbours[int(rng.integers(0, 5))]
                candidates.append(PoolCandidate(lat=answer[0], lon=answer[1], source=prompt, sample=sample))
        vectors = {}
        if embeddings:
            belief = moved(rng, truth, 200 * rng.exponential())
            vectors = {
                "query_gps": (embed(belief) + 0.3 * rng.normal(size=32)).tolist(),
                "candidate_embeddings": [embed((c.lat, c.lon)).tolist() for c in candidates],
            }
        pools.append(Pool(id=f"s{seed}-{q}", truth=truth, candidates=candidates, neighbours=neighbours, **vectors))
    return pools


def training_pools() -> list[Pool]:
    return synthetic_pools(100, seed=3) + synthetic_pools(20, seed=4, embeddings=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ranker fitted on synthetic pools (a sixth of them without embeddings), saved."""
    folder = tmp_path_factory.mktemp("ranker") / "ranker"
    fit_ranker(training_pools(), seed=0, rounds=ROUNDS).save(folder)
    return folder


def test_folds_are_grouped_by_query() -> None:
    ids = [f"q{i % 7}" for i in range(30)]  # 7 queries, each several times
    fold = group_folds(ids, 3, seed=0)
    for query in set(ids):
        assert len({int(fold[i]) for i, q in enumerate(ids) if q == query}) == 1, f"{query} in two folds"
    assert set(fold.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(fold, group_folds(ids, 3, seed=0))  # seeded
    assert any((group_folds(ids, 3, seed=s) != fold).any() for s in range(1, 5))  # the seed shuffles
    with pytest.raises(RankerError, match="at least 8 distinct queries"):
        group_folds(ids, 8)
    with pytest.raises(RankerError, match="at least 2 folds"):
        group_folds(ids, 1)


def test_cross_validation_compares_the_ranker_with_every_rule_on_the_same_queries() -> None:
    pools = synthetic_pools(90, seed=1)
    pools = pools + [p.model_copy(update={"candidates": p.candidates[::-1]}) for p in pools[:30]]  # repeated ids
    result = cross_validate(pools, folds=3, seed=0, rounds=ROUNDS)
    ids = [p.id for p in pools]
    for query in set(ids):  # a query's copies never sit on both sides of a split
        assert len({int(result.fold[i]) for i, q in enumerate(ids) if q == query}) == 1
    assert list(result.accuracy) == ["ranker", *RULES]
    for name, row in result.accuracy.items():
        assert list(row) == ["1", "25", "200", "750", "2500"]
        values = list(row.values())
        assert values == sorted(values) and values[0] >= 0 and values[-1] <= 1, name
        np.testing.assert_allclose(row["25"], np.mean(result.distance_km[name] <= 25))
    # the synthetic pools reward combining the sources: the learned choice beats every fixed rule at 25 and 200 km
    for threshold in ("25", "200"):
        best_rule = max(result.accuracy[name][threshold] for name in RULES)
        assert result.accuracy["ranker"][threshold] > best_rule, threshold
    assert set(result.confidence) == {"25", "200", "750"}
    for r, probs in result.confidence.items():
        assert probs.shape == (len(pools),) and ((probs >= 0) & (probs <= 1)).all()
        np.testing.assert_array_equal(result.hits[r], result.distance_km["ranker"] <= float(r))
    assert all(value < 0.2 for value in result.ece().values()), result.ece()  # small sample: a loose bound
    assert result.to_json() == {"queries": 120, "folds": 3, "accuracy": result.accuracy}


def test_isotonic_calibration_and_ece() -> None:
    iso = fit_isotonic([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 1, 0, 0, 1, 1], prior=0.0)
    # pool adjacent violators: (1, 0, 0) pools to 1/3; the result is non-decreasing and exact on the blocks
    np.testing.assert_allclose(iso([0.1, 0.2, 0.4, 0.5, 0.6]), [0, 1 / 3, 1 / 3, 1, 1])
    assert (np.diff(iso(np.linspace(0, 1, 50))) >= 0).all()
    # the default shrinks each block by half a hit and half a miss: 0/1 → 1/4, 1/3 → 3/8, 2/2 → 5/6
    shrunk = fit_isotonic([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 1, 0, 0, 1, 1])
    np.testing.assert_allclose(shrunk([0.1, 0.2, 0.4, 0.5, 0.6]), [1 / 4, 3 / 8, 3 / 8, 5 / 6, 5 / 6])
    never = fit_isotonic(np.linspace(0, 1, 40), np.zeros(40))
    assert 0 < never(0.5) < 0.05
    assert expected_calibration_error([0.2, 0.2, 0.8, 0.8], [0, 1, 1, 1]) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    with pytest.raises(RankerError):
        expected_calibration_error([], [])


def test_the_artefact_round_trips_without_pickle(fitted: Path) -> None:
    assert sorted(p.name for p in fitted.iterdir()) == sorted(
        [MANIFEST, "within_1km.txt", "within_25km.txt", "within_200km.txt", "within_750km.txt", "within_2500km.txt"]
    )
    for path in fitted.iterdir():
        path.read_text(encoding="utf-8")  # text only, no pickle
    assert (fitted / "within_25km.txt").read_text().startswith("tree")  # LightGBM's text model
    manifest = json.loads((fitted / MANIFEST).read_text())
    assert manifest["format"] == "g3-verify-ranker" and manifest["version"] == 1
    assert manifest["features"] == list(FEATURES)
    assert set(manifest["calibration"]) == {"25", "200", "750"}
    assert all(isinstance(v, float) for v in manifest["calibration"]["200"]["x"] + manifest["calibration"]["200"]["y"])
    loaded = Ranker.load(fitted)
    again = fit_ranker(training_pools(), seed=0, rounds=ROUNDS)  # deterministic: the same model
    for pool in synthetic_pools(5, seed=8) + synthetic_pools(3, seed=9, embeddings=False):
        np.testing.assert_array_equal(loaded.score(pool), again.score(pool))
        choice = loaded.choose(pool)
        assert choice == int(np.argmax(loaded.score(pool)))
        confidence = loaded.confidence(pool, choice)
        assert confidence == again.confidence(pool, choice) and list(confidence) == ["25", "200", "750"]
        assert 0 <= confidence["25"] <= 1
    with pytest.raises(RankerError, match="no index 99"):
        loaded.confidence(pool, 99)
    # a pool without embeddings is scored too: the cosine is missing, not zero, and the scores change
    (full,) = synthetic_pools(1, seed=8)
    bare = full.model_copy(update={"query_gps": None, "candidate_embeddings": None})
    assert np.isfinite(loaded.score(bare)).all() and not np.allclose(loaded.score(bare), loaded.score(full))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.update(features=[f for f in m["features"] if f != "cosine"]),
            r"feature schema.*missing \['cosine'\]",
        ),
        (lambda m: m.update(features=[*m["features"], "photo_brightness"]), r"unknown \['photo_brightness'\]"),
        (lambda m: m.update(features=m["features"][::-1]), "another order"),
        (lambda m: m.update(version=2), "format version 2"),
        (lambda m: m.update(format="something"), "not a g3 ranker manifest"),
    ],
)
def test_a_ranker_of_another_schema_is_refused(fitted: Path, tmp_path: Path, edit: object, message: str) -> None:
    folder = tmp_path / "edited"
    folder.mkdir()
    for path in fitted.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)  # type: ignore[operator]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RankerError, match=message):
        Ranker.load(folder)
    # the configuration that names it fails before any model loads (the aligner path does not even exist)
    with pytest.raises(RankerError, match=message):
        G3.from_config({"aligner": str(tmp_path / "no-aligner"), "index": str(tmp_path / "no-index"),
                        "lmm": {"backend": "none"}, "pipeline": {"mode": "retrieval"},
                        "verify": {"ranker": str(folder)}})  # fmt: skip


def test_missing_or_broken_artefacts_are_refused(fitted: Path, tmp_path: Path) -> None:
    with pytest.raises(RankerError, match=r"ranker\.json is missing"):
        Ranker.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in fitted.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "within_200km.txt").write_text("not a model")
    with pytest.raises(RankerError, match="200 km model"):
        Ranker.load(broken)
    with pytest.raises(RankerError, match="no 'truth'"):
        fit_ranker([Pool(id="x", candidates=[PoolCandidate(lat=1.0, lon=2.0, source="zero_shot")])])
    with pytest.raises(RankerError, match="no pools"):
        fit_ranker([])


@needs_photos
def test_verify_fit_accepts_the_pools_of_a_tiny_eval_run(tiny_assets: Path, tmp_path: Path) -> None:
    from g3.cli import app

    metadata = tmp_path / "photos.csv"
    metadata.write_text("IMG_ID,LAT,LON\n" + f"{PHOTOS[0].name},48.85,2.35\n{PHOTOS[1].name},35.68,139.69\n")
    config = tmp_path / "g3.yaml"
    config.write_text(yaml.safe_dump({"extends": "tiny", "cache_dir": str(tiny_assets.parent),
                                      "pipeline": {"mode": "retrieval", "describe": "none"}}))  # fmt: skip
    run = CliRunner().invoke(app, ["eval", "run", "--dataset", "generic", "--metadata", str(metadata), "--images",
                                   str(PHOTOS[0].parent), "--config", str(config), "--out", str(tmp_path / "run"),
                                   "--no-progress"])  # fmt: skip
    assert run.exit_code == 0, run.output
    pools = tmp_path / "run" / "pools.jsonl"
    assert len(list(read_pools(pools))) == 2
    fit = CliRunner().invoke(
        app, ["verify", "fit", str(pools), "--out", str(tmp_path / "ranker"), "--cv", "2", "--json"]
    )
    assert fit.exit_code == 0, fit.output
    summary = json.loads(fit.stdout)
    assert list(summary) == ["queries", "folds", "accuracy"] and summary["queries"] == 2 and summary["folds"] == 2
    assert list(summary["accuracy"]) == ["ranker", *RULES]
    assert all(list(row) == ["1", "25", "200", "750", "2500"] for row in summary["accuracy"].values())
    ranker = Ranker.load(tmp_path / "ranker")
    assert ranker.info["cross_validation"]["accuracy"] == summary["accuracy"]
    text = CliRunner().invoke(app, ["verify", "fit", str(pools), "--out", str(tmp_path / "again"), "--cv", "2"])
    assert text.exit_code == 0 and "cross-validation: 2 queries, 2 folds" in text.output
    assert "expected calibration error" in text.output and "wrote" in text.output
    too_many = CliRunner().invoke(app, ["verify", "fit", str(pools), "--out", str(tmp_path / "x"), "--cv", "3"])
    assert too_many.exit_code != 0 and isinstance(too_many.exception, RankerError)


@pytest.fixture(scope="module")
def parts(tiny_assets: Path) -> tuple[GeoAligner, GeoIndex]:
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    return aligner, GeoIndex.load(tiny_assets / "index", aligner=aligner)


def test_the_ranker_chooses_the_answer_and_states_its_confidence(
    parts: tuple[GeoAligner, GeoIndex], fitted: Path
) -> None:
    settings = {"aligner": "unused", "index": "unused", "lmm": {"backend": "vllm"}, "pipeline": {"describe": "none"}}
    plain = G3(G3Config.model_validate(settings), aligner=parts[0], index=parts[1],
               backend=BatchingBackend(ScriptedLMM()))  # fmt: skip
    config = G3Config.model_validate({**settings, "verify": {"ranker": str(fitted)}})
    with pytest.raises(Exception, match="no ranker was given"):
        G3(config, aligner=parts[0], index=parts[1], backend=BatchingBackend(ScriptedLMM()))
    ranker = Ranker.load(fitted)
    g3 = G3(config, aligner=parts[0], index=parts[1], backend=BatchingBackend(ScriptedLMM()), ranker=ranker)
    assert "rank" in g3.graph.get_graph().nodes and "rank" not in plain.graph.get_graph().nodes
    prediction, pool = g3.locate_batch([PHOTO], with_pools=True)[0]
    baseline = plain.locate(PHOTO)
    assert baseline.confidence is None
    # the pool is the same; the ranker's choice answers, its calibrated confidence comes with it
    scores = ranker.score(pool)
    choice = ranker.choose(pool)
    assert (prediction.lat, prediction.lon) == (pool.candidates[choice].lat, pool.candidates[choice].lon)
    assert prediction.confidence == pytest.approx(ranker.confidence(pool, choice))
    assert list(prediction.confidence) == ["25", "200", "750"]
    ordered = [c.components["ranker"] for c in prediction.candidates]
    assert ordered == sorted(ordered, reverse=True) and ordered[0] == pytest.approx(scores.max())
    assert "embedding" in prediction.candidates[0].components  # the fixed rule's components stay
    assert prediction.model_dump(mode="json")["confidence"] == prediction.confidence
    assert "rank" in prediction.timings


def test_a_pool_of_another_shape_than_the_training_pools_is_flagged(
    parts: tuple[GeoAligner, GeoIndex], fitted: Path, tmp_path: Path
) -> None:
    """A ranker fitted on retrieval-only pools without embeddings (no LMM answers, no G3 vectors) still scores
    a full G3 pool, but the prediction says that its choice and confidence were not calibrated for such pools;
    the mixed training set of `fitted` (some pools with embeddings, some without) flags nothing."""
    bare = [
        p.model_copy(update={"candidates": [c for c in p.candidates if c.source == "retrieval"]})
        for p in synthetic_pools(40, seed=5, embeddings=False)
    ]
    folder = fit_ranker(bare, seed=0, rounds=ROUNDS).save(tmp_path / "bare")
    ranker = Ranker.load(folder)  # the training pools' shape survives the round trip
    assert ranker.info["pool_parts"] == {"embeddings": 0.0, "generated": 0.0, "neighbours": 1.0}
    assert ranker.shape_warning(bare[0]) is None
    mixed = Ranker.load(fitted)
    full, no_vectors = synthetic_pools(1, seed=6)[0], synthetic_pools(1, seed=6, embeddings=False)[0]
    assert mixed.shape_warning(full) is None and mixed.shape_warning(no_vectors) is None
    settings = {"aligner": "unused", "index": "unused", "lmm": {"backend": "vllm"}, "pipeline": {"describe": "none"},
                "verify": {"ranker": str(folder)}}  # fmt: skip
    g3 = G3(G3Config.model_validate(settings), aligner=parts[0], index=parts[1],
            backend=BatchingBackend(ScriptedLMM()), ranker=ranker)  # fmt: skip
    prediction = g3.locate(PHOTO)
    (warning,) = [w for w in prediction.warnings if "pools of another shape" in w]
    assert "has G3's embeddings" in warning and "has LMM answers" in warning and "not calibrated" in warning
    assert prediction.confidence is not None  # still stated, with the warning beside it
