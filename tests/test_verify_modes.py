"""verify.mode on the real graph with the tiny models: ``cluster`` (the densest-cluster rule, snapping to a retrieved
photo), ``lmm_rerank`` (one more LMM request choosing among the top candidates, its choice a pool candidate; a
failed or unparseable rerank is a degradation) through a scripted LMM and the real transformers backend on the
tiny LLaVA; and ``g3 eval run --ranker``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA
from scripted import ScriptedLMM

from g3.agent import G3, G3Config
from g3.agent.steps import QueryViews, cluster_candidates
from g3.index import GeoIndex
from g3.lmm.base import LMMRequest, LMMResponse, Usage
from g3.lmm.batching import BatchingBackend
from g3.lmm.prompts import PromptError
from g3.lmm.rerank import RerankError, parse_choice, rerank_schema
from g3.models import GeoAligner
from g3.neighbours import Neighbours
from g3.verify import Candidate, VerifyConfig
from g3.verify.features import FEATURES, pool_features
from g3.verify.rules import cluster_select

PHOTOS = sorted((SHARED_DATA / "im2gps3k" / "images_cc_subset500").glob("*.jpg"))[:2]
needs_photos = pytest.mark.skipif(not PHOTOS, reason="the shared IM2GPS3k photos are not available")
PHOTO = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)


class Chooser(ScriptedLMM):
    """`ScriptedLMM` for the ensemble; answers the rerank request with ``answer`` (or raises) and keeps it."""

    def __init__(self, answer: str | None) -> None:
        super().__init__()
        self.answer = answer
        self.reranks: list[LMMRequest] = []

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        ensemble = [r for r in requests if r.tag != "lmm_rerank"]
        answers = iter(await super().agenerate(ensemble) if ensemble else [])
        out = []
        for r in requests:
            if r.tag != "lmm_rerank":
                out.append(next(answers))
                continue
            self.reranks.append(r)
            self.seen.append(r.tag)
            if self.answer is None:
                raise ConnectionError("the LMM server went away")
            out.append(LMMResponse(r.tag, (self.answer,), Usage(300, 5), 0.01))
        return out


@pytest.fixture(scope="module")
def parts(tiny_assets: Path) -> tuple[GeoAligner, GeoIndex]:
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    return aligner, GeoIndex.load(tiny_assets / "index", aligner=aligner)


def make_g3(parts: tuple[GeoAligner, GeoIndex], backend: object, **overrides: object) -> G3:
    config = G3Config.model_validate(
        {"aligner": "unused", "index": "unused", "lmm": {"backend": "vllm"}, "pipeline": {"describe": "none"},
         **overrides}
    )  # fmt: skip
    return G3(config, aligner=parts[0], index=parts[1], backend=BatchingBackend(backend))  # type: ignore[arg-type]


def test_parse_choice_accepts_only_a_shown_number() -> None:
    assert parse_choice('{"choice":3}', 5) == 2
    assert parse_choice('Sure.\n```json\n{"choice": 1}\n```', 5) == 0
    assert parse_choice('{"choice": 4} no, {"choice": 2}', 5) == 1  # the model's last word counts
    for text, problem in [
        ('{"choice": 6}', "chose 6, not a candidate number from 1 to 5"),
        ('{"choice": 0}', "chose 0"),
        ('{"choice": true}', "chose True"),
        ('{"choice": "2"}', "chose '2'"),
        ('{"choice": 2.0}', "chose 2.0"),
        ('{"latitude": 48.8, "longitude": 2.3}', "holds no JSON object"),
        ("the second one", "holds no JSON object"),
    ]:
        with pytest.raises(RerankError, match=problem):
            parse_choice(text, 5)
    schema = rerank_schema(4)
    assert schema["properties"]["choice"] == {"type": "integer", "minimum": 1, "maximum": 4}


def test_cluster_mode_snaps_to_a_retrieved_photo_that_was_no_candidate(parts: tuple[GeoAligner, GeoIndex]) -> None:
    aligner = parts[0]
    width = int(aligner.encode_gps([[0.0, 0.0]]).shape[1])
    gps = np.random.default_rng(0).normal(size=width).astype(np.float32)
    views = QueryViews(clip=gps, text_aligned=gps, gps_aligned=gps)
    paris = [(48.8566, 2.3522), (48.8600, 2.3400), (48.8500, 2.3600)]
    # the top retrieved photo is in Tokyo, alone; the next three are in Paris, where the LMM's answers gather
    similar = Neighbours(np.array([(35.68, 139.69), (48.8584, 2.2945), *paris[:2]]), np.array([0.9, 0.8, 0.7, 0.6]))
    candidates = [Candidate(lat, lon, "rag_5", i) for i, (lat, lon) in enumerate(paris)]
    candidates.append(Candidate(35.68, 139.69, "retrieval", 0, 0.9))
    verified = cluster_candidates(candidates, views, aligner, similar, VerifyConfig(mode="cluster"))
    answer = verified.ranked[0]
    assert (answer.candidate.lat, answer.candidate.lon) == (48.8584, 2.2945)  # the best-ranked photo in Paris
    assert answer.candidate.source == "retrieval" and answer.candidate.sample == 1
    assert answer.candidate.retrieval_score == pytest.approx(0.8)
    assert verified.candidates == [*candidates, answer.candidate]  # the answer joined the pool
    assert [s.rank for s in verified.ranked] == list(range(5)) and {s.candidate for s in verified.ranked} == set(
        verified.candidates
    )
    assert all(set(s.components) == {"embedding", "consensus", "retrieval", "density"} for s in verified.ranked)
    assert answer.components["density"] > verified.ranked[-1].components["density"] or len(verified.ranked) == 1


@needs_photos
def test_cluster_mode_in_the_graph_answers_as_cluster_select(parts: tuple[GeoAligner, GeoIndex]) -> None:
    g3 = make_g3(parts, ScriptedLMM(), verify={"mode": "cluster"})
    fused = make_g3(parts, ScriptedLMM())
    for photo in PHOTOS:
        prediction, pool = g3.locate_batch([photo], with_pools=True)[0]
        coords = [[c.lat, c.lon] for c in pool.candidates]
        expected = cluster_select(coords, ranks=[c.rank for c in pool.candidates], neighbours=pool.neighbours)
        assert expected.candidate is not None  # the answer is always in the pool
        assert (prediction.lat, prediction.lon) == tuple(coords[expected.candidate])
        assert "density" in prediction.candidates[0].components and not prediction.degraded
        # the fused rule answers by embedding similarity: the same candidates, another order
        other = fused.locate(photo)
        assert {(c.lat, c.lon) for c in other.candidates} <= {(c.lat, c.lon) for c in prediction.candidates}


def test_rerank_choice_decides_and_joins_the_pool(parts: tuple[GeoAligner, GeoIndex]) -> None:
    lmm = Chooser('{"choice":2}')
    g3 = make_g3(parts, lmm, verify={"mode": "lmm_rerank", "rerank_candidates": 3})
    assert "rerank" in g3.graph.get_graph().nodes
    prediction, pool = g3.locate_batch([PHOTO], with_pools=True)[0]
    fused = make_g3(parts, ScriptedLMM()).locate(PHOTO)
    (request,) = lmm.reranks
    # the LMM sees the fused ranking's 3 best distinct places, numbered, with place names, and a schema for 1..3
    shown: list[tuple[float, float]] = []
    for c in fused.candidates:
        if (round(c.lat, 4), round(c.lon, 4)) not in [(round(a, 4), round(b, 4)) for a, b in shown]:
            shown.append((c.lat, c.lon))
    shown = shown[:3]
    for number, (lat, lon) in enumerate(shown, 1):
        assert f"{number}. ({lat:.4f}, {lon:.4f})" in request.prompt
    assert "Paris" in request.prompt or "Tokyo" in request.prompt  # ScriptedLMM answers there
    assert request.json_schema == rerank_schema(3) and request.temperature == 0 and request.n == 1
    assert (prediction.lat, prediction.lon) == shown[1] and prediction.source == "lmm_rerank"
    assert prediction.candidates[0].source == "lmm_rerank" and len(prediction.candidates) == len(fused.candidates) + 1
    assert prediction.raw_answers["lmm_rerank"] == ['{"choice":2}'] and not prediction.degraded
    assert prediction.usage.prompt_tokens == fused.usage.prompt_tokens + 300
    assert "rerank" in prediction.timings
    (picked,) = [c for c in pool.candidates if c.source == "lmm_rerank"]
    assert (picked.lat, picked.lon, picked.sample) == (*shown[1], 1)
    assert pool.candidate_embeddings is not None and len(pool.candidate_embeddings) == len(pool.candidates)
    # the choice is a feature of the learned ranker: candidates at the chosen place agree with it
    agrees = pool_features(pool)[:, FEATURES.index("agrees_lmm_rerank")]
    at_choice = [c.lat == picked.lat and c.lon == picked.lon for c in pool.candidates]
    assert all(agrees[at_choice] == 1) and np.isfinite(agrees).all()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [('{"latitude": 48.8, "longitude": 2.3}', "holds no JSON object"), ('{"choice":9}', "chose 9"),
     (None, "ConnectionError: the LMM server went away")],
)  # fmt: skip
def test_a_failed_rerank_is_a_degradation_and_the_fused_answer_stands(
    parts: tuple[GeoAligner, GeoIndex], answer: str | None, problem: str
) -> None:
    prediction = make_g3(parts, Chooser(answer), verify={"mode": "lmm_rerank"}).locate(PHOTO)
    fused = make_g3(parts, ScriptedLMM()).locate(PHOTO)
    assert (prediction.lat, prediction.lon, prediction.source) == (fused.lat, fused.lon, fused.source)
    assert [c.source for c in prediction.candidates] == [c.source for c in fused.candidates]  # no lmm_rerank one
    (degradation,) = prediction.degradations
    assert prediction.degraded and degradation.reason == "rerank_failed" and problem in degradation.message
    assert "fused rule" in degradation.message and any("LMM rerank failed" in w for w in prediction.warnings)
    assert json.loads(prediction.model_dump_json())["degraded"] is True


def test_rerank_in_retrieval_mode_and_config_checks(parts: tuple[GeoAligner, GeoIndex]) -> None:
    lmm = Chooser('{"choice":1}')
    g3 = make_g3(parts, lmm, pipeline={"mode": "retrieval", "describe": "none"},
                 ensemble={"retrieved_candidates": 4}, verify={"mode": "lmm_rerank"})  # fmt: skip
    prediction = g3.locate(PHOTO)
    assert lmm.seen == ["lmm_rerank"]  # no prompt ensemble in retrieval mode: the rerank only
    assert prediction.source == "lmm_rerank" and (prediction.lat, prediction.lon) == (
        prediction.candidates[1].lat,
        prediction.candidates[1].lon,
    )
    with pytest.raises(ValueError, match="'lmm_rerank' needs an LMM backend"):
        G3Config.model_validate({"lmm": {"backend": "none"}, "pipeline": {"mode": "retrieval"},
                                 "verify": {"mode": "lmm_rerank"}})  # fmt: skip
    with pytest.raises(ValueError, match="rerank_candidates"):
        VerifyConfig(mode="lmm_rerank", rerank_candidates=0)


@needs_photos
def test_rerank_with_the_real_transformers_backend(tiny_assets: Path, tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    config = G3Config.load("tiny").model_dump(mode="json")
    ensemble = {**config["ensemble"], "retrieved_candidates": 5}
    config.update(cache_dir=str(tiny_assets.parent), pipeline={"mode": "retrieval", "describe": "none"},
                  verify={"mode": "lmm_rerank"}, ensemble=ensemble)  # fmt: skip
    with G3.from_config(config) as g3:
        prediction = g3.locate(PHOTOS[0])
    # the tiny LLaVA's answer is random, but constrained to the schema: it always names a shown candidate
    assert not prediction.degraded and prediction.source == "lmm_rerank", prediction.degradations
    (text,) = prediction.raw_answers["lmm_rerank"]
    assert 1 <= json.loads(text)["choice"] <= 5
    # a prompt folder without rerank.j2 is refused when the pipeline is built, not at the first photo
    config["ensemble"]["prompt_dir"] = str(tmp_path / "prompts")
    with pytest.raises(PromptError, match=r"'rerank\.j2' not found"):
        G3.from_config(config)


@needs_photos
def test_eval_run_with_a_ranker_fitted_on_another_run(tiny_assets: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from g3.cli import app
    from g3.evaluation.runner import PREDICTIONS, read_predictions
    from g3.verify import read_pools
    from g3.verify.ranker import fit_ranker

    metadata = tmp_path / "photos.csv"
    metadata.write_text("IMG_ID,LAT,LON\n" + "".join(f"{p.name},48.85,2.35\n" for p in PHOTOS))
    config = tmp_path / "g3.yaml"
    config.write_text(yaml.safe_dump({"extends": "tiny", "cache_dir": str(tiny_assets.parent),
                                      "pipeline": {"mode": "retrieval", "describe": "none"}}))  # fmt: skip
    ranker = tmp_path / "ranker"
    args = ["eval", "run", "--dataset", "generic", "--metadata", str(metadata), "--images", str(PHOTOS[0].parent),
            "--config", str(config), "--no-progress"]  # fmt: skip
    missing = CliRunner(env={"COLUMNS": "300"}).invoke(
        app, [*args, "--out", str(tmp_path / "a"), "--ranker", str(tmp_path / "nope")]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
    # a real ranker, fitted on a first run's pools (as one fits on a validation split)
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "first")])
    assert first.exit_code == 0, first.output
    pools = list(read_pools(tmp_path / "first" / "pools.jsonl"))
    copies = [p.model_copy(update={"id": f"{p.id}#{i}"}) for i in range(4) for p in pools]  # 8 queries to fold
    fit_ranker(copies).save(ranker)
    run = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--ranker", str(ranker)])
    assert run.exit_code == 0, run.output
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["verify"]["ranker"] == str(ranker.resolve())
    assert yaml.safe_load((tmp_path / "first" / "config.yaml").read_text())["verify"].get("ranker") is None
    # the ranker chose: every answer carries its calibrated confidence (none without it)
    for name, expected in (("run", True), ("first", False)):
        records = read_predictions(tmp_path / name / PREDICTIONS)
        assert len(records) == len(PHOTOS) and all((r["confidence"] is not None) == expected for r in records)
    assert all(set(r["confidence"]) == {"25", "200", "750"} for r in read_predictions(tmp_path / "run" / PREDICTIONS))


class GarbageThenChoose(Chooser):
    """Every ensemble answer is unparseable text; the rerank answers ``{"choice": 1}``."""

    def __init__(self) -> None:
        super().__init__('{"choice": 1}')
        self.behaviour = "garbage"


def test_a_rerank_pick_is_not_an_lmm_answer_for_the_degradation_check(parts: tuple[GeoAligner, GeoIndex]) -> None:
    """Full mode with lmm_rerank: when no answer of the ensemble parses, the rerank's pick among the retrieved
    places (source lmm_rerank) must not hide it — the prediction is degraded as no_parseable_answer."""
    g3 = make_g3(parts, GarbageThenChoose(), verify={"mode": "lmm_rerank"})
    prediction = g3.locate(PHOTO)
    assert prediction.source == "lmm_rerank"  # the rerank did choose
    assert "no_parseable_answer" in [d.reason for d in prediction.degradations] and prediction.degraded
