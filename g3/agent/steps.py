"""The steps of one query as plain functions; the LangGraph nodes are thin wrappers around them.

Every function can be used and tested without LangGraph: encode the photo, retrieve neighbours (or
search a GPS gallery), render the prompt ensemble, turn LMM answers into candidates, verify, describe.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from g3.data.geocode import NominatimGeocoder
from g3.data.query_image import QueryImage
from g3.errors import G3Error
from g3.index import GeoIndex, GPSGallery
from g3.lmm.base import LMMRequest, LMMResponse
from g3.lmm.parse import ParseStats, parse_answers
from g3.lmm.prompts import EnsembleConfig, build_requests
from g3.lmm.rerank import RERANK_TAG, RerankError, RerankOption, parse_choice, rerank_request
from g3.models import GeoAligner
from g3.neighbours import Neighbours
from g3.verify import Candidate, ScoredCandidate, VerifyConfig, verify
from g3.verify.rules import DEFAULT_CLUSTER_PARAMS, ClusterChoice, ClusterParams, cluster_select


@dataclass(frozen=True)
class QueryViews:
    """The photo's embeddings as float32 numpy: the three views, each ``(D,)``."""

    clip: np.ndarray
    text_aligned: np.ndarray
    gps_aligned: np.ndarray

    def key(self, geo_alignment: bool = True) -> np.ndarray:
        """Retrieval key ``(3·D,)``; without geo-alignment only the raw CLIP view (others zero), which makes
        inner-product search equal to plain CLIP retrieval."""
        if geo_alignment:
            return np.concatenate([self.clip, self.text_aligned, self.gps_aligned])
        return np.concatenate([self.clip, np.zeros_like(self.text_aligned), np.zeros_like(self.gps_aligned)])


@torch.inference_mode()
def encode_query(aligner: GeoAligner, image: QueryImage) -> QueryViews:
    """Embed the photo with the aligner."""
    views = aligner.encode_image([image.image])
    return QueryViews(*(v[0].float().cpu().numpy() for v in (views.clip, views.text_aligned, views.gps_aligned)))


def retrieve(
    index: GeoIndex, views: QueryViews, *, k_similar: int, k_dissimilar: int, geo_alignment: bool = True
) -> tuple[Neighbours, Neighbours]:
    """The ``k_similar`` most similar and ``k_dissimilar`` least similar database images."""
    result = index.search(views.key(geo_alignment), max(k_similar, 1), dissimilar=k_dissimilar > 0,
                          dissimilar_k=k_dissimilar or None)  # fmt: skip
    dissimilar = result.dissimilar.neighbours(0) if result.dissimilar is not None else Neighbours.empty()
    return result.similar.neighbours(0), dissimilar


def gallery_candidates(gallery: GPSGallery, views: QueryViews, k: int) -> list[Candidate]:
    """The ``k`` gallery points closest to the photo's GPS-aligned vector (GeoCLIP-style)."""
    found = gallery.search(views.gps_aligned[None, :], k)
    return [
        Candidate(float(found.lat[0, j]), float(found.lon[0, j]), "gallery", j, float(found.scores[0, j]))
        for j in range(found.rows.shape[1])
    ]


def render_requests(
    config: EnsembleConfig, image: QueryImage, similar: Neighbours, dissimilar: Neighbours
) -> list[LMMRequest]:
    """The prompt ensemble for the photo (one request per prompt)."""
    return build_requests(config, image.data, similar, dissimilar)


def retrieval_candidates(similar: Neighbours, count: int) -> list[Candidate]:
    """The top ``count`` retrieved coordinates as candidates (source ``"retrieval"``)."""
    return [
        Candidate(float(lat), float(lon), "retrieval", rank, float(score))
        for rank, ((lat, lon), score) in enumerate(
            zip(similar.coordinates[:count], similar.scores[:count], strict=True)
        )
    ]


@dataclass(frozen=True)
class CollectedCandidates:
    candidates: list[Candidate]
    parse: ParseStats
    warnings: list[str]


