"""The outbox's table: effects (messages to send), recorded idempotently on their tx_id."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from peerbot.core.lifecycle import Outgoing, Step
from peerbot.core.records import Effect, QuestionState
from peerbot.store.db import Connection, now_ms
from peerbot.store.driver import Plan

__all__ = ["EFFECT_COLUMNS", "EffectQueries", "effect_from_row"]

EFFECT_COLUMNS = (
    "seq, tx_id, question_id, kind, room_id, content, state, event_id, attempts, event_type"
)


def effect_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Effect:
    """A row of :data:`EFFECT_COLUMNS` as an :class:`Effect`."""
    r = tuple(row)
    return Effect(
        seq=r[0],
        tx_id=r[1],
        question_id=r[2],
        kind=r[3],
        room_id=r[4],
        content=json.loads(r[5]),
        state=r[6],
        event_id=r[7],
        attempts=r[8],
        event_type=r[9],
    )


class EffectQueries(Connection):
    """Effects to send and what became of them; a lifecycle step applied in one transaction."""

    # -- the outbox --------------------------------------------------------------------------

    @staticmethod
    def _insert_effect(
        tx_id: str,
        question_id: str | None,
        kind: str,
        room_id: str,
        content: Mapping[str, Any],
        event_type: str,
        now: int,
    ) -> Plan[None]:
        """Record one pending effect, a known tx_id kept: a statement for the caller's plan
        (``yield from`` in an ``_atomic`` plan; ``await self._drive(...)`` inside a
        ``_transaction``)."""
        yield (
            "INSERT OR IGNORE INTO effects (tx_id, question_id, kind, room_id, content, "
            "state, created_at, updated_at, event_type) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (
                tx_id,
                question_id,
                kind,
                room_id,
                json.dumps(dict(content), ensure_ascii=False),
                now,
                now,
                event_type,
            ),
        )

    async def add_effect(
        self,
        *,
        tx_id: str,
        kind: str,
        room_id: str,
        content: dict[str, Any],
        question_id: str | None = None,
        event_type: str = "m.room.message",
    ) -> Effect:
        """Record a message to send (idempotent on tx_id); the effect as stored (after a
        crash, perhaps already sent). One trip to the database thread."""
        now = now_ms()

        def plan() -> Plan[Effect]:
            yield from self._insert_effect(
                tx_id, question_id, kind, room_id, content, event_type, now
            )
            done = yield (f"SELECT {EFFECT_COLUMNS} FROM effects WHERE tx_id = ?", (tx_id,))
            return effect_from_row(done.rows[0])

        return await self._atomic(plan)

    async def apply(
        self, question_id: str, step: Step, read_back: str | None = None
    ) -> Effect | None:
        """A lifecycle step in one transaction: the question's new columns and its effects.

        Effects are recorded once (idempotent on tx_id), so applying a step again after a crash
        records nothing twice; the outbox sends them. ``read_back``: the tx_id of one of them,
        returned as stored (in the same trip); else None.
        """
        now = now_ms()
        columns = step.columns()
        if "decision" in columns:
            columns["decision"] = json.dumps(columns["decision"], ensure_ascii=False)
        columns["updated_at"] = now
        if step.state == QuestionState.DONE and step.forward_event_id is not None:
            columns["forwarded_ts"] = now
        sets = ", ".join(f"{k} = ?" for k in columns)

        def plan() -> Plan[Effect | None]:
            yield (
                f"UPDATE questions SET {sets} WHERE event_id = ?",
                (*columns.values(), question_id),
            )
            for e in step.effects:
                yield from self._insert_effect(
                    e.tx_id, question_id, e.kind, e.room_id, e.content, e.event_type, now
                )
            if read_back is None:
                return None
            done = yield (f"SELECT {EFFECT_COLUMNS} FROM effects WHERE tx_id = ?", (read_back,))
            return effect_from_row(done.rows[0]) if done.rows else None

        return await self._atomic(plan)

    async def record_move(self, question_id: str, specialty: str, copy: Outgoing) -> None:
        """``!route move``: the question's new specialty (marked corrected) and the copy to send
        to its room, in one transaction (a crash cannot leave one without the other)."""
        now = now_ms()

        def plan() -> Plan[None]:
            yield (
                "UPDATE questions SET specialty = ?, corrected = 1, updated_at = ? "
                "WHERE event_id = ?",
                (specialty, now, question_id),
            )
            yield from self._insert_effect(
                copy.tx_id, question_id, copy.kind, copy.room_id, copy.content, copy.event_type, now
            )

        await self._atomic(plan)

    async def effect(self, tx_id: str) -> Effect | None:
        """An effect by its transaction ID."""
        row = await self._row(f"SELECT {EFFECT_COLUMNS} FROM effects WHERE tx_id = ?", (tx_id,))
        return effect_from_row(row) if row else None

    async def pending_effects(self, limit: int = 100) -> list[Effect]:
        """Effects not yet sent, oldest first."""
        rows = await self._rows(
            f"SELECT {EFFECT_COLUMNS} FROM effects WHERE state = 'pending' ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [effect_from_row(r) for r in rows]

    async def effect_attempt(self, tx_id: str, error: str | None) -> None:
        """Count a send attempt (and its error)."""
        await self._write(
            "UPDATE effects SET attempts = attempts + 1, error = ?, updated_at = ? WHERE tx_id = ?",
            (error, now_ms(), tx_id),
        )

    async def effect_done(self, tx_id: str, event_id: str) -> None:
        """Mark an effect sent, with the event it created."""
        await self._write(
            "UPDATE effects SET state = 'done', event_id = ?, error = NULL, updated_at = ? "
            "WHERE tx_id = ?",
            (event_id, now_ms(), tx_id),
        )

    async def effect_failed(self, tx_id: str, error: str) -> None:
        """Give up on an effect that can never be sent (the room is gone, forbidden...)."""
        await self._write(
            "UPDATE effects SET state = 'failed', error = ?, updated_at = ? WHERE tx_id = ?",
            (error, now_ms(), tx_id),
        )

    async def effects_for(self, question_id: str) -> list[Effect]:
        """Every effect of a question."""
        async with self._db.execute(
            f"SELECT {EFFECT_COLUMNS} FROM effects WHERE question_id = ? ORDER BY seq",
            (question_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [effect_from_row(r) for r in rows]
