"""Whether a prediction degraded, and why: stable reason codes computed from a finished query's LMM responses.

A prediction is *degraded* when a step its configuration asks for did not deliver. Only the full pipeline
(``pipeline.mode: full``) calls an LMM, so only it can degrade; the retrieval and gallery modes answer
exactly as configured. A configuration's ``note`` (such as the tiny setting's "answers are meaningless")
is shown with every prediction but is not a degradation. Unparseable answers among parsed ones are normal
sampling noise (counted in ``parse``, warned about), not a degradation.

The reason codes (`REASONS`) are stable: evaluation reports count photos by them.
"""

from __future__ import annotations

from collections.abc import Sequence

from g3.agent.prediction import Degradation
from g3.lmm.base import LMMResponse
from g3.lmm.parse import ParseStats

#: Every reason code and what it means.
REASONS: dict[str, str] = {
    "lmm_unreachable": "every prompt failed and the LMM could not be reached (connection refused, unknown host, "
    "no server of the pool in rotation): the answer comes from retrieval only",
    "lmm_timeout": "every prompt failed and at least one ran out of time: the answer comes from retrieval only",
    "lmm_error": "every prompt failed with another error (an HTTP error status, an engine error): the answer "
    "comes from retrieval only",
    "no_parseable_answer": "the LMM answered but no answer parsed into coordinates: the answer comes from "
    "retrieval only",
    "prompts_failed": "some prompts of the ensemble failed; the answer uses the other prompts' candidates",
    "rerank_failed": "verify.mode lmm_rerank: the LMM's rerank request failed or its answer named no candidate; "
    "the fused rule's answer stands",
}
#: The reasons meaning that the LMM did not answer at all (an evaluation stops early on them).
LMM_FAILURES: frozenset[str] = frozenset({"lmm_unreachable", "lmm_timeout", "lmm_error"})
#: Which reason a fully failed ensemble gets when its prompts failed in different ways (first match wins).
_KIND_REASON: tuple[tuple[str, str], ...] = (
    ("unreachable", "lmm_unreachable"),
    ("timeout", "lmm_timeout"),
    ("error", "lmm_error"),
)


def _failures(failed: Sequence[LMMResponse], endpoint: str) -> str:
    """``"a, b: <error>; c: <error>"``: the failed prompts grouped by error, and the LMM's endpoint when no
    error names it."""
    by_error: dict[str, list[str]] = {}
    for response in failed:
        by_error.setdefault(response.error or "unknown error", []).append(response.tag or "?")
    text = "; ".join(f"{', '.join(tags)}: {error}" for error, tags in by_error.items())
    return text if endpoint in text else f"{text} (LMM {endpoint})"


def rerank_failed(error: str, endpoint: str) -> Degradation:
    """The degradation of a query whose LMM rerank (``verify.mode: lmm_rerank``) did not choose: ``error`` says why."""
    where = "" if endpoint in error else f" (LMM {endpoint})"
    message = f"the LMM rerank chose no candidate — {error}{where}; the answer is the fused rule's choice"
    return Degradation(reason="rerank_failed", message=message)


def assess(
    mode: str, responses: Sequence[LMMResponse], generated: int, parse: ParseStats | None, endpoint: str
) -> list[Degradation]:
    """The degradations of one query.

    Args:
        mode: the pipeline mode; only ``"full"`` can degrade.
        responses: the LMM's responses, one per prompt.
        generated: how many candidates came from the LMM (not from retrieval).
        parse: the answer-parsing counts, when parsing ran.
        endpoint: where the LMM is (`LMMBackend.endpoint`), named when the errors do not name it.
    """
    if mode != "full" or not responses:
        return []
    failed = [r for r in responses if not r.ok]
    if len(failed) == len(responses):
        kinds = {r.error_kind or "error" for r in failed}
        reason = next(code for kind, code in _KIND_REASON if kind in kinds)
        message = f"every prompt of the ensemble failed — {_failures(failed, endpoint)}; "
        return [Degradation(reason=reason, message=message + "the answer comes from retrieval only")]
    out = []
    if failed:
        message = f"{len(failed)} of {len(responses)} prompts failed — {_failures(failed, endpoint)}"
        out.append(Degradation(reason="prompts_failed", message=message))
    if generated == 0:
        answers = parse.answers if parse is not None else sum(len(r.texts) for r in responses)
        out.append(
            Degradation(
                reason="no_parseable_answer",
                message=f"none of the {answers} answers of the LMM ({endpoint}) parsed into coordinates; "
                "the answer comes from retrieval only",
            )
        )
    return out
