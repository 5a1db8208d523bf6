"""The pools.jsonl format (issue 15 item 2): exact round trip, strict validation naming the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from g3.errors import PoolFormatError
from g3.verify import (
    Candidate,
    Pool,
    PoolCandidate,
    parse_pool,
    pool_from_candidates,
    pool_line,
    read_pools,
    write_pools,
)

FULL = {
    "id": "im2gps3k/0001.jpg",
    "truth": [48.8566, 2.3522],
    "candidates": [
        {"lat": 48.85, "lon": 2.35, "source": "zero_shot", "sample": 0},
        {"lat": 45.76, "lon": 4.84, "source": "rag_5", "sample": 2},
        {"lat": 48.86, "lon": 2.34, "source": "retrieval", "rank": 0, "retrieval_score": 0.91},
    ],
    "neighbours": [[48.86, 2.34], [40.71, -74.0]],
    "query_gps": [0.1, -0.2, 0.3],
    "candidate_embeddings": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [-1, 0, 1]],
}
MINIMAL = {"id": "q", "truth": [0, 0], "candidates": [{"lat": 1, "lon": 2, "source": "retrieval"}]}


def write_lines(path: Path, *objects: object) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects), encoding="utf-8")
    return path


def test_a_line_round_trips_exactly(tmp_path: Path) -> None:
    pools = list(read_pools(write_lines(tmp_path / "p.jsonl", FULL, MINIMAL)))
    assert [p.id for p in pools] == ["im2gps3k/0001.jpg", "q"]
    assert json.loads(pool_line(pools[0])) == {
        **FULL,
        "candidate_embeddings": [[float(v) for v in row] for row in FULL["candidate_embeddings"]],  # type: ignore[attr-defined]
    }
    assert json.loads(pool_line(pools[1])) == MINIMAL  # absent optional keys stay absent
    assert "\n" not in pool_line(pools[0])
    assert pools[0].has_embeddings and not pools[1].has_embeddings
    assert write_pools(tmp_path / "out.jsonl", pools) == 2
    assert list(read_pools(tmp_path / "out.jsonl")) == pools


def test_python_objects_build_the_same_pool() -> None:
    built = Pool(id="q", truth=(0.0, 0.0), candidates=[PoolCandidate(lat=1, lon=2, source="retrieval")])
    assert json.loads(pool_line(built)) == MINIMAL


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not a JSON object"),
        ({**MINIMAL, "truth": [91, 0]}, r"line 2: truth\.0: Input should be less than or equal to 90"),
        ({**MINIMAL, "candidates": [{"lat": 1, "lon": 181, "source": "x"}]}, r"candidates\.0\.lon"),
        ({**MINIMAL, "candidates": []}, "candidates: List should have at least 1 item"),
        ({**MINIMAL, "candidates": [{"lat": "1", "lon": 2, "source": "x"}]}, r"candidates\.0\.lat"),
        ({**MINIMAL, "candidates": [{"lat": 1, "lon": 2, "source": ""}]}, r"candidates\.0\.source"),
        ({**MINIMAL, "candidates": [{"lat": 1, "lon": 2, "source": "x", "rank": -1}]}, r"candidates\.0\.rank"),
        ({**MINIMAL, "candidates": [{"lat": 1, "lon": 2, "source": "x", "rank": 1.5}]}, r"candidates\.0\.rank"),
        ({**MINIMAL, "candidates": [{"lat": 1, "lon": 2, "source": "x", "score": 1}]}, r"score: Extra inputs"),
        ('{"id": "q", "truth": [0, 0], "candidates": [{"lat": NaN, "lon": 2, "source": "x"}]}', r"lat"),
        ({**MINIMAL, "neighbours": [[1, 2, 3]]}, r"neighbours\.0"),
        ({**MINIMAL, "query_gps": [1.0]}, "query_gps is given without candidate_embeddings"),
        ({**MINIMAL, "candidate_embeddings": [[1.0]]}, "candidate_embeddings is given without query_gps"),
        ({**MINIMAL, "query_gps": [1.0, 0], "candidate_embeddings": [[1.0]]}, "row 0 has 1 values, query_gps has 2"),
        ({**MINIMAL, "query_gps": [1.0], "candidate_embeddings": [[1.0], [1.0]]}, "2 rows for 1 candidates"),
        ({**MINIMAL, "query_gps": [1.0], "candidate_embeddings": [[0.0]]}, "row 0 is a zero vector"),
        ({"id": "q", "candidates": MINIMAL["candidates"]}, "pool 'q' has no 'truth'"),
        ({**MINIMAL, "id": "first"}, "line 2: id 'first' is already used on line 1"),
        ({**MINIMAL, "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_a_bad_line_is_refused_by_its_number(tmp_path: Path, line: object, message: str) -> None:
    path = write_lines(tmp_path / "pools.jsonl", {**MINIMAL, "id": "first"}, line)
    with pytest.raises(PoolFormatError, match=message) as caught:
        list(read_pools(path))
    assert str(caught.value).startswith(f"{path}, line 2: ")


def test_unlabelled_pools_are_read_when_asked_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", {"id": "q", "candidates": MINIMAL["candidates"]}, "  ")
    (pool,) = read_pools(path, labelled=False)
    assert pool.truth is None


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PoolFormatError, match=r"cannot read pools from .*nope\.jsonl"):
        list(read_pools(tmp_path / "nope.jsonl"))


def test_pipeline_candidates_become_a_pool() -> None:
    found = [
        Candidate(48.85, 2.35, "zero_shot", 1),
        Candidate(48.86, 2.34, "retrieval", 0, 0.9),
        Candidate(48.0, 2.0, "gallery", 3, 0.5),
    ]
    pool = pool_from_candidates(
        "q", found, truth=(48.8, 2.3), neighbours=np.array([[48.86, 2.34]]), query_gps=np.ones(2, np.float32),
        candidate_embeddings=np.eye(3, 2, dtype=np.float32) + 0.5,
    )  # fmt: skip
    assert [(c.source, c.rank, c.sample) for c in pool.candidates] == [
        ("zero_shot", None, 1),
        ("retrieval", 0, None),
        ("gallery", 3, None),
    ]
    assert pool.candidates[1].retrieval_score == 0.9 and pool.neighbours == [(48.86, 2.34)]
    assert parse_pool(pool_line(pool)) == pool
    with pytest.raises(PoolFormatError, match="pool 'q': candidate_embeddings has 1 rows for 3 candidates"):
        pool_from_candidates("q", found, query_gps=[1.0], candidate_embeddings=[[1.0]])
