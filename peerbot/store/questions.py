"""Questions: recording, reading, updating, erasing them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable
from typing import Any

from peerbot.core.records import QuestionRow, QuestionState, RouteRecord
from peerbot.store.db import Connection, now_ms
from peerbot.store.driver import Plan

__all__ = ["QUESTION_COLUMNS", "QuestionQueries", "question_from_row"]

QUESTION_COLUMNS = (
    "seq, event_id, room_id, sender, sender_name, body, created_ts, trigger_event_id, state, "
    "specialty, target_room, decision, forward_event_id, ack_event_id, replies, solved, solved_by, "
    "revision, guard_override, corrected, answers, first_answer_ts, last_activity_ts, "
    "forwarded_ts, solved_ts"
)


def question_from_row(row: sqlite3.Row | tuple[Any, ...]) -> QuestionRow:
    """A row of :data:`QUESTION_COLUMNS` as a :class:`QuestionRow`."""
    r = tuple(row)
    return QuestionRow(
        seq=r[0],
        event_id=r[1],
        room_id=r[2],
        sender=r[3],
        sender_name=r[4],
        body=r[5],
        created_ts=r[6],
        trigger_event_id=r[7],
        state=QuestionState(r[8]),
        specialty=r[9],
        target_room=r[10],
        decision=RouteRecord.from_json(json.loads(r[11]) if r[11] else None),
        forward_event_id=r[12],
        ack_event_id=r[13],
        replies=r[14],
        solved=bool(r[15]),
        solved_by=r[16],
        revision=r[17],
        guard_override=bool(r[18]),
        corrected=bool(r[19]),
        answers=r[20],
        first_answer_ts=r[21],
        last_activity_ts=r[22],
        forwarded_ts=r[23],
        solved_ts=r[24],
    )


EXCLUDE_IN_SQL = 500
"""At most this many excluded IDs go into the query as parameters (SQLite's limit is higher)."""


class QuestionQueries(Connection):
    """The questions table (and the handled trigger events recorded with them)."""

    # -- questions ---------------------------------------------------------------------------

    async def record_question(
        self,
        *,
        event_id: str,
        room_id: str,
        trigger_event_id: str,
        sender: str | None,
        body: str | None,
        created_ts: int,
        skip_handled: bool = False,
    ) -> QuestionRow | None:
        """Record a new question and mark its trigger handled: the question as stored (read
        back in the same transaction), or None if it was known.

        ``skip_handled``: record nothing when the trigger event was already handled (e.g. a
        question that was redacted and erased, replayed by a sync). One transaction, the check
        included, in one trip to the database thread (see ``Connection._atomic``).
        """
        now = now_ms()

        def plan() -> Plan[QuestionRow | None]:
            if skip_handled:
                done = yield (
                    "SELECT 1 FROM handled_events WHERE event_id = ?",
                    (trigger_event_id,),
                )
                if done.rows:
                    return None
            # The new row comes back from the insert itself (none when it was known).
            done = yield (
                "INSERT OR IGNORE INTO questions (event_id, room_id, sender, body, created_ts, "
                "trigger_event_id, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'new', ?) "
                f"RETURNING {QUESTION_COLUMNS}",
                (event_id, room_id, sender, body, created_ts, trigger_event_id, now),
            )
            added = question_from_row(done.rows[0]) if done.rows else None
            yield (
                "INSERT OR IGNORE INTO handled_events (event_id, room_id, handled_at) "
                "VALUES (?, ?, ?)",
                (trigger_event_id, room_id, now),
            )
            return added

        return await self._atomic(plan)

    async def question(self, event_id: str) -> QuestionRow | None:
        """A question by its event ID."""
        row = await self._row(
            f"SELECT {QUESTION_COLUMNS} FROM questions WHERE event_id = ?", (event_id,)
        )
        return question_from_row(row) if row else None

    async def questions_in_state(
        self, *states: str, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[QuestionRow]:
        """Questions waiting for work, oldest first; those in ``exclude`` left out.

        ``exclude``: the worker's questions already queued on a lane. Left out in SQL, so a
        long queue is not read and decoded again at each wake-up of the worker (under load it
        was a third of PeerBot's CPU time); past ``EXCLUDE_IN_SQL`` IDs they are left out here.
        """
        marks = ",".join("?" * len(states))
        sql = f"SELECT {QUESTION_COLUMNS} FROM questions WHERE state IN ({marks})"
        params: list[Any] = list(states)
        in_sql = list(exclude) if len(exclude) <= EXCLUDE_IN_SQL else []
        if in_sql:
            sql += f" AND event_id NOT IN ({','.join('?' * len(in_sql))})"
            params += in_sql
        rows = await self._rows(sql + " ORDER BY seq LIMIT ?", (*params, limit))
        found = [question_from_row(r) for r in rows]
        return found if in_sql or not exclude else [q for q in found if q.event_id not in exclude]

    async def update_question(self, event_id: str, **fields: Any) -> None:
        """Set some columns of a question."""
        allowed = {
            "sender",
            "sender_name",
            "body",
            "created_ts",
            "state",
            "specialty",
            "target_room",
            "decision",
            "forward_event_id",
            "ack_event_id",
            "error",
            "solved",
            "solved_by",
            "revision",
            "guard_override",
            "corrected",
            "forwarded_ts",
            "solved_ts",
            "last_activity_ts",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown question columns: {sorted(unknown)}")
        if "decision" in fields and fields["decision"] is not None:
            fields["decision"] = json.dumps(fields["decision"], ensure_ascii=False)
        fields["updated_at"] = now_ms()
        if "solved" in fields and "solved_ts" not in fields:
            fields["solved_ts"] = fields["updated_at"] if fields["solved"] else None
        sets = ", ".join(f"{k} = ?" for k in fields)
        await self._write(
            f"UPDATE questions SET {sets} WHERE event_id = ?",
            (*fields.values(), event_id),
        )

    async def count_questions(self) -> int:
        """How many questions are stored."""
        async with self._db.execute("SELECT COUNT(*) FROM questions") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def question_solved_by(self, solved_by: str) -> QuestionRow | None:
        """The question solved by this reaction or command event."""
        async with self._db.execute(
            f"SELECT {QUESTION_COLUMNS} FROM questions WHERE solved_by = ?",
            (solved_by,),
        ) as cur:
            row = await cur.fetchone()
        return question_from_row(row) if row else None

    async def question_by_forward(self, forward_event_id: str) -> QuestionRow | None:
        """The question whose forward is this event."""
        async with self._db.execute(
            f"SELECT {QUESTION_COLUMNS} FROM questions WHERE forward_event_id = ?",
            (forward_event_id,),
        ) as cur:
            row = await cur.fetchone()
        return question_from_row(row) if row else None

    async def conversation_of(
        self, room_id: str, targets: Iterable[str | None]
    ) -> tuple[QuestionRow, str] | None:
        """The question whose conversation a message in ``room_id`` is part of, from the events
        it is in the thread of or replies to, and its side: ``origin`` (the asker's thread) or
        ``forward`` (the forward's thread)."""
        for target in targets:
            if target is None:
                continue
            q = await self.question(target)
            if q is not None and q.room_id == room_id:
                return q, "origin"
            q = await self.question_by_forward(target)
            if q is not None and q.target_room == room_id:
                return q, "forward"
            # An earlier copy (before a !route move): answers written under it still reach
            # the asker; messages of the asker's thread go to the current copy only.
            row = await self._row(
                "SELECT question_id FROM effects WHERE event_id = ? AND room_id = ? "
                "AND kind IN ('forward', 'move') AND question_id IS NOT NULL",
                (target, room_id),
            )
            q = await self.question(str(row[0])) if row else None
            if q is not None:
                return q, "forward"
        return None

    async def erase_question(self, event_id: str) -> QuestionRow | None:
        """Delete a redacted question and every copy of its text; return what it was."""
        row = await self.question(event_id)
        if row is None:
            return None
        async with self._transaction():
            await self._db.execute("DELETE FROM questions WHERE event_id = ?", (event_id,))
            await self._db.execute("DELETE FROM thread_messages WHERE question_id = ?", (event_id,))
            # A vector is derived from the text: it goes too.
            await self._db.execute("DELETE FROM question_vectors WHERE event_id = ?", (event_id,))
            # Effects quote the text: keep only what re-sending needs to stay idempotent.
            await self._db.execute(
                "UPDATE effects SET content = '{}', state = CASE state WHEN 'pending' "
                "THEN 'failed' ELSE state END, error = 'redacted' WHERE question_id = ?",
                (event_id,),
            )
        # Overwrite freed pages so the text does not linger in the file. Its result row read to
        # the end: a checkpoint statement left open makes the next COMMIT fail ("SQL statements
        # in progress") when that COMMIT runs in the same trip to the database thread.
        async with self._write_lock:
            await self._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        return row

    async def question_count_by_room(self) -> dict[str, int]:
        """How many questions each room has (import summaries)."""
        async with self._db.execute(
            "SELECT room_id, COUNT(*) FROM questions GROUP BY room_id"
        ) as cur:
            rows = await cur.fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def import_question(
        self, *, event_id: str, room_id: str, sender: str, body: str, created_ts: int
    ) -> bool:
        """Record a past question from room history (not forwarded); False if known."""
        cur = await self._write(
            "INSERT OR IGNORE INTO questions (event_id, room_id, sender, body, created_ts, "
            "trigger_event_id, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'imported', ?)",
            (event_id, room_id, sender, body, created_ts, event_id, now_ms()),
        )
        return cur.rowcount == 1
