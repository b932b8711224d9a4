"""The conversation around a question: messages in both threads, answers, relays."""

from __future__ import annotations

import sqlite3
from typing import Any

from peerbot.core.records import ThreadMessage
from peerbot.store.db import Connection

__all__ = ["AnswerQueries"]

_COLUMNS = (
    "event_id, question_id, room_id, side, sender, ts, answer, relay_tx_id, relay_event_id, "
    "relay_state"
)


def _message(row: sqlite3.Row | tuple[Any, ...]) -> ThreadMessage:
    r = tuple(row)
    return ThreadMessage(
        event_id=r[0],
        question_id=r[1],
        room_id=r[2],
        side=r[3],
        sender=r[4],
        ts=r[5],
        answer=bool(r[6]),
        relay_tx_id=r[7],
        relay_event_id=r[8],
        relay_state=r[9],
    )


class AnswerQueries(Connection):
    """The ``thread_messages`` table and the answer figures kept on each question."""

    async def add_thread_message(self, m: ThreadMessage) -> bool:
        """Record a message once (False if known) and update the question's figures."""
        async with self._transaction():
            return await self._insert_thread_message(m)

    async def _insert_thread_message(self, m: ThreadMessage) -> bool:
        """:meth:`add_thread_message` inside the caller's transaction."""
        cur = await self._db.execute(
            f"INSERT INTO thread_messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (
                m.event_id,
                m.question_id,
                m.room_id,
                m.side,
                m.sender,
                m.ts,
                int(m.answer),
                m.relay_tx_id,
                m.relay_event_id,
                m.relay_state,
            ),
        )
        added = cur.rowcount == 1
        if added:
            await self._db.execute(
                "UPDATE questions SET "
                "last_activity_ts = MAX(COALESCE(last_activity_ts, 0), ?), "
                "answers = answers + ?, "
                "first_answer_ts = CASE WHEN ? = 1 THEN "
                "MIN(COALESCE(first_answer_ts, ?), ?) ELSE first_answer_ts END "
                "WHERE event_id = ?",
                (m.ts, int(m.answer), int(m.answer), m.ts, m.ts, m.question_id),
            )
        return added

    async def thread_message(self, event_id: str) -> ThreadMessage | None:
        """A recorded message by its event ID."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM thread_messages WHERE event_id = ?", (event_id,)
        ) as cur:
            row = await cur.fetchone()
        return _message(row) if row else None

    async def thread_message_by_relay(self, relay_event_id: str) -> ThreadMessage | None:
        """The message whose relayed copy is this event."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM thread_messages WHERE relay_event_id = ?",
            (relay_event_id,),
        ) as cur:
            row = await cur.fetchone()
        return _message(row) if row else None

    async def thread_messages(self, question_id: str) -> list[ThreadMessage]:
        """A question's messages in both threads, oldest first."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM thread_messages WHERE question_id = ? ORDER BY ts, event_id",
            (question_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [_message(r) for r in rows]

    async def set_relay(
        self, event_id: str, *, tx_id: str | None = None, relay_event_id: str | None = None
    ) -> None:
        """Note the effect relaying a message, or the event ID of its sent copy."""
        if tx_id is not None:
            await self._write(
                "UPDATE thread_messages SET relay_tx_id = ? WHERE event_id = ?", (tx_id, event_id)
            )
        if relay_event_id is not None:
            await self._write(
                "UPDATE thread_messages SET relay_event_id = ? WHERE event_id = ?",
                (relay_event_id, event_id),
            )

    async def drop_thread_message(self, event_id: str) -> ThreadMessage | None:
        """Forget a redacted message; return what it was (its answer stays counted)."""
        found = await self.thread_message(event_id)
        if found is not None:
            await self._write("DELETE FROM thread_messages WHERE event_id = ?", (event_id,))
        return found
