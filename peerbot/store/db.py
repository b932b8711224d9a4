"""The only module that talks to the database (aiosqlite, WAL, versioned migrations)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Self

import aiosqlite

from peerbot.core.lifecycle import Step
from peerbot.core.records import (
    Effect,
    IntakeOverride,
    QuestionRow,
    QuestionState,
    RouteOverride,
    RouteRecord,
    UndecryptableRow,
)

__all__ = [
    "Effect",
    "IntakeOverride",
    "QuestionRow",
    "QuestionState",
    "RouteOverride",
    "Store",
    "StoreError",
    "UndecryptableRow",
]

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("peerbot.store") / "migrations"
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


_Q_COLS = (
    "seq, event_id, room_id, sender, sender_name, body, created_ts, trigger_event_id, state, "
    "specialty, target_room, decision, forward_event_id, ack_event_id, replies, solved, solved_by, "
    "revision, guard_override, corrected"
)
_E_COLS = "seq, tx_id, question_id, kind, room_id, content, state, event_id, attempts, event_type"


def _question(row: sqlite3.Row | tuple[Any, ...]) -> QuestionRow:
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
    )


def _effect(row: sqlite3.Row | tuple[Any, ...]) -> Effect:
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


class Store:
    """PeerBot's SQLite database: open with ``async with Store.open(path) as store``."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_fd: int) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        # One connection is shared by the sync handlers, the worker and the parallel
        # acknowledgements: a transaction must not interleave with another one, and a lone
        # write must not land inside (and be rolled back with) someone else's transaction.
        self._write_lock = asyncio.Lock()

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Self:
        """Open (creating if needed) and migrate the database; refuse a second instance."""
        lock_fd = cls._prepare(path)
        try:
            try:
                db = await aiosqlite.connect(path, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(f"storage.database: cannot open {path}: {exc}") from exc
            store = cls(db, path, lock_fd)
            try:
                await store._setup()
            except sqlite3.DatabaseError as exc:
                await db.close()
                raise StoreError(f"storage.database: cannot use {path}: {_hint(exc)}") from exc
            cls._restrict(path)
            return store
        except BaseException:
            os.close(lock_fd)
            raise

    @staticmethod
    def _prepare(path: Path) -> int:
        """Check the folder, take the instance lock, create the file owner-only."""
        if not path.parent.is_dir():
            raise StoreError(
                f"storage.database: the folder {path.parent} does not exist; create it first"
            )
        lock_path = Path(str(path) + ".lock")
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise StoreError(
                f"storage.database: cannot create the lock file {lock_path}: {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"storage.database: {path} is in use by another PeerBot instance; "
                "only one may run on a database"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        exists = path.exists()
        try:
            # Created owner-only before SQLite touches it: it holds health information.
            os.close(os.open(path, os.O_RDWR if exists else os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            os.close(fd)
            if exists and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StoreError(
                    f"storage.database: {path} is read-only for this user ({exc.strerror}); "
                    "PeerBot must be able to write its database"
                ) from exc
            raise StoreError(f"storage.database: cannot create {path}: {exc.strerror}") from exc
        return fd

    @staticmethod
    def _restrict(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(str(path) + suffix, 0o600)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, alone on the connection; ROLLBACK on any error."""
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Cursor:
        """One write statement in its own (autocommit) transaction, never inside another."""
        async with self._write_lock:
            return await self._db.execute(sql, params)

    async def _setup(self) -> None:
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        async with self._db.execute("PRAGMA quick_check") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {row}")
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        migrations = _migrations()
        latest = migrations[-1][0] if migrations else 0
        if current > latest:
            raise StoreError(
                f"storage.database: schema version {current} is newer than this PeerBot "
                f"knows ({latest}); upgrade PeerBot"
            )
        for version, sql in migrations:
            if version <= current:
                continue
            log.info("Applying database migration %04d", version)
            async with self._transaction():
                for statement in _split_sql(sql):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version={version}")

    async def close(self) -> None:
        """Close the connection and release the instance lock."""
        try:
            await self._db.close()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """The applied schema version."""
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- key/value ---------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        """A stored value (sync token, device ID...)."""
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def put(self, key: str, value: str) -> None:
        """Store a value."""
        await self._write(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def delete(self, key: str) -> None:
        """Forget a value."""
        await self._write("DELETE FROM kv WHERE key = ?", (key,))

    # -- handled events ----------------------------------------------------------------------

    async def is_handled(self, event_id: str) -> bool:
        """True when this event was already acted on."""
        async with self._db.execute(
            "SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,)
        ) as cur:
            return await cur.fetchone() is not None

    async def mark_handled(self, event_id: str, room_id: str) -> None:
        """Remember that this event was acted on."""
        await self._write(
            "INSERT OR IGNORE INTO handled_events (event_id, room_id, handled_at) VALUES (?, ?, ?)",
            (event_id, room_id, _now_ms()),
        )

    # -- questions ---------------------------------------------------------------------------

    async def add_question(
        self,
        *,
        event_id: str,
        room_id: str,
        trigger_event_id: str,
        sender: str | None,
        body: str | None,
        created_ts: int,
    ) -> bool:
        """Record a new question and mark its trigger handled; False if it was known."""
        async with self._transaction():
            cur = await self._db.execute(
                "INSERT OR IGNORE INTO questions (event_id, room_id, sender, body, created_ts, "
                "trigger_event_id, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'new', ?)",
                (event_id, room_id, sender, body, created_ts, trigger_event_id, _now_ms()),
            )
            added = cur.rowcount == 1
            await self._db.execute(
                "INSERT OR IGNORE INTO handled_events (event_id, room_id, handled_at) "
                "VALUES (?, ?, ?)",
                (trigger_event_id, room_id, _now_ms()),
            )
        return added

    async def question(self, event_id: str) -> QuestionRow | None:
        """A question by its event ID."""
        async with self._db.execute(
            f"SELECT {_Q_COLS} FROM questions WHERE event_id = ?", (event_id,)
        ) as cur:
            row = await cur.fetchone()
        return _question(row) if row else None

    async def questions_in_state(self, *states: str, limit: int = 100) -> list[QuestionRow]:
        """Questions waiting for work, oldest first."""
        marks = ",".join("?" * len(states))
        async with self._db.execute(
            f"SELECT {_Q_COLS} FROM questions WHERE state IN ({marks}) ORDER BY seq LIMIT ?",
            (*states, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_question(r) for r in rows]

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
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown question columns: {sorted(unknown)}")
        if "decision" in fields and fields["decision"] is not None:
            fields["decision"] = json.dumps(fields["decision"], ensure_ascii=False)
        fields["updated_at"] = _now_ms()
        sets = ", ".join(f"{k} = ?" for k in fields)
        await self._write(
            f"UPDATE questions SET {sets} WHERE event_id = ?", (*fields.values(), event_id)
        )

    async def count_questions(self) -> int:
        """How many questions are stored."""
        async with self._db.execute("SELECT COUNT(*) FROM questions") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- the outbox --------------------------------------------------------------------------

    async def add_effect(
        self,
        *,
        tx_id: str,
        kind: str,
        room_id: str,
        content: dict[str, Any],
        question_id: str | None = None,
        question_state: str | None = None,
        event_type: str = "m.room.message",
    ) -> Effect:
        """Record a message to send (idempotent on tx_id) and optionally move its question on."""
        now = _now_ms()
        async with self._transaction():
            await self._db.execute(
                "INSERT OR IGNORE INTO effects (tx_id, question_id, kind, room_id, content, "
                "state, created_at, updated_at, event_type) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (
                    tx_id,
                    question_id,
                    kind,
                    room_id,
                    json.dumps(content, ensure_ascii=False),
                    now,
                    now,
                    event_type,
                ),
            )
            if question_id is not None and question_state is not None:
                await self._db.execute(
                    "UPDATE questions SET state = ?, updated_at = ? WHERE event_id = ?",
                    (question_state, now, question_id),
                )
        effect = await self.effect(tx_id)
        assert effect is not None
        return effect

    async def apply(self, question_id: str, step: Step) -> None:
        """A lifecycle step in one transaction: the question's new columns and its effects.

        Effects are recorded once (idempotent on tx_id), so applying a step again after a crash
        records nothing twice; the outbox sends them.
        """
        now = _now_ms()
        columns = step.columns()
        if "decision" in columns:
            columns["decision"] = json.dumps(columns["decision"], ensure_ascii=False)
        columns["updated_at"] = now
        sets = ", ".join(f"{k} = ?" for k in columns)
        async with self._transaction():
            await self._db.execute(
                f"UPDATE questions SET {sets} WHERE event_id = ?", (*columns.values(), question_id)
            )
            for e in step.effects:
                await self._db.execute(
                    "INSERT OR IGNORE INTO effects (tx_id, question_id, kind, room_id, content, "
                    "state, created_at, updated_at, event_type) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (
                        e.tx_id,
                        question_id,
                        e.kind,
                        e.room_id,
                        json.dumps(dict(e.content), ensure_ascii=False),
                        now,
                        now,
                        e.event_type,
                    ),
                )

    async def effect(self, tx_id: str) -> Effect | None:
        """An effect by its transaction ID."""
        async with self._db.execute(
            f"SELECT {_E_COLS} FROM effects WHERE tx_id = ?", (tx_id,)
        ) as cur:
            row = await cur.fetchone()
        return _effect(row) if row else None

    async def pending_effects(self, limit: int = 100) -> list[Effect]:
        """Effects not yet sent, oldest first."""
        async with self._db.execute(
            f"SELECT {_E_COLS} FROM effects WHERE state = 'pending' ORDER BY seq LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [_effect(r) for r in rows]

    async def effect_attempt(self, tx_id: str, error: str | None) -> None:
        """Count a send attempt (and its error)."""
        await self._write(
            "UPDATE effects SET attempts = attempts + 1, error = ?, updated_at = ? WHERE tx_id = ?",
            (error, _now_ms(), tx_id),
        )

    async def effect_done(self, tx_id: str, event_id: str) -> None:
        """Mark an effect sent, with the event it created."""
        await self._write(
            "UPDATE effects SET state = 'done', event_id = ?, error = NULL, updated_at = ? "
            "WHERE tx_id = ?",
            (event_id, _now_ms(), tx_id),
        )

    async def effect_failed(self, tx_id: str, error: str) -> None:
        """Give up on an effect that can never be sent (the room is gone, forbidden...)."""
        await self._write(
            "UPDATE effects SET state = 'failed', error = ?, updated_at = ? WHERE tx_id = ?",
            (error, _now_ms(), tx_id),
        )

    async def effects_for(self, question_id: str) -> list[Effect]:
        """Every effect of a question."""
        async with self._db.execute(
            f"SELECT {_E_COLS} FROM effects WHERE question_id = ? ORDER BY seq", (question_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [_effect(r) for r in rows]

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
                (reply_event_id, room_id, _now_ms()),
            )
            counted = cur.rowcount == 1
            if counted:
                await self._db.execute(
                    "UPDATE questions SET replies = replies + 1 WHERE event_id = ?",
                    (question_id,),
                )
        return counted

    async def question_solved_by(self, solved_by: str) -> QuestionRow | None:
        """The question solved by this reaction or command event."""
        async with self._db.execute(
            f"SELECT {_Q_COLS} FROM questions WHERE solved_by = ?", (solved_by,)
        ) as cur:
            row = await cur.fetchone()
        return _question(row) if row else None

    async def question_by_forward(self, forward_event_id: str) -> QuestionRow | None:
        """The question whose forward is this event."""
        async with self._db.execute(
            f"SELECT {_Q_COLS} FROM questions WHERE forward_event_id = ?", (forward_event_id,)
        ) as cur:
            row = await cur.fetchone()
        return _question(row) if row else None

    async def erase_question(self, event_id: str) -> QuestionRow | None:
        """Delete a redacted question and every copy of its text; return what it was."""
        row = await self.question(event_id)
        if row is None:
            return None
        async with self._transaction():
            await self._db.execute("DELETE FROM questions WHERE event_id = ?", (event_id,))
            # Effects quote the text: keep only what re-sending needs to stay idempotent.
            await self._db.execute(
                "UPDATE effects SET content = '{}', state = CASE state WHEN 'pending' "
                "THEN 'failed' ELSE state END, error = 'redacted' WHERE question_id = ?",
                (event_id,),
            )
        # Overwrite freed pages so the text does not linger in the file.
        await self._write("PRAGMA wal_checkpoint(TRUNCATE)")
        return row

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
            (event_id, room_id, sender, body, created_ts, event_id, _now_ms()),
        )
        return cur.rowcount == 1

    # -- admin overrides ---------------------------------------------------------------------

    async def route_overrides(self) -> list[RouteOverride]:
        """Specialties changed in chat, oldest change first."""
        async with self._db.execute(
            "SELECT name, room, keywords, removed FROM route_overrides ORDER BY changed_at"
        ) as cur:
            rows = await cur.fetchall()
        return [
            RouteOverride(str(r[0]), str(r[1]), tuple(json.loads(r[2])), bool(r[3])) for r in rows
        ]

    async def set_route_override(
        self, name: str, room: str, keywords: Sequence[str], *, removed: bool, by: str
    ) -> None:
        """Record a specialty's new definition (or its removal)."""
        await self._write(
            "INSERT INTO route_overrides (name_key, name, room, keywords, removed, changed_by, "
            "changed_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name_key) DO UPDATE SET "
            "name = excluded.name, room = excluded.room, keywords = excluded.keywords, "
            "removed = excluded.removed, changed_by = excluded.changed_by, "
            "changed_at = excluded.changed_at",
            (
                name.casefold(),
                name,
                room,
                json.dumps(list(keywords), ensure_ascii=False),
                int(removed),
                by,
                _now_ms(),
            ),
        )

    async def intake_overrides(self) -> list[IntakeOverride]:
        """Intake switched on or off in chat."""
        async with self._db.execute(
            "SELECT room_id, enabled, trigger, hashtags FROM intake_overrides"
        ) as cur:
            rows = await cur.fetchall()
        return [
            IntakeOverride(str(r[0]), bool(r[1]), str(r[2]), tuple(json.loads(r[3]))) for r in rows
        ]

    async def set_intake_override(
        self, room_id: str, *, enabled: bool, trigger: str, hashtags: Sequence[str], by: str
    ) -> None:
        """Switch intake on or off for a room."""
        await self._write(
            "INSERT INTO intake_overrides (room_id, enabled, trigger, hashtags, changed_by, "
            "changed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(room_id) DO UPDATE SET "
            "enabled = excluded.enabled, trigger = excluded.trigger, "
            "hashtags = excluded.hashtags, changed_by = excluded.changed_by, "
            "changed_at = excluded.changed_at",
            (room_id, int(enabled), trigger, json.dumps(list(hashtags)), by, _now_ms()),
        )

    # -- undecryptable events ----------------------------------------------------------------

    async def add_undecryptable(
        self, *, event_id: str, room_id: str, sender: str, session_id: str, sender_key: str
    ) -> bool:
        """Record an event the bot cannot decrypt yet; False when it was already recorded."""
        cur = await self._write(
            "INSERT OR IGNORE INTO undecryptable (event_id, room_id, sender, session_id, "
            "sender_key, first_seen) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, room_id, sender, session_id, sender_key, _now_ms()),
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
            "UPDATE undecryptable SET attempts = attempts + 1 WHERE event_id = ?", (event_id,)
        )

    async def drop_undecryptable(self, event_id: str) -> None:
        """Forget an event that is now decrypted (or given up)."""
        await self._write("DELETE FROM undecryptable WHERE event_id = ?", (event_id,))

    async def execute_script(self, statements: Sequence[str]) -> None:
        """Run maintenance statements (tests and tools only)."""
        async with self._write_lock:
            for statement in statements:
                await self._db.execute(statement)


def _hint(exc: sqlite3.DatabaseError) -> str:
    msg = str(exc)
    if "readonly" in msg or "read-only" in msg:
        return f"the file or its folder is read-only for this user ({msg})"
    if "not a database" in msg or "malformed" in msg:
        return f"the file is not a PeerBot database or is corrupt; restore a backup ({msg})"
    if "locked" in msg:
        return f"another program holds a lock on it ({msg})"
    return msg


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (no semicolons inside literals in our files)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
