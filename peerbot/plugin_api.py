"""The plugin contract: what a plugin receives and what it may answer (pure).

A plugin is a class named in ``bot.yaml`` (``use: package.module:Class``) or found through the
``peerbot.plugins`` entry-point group. It is built once, before login, as
``Class(options, context)``; a bad option raises :class:`PluginOptionError` naming the option.

Two kinds of hook exist:

* a :class:`Router` proposes specialty rooms for a question, each with a score in [0, 1] and a
  short reason; the core compares these with the keyword rules (best score wins, ties by config
  order);
* a :class:`Guard` looks at a question before anything is forwarded and answers a
  :class:`Verdict`: let it pass, ask the asker to edit it, or hold it until the asker confirms.
  A guard may also attach a notice that the bot posts at once in the asker's thread.

Every hook runs under a time budget (``time_budget`` seconds, default 2). A hook that raises or
overruns is logged under the plugin's name, counted, and skipped: the question goes on without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

# Text normalisation for plugins: they import it from here, so the core can move freely.
from peerbot.core.textnorm import STOPWORDS, content_tokens, deaccent, fold, tokens

__all__ = [
    "STOPWORDS",
    "Finding",
    "Guard",
    "GuardAction",
    "Plugin",
    "PluginContext",
    "PluginOptionError",
    "Proposal",
    "Question",
    "Router",
    "SpecialtyInfo",
    "Verdict",
    "content_tokens",
    "deaccent",
    "fold",
    "tokens",
]


class PluginOptionError(ValueError):
    """A plugin option is missing, unknown or of the wrong type."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


@dataclass(frozen=True)
class PluginContext:
    """What the core gives a plugin when it is built."""

    language: str
    """The bot's language, ``"fr"`` or ``"en"``: plugins word their notices in it."""
    data_dir: Path
    """A folder the plugin may keep files in (created by the core, owner-only)."""
    logger: logging.Logger


@dataclass(frozen=True)
class Question:
    """A question as plugins see it."""

    text: str
    room_id: str
    sender: str
    event_id: str


@dataclass(frozen=True)
class SpecialtyInfo:
    """A configured specialty: its name, room and keywords."""

    name: str
    room_id: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """A router's proposal: a specialty (by name), a score in [0, 1] and a short reason."""

    specialty: str
    score: float
    reason: str


class GuardAction(StrEnum):
    """What a guard wants done with a question."""

    PASS = "pass"
    """Forward as usual."""
    EDIT = "edit"
    """Do not forward; ask the asker to edit. The edited question is checked again."""
    HOLD = "hold"
    """Do not forward until the question is edited clean or the asker confirms with ``!confirm``."""


@dataclass(frozen=True)
class Finding:
    """One thing a guard found. It never carries the sensitive text itself."""

    kind: str
    """A stable identifier such as ``"nir"`` or ``"phone"``."""
    label: str
    """What was found, in the bot's language, without quoting it ("a social security number")."""
    why: str = ""
    """Why it matters, in the bot's language."""


@dataclass(frozen=True)
class Verdict:
    """A guard's answer about one question."""

    action: GuardAction = GuardAction.PASS
    findings: tuple[Finding, ...] = ()
    notice: str | None = None
    """A plain-text message to post at once in the asker's thread, whatever the action."""


class Plugin:
    """Base class of every plugin. Subclass :class:`Router` or :class:`Guard`, not this."""

    time_budget: float = 2.0
    """Seconds a hook may take before it is abandoned for this question."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        self.options = dict(options)
        self.context = context

    @property
    def name(self) -> str:
        """The plugin's name in logs and in ``!plugins``."""
        return type(self).__name__

    async def close(self) -> None:
        """Release what the plugin holds; called once at shutdown."""


class Router(Plugin):
    """Proposes specialty rooms for a question."""

    async def propose(
        self, question: Question, specialties: Sequence[SpecialtyInfo]
    ) -> Sequence[Proposal]:
        """Proposals for this question; an empty sequence means "no opinion"."""
        raise NotImplementedError

    def learn(self, text: str, specialty: str) -> None:
        """Learn that a question with this text belongs to this specialty.

        Called at start-up for every question already routed, after each routing, and after an
        admin's ``!route move`` correction (which supersedes what was learned for that question).
        The default ignores it.
        """

    def forget(self, text: str, specialty: str) -> None:
        """Undo a previous :meth:`learn` (a correction or a redaction). The default ignores it."""


class Guard(Plugin):
    """Checks a question before anything is forwarded."""

    async def check(self, question: Question) -> Verdict:
        """The verdict on this question."""
        raise NotImplementedError
