"""The learned verification ranker: LightGBM classifiers of "the candidate lies within r km", calibrated.

For each radius of `RADII_KM` a LightGBM binary classifier learns P(candidate within r km of the truth)
from the candidate features (`g3.verify.features`) of labelled pools. A pool's answer is the candidate
with the highest mean probability over the radii (the expected share of the five thresholds it meets, the
measure of the accuracy tables). The confidence of an answer at 25 / 200 / 750 km is the classifier's
probability passed through an isotonic map (`g3.verify.calibration`) fitted on *out-of-fold* choices:
the candidate that scored highest is optimistic about itself, and only choices made by models that did
not see the pool show by how much.

`cross_validate` measures it: grouped K-fold by query id (all pools of one id in one fold), the ranker fitted
on the other folds, and every built-in rule of `g3.verify.baselines.RULES` answering the same queries.

The artefact (`Ranker.save`) is a folder: LightGBM's text model per radius and ``ranker.json`` (format
version, feature schema, radii, calibration thresholds, training summary). No pickle. `Ranker.load`
refuses a folder whose format or feature schema differs from this g3's (`RankerError`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from g3.errors import MissingDependencyError, RankerError
from g3.geo import haversine_km
from g3.io import atomic_folder, atomic_write_json
from g3.verify.baselines import RULES, rule_answers
from g3.verify.calibration import Isotonic, expected_calibration_error, fit_isotonic
from g3.verify.features import FEATURES, pool_features
from g3.verify.pools import RANKED_SOURCES, Pool

log = logging.getLogger(__name__)

#: Radii (km) of the classifiers; the answer maximises the mean probability over them.
RADII_KM = (1, 25, 200, 750, 2500)
#: Radii (km) of the calibrated confidence (`GeoPrediction.confidence` keys).
CONFIDENCE_RADII_KM = (25, 200, 750)
#: Thresholds (km) of the accuracy tables.
THRESHOLDS_KM = (1, 25, 200, 750, 2500)
#: ``ranker.json``'s format name and version.
FORMAT = "g3-verify-ranker"
FORMAT_VERSION = 1
MANIFEST = "ranker.json"
#: The ranker's own name in accuracy tables (beside the names of `RULES`).
RANKER = "ranker"

#: LightGBM settings (small trees, shrinkage; deterministic for a given seed).
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "max_bin": 63,
    "lambda_l2": 1.0,
    "feature_fraction": 0.9,
    "deterministic": True,
    "force_col_wise": True,
    # one thread: the data sets are small, and OpenMP threads spin badly on a busy machine (ten times slower)
    "num_threads": 1,
    "verbose": -1,
}
DEFAULT_ROUNDS = 100


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as exc:  # a dependency of g3; missing only in a broken install
        raise MissingDependencyError("the verification ranker needs lightgbm: pip install 'lightgbm>=4.5'") from exc
    return lightgbm


#: What a pool may or may not hold; the ranker records the share of its training pools holding each.
POOL_PARTS: dict[str, str] = {
    "embeddings": "G3's embeddings (query_gps, candidate_embeddings)",
    "generated": "LMM answers (generated candidates)",
    "neighbours": "retrieved neighbours",
}


def pool_parts(pool: Pool) -> dict[str, bool]:
    """Which of `POOL_PARTS` ``pool`` holds."""
    return {
        "embeddings": pool.query_gps is not None,
        "generated": any(c.source not in RANKED_SOURCES for c in pool.candidates),
        "neighbours": bool(pool.neighbours),
    }


@dataclass(frozen=True)
class _Stacked:
    """Features of many pools stacked: ``x`` (rows, F), each pool's row range, distances to the truth."""

    x: np.ndarray
    starts: np.ndarray  # (P + 1,) row offsets
    distance_km: np.ndarray | None  # (rows,), None for unlabelled pools

    def rows(self, i: int) -> slice:
        return slice(int(self.starts[i]), int(self.starts[i + 1]))


