"""Small plugins for tests: one that raises, one that is slow, one that always routes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from peerbot.plugin_api import (
    Guard,
    PluginContext,
    PluginOptionError,
    Proposal,
    Question,
    Router,
    SpecialtyInfo,
    Verdict,
)


class RaisingRouter(Router):
    """Always fails."""

    async def propose(
        self, question: Question, specialties: Sequence[SpecialtyInfo]
    ) -> Sequence[Proposal]:
        raise RuntimeError("boom")


class SlowGuard(Guard):
    """Takes longer than its budget."""

    time_budget = 0.2

    async def check(self, question: Question) -> Verdict:
        await asyncio.sleep(5)
        return Verdict()


class FixedRouter(Router):
    """Proposes one specialty for every question containing a word."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(options, context)
        unknown = set(options) - {"word", "specialty", "score"}
        if unknown:
            raise PluginOptionError(sorted(unknown)[0], "unknown option")
        for key in ("word", "specialty"):
            if not isinstance(options.get(key), str):
                raise PluginOptionError(key, "must be a string")
        score = options.get("score", 0.9)
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise PluginOptionError("score", "must be a number")
        self.word = str(options["word"]).lower()
        self.specialty = str(options["specialty"])
        self.score = float(score)

    async def propose(
        self, question: Question, specialties: Sequence[SpecialtyInfo]
    ) -> Sequence[Proposal]:
        if self.word in question.text.lower():
            return [Proposal(self.specialty, self.score, f"le mot {self.word}")]
        return []


class NotAPlugin:
    """Not a subclass of Router or Guard."""
