"""Follow-ups: deadlines (``due_actions``), volunteer experts and their pings, and the reads
the digest, ``!unanswered`` and ``!stats`` need."""

from __future__ import annotations

from collections.abc import Sequence

from peerbot.core.followup import DueAction, Expert, StatRow
from peerbot.core.lifecycle import Outgoing
from peerbot.core.records import QuestionRow
from peerbot.store.db import now_ms
from peerbot.store.effects import EffectQueries
from peerbot.store.questions import QUESTION_COLUMNS, question_from_row

__all__ = ["FollowupQueries"]

_DUE = "key, kind, question_id, room_id, step, last_step, due_ts"


class FollowupQueries(EffectQueries):
    """Deadlines, experts, and the open and answered questions of a room."""

    # -- deadlines ---------------------------------------------------------------------------

    async def plan_escalations(
        self, after: dict[str, tuple[float, ...]], default: tuple[float, ...]
    ) -> int:
        """Record the escalation steps of forwarded questions not planned yet (``after``:
        steps by specialty name, casefolded); the number of questions planned. Answered ones
        too: their steps are settled as skipped when due, so what happened stays readable."""
        async with self._db.execute(
            "SELECT q.event_id, q.target_room, q.specialty, q.forwarded_ts FROM questions q "
            "WHERE q.state = 'done' AND q.forwarded_ts IS NOT NULL "
            "AND q.target_room IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM due_actions d WHERE d.question_id = q.event_id "
            "AND d.kind = 'escalate')"
        ) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            return 0
        async with self._transaction():
            for event_id, room, specialty, forwarded in rows:
                steps = after.get((specialty or "").casefold(), default)
                for i, seconds in enumerate(steps):
                    await self._db.execute(
                        f"INSERT INTO due_actions ({_DUE}, state) "
                        "VALUES (?, 'escalate', ?, ?, ?, ?, ?, 'pending') "
                        "ON CONFLICT (key) DO NOTHING",
                        (
                            f"escalate:{event_id}:{i}",
                            event_id,
                            room,
                            i,
                            int(i == len(steps) - 1),
                            forwarded + int(seconds * 1000),
                        ),
                    )
        return len(rows)

    async def plan_solve_reminders(self, solve_after_s: float) -> None:
        """Keep the ✅ reminder of each answered, unsolved question due ``solve_after_s``
        after its last message (a pending one moves with new messages; a sent one stays)."""
        await self._write(
            f"INSERT INTO due_actions ({_DUE}, state) "
            "SELECT 'solve:' || q.event_id, 'solve', q.event_id, q.room_id, 0, 1, "
            "q.last_activity_ts + ?, 'pending' FROM questions q "
            "WHERE q.state = 'done' AND q.answers > 0 AND q.solved = 0 "
            "AND q.last_activity_ts IS NOT NULL "
            "ON CONFLICT (key) DO UPDATE SET due_ts = excluded.due_ts "
            "WHERE due_actions.state = 'pending' AND due_actions.due_ts <> excluded.due_ts",
            (int(solve_after_s * 1000),),
        )

    async def plan_digest(self, room_id: str, key: str, due_ts: int) -> None:
        """Record a room's next digest unless one is pending already."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT 1 FROM due_actions WHERE kind = 'digest' AND room_id = ? "
                "AND state = 'pending'",
                (room_id,),
            ) as cur:
                if await cur.fetchone() is not None:
                    return
            await self._db.execute(
                f"INSERT INTO due_actions ({_DUE}, state) "
                "VALUES (?, 'digest', NULL, ?, 0, 0, ?, 'pending') ON CONFLICT (key) DO NOTHING",
                (f"digest:{room_id}:{key}", room_id, due_ts),
            )

    async def due_actions(self, now: int, limit: int = 50) -> list[DueAction]:
        """Pending deadlines due at ``now``, earliest first."""
        async with self._db.execute(
            f"SELECT {_DUE} FROM due_actions WHERE state = 'pending' AND due_ts <= ? "
            "ORDER BY due_ts, key LIMIT ?",
            (now, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [DueAction(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    async def next_due_ts(self) -> int | None:
        """The earliest pending deadline (ms), if any."""
        async with self._db.execute(
            "SELECT MIN(due_ts) FROM due_actions WHERE state = 'pending'"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    async def reschedule(self, key: str, due_ts: int) -> None:
        """Move a pending deadline."""
        await self._write(
            "UPDATE due_actions SET due_ts = ? WHERE key = ? AND state = 'pending'", (due_ts, key)
        )

    async def settle(
        self,
        key: str,
        *,
        question_id: str | None = None,
        effects: Sequence[Outgoing] = (),
        pinged: Sequence[tuple[str, str]] = (),
        note: str | None = None,
        unless_answered: bool = False,
    ) -> bool:
        """Mark a deadline done (``skipped`` with a ``note``) and, in the same transaction,
        record its messages and the experts it pinged ((user, room)); False if it was
        settled already (nothing is recorded twice).

        ``unless_answered``: if the question got an answer or was solved since the caller
        read it, the deadline is skipped (note ``answered``) and nothing is sent or counted —
        checked in this transaction, so an answer recorded meanwhile always wins."""
        now = now_ms()
        async with self._transaction():
            if unless_answered and question_id is not None and effects:
                async with self._db.execute(
                    "SELECT answers, solved FROM questions WHERE event_id = ?", (question_id,)
                ) as cur:
                    row = await cur.fetchone()
                if row is None or int(row[0]) > 0 or bool(row[1]):
                    effects, pinged, note = (), (), "answered" if row else "redacted"
            cur = await self._db.execute(
                "UPDATE due_actions SET state = ?, done_ts = ?, note = ? "
                "WHERE key = ? AND state = 'pending'",
                ("skipped" if note else "done", now, note, key),
            )
            if cur.rowcount != 1:
                return False
            for e in effects:
                await self._drive(
                    self._insert_effect(
                        e.tx_id, question_id, e.kind, e.room_id, e.content, e.event_type, now
                    )
                )
            for user_id, room_id in pinged:
                await self._db.execute(
                    "INSERT INTO expert_pings (user_id, room_id, question_id, ts) "
                    "VALUES (?, ?, ?, ?)",
                    (user_id, room_id, question_id, now),
                )
        return True

    async def last_digest_ts(self, room_id: str) -> int | None:
        """When the room's last digest was settled (ms)."""
        async with self._db.execute(
            "SELECT MAX(done_ts) FROM due_actions WHERE kind = 'digest' AND room_id = ? "
            "AND state <> 'pending'",
            (room_id,),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    async def due_state(self, key: str) -> str | None:
        """A deadline's state (tests and tools)."""
        async with self._db.execute("SELECT state FROM due_actions WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    # -- experts -----------------------------------------------------------------------------

    async def expert_join(self, room_id: str, user_id: str, specialty: str) -> bool:
        """Volunteer in a room; False if already."""
        cur = await self._write(
            "INSERT INTO experts (room_id, user_id, specialty, joined_ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (room_id, user_id) DO NOTHING",
            (room_id, user_id, specialty, now_ms()),
        )
        return cur.rowcount == 1

    async def expert_leave(self, room_id: str, user_id: str) -> bool:
        """Stop volunteering in a room; False if one was not."""
        cur = await self._write(
            "DELETE FROM experts WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return cur.rowcount == 1

    async def expert_settings(self, user_id: str) -> tuple[str | None, tuple[int, int] | None]:
        """An expert's time zone and quiet hours."""
        async with self._db.execute(
            "SELECT timezone, quiet_start, quiet_end FROM expert_settings WHERE user_id = ?",
            (user_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None, None
        quiet = (int(row[1]), int(row[2])) if row[1] is not None and row[2] is not None else None
        return row[0], quiet

    async def set_expert_settings(
        self, user_id: str, *, timezone: str | None, quiet: tuple[int, int] | None
    ) -> None:
        """Set an expert's time zone and quiet hours (both, as given)."""
        start, end = quiet if quiet is not None else (None, None)
        await self._write(
            "INSERT INTO expert_settings (user_id, timezone, quiet_start, quiet_end) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "timezone = excluded.timezone, quiet_start = excluded.quiet_start, "
            "quiet_end = excluded.quiet_end",
            (user_id, timezone, start, end),
        )

    async def experts_in(self, room_id: str, now: int) -> list[Expert]:
        """A room's volunteer experts with their settings, last ping and pings in 24 hours."""
        async with self._db.execute(
            "SELECT e.user_id, e.room_id, s.timezone, s.quiet_start, s.quiet_end, e.joined_ts, "
            "(SELECT MAX(p.ts) FROM expert_pings p WHERE p.user_id = e.user_id), "
            "(SELECT COUNT(*) FROM expert_pings p WHERE p.user_id = e.user_id AND p.ts > ?) "
            "FROM experts e LEFT JOIN expert_settings s ON s.user_id = e.user_id "
            "WHERE e.room_id = ? ORDER BY e.joined_ts",
            (now - 86_400_000, room_id),
        ) as cur:
            rows = await cur.fetchall()
        return [
            Expert(
                user_id=r[0],
                room_id=r[1],
                timezone=r[2],
                quiet=(int(r[3]), int(r[4])) if r[3] is not None and r[4] is not None else None,
                joined_ts=int(r[5]),
                last_ping_ts=int(r[6]) if r[6] is not None else None,
                pings_today=int(r[7]),
            )
            for r in rows
        ]

    # -- open questions and figures ------------------------------------------------------------

    async def open_questions(
        self, room_id: str, *, unanswered_only: bool, limit: int
    ) -> tuple[list[QuestionRow], int]:
        """A specialty room's forwarded, unsolved questions (oldest first, at most ``limit``)
        and how many there are in all."""
        where = "target_room = ? AND state = 'done' AND solved = 0 AND forward_event_id IS NOT NULL"
        if unanswered_only:
            where += " AND answers = 0"
        async with self._db.execute(
            f"SELECT {QUESTION_COLUMNS} FROM questions WHERE {where} "
            "ORDER BY forwarded_ts, seq LIMIT ?",
            (room_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        async with self._db.execute(
            f"SELECT COUNT(*) FROM questions WHERE {where}", (room_id,)
        ) as cur:
            total = await cur.fetchone()
        return [question_from_row(r) for r in rows], int(total[0]) if total else 0

    async def solved_since(
        self, room_id: str, since: int, limit: int
    ) -> tuple[list[QuestionRow], int]:
        """A room's questions solved after ``since`` (ms), oldest first (at most ``limit``),
        and how many there are in all."""
        where = "target_room = ? AND solved = 1 AND solved_ts > ?"
        async with self._db.execute(
            f"SELECT {QUESTION_COLUMNS} FROM questions WHERE {where} ORDER BY solved_ts LIMIT ?",
            (room_id, since, limit),
        ) as cur:
            rows = await cur.fetchall()
        async with self._db.execute(
            f"SELECT COUNT(*) FROM questions WHERE {where}", (room_id, since)
        ) as cur:
            total = await cur.fetchone()
        return [question_from_row(r) for r in rows], int(total[0]) if total else 0

    async def stat_rows(self, since: int) -> list[StatRow]:
        """Forwarded questions asked after ``since`` (ms), for !stats."""
        async with self._db.execute(
            "SELECT COALESCE(specialty, ''), CASE WHEN created_ts > 0 THEN created_ts "
            "ELSE forwarded_ts END, first_answer_ts FROM questions "
            "WHERE forwarded_ts IS NOT NULL AND state = 'done' "
            "AND (CASE WHEN created_ts > 0 THEN created_ts ELSE forwarded_ts END) >= ?",
            (since,),
        ) as cur:
            rows = await cur.fetchall()
        return [StatRow(str(r[0]), int(r[1]), r[2]) for r in rows]
