"""Thread state for the related-threads index: texts, routes learnt, replies, solved."""

from __future__ import annotations

from peerbot.store.db import Connection, now_ms

__all__ = ["ThreadQueries"]


class ThreadQueries(Connection):
    """What the related-threads index and the learning routers read, and reply counts."""

    # -- thread state (related threads) --------------------------------------------------------

    async def indexable(self) -> list[tuple[str, str, str, bool]]:
        """(event ID, room ID, text, solved) of every question with a text, oldest first."""
        async with self._db.execute(
            "SELECT event_id, room_id, body, solved FROM questions "
            "WHERE body IS NOT NULL ORDER BY seq"
        ) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows]

    async def routed_examples(self) -> list[tuple[str, str]]:
        """(text, specialty) of every question routed to a specialty, for learning routers."""
        async with self._db.execute(
            "SELECT body, specialty FROM questions WHERE body IS NOT NULL "
            "AND specialty IS NOT NULL AND state IN ('done', 'imported') ORDER BY seq"
        ) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    async def add_reply(self, question_id: str, reply_event_id: str, room_id: str) -> bool:
        """Count a reply in a question's thread once; False if it was counted already."""
        async with self._transaction():
            cur = await self._db.execute(
                "INSERT OR IGNORE INTO handled_events (event_id, room_id, handled_at) "
                "VALUES (?, ?, ?)",
                (reply_event_id, room_id, now_ms()),
            )
            counted = cur.rowcount == 1
            if counted:
                await self._db.execute(
                    "UPDATE questions SET replies = replies + 1 WHERE event_id = ?",
                    (question_id,),
                )
        return counted

    async def set_thread_state(
        self,
        event_id: str,
        *,
        replies: int | None = None,
        solved: bool | None = None,
        solved_by: str | None = None,
    ) -> None:
        """Set a thread's reply count and solved state (imports)."""
        if replies is not None:
            await self._write(
                "UPDATE questions SET replies = MAX(replies, ?) WHERE event_id = ?",
                (replies, event_id),
            )
        if solved is not None:
            await self._write(
                "UPDATE questions SET solved = ?, solved_by = ? WHERE event_id = ?",
                (int(solved), solved_by, event_id),
            )
