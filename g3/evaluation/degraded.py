"""Degraded predictions in an evaluation: counting them by reason, stopping a run whose LMM never answers,
and refusing a finished run with too many of them.

A prediction record (one line of ``predictions.jsonl``) carries ``degraded`` and ``degradations`` (reason
code and message, see `g3.agent.degradation.REASONS`). Three uses:

* `degraded_summary` counts the degraded photos by reason (for ``metrics.json`` and the top of ``report.md``);
* `FailFast` stops a run early when the LMM failed (unreachable, timed out, erred) for each of its first
  photos, before writing them, so that a misconfigured run does not spend hours producing retrieval-only
  answers labelled as G3;
* `check_degraded_share` raises `DegradedRunError` when a finished run's degraded share is over a limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from g3.agent.degradation import LMM_FAILURES, REASONS
from g3.errors import DegradedRunError, LMMUnavailableError

#: Photos whose LMM must all fail before `FailFast` stops a run (``g3 eval run --fail-fast``).
DEFAULT_FAIL_FAST = 4
#: Largest share of degraded photos a finished run may have (``g3 eval run --max-degraded``).
DEFAULT_MAX_DEGRADED = 0.02

Record = dict[str, Any]


def reasons_of(record: Mapping[str, Any]) -> list[str]:
    """The reason codes of a record (none for a failed image or a record written before degradations existed)."""
    return [str(d.get("reason")) for d in record.get("degradations") or []]


def fail_fast_reasons(pipeline_mode: str, verify_mode: str) -> frozenset[str]:
    """The reason codes that mean "the LMM did not answer" in a run of these modes: `LMM_FAILURES`, plus
    ``rerank_failed`` when the rerank is the run's only LMM request (retrieval mode with ``lmm_rerank``)."""
    if pipeline_mode != "full" and verify_mode == "lmm_rerank":
        return LMM_FAILURES | {"rerank_failed"}
    return LMM_FAILURES


def lmm_failed(record: Mapping[str, Any], reasons: frozenset[str] = LMM_FAILURES) -> bool:
    """Whether the LMM did not answer at all for this photo (one of ``reasons`` is among its degradations)."""
    return any(reason in reasons for reason in reasons_of(record))


def degraded_summary(records: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any]:
    """Degraded photos among the located ones (records without an error), by reason.

    Returns ``mode``, ``located``, ``photos`` (degraded photos), ``share`` (of the located ones; 0 when none
    was located), ``by_reason`` (photos per reason code; a photo with two reasons counts under both, most
    frequent first), ``examples`` (one message per reason), ``meanings`` (what each listed reason means)
    and ``unchecked`` (located records written before g3 recorded degradations; they count as not degraded).
    """
    located = [r for r in records if r.get("error") is None]
    degraded = [r for r in located if r.get("degraded")]
    counts: Counter[str] = Counter(reason for r in degraded for reason in dict.fromkeys(reasons_of(r)))
    examples: dict[str, str] = {}
    for record in degraded:
        for d in record.get("degradations") or []:
            examples.setdefault(str(d.get("reason")), f"{record.get('img_id')}: {d.get('message')}")
    by_reason = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "mode": mode,
        "located": len(located),
        "photos": len(degraded),
        "share": len(degraded) / len(located) if located else 0.0,
        "by_reason": by_reason,
        "examples": {k: examples[k] for k in by_reason},
        "meanings": {k: REASONS.get(k, "unknown reason code") for k in by_reason},
        "unchecked": sum("degraded" not in r for r in located),
    }


def check_degraded_share(payload: dict[str, Any], max_share: float | None) -> None:
    """Raise `DegradedRunError` when the run's degraded share (``payload["degraded"]``) is over ``max_share``
    (None: no limit)."""
    summary = payload.get("degraded") or {}
    share = float(summary.get("share", 0.0))
    if max_share is None or share <= max_share:
        return
    reasons = ", ".join(f"{k}: {v}" for k, v in summary.get("by_reason", {}).items())
    example = next(iter(summary.get("examples", {}).values()), "")
    raise DegradedRunError(
        f"{summary.get('photos')} of {summary.get('located')} located photos ({100 * share:.2f}%) are degraded "
        f"({reasons}), over the limit of {100 * max_share:.2f}%; e.g. {example}. The predictions and the report "
        "were written (they count the degraded photos at the top); fix the cause and evaluate in a new run "
        "folder, or raise the limit (--max-degraded) to accept them",
        payload,
    )


class FailFast:
    """Holds back the first records of a run until one shows a working LMM; raises `LMMUnavailableError`
    when the LMM failed for each of the first ``after`` located photos (0: never).

    `feed` returns the records that may be written now (in order); `release` those still held when the
    run ends with fewer photos than ``after``.
    """

    def __init__(self, after: int, reasons: frozenset[str] = LMM_FAILURES) -> None:
        if after < 0:
            raise ValueError(f"fail_fast must be ≥ 0 photos, got {after}")
        self.after = after
        self.reasons = reasons
        self.active = after > 0
        self.held: list[Record] = []

    def feed(self, records: list[Record]) -> list[Record]:
        if not self.active:
            return records
        self.held.extend(records)
        located = [r for r in self.held if r.get("error") is None]
        if any(not lmm_failed(r, self.reasons) for r in located):
            self.active = False
            return self.release()
        if len(located) >= self.after:
            raise LMMUnavailableError(self._message(located))
        return []

    def release(self) -> list[Record]:
        held, self.held = self.held, []
        return held

    def _message(self, located: list[Record]) -> str:
        counts = Counter(reason for r in located for reason in dict.fromkeys(reasons_of(r)) if reason in self.reasons)
        first = located[0]
        why = next(d.get("message") for d in first.get("degradations") or [] if d.get("reason") in self.reasons)
        return (
            f"stopped early: the LMM failed for each of the first {len(located)} photos "
            f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); {first.get('img_id')}: {why}. Nothing of "
            "these photos was written. Check that the LMM is up and that lmm.base_url / lmm.model name it, "
            "then run again; or pass --fail-fast 0 to go on with retrieval-only answers"
        )