def collect_candidates(
    responses: Sequence[LMMResponse], similar: Neighbours, config: EnsembleConfig
) -> CollectedCandidates:
    """Parse every answer; keep the first ``candidates_per_prompt`` valid ones per prompt, add the top
    retrieved coordinates. Failed prompts and unparseable answers become warnings and counts, never points.

    With no usable answer at all, the retrieved coordinates stand alone (at least the top one), with a warning.
    """
    candidates: list[Candidate] = []
    stats = ParseStats()
    warnings = [f"prompt {r.tag} failed: {r.error}" for r in responses if not r.ok]
    for response in sorted(responses, key=lambda r: r.tag):
        parsed, prompt_stats = parse_answers(response.texts)
        stats = stats + prompt_stats
        candidates.extend(Candidate(p.lat, p.lon, response.tag, i) for i, p in config.kept_answers(parsed))
    if stats.unparseable:
        warnings.append(f"{stats.unparseable} of {stats.answers} LMM answers could not be parsed and were dropped")
    if not candidates:
        warnings.append("no usable LMM answer: the answer comes from retrieval only")
    retrieved = retrieval_candidates(similar, config.retrieved_count(answers=bool(candidates)))
    return CollectedCandidates(candidates + retrieved, stats, warnings)


def verify_candidates(
    candidates: Sequence[Candidate],
    views: QueryViews,
    aligner: GeoAligner,
    similar: Neighbours,
    config: VerifyConfig,
) -> list[ScoredCandidate]:
    """G3's geo-verification of the candidates against the photo's GPS-aligned vector (+ consensus, …)."""
    if not candidates:
        raise G3Error("no candidate location to verify (empty index and no LMM answer)")
    neighbours = similar.coordinates if len(similar.coordinates) else None
    return verify(candidates, query_gps=views.gps_aligned, aligner=aligner, neighbours=neighbours, config=config)


@dataclass(frozen=True)
class Verified:
    """The verify step's result: the candidates chosen from (the pool: a rule may add the point it answers)
    and all of them ranked, best first (``rank`` 0 is the answer)."""

    candidates: list[Candidate]
    ranked: list[ScoredCandidate]


def _answer_first(ranked: Sequence[ScoredCandidate], answer: ScoredCandidate) -> list[ScoredCandidate]:
    """``answer`` at rank 0, then the others in their order, renumbered."""
    rest = [s for s in ranked if s is not answer]
    return [ScoredCandidate(s.candidate, s.score, s.components, rank) for rank, s in enumerate([answer, *rest])]


def cluster_candidates(
    candidates: Sequence[Candidate],
    views: QueryViews,
    aligner: GeoAligner,
    similar: Neighbours,
    config: VerifyConfig,
    params: ClusterParams = DEFAULT_CLUSTER_PARAMS,
) -> Verified:
    """``verify.mode: cluster``: the densest-cluster rule (`g3.verify.rules.cluster_select`) chooses the answer.

    Retrieved candidates take part with their rank (gallery points as generated ones), the similar
    neighbours as support. When the rule snaps to a retrieved photo that is not a candidate, that photo joins
    the candidates (source ``"retrieval"``, its rank and similarity), so the answer is always in the pool.
    Every candidate keeps its fused score and components (see `verify_candidates`) plus
    ``components["density"]``; the answer comes first, the others in fused order.
    """
    if not candidates:
        raise G3Error("no candidate location to verify (empty index and no LMM answer)")
    pool = list(candidates)
    neighbours = similar.coordinates if len(similar.coordinates) else None

    def select() -> ClusterChoice:
        # a gallery point's rank r is not neighbour r: gallery candidates count as generated ones
        ranks = [c.sample if c.source == "retrieval" else None for c in pool]
        return cluster_select([[c.lat, c.lon] for c in pool], ranks=ranks, neighbours=neighbours, params=params)

    choice = select()
    if choice.candidate is None:
        assert choice.neighbour is not None  # the rule answers a candidate or a retrieved photo
        rank = choice.neighbour
        lat, lon = similar.coordinates[rank]
        pool.append(Candidate(float(lat), float(lon), "retrieval", rank, float(similar.scores[rank])))
        choice = select()  # the same answer, now a candidate (a retrieval candidate is its neighbour's duplicate)
    assert choice.candidate is not None
    row = {id(c): i for i, c in enumerate(pool)}  # verify keeps the candidate objects
    ranked = [
        ScoredCandidate(s.candidate, s.score, {**s.components, "density": float(choice.density[row[id(s.candidate)]])},
                        s.rank)
        for s in verify_candidates(pool, views, aligner, similar, config)
    ]  # fmt: skip
    answer = next(s for s in ranked if row[id(s.candidate)] == choice.candidate)
    return Verified(pool, _answer_first(ranked, answer))


