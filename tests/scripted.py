"""A scripted LMM backend for graph-logic and server tests (the real backends have their own tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from g3.lmm.base import LMMBackend, LMMRequest, LMMResponse, Usage


class ScriptedLMM(LMMBackend):
    """Answers every prompt with JSON points near a fixed place (per prompt), or misbehaves on request."""

    name = "scripted"

    def __init__(self, behaviour: str = "answer", delay_s: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.seen: list[str] = []

    async def agenerate(self, requests: Sequence[LMMRequest]) -> list[LMMResponse]:
        self.seen.extend(r.tag for r in requests)
        await asyncio.sleep(self.delay_s)
        if self.behaviour == "raise":
            raise ConnectionError("the LMM server went away")
        out = []
        for r in requests:
            if self.behaviour == "garbage":
                texts = tuple("I cannot tell, sorry." for _ in range(r.n))
            else:
                base = {"zero_shot": (35.68, 139.69), "rag_5": (48.85, 2.35)}.get(r.tag, (48.86, 2.34))
                texts = tuple(f'{{"latitude": {base[0] + i * 0.01}, "longitude": {base[1]}}}' for i in range(r.n))
            out.append(LMMResponse(r.tag, texts, Usage(100, 10 * r.n), 0.01))
        return out
