"""Encrypted events the bot could not decrypt yet (never their content)."""

from __future__ import annotations

from peerbot.core.records import UndecryptableRow
from peerbot.store.db import Connection, now_ms

__all__ = ["UndecryptableQueries"]


class UndecryptableQueries(Connection):
    """Undecryptable events: recorded, retried, dropped once readable."""

    # -- undecryptable events ----------------------------------------------------------------

    async def add_undecryptable(
        self,
        *,
        event_id: str,
        room_id: str,
        sender: str,
        session_id: str,
        sender_key: str,
    ) -> bool:
        """Record an event the bot cannot decrypt yet; False when it was already recorded."""
        cur = await self._write(
            "INSERT OR IGNORE INTO undecryptable (event_id, room_id, sender, session_id, "
            "sender_key, first_seen) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, room_id, sender, session_id, sender_key, now_ms()),
        )
        return cur.rowcount == 1

    async def undecryptable(self, limit: int = 200) -> list[UndecryptableRow]:
        """Recorded undecryptable events, oldest first."""
        async with self._db.execute(
            "SELECT event_id, room_id, sender, session_id, sender_key, first_seen, attempts "
            "FROM undecryptable ORDER BY first_seen LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            UndecryptableRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], r[6])
            for r in rows
        ]

    async def undecryptable_attempt(self, event_id: str) -> None:
        """Count one more failed try to decrypt the event."""
        await self._write(
            "UPDATE undecryptable SET attempts = attempts + 1 WHERE event_id = ?",
            (event_id,),
        )

    async def drop_undecryptable(self, event_id: str) -> None:
        """Forget an event that is now decrypted (or given up)."""
        await self._write("DELETE FROM undecryptable WHERE event_id = ?", (event_id,))
