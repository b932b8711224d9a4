"""Embedding vectors of questions (the hybrid related-threads engine), one per question.

A vector describes one revision of a question's text (``questions.revision``, else the event
ID): it is written only while that revision is the current one, so an embedding finished after
an edit never replaces the newer text's vector, and it is read back only with its model and
revision still current. Vectors are derived data of health texts: they go when the question
goes (``erase_question``).
"""

from __future__ import annotations

from peerbot.store.db import Connection, now_ms

__all__ = ["IndexableThread", "VectorQueries"]

IndexableThread = tuple[str, str, str, bool, str, bytes | None]
"""(event ID, room ID, text, solved, text revision, vector BLOB of the model or None)."""

# The revision a vector must carry to describe a question's current text.
_REVISION = "COALESCE(q.revision, q.event_id)"
# Written only while the question exists with that revision (INSERT ... SELECT), replacing the
# vector of an older revision or model.
_PUT = (
    "INSERT INTO question_vectors (event_id, model, revision, vector, updated_at) "
    f"SELECT q.event_id, ?, ?, ?, ? FROM questions q WHERE q.event_id = ? "
    f"AND q.body IS NOT NULL AND {_REVISION} = ? "
    "ON CONFLICT (event_id) DO UPDATE SET model = excluded.model, "
    "revision = excluded.revision, vector = excluded.vector, updated_at = excluded.updated_at"
)


class VectorQueries(Connection):
    """Store, read and drop questions' embedding vectors."""

    async def put_vector(self, event_id: str, revision: str, model: str, blob: bytes) -> bool:
        """Store the vector of one revision of a question's text; False if the question is gone
        or its text changed since (the vector describes an old text and is not kept)."""
        return await self.put_vectors([(event_id, revision, blob)], model) == 1

    async def put_vectors(self, rows: list[tuple[str, str, bytes]], model: str) -> int:
        """put_vector for many (event ID, revision, BLOB) in one transaction; how many kept."""
        kept = 0
        now = now_ms()
        async with self._transaction():
            for event_id, revision, blob in rows:
                cur = await self._db.execute(_PUT, (model, revision, blob, now, event_id, revision))
                kept += int(cur.rowcount == 1)
        return kept

    async def drop_vector(self, event_id: str) -> None:
        """Delete a question's vector (its text was edited, or it is being erased)."""
        await self._write("DELETE FROM question_vectors WHERE event_id = ?", (event_id,))

    async def vector_of(self, event_id: str) -> tuple[str, str, bytes] | None:
        """(model, revision, BLOB) stored for a question, current or not (tests, tools)."""
        async with self._db.execute(
            "SELECT model, revision, vector FROM question_vectors WHERE event_id = ?",
            (event_id,),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else (str(row[0]), str(row[1]), bytes(row[2]))

    async def vector_count(self, model: str | None = None) -> int:
        """How many vectors are stored (of one model, if given)."""
        sql = "SELECT COUNT(*) FROM question_vectors"
        params: tuple[str, ...] = ()
        if model is not None:
            sql += " WHERE model = ?"
            params = (model,)
        async with self._db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def indexable_with_vectors(self, model: str) -> list[IndexableThread]:
        """Every question with a text, oldest first, with its vector when one of this model
        describes its current text (else None: embed it again)."""
        async with self._db.execute(
            f"SELECT q.event_id, q.room_id, q.body, q.solved, {_REVISION}, v.vector "
            "FROM questions q LEFT JOIN question_vectors v ON v.event_id = q.event_id "
            f"AND v.model = ? AND v.revision = {_REVISION} "
            "WHERE q.body IS NOT NULL ORDER BY q.seq",
            (model,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            (
                str(r[0]),
                str(r[1]),
                str(r[2]),
                bool(r[3]),
                str(r[4]),
                None if r[5] is None else bytes(r[5]),
            )
            for r in rows
        ]

    async def unembedded(self, model: str) -> list[tuple[str, str, str]]:
        """(event ID, text revision, text) of questions with no current vector of the model."""
        async with self._db.execute(
            f"SELECT q.event_id, {_REVISION}, q.body FROM questions q "
            "LEFT JOIN question_vectors v ON v.event_id = q.event_id AND v.model = ? "
            f"AND v.revision = {_REVISION} "
            "WHERE q.body IS NOT NULL AND v.event_id IS NULL ORDER BY q.seq",
            (model,),
        ) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
