"""What the store keeps, as the core sees it: questions, effects, overrides (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "WAITING",
    "Effect",
    "IntakeOverride",
    "QuestionRow",
    "QuestionState",
    "RouteOverride",
    "RouteRecord",
    "ThreadMessage",
    "UndecryptableRow",
]


class QuestionState(StrEnum):
    """Where a question is in its life (the ``questions.state`` column)."""

    NEW = "new"
    """Noticed; to be checked and routed."""
    FORWARDING = "forwarding"
    """Routed; its forward goes out on its target room's lane."""
    HELD = "held"
    """Kept back (a guard, or an encrypted source and a plain target); the asker was told."""
    DONE = "done"
    """Forwarded; the acknowledgement is recorded (and sent by the outbox)."""
    FAILED = "failed"
    """Cannot be forwarded (the log says why; the asker got an apology when it was sent)."""
    IMPORTED = "imported"
    """From room history (import-history): indexed, never forwarded."""


WAITING = (QuestionState.NEW, QuestionState.FORWARDING)
"""States the worker picks questions up in."""


@dataclass(frozen=True)
class RouteRecord:
    """Why a question went where it went, or why it is held (``questions.decision``)."""

    score: float = 0.0
    words: tuple[tuple[str, str, bool], ...] = ()
    """(keyword, word found, exact) for each deciding keyword."""
    reasons: tuple[str, ...] = ()
    """Router plugins' reasons."""
    held: tuple[str, ...] = ()
    """Guard finding kinds, while held by a guard."""
    confirmable: bool = False
    """A guard hold the asker may lift with ``!confirm``."""
    unencrypted_target: bool = False
    """Held because it would leave an encrypted room for an unencrypted one."""
    forward_confirmed: bool = False
    """The asker said ``!forward``: send it to the unencrypted room anyway."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RouteRecord:
        """The record from its stored JSON (older rows lack some keys)."""
        if not data:
            return cls()
        words = tuple(
            (str(w[0]), str(w[1]), bool(w[2]))
            for w in data.get("words") or ()
            if isinstance(w, list | tuple) and len(w) == 3
        )
        return cls(
            score=float(data.get("score") or 0.0),
            words=words,
            reasons=tuple(str(r) for r in data.get("reasons") or ()),
            held=tuple(str(k) for k in data.get("held") or ()),
            confirmable=bool(data.get("confirmable", False)),
            unencrypted_target=bool(data.get("unencrypted_target", False)),
            forward_confirmed=bool(data.get("forward_confirmed", False)),
        )

    def to_json(self) -> dict[str, Any]:
        """The record as stored (the same keys older versions wrote)."""
        out: dict[str, Any] = {
            "score": round(self.score, 4),
            "words": [list(w) for w in self.words],
            "reasons": list(self.reasons),
        }
        if self.held:
            out["held"] = list(self.held)
            out["confirmable"] = self.confirmable
        if self.unencrypted_target:
            out["unencrypted_target"] = True
        if self.forward_confirmed:
            out["forward_confirmed"] = True
        return out


@dataclass(frozen=True)
class QuestionRow:
    """A question as stored."""

    seq: int
    event_id: str
    room_id: str
    sender: str | None
    sender_name: str | None
    body: str | None
    created_ts: int
    trigger_event_id: str
    state: QuestionState
    specialty: str | None
    target_room: str | None
    decision: RouteRecord
    forward_event_id: str | None
    ack_event_id: str | None
    replies: int = 0
    solved: bool = False
    solved_by: str | None = None
    revision: str | None = None
    guard_override: bool = False
    corrected: bool = False
    answers: int = 0
    """Answer messages (by someone other than the asker) in either thread."""
    first_answer_ts: int | None = None
    last_activity_ts: int | None = None
    forwarded_ts: int | None = None
    solved_ts: int | None = None


@dataclass(frozen=True)
class ThreadMessage:
    """A message a person wrote in the asker's thread or the forward's thread."""

    event_id: str
    question_id: str
    room_id: str
    side: str
    """``origin`` (the asker's thread) or ``forward`` (the forward's thread)."""
    sender: str
    ts: int
    answer: bool
    relay_tx_id: str | None = None
    relay_event_id: str | None = None
    relay_state: str | None = None
    """``relayed``, ``held``, ``refused``, ``ignored`` or ``waiting`` (``RelayAction``)."""


@dataclass(frozen=True)
class Effect:
    """A message the bot must send (pending) or has sent (done)."""

    seq: int
    tx_id: str
    question_id: str | None
    kind: str
    room_id: str
    content: dict[str, Any]
    state: str
    event_id: str | None
    attempts: int
    event_type: str = "m.room.message"


@dataclass(frozen=True)
class RouteOverride:
    """A specialty added, changed or removed in chat."""

    name: str
    room: str
    keywords: tuple[str, ...]
    removed: bool


@dataclass(frozen=True)
class IntakeOverride:
    """Intake switched on or off in chat for a room."""

    room_id: str
    enabled: bool
    trigger: str
    hashtags: tuple[str, ...]


@dataclass(frozen=True)
class UndecryptableRow:
    """An encrypted event the bot could not read yet."""

    event_id: str
    room_id: str
    sender: str
    session_id: str
    sender_key: str
    first_seen: int
    attempts: int
