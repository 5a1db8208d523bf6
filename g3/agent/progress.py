"""The steps of one query by name (`Step`, the graph's node names) and what each one reports (`step_summary`).

`G3.astream` yields ``(Step, state update)`` as each node finishes, then ``(Step.PREDICTION, {"prediction":
GeoPrediction})``; the server streams `step_summary` of each as a chunk's ``g3`` step, and the web page
switches on the same names.
"""

from __future__ import annotations

import enum
from typing import Any


class Step(enum.StrEnum):
    """A step of a query as it is streamed: the graph's nodes, the prediction, and the server's note."""

    ENCODE = "encode"
    RETRIEVE = "retrieve"
    GALLERY = "gallery"
    RENDER = "render"
    GENERATE = "generate"
    PARSE = "parse"
    CANDIDATES = "candidates"
    VERIFY = "verify"
    PICK_RANDOM = "pick_random"
    RERANK = "rerank"
    RANK = "rank"
    DESCRIBE = "describe"
    PREDICTION = "prediction"  # the last item `G3.astream` yields: the finished `GeoPrediction`
    CHOICES = "choices"  # emitted by the server when it returns fewer choices than asked for


#: Neighbours shown per relation in a retrieve step's summary.
NEIGHBOURS_SHOWN = 20
#: Ranked candidates shown in a verify / pick_random / rank step's summary.
RANKED_SHOWN = 50


def step_summary(step: Step | str, update: dict[str, Any]) -> dict[str, Any]:
    """A small JSON summary of what a step produced (its state update), for stream chunks and the web page."""
    timings = update.get("timings", {})
    data: dict[str, Any] = {"seconds": round(sum(timings.values()), 4)} if timings else {}
    if step == Step.RETRIEVE:
        data |= {
            relation: found.rows(NEIGHBOURS_SHOWN) if (found := update.get(relation)) is not None else []
            for relation in ("similar", "dissimilar")
        }
    elif step == Step.RENDER:
        data |= {"prompts": [r.tag for r in update.get("requests", [])]}
    elif step == Step.GENERATE:
        data |= {"responses": [{"prompt": r.tag, "answers": list(r.texts), "error": r.error}
                               for r in update.get("responses", [])]}  # fmt: skip
    elif step in (Step.PARSE, Step.CANDIDATES, Step.GALLERY):
        data |= {"candidates": [[c.lat, c.lon, c.source, c.sample] for c in update.get("candidates", [])]}
        if "parse" in update:
            data["parse"] = update["parse"].to_dict()
        if update.get("warnings"):
            data["warnings"] = list(update["warnings"])
    elif step in (Step.VERIFY, Step.PICK_RANDOM, Step.RANK):
        data |= {"ranked": [[s.candidate.lat, s.candidate.lon, s.candidate.source, s.score, s.components]
                            for s in update.get("ranked", [])[:RANKED_SHOWN]]}  # fmt: skip
        if update.get("confidence") is not None:  # the fitted ranker's (step "rank")
            data["confidence"] = update["confidence"]
    elif step == Step.DESCRIBE:
        data |= {"address": update.get("address")}
    return data