def _stack(pools: Sequence[Pool], *, labelled: bool) -> _Stacked:
    blocks = [pool_features(p) for p in pools]
    starts = np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64)
    x = np.concatenate(blocks) if blocks else np.empty((0, len(FEATURES)))
    distance = None
    if labelled:
        parts: list[np.ndarray] = []
        for pool in pools:
            if pool.truth is None:
                raise RankerError(f"pool {pool.id!r} has no 'truth': fitting and cross-validation need labelled pools")
            coords = np.array([[c.lat, c.lon] for c in pool.candidates], dtype=np.float64)
            truth = np.array(pool.truth, dtype=np.float64)
            parts.append(haversine_km(coords[:, 0], coords[:, 1], truth[0], truth[1]))
        distance = np.concatenate(parts) if parts else np.empty(0)
    return _Stacked(x, starts, distance)


def _argmax_per_pool(values: np.ndarray, stacked: _Stacked) -> np.ndarray:
    """Row (within its pool) of each pool's highest value, the first on ties."""
    return np.array([int(np.argmax(values[stacked.rows(i)])) for i in range(len(stacked.starts) - 1)], dtype=np.int64)


@dataclass
class Ranker:
    """A fitted ranker: one LightGBM booster per radius of `RADII_KM` and the calibration per confidence radius."""

    boosters: dict[int, Any]
    calibration: dict[int, Isotonic]
    info: dict[str, Any] = field(default_factory=dict)

    # -- scoring ----------------------------------------------------------------------------------------

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """Raw P(within r) ``(rows, len(RADII_KM))``."""
        if len(x) == 0:
            return np.empty((0, len(RADII_KM)))
        return np.stack([np.asarray(self.boosters[r].predict(x), dtype=np.float64) for r in RADII_KM], axis=1)

    def probabilities(self, pool: Pool) -> np.ndarray:
        """Each candidate's raw (uncalibrated) P(within r km) ``(n, len(RADII_KM))``."""
        return self._probabilities(pool_features(pool))

    def score(self, pool: Pool) -> np.ndarray:
        """Each candidate's score ``(n,)``: the mean over `RADII_KM` of its raw P(within r km); the answer is
        the highest."""
        return self.probabilities(pool).mean(axis=1)  # type: ignore[no-any-return]

    def choose(self, pool: Pool) -> int:
        """Index of the candidate the ranker answers (the first on ties)."""
        return int(np.argmax(self.score(pool)))

    def calibrated(self, raw: np.ndarray) -> dict[str, float]:
        """Calibrated confidence keyed ``"25"``, ``"200"``, ``"750"`` from one candidate's raw probabilities
        ``(len(RADII_KM),)`` (a row of `probabilities`)."""
        return {str(r): float(self.calibration[r](raw[RADII_KM.index(r)])) for r in CONFIDENCE_RADII_KM}

    def shape_warning(self, pool: Pool) -> str | None:
        """A sentence when ``pool`` holds a part (`POOL_PARTS`) that none of the training pools held, or lacks
        one that all of them held: the ranker's choice and confidence are then outside what it was fitted
        and calibrated on. None when it matches (or the artefact predates the record)."""
        trained = self.info.get("pool_parts")
        if not isinstance(trained, dict):
            return None
        odd = []
        for part, has in pool_parts(pool).items():
            share = trained.get(part)
            if isinstance(share, int | float) and ((has and share == 0) or (not has and share == 1)):
                odd.append(f"{'has' if has else 'lacks'} {POOL_PARTS[part]}, which {'no' if has else 'every'} "
                           "training pool had")  # fmt: skip
        if not odd:
            return None
        return (
            f"the verification ranker was fitted on pools of another shape: this query {'; '.join(odd)}, so its "
            "choice and confidence are not calibrated for it (fit the ranker on pools like these: g3 verify fit)"
        )

    def confidence(self, pool: Pool, index: int) -> dict[str, float]:
        """Calibrated P(candidate ``index`` lies within r km) for r in `CONFIDENCE_RADII_KM`, keyed ``"25"``,
        ``"200"``, ``"750"``. Calibrated for the candidate the ranker chooses (`choose`); for another one
        it is the same map applied to that candidate's raw probabilities."""
        if not 0 <= index < len(pool.candidates):
            raise RankerError(f"pool {pool.id!r} has {len(pool.candidates)} candidates; there is no index {index}")
        return self.calibrated(self.probabilities(pool)[index])

    # -- the artefact -----------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the artefact folder atomically (a reader never sees half of it); returns the folder."""
        target = Path(folder)
        models = {str(r): f"within_{r}km.txt" for r in RADII_KM}
        with atomic_folder(target) as staging:
            for r in RADII_KM:
                self.boosters[r].save_model(str(staging / models[str(r)]))
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "features": list(FEATURES),
                "radii_km": list(RADII_KM),
                "models": models,
                "choice": "argmax over candidates of the mean over radii_km of P(within r km)",
                "confidence_radii_km": list(CONFIDENCE_RADII_KM),
                "calibration": {str(r): self.calibration[r].to_json() for r in CONFIDENCE_RADII_KM},
                **self.info,
            }
            atomic_write_json(staging / MANIFEST, manifest)
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Ranker:
        """Read an artefact folder written by `save` (``g3 verify fit``).

        Raises:
            RankerError: a missing or unreadable folder or file, another format or version, or a feature
                schema that differs from this g3's `FEATURES` (the message names the differences).
        """
        root = Path(folder)
        path = root / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RankerError(
                f"{root} is not a ranker folder: {MANIFEST} is missing (write one with g3 verify fit)"
            ) from None
        except (OSError, ValueError) as exc:
            raise RankerError(f"cannot read {path}: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise RankerError(f"{path} is not a g3 ranker manifest (format {FORMAT!r} expected)")
        if manifest.get("version") != FORMAT_VERSION:
            raise RankerError(
                f"{path} has ranker format version {manifest.get('version')!r}; this g3 reads version "
                f"{FORMAT_VERSION}: refit with g3 verify fit"
            )
        _check_schema(manifest.get("features"), path)
        if manifest.get("radii_km") != list(RADII_KM) or manifest.get("confidence_radii_km") != list(
            CONFIDENCE_RADII_KM
        ):
            raise RankerError(
                f"{path} uses radii {manifest.get('radii_km')} / {manifest.get('confidence_radii_km')} km; this g3 "
                f"uses {list(RADII_KM)} / {list(CONFIDENCE_RADII_KM)}: refit with g3 verify fit"
            )
        lgb = _lightgbm()
        boosters = {}
        for r in RADII_KM:
            model = root / str(manifest.get("models", {}).get(str(r), f"within_{r}km.txt"))
            try:
                booster = lgb.Booster(model_file=str(model))
            except Exception as exc:  # LightGBM raises its own LightGBMError (or OSError) for a bad file
                raise RankerError(f"cannot load the {r} km model {model}: {exc}") from exc
            if list(booster.feature_name()) != list(FEATURES):
                raise RankerError(f"{model} was trained on other features than {path} lists; refit with g3 verify fit")
            boosters[r] = booster
        calibration = {}
        for r in CONFIDENCE_RADII_KM:
            try:
                calibration[r] = Isotonic.from_json(manifest["calibration"][str(r)])
            except (KeyError, TypeError) as exc:
                raise RankerError(f"{path} has no calibration for {r} km; refit with g3 verify fit") from exc
        skip = {"format", "version", "features", "radii_km", "models", "choice", "confidence_radii_km", "calibration"}
        return cls(boosters, calibration, {k: v for k, v in manifest.items() if k not in skip})


def _check_schema(features: object, path: Path) -> None:
    if not isinstance(features, list) or features != list(FEATURES):
        given = features if isinstance(features, list) else []
        missing = [f for f in FEATURES if f not in given]
        extra = [f for f in given if f not in FEATURES]
        detail = f"missing {missing}" if missing else ""
        detail += ("; " if detail and extra else "") + (f"unknown {extra}" if extra else "")
        raise RankerError(
            f"{path} was fitted on another feature schema than this g3 computes ({detail or 'another order'}); "
            "refit the ranker with this g3: g3 verify fit POOLS.jsonl --out DIR"
        )


# -- fitting ------------------------------------------------------------------------------------------------


def _train(stacked: _Stacked, rows: np.ndarray | None, seed: int, rounds: int) -> dict[int, Any]:
    lgb = _lightgbm()
    assert stacked.distance_km is not None
    x = stacked.x if rows is None else stacked.x[rows]
    distance = stacked.distance_km if rows is None else stacked.distance_km[rows]
    params = {**DEFAULT_PARAMS, "seed": seed}
    boosters = {}
    for r in RADII_KM:
        data = lgb.Dataset(x, label=(distance <= r).astype(np.float64), feature_name=list(FEATURES),
                           free_raw_data=True)  # fmt: skip
        boosters[r] = lgb.train(params, data, num_boost_round=rounds)
    return boosters


def group_folds(ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number ``(N,)`` of each query: the distinct ids shuffled (seeded) and dealt round-robin, so all
    pools of one id share a fold. Raises `RankerError` when there are fewer distinct ids than folds."""
    distinct = sorted(set(ids))
    if folds < 2:
        raise RankerError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(distinct) < folds:
        raise RankerError(
            f"cross-validation with {folds} folds needs at least {folds} distinct queries, got {len(distinct)}"
        )
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[j]: k % folds for k, j in enumerate(order.tolist())}
    return np.array([fold_of[i] for i in ids], dtype=np.int64)


def _pool_rows(stacked: _Stacked, pools: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(stacked.starts[i], stacked.starts[i + 1]) for i in pools])


def _substack(stacked: _Stacked, pools: np.ndarray) -> _Stacked:
    rows = _pool_rows(stacked, pools)
    sizes = np.diff(stacked.starts)[pools]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    distance = None if stacked.distance_km is None else stacked.distance_km[rows]
    return _Stacked(stacked.x[rows], starts, distance)


def _chosen_raw(boosters: dict[int, Any], stacked: _Stacked) -> tuple[np.ndarray, np.ndarray]:
    """Each pool's chosen row (within the pool) and that row's raw probabilities ``(P, len(RADII_KM))``."""
    probs = Ranker(boosters, {})._probabilities(stacked.x)
    chosen = _argmax_per_pool(probs.mean(axis=1), stacked)
    return chosen, probs[stacked.starts[:-1] + chosen]


def _fit(
    stacked: _Stacked, ids: Sequence[str], seed: int, calibration_folds: int, rounds: int, parts: dict[str, float]
) -> Ranker:
    n = len(stacked.starts) - 1
    k = min(calibration_folds, len(set(ids)))
    raw = np.empty((n, len(RADII_KM)))
    hits = np.empty((n, len(RADII_KM)), dtype=bool)
    assert stacked.distance_km is not None
    if k >= 2:
        fold = group_folds(ids, k, seed)
        for f in range(k):
            train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            sub = _substack(stacked, test)
            chosen, raw[test] = _chosen_raw(_train(stacked, _pool_rows(stacked, train), seed, rounds), sub)
            assert sub.distance_km is not None
            hits[test] = sub.distance_km[sub.starts[:-1] + chosen][:, None] <= np.array(RADII_KM)[None, :]
        calibrated_on = f"out-of-fold choices ({k} folds by query)"
    else:  # one distinct query (or calibration_folds < 2): nothing is out of fold (stated in ranker.json)
        calibrated_on = "in-sample choices (fewer than 2 distinct queries or calibration folds)"
    boosters = _train(stacked, None, seed, rounds)
    if k < 2:
        chosen, raw = _chosen_raw(boosters, stacked)
        hits = stacked.distance_km[stacked.starts[:-1] + chosen][:, None] <= np.array(RADII_KM)[None, :]
    calibration = {r: fit_isotonic(raw[:, RADII_KM.index(r)], hits[:, RADII_KM.index(r)]) for r in CONFIDENCE_RADII_KM}
    info = {
        "training": {
            "queries": n,
            "candidates": len(stacked.x),
            "seed": seed,
            "rounds": rounds,
            "params": DEFAULT_PARAMS,
            "calibrated_on": calibrated_on,
            "lightgbm": _lightgbm().__version__,
        },
        "pool_parts": parts,
    }
    return Ranker(boosters, calibration, info)


def _parts_share(pools: Sequence[Pool]) -> dict[str, float]:
    """The share of ``pools`` holding each of `POOL_PARTS`."""
    held = [pool_parts(p) for p in pools]
    return {part: sum(h[part] for h in held) / len(held) for part in POOL_PARTS}


def fit_ranker(
    pools: Sequence[Pool], *, seed: int = 0, calibration_folds: int = 3, rounds: int = DEFAULT_ROUNDS
) -> Ranker:
    """Fit the ranker on labelled pools (each needs ``truth``): the calibration from out-of-fold choices
    (``calibration_folds`` folds grouped by query id), then the classifiers on all pools.

    Raises:
        RankerError: no pools, or a pool without truth.
    """
    if not pools:
        raise RankerError("no pools to fit the ranker on; give a pools.jsonl with labelled queries")
    parts = _parts_share(pools)
    return _fit(_stack(pools, labelled=True), [p.id for p in pools], seed, calibration_folds, rounds, parts)


# -- cross-validation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CVResult:
    """Out-of-fold results of `cross_validate`.

    Attributes:
        queries: number of pools; folds: number of folds; fold: ``(N,)`` each pool's fold.
        accuracy: METHOD → {"1", "25", "200", "750", "2500"} → share of queries answered within that many
            km; METHOD is `RANKER` and each name of `RULES`.
        distance_km: METHOD → ``(N,)`` distance of its answer from the truth.
        confidence: "25" / "200" / "750" → ``(N,)`` the ranker's calibrated confidence in its out-of-fold answer.
        hits: the same keys → ``(N,)`` whether that answer lies within the radius.
    """

    queries: int
    folds: int
    fold: np.ndarray
    accuracy: dict[str, dict[str, float]]
    distance_km: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    hits: dict[str, np.ndarray]

    def ece(self, bins: int = 10) -> dict[str, float]:
        """Expected calibration error of the confidence per radius."""
        return {r: expected_calibration_error(self.confidence[r], self.hits[r], bins) for r in self.confidence}

    def to_json(self) -> dict[str, Any]:
        """``{"queries", "folds", "accuracy"}`` (the ``g3 verify fit --json`` output)."""
        return {"queries": self.queries, "folds": self.folds, "accuracy": self.accuracy}


def _accuracy(distance: np.ndarray) -> dict[str, float]:
    return {str(t): float(np.mean(distance <= t)) for t in THRESHOLDS_KM}


def cross_validate(
    pools: Sequence[Pool], *, folds: int = 5, seed: int = 0, calibration_folds: int = 3, rounds: int = DEFAULT_ROUNDS
) -> CVResult:
    """Grouped K-fold cross-validation by query id of the ranker, with every rule of `RULES` on the same
    queries (rules learn nothing; their answers are out-of-fold by construction).

    Raises:
        RankerError: a pool without truth, or fewer distinct query ids than ``folds``.
    """
    stacked = _stack(pools, labelled=True)
    ids = [p.id for p in pools]
    fold = group_folds(ids, folds, seed)
    n = len(pools)
    truth = np.array([p.truth for p in pools], dtype=np.float64)
    ranker_distance = np.empty(n)
    confidence = {str(r): np.empty(n) for r in CONFIDENCE_RADII_KM}
    assert stacked.distance_km is not None
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        ranker = _fit(_substack(stacked, train), [ids[i] for i in train], seed, calibration_folds, rounds, {})
        sub = _substack(stacked, test)
        chosen, raw = _chosen_raw(ranker.boosters, sub)
        assert sub.distance_km is not None
        ranker_distance[test] = sub.distance_km[sub.starts[:-1] + chosen]
        for j, i in enumerate(test):
            for r, value in ranker.calibrated(raw[j]).items():
                confidence[r][i] = value
        log.info("cross-validation: fold %d/%d done (%d queries held out)", f + 1, folds, len(test))
    distances = {RANKER: ranker_distance}
    for name, rule in RULES.items():
        answers, _ = rule_answers(rule, pools)
        distances[name] = haversine_km(answers[:, 0], answers[:, 1], truth[:, 0], truth[:, 1])
    hits = {str(r): ranker_distance <= r for r in CONFIDENCE_RADII_KM}
    return CVResult(
        queries=n,
        folds=folds,
        fold=fold,
        accuracy={name: _accuracy(d) for name, d in distances.items()},
        distance_km=distances,
        confidence=confidence,
        hits=hits,
    )


def cv_table(result: CVResult) -> str:
    """The cross-validation as a text table (share of queries within each threshold) and the ECE per radius."""
    width = max(len(name) for name in result.accuracy)
    lines = [
        f"cross-validation: {result.queries} queries, {result.folds} folds grouped by query; share within (km)",
        f"{'method':<{width}}" + "".join(f"{t:>8}" for t in THRESHOLDS_KM),
    ]
    for name, row in result.accuracy.items():
        lines.append(f"{name:<{width}}" + "".join(f"{row[str(t)]:>8.3f}" for t in THRESHOLDS_KM))
    ece = ", ".join(f"{r} km {value:.3f}" for r, value in result.ece().items())
    lines.append(f"calibration of the ranker's confidence (expected calibration error, out of fold): {ece}")
    return "\n".join(lines)