def rerank_shown(ranked: Sequence[ScoredCandidate], count: int) -> list[ScoredCandidate]:
    """The candidates an LMM rerank shows: the best ``count`` distinct locations (to 4 decimals, as the prompt
    writes them) of the ranking, best first."""
    shown: list[ScoredCandidate] = []
    seen: set[tuple[float, float]] = set()
    for s in ranked:
        key = (round(s.candidate.lat, 4), round(s.candidate.lon, 4))
        if key not in seen:
            seen.add(key)
            shown.append(s)
        if len(shown) == count:
            break
    return shown


def rerank_rendered(
    image: QueryImage, shown: Sequence[ScoredCandidate], ensemble: EnsembleConfig, seed: int | None = None
) -> LMMRequest:
    """The rerank request (`g3.lmm.rerank`) for the shown candidates, with their offline place names."""
    from g3.data.geocode import nearest_places

    points = np.array([[s.candidate.lat, s.candidate.lon] for s in shown])
    found = nearest_places(points)
    places = [
        ", ".join(str(found[f][i]) for f in ("city", "state", "country") if found[f][i]) for i in range(len(shown))
    ]
    options = [RerankOption(s.candidate.lat, s.candidate.lon, place) for s, place in zip(shown, places, strict=True)]
    return rerank_request(image.data, options, prompt_dir=ensemble.prompt_dir,
                          structured=ensemble.structured_output, seed=seed)  # fmt: skip


@dataclass(frozen=True)
class Reranked:
    """The LMM rerank's outcome: the pool and ranking after it, the LMM's response, and why it failed (None: it
    chose)."""

    candidates: list[Candidate]
    ranked: list[ScoredCandidate]
    response: LMMResponse
    error: str | None = None


def apply_rerank(
    candidates: Sequence[Candidate],
    ranked: Sequence[ScoredCandidate],
    shown: Sequence[ScoredCandidate],
    response: LMMResponse,
) -> Reranked:
    """Let the rerank's answer decide: the chosen location joins the candidates as source ``"lmm_rerank"``
    (``sample``: its row among the shown) and becomes the answer (rank 0, with the chosen candidate's score and
    components); the others follow in their order. A failed request or an answer that names no shown candidate
    changes nothing and is reported in ``error`` (the caller turns it into a degradation, never silence)."""
    if not response.ok:
        return Reranked(list(candidates), list(ranked), response, f"the request failed: {response.error}")
    try:
        if not response.texts:
            raise RerankError("the LMM returned no answer")
        row = parse_choice(response.texts[0], len(shown))
    except RerankError as exc:
        return Reranked(list(candidates), list(ranked), response, str(exc))
    chosen = shown[row]
    picked = Candidate(chosen.candidate.lat, chosen.candidate.lon, RERANK_TAG, row)
    answer = ScoredCandidate(picked, chosen.score, dict(chosen.components), 0)
    return Reranked([*candidates, picked], _answer_first([answer, *ranked], answer), response)


def random_pick(candidates: Sequence[Candidate], image: QueryImage, seed: int) -> list[ScoredCandidate]:
    """The "without verification" ablation: a candidate chosen at random (seeded by the photo's bytes)."""
    if not candidates:
        raise G3Error("no candidate location to choose from")
    order = list(range(len(candidates)))
    random.Random(seed ^ zlib.crc32(image.data)).shuffle(order)
    return [
        ScoredCandidate(candidate=candidates[i], score=0.0, components={"random": float(rank == 0)}, rank=rank)
        for rank, i in enumerate(order)
    ]


def describe_location(lat: float, lon: float, geocoder: NominatimGeocoder | None = None) -> dict[str, str] | None:
    """City / state / country of a point: GeoNames offline (None when no place is within 50 km), or a
    Nominatim server through ``geocoder`` (rate-limited and cached on disk)."""
    from g3.data.geocode import nearest_places

    point = np.array([[lat, lon]])
    if geocoder is not None:
        row = geocoder.reverse(point).iloc[0].to_dict()
    else:
        row = {column: values[0] for column, values in nearest_places(point).items()}
    if not row["country"]:
        return None
    fields = ("city", "county", "state", "country", "country_code")
    address = {f: str(row[f]) for f in fields if row[f]}
    if np.isfinite(row["place_distance_km"]):
        address["distance_km"] = f"{float(row['place_distance_km']):.1f}"
    return address
