"""The connection core of the store: opening, the instance lock, migrations, transactions, kv.

The query groups (``questions``, ``effects``, ``threads``, ``overrides``, ``undecryptable``...)
are mixins over :class:`Connection`; :class:`peerbot.store.Store` puts them together. This
package is the only place that imports aiosqlite (and asyncpg).

Two backends behind one seam, ``self._db.execute(sql, params)``: an aiosqlite connection (the
embedded default), or :class:`peerbot.store.postgres.PgDriver` when ``storage.database`` is a
``postgresql://`` URL, which runs the same SQLite-flavoured query text (its docstring lists what
is translated and how a migration gets a PostgreSQL twin). On SQLite a lock file keeps a second
instance out; on PostgreSQL several instances may open the database and
:class:`peerbot.store.leader.Leadership` decides which one runs.

long: the connection core holds both backends' opening, the migrations of each and the one-trip
transaction plans; the drivers themselves live in ``driver.py`` and ``postgres.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from peerbot.store.driver import Cursor, Done, Driver, Plan, drive_sync
from peerbot.store.postgres import (
    PgDriver,
    connect,
    has_code,
    is_postgres_url,
    redact,
    translate_ddl,
)

__all__ = ["Connection", "Database", "StoreError", "now_ms", "unavailable"]

log = logging.getLogger("peerbot.store")

# Held (transaction-level) while a PostgreSQL instance migrates: two instances starting together
# must not both apply a migration.
_MIGRATION_LOCK = 0x70656572_626F7401

_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The database cannot be used; the message says why and what to do.

    ``transient`` is True when trying again later may work (a PostgreSQL server not reachable
    or still starting), False for what needs the operator (bad password, no such database).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be used right now (locked, out of space,
    an I/O error, a PostgreSQL connection lost or the server shutting down), not that the
    work was wrong: what failed should be tried again later, never skipped."""
    if isinstance(exc, StoreError):
        return exc.transient
    if isinstance(exc, sqlite3.OperationalError | ConnectionError | TimeoutError):
        return True
    # asyncpg's, by name (it is an optional dependency): InterfaceError "the underlying
    # connection is closed"; PostgresConnectionError and its ConnectionDoesNotExistError;
    # class 57 "operator intervention" (admin shutdown, crash shutdown, cannot connect now);
    # InternalClientError, what a connection the server just ended may say first.
    names = {klass.__name__ for klass in type(exc).__mro__}
    return bool(names & _PG_UNAVAILABLE)


_PG_UNAVAILABLE = frozenset(
    {
        "InterfaceError",
        "InternalClientError",
        "PostgresConnectionError",
        "OperatorInterventionError",
    }
)


def now_ms() -> int:
    """Wall-clock milliseconds, as the tables store times."""
    return int(time.time() * 1000)


def _migrations(dialect: str = "sqlite") -> list[tuple[int, str]]:
    """(version, SQL) of every migration; on PostgreSQL translated, or its hand-written twin."""
    folder = resources.files("peerbot.store") / "migrations"
    found: dict[int, str] = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found[int(name[:4])] = entry.read_text(encoding="utf-8")
    if dialect == "postgresql":
        found = {v: translate_ddl(sql) for v, sql in found.items()}
        twins = folder / "postgresql"
        if twins.is_dir():
            for entry in twins.iterdir():
                name = entry.name
                if name.endswith(".sql") and name[:4].isdigit():
                    found[int(name[:4])] = entry.read_text(encoding="utf-8")
    return sorted(found.items())


def _to_apply(current: int, dialect: str) -> list[tuple[int, str]]:
    """The migrations after ``current``; StoreError when the database is newer than the code."""
    migrations = _migrations(dialect)
    latest = migrations[-1][0] if migrations else 0
    if current > latest:
        raise StoreError(
            f"storage.database: schema version {current} is newer than this PeerBot "
            f"knows ({latest}); upgrade PeerBot"
        )
    return [(v, sql) for v, sql in migrations if v > current]


class Connection:
    """The one shared connection and the two ways to write on it."""

    _db: Driver
    backend: str  # "sqlite" | "postgresql"
    # One connection is shared by the sync handlers, the worker and the parallel
    # acknowledgements: a transaction must not interleave with another one, and a lone
    # write must not land inside (and be rolled back with) someone else's transaction.
    _write_lock: asyncio.Lock

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

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """One write statement in its own (autocommit) transaction, never inside another."""
        async with self._write_lock:
            return await self._db.execute(sql, params)

    # Each await on aiosqlite is a trip to its thread and back (a queue put, a wake-up, a
    # call_soon_threadsafe): BEGIN, two INSERTs and COMMIT were four trips, a read with
    # ``async with execute() as cur: fetchone()`` three. On the path of every question these
    # trips, not SQLite, were most of PeerBot's own time (bench_load.py --profile; README,
    # benchmark section): the helpers below make each transaction and each read one trip.

    async def _atomic(self, plan: Callable[[], Plan[_T]]) -> _T:
        """The statements ``plan()`` yields, between BEGIN IMMEDIATE and COMMIT (ROLLBACK on any
        error), alone on the connection; what the plan returns.

        A plan is a generator: it yields ``(sql, params)`` and is sent back each statement's
        :class:`Done` (its rows, read to the end, and its row count), so it can decide on what
        it read. The same plan runs on both backends:

        * SQLite: the whole plan on aiosqlite's thread, in one trip (the plan's own code then
          runs on that thread: plain Python only, nothing that awaits). A cancelled caller
          cannot leave the transaction open, as a cancel between the awaits of
          :meth:`_transaction` could: the thread runs the plan to COMMIT or ROLLBACK anyway.
        * PostgreSQL (asyncpg has no thread to hand work to): :meth:`_transaction`, each
          statement awaited in turn (:meth:`_drive`).
        """
        db = self._db
        if not isinstance(db, aiosqlite.Connection):
            async with self._transaction():
                return await self._drive(plan())

        def run() -> _T:
            conn = db._conn  # on the database thread, as aiosqlite's own calls do
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = drive_sync(conn, plan())
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT too: the connection is never left inside a transaction.
                conn.execute("ROLLBACK")
                raise
            return result

        async with self._write_lock:
            # aiosqlite has no public "run this on the connection's thread"; _execute is what
            # its own execute() and commit() use (aiosqlite 0.20 to 0.22; test_store_trips.py
            # checks it, so an aiosqlite that drops it fails there, loudly).
            result: _T = await db._execute(run)  # type: ignore[no-untyped-call]
            return result

    async def _drive(self, plan: Plan[_T]) -> _T:
        """Run a plan's statements one await each, inside the caller's transaction (the
        PostgreSQL form of :meth:`_atomic`, and a plan inside a :meth:`_transaction`)."""
        try:
            statement = next(plan)
            while True:
                cur = await self._db.execute(*statement)
                statement = plan.send(Done(list(await cur.fetchall()), cur.rowcount))
        except StopIteration as stop:
            result: _T = stop.value
            return result

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read, in one trip (execute, fetchall and close together); on
        PostgreSQL, PgDriver's execute_fetchall."""
        return list(await self._db.execute_fetchall(sql, params))

    async def _row(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row of one read (or None), in one trip."""
        rows = await self._db.execute_fetchall(sql, params)
        return next(iter(rows), None)


class Database(Connection):
    """Opening and closing, migrations, the key/value table and the handled events."""

    def __init__(self, db: Any, path: Path | None, lock_fd: int, *, url: str | None = None) -> None:
        self._db = db
        self.path = path
        self.url = url
        self.backend = "sqlite" if url is None else "postgresql"
        self._lock_fd = lock_fd
        self._write_lock = asyncio.Lock()

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(cls, target: Path | str, *, password: str | None = None) -> Self:
        """Open (creating if needed) and migrate the database; refuse a second instance.

        ``target`` is a SQLite file, or a ``postgresql://`` URL (``password`` then, if given,
        wins over the URL's).
        """
        if is_postgres_url(target):
            return await cls._open_postgres(str(target), password)
        path = Path(target)
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

    @classmethod
    async def _open_postgres(cls, url: str, password: str | None) -> Self:
        try:
            conn = await connect(url, password)
        except ImportError as exc:
            raise StoreError(str(exc)) from None
        except (TimeoutError, OSError) as exc:
            raise StoreError(
                f"storage.database: cannot reach PostgreSQL at {redact(url)}: {exc}",
                transient=True,
            ) from exc
        except Exception as exc:  # asyncpg's own errors: bad password, no such database...
            # "the database system is starting up / shutting down": worth waiting for.
            starting = type(exc).__name__ == "CannotConnectNowError"
            raise StoreError(
                f"storage.database: cannot open {redact(url)}: {exc}", transient=starting
            ) from exc
        store = cls(PgDriver(conn), None, -1, url=url)
        try:
            await store._setup_postgres()
        except BaseException:
            await conn.close()
            raise
        return store

    async def _setup_postgres(self) -> None:
        driver = self._db
        assert isinstance(driver, PgDriver)
        async with self._transaction():
            await driver.script(
                f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK}); "
                "CREATE TABLE IF NOT EXISTS peerbot_schema (version BIGINT NOT NULL); "
                "INSERT INTO peerbot_schema (version) SELECT 0 "
                "WHERE NOT EXISTS (SELECT 1 FROM peerbot_schema)"
            )
            current = await self.schema_version()
            for version, sql in _to_apply(current, "postgresql"):
                log.info("Applying database migration %04d (PostgreSQL)", version)
                for statement in _split_sql(sql):
                    if has_code(statement):  # not a trailing comment alone
                        await driver.script(statement)
                await driver.script(f"UPDATE peerbot_schema SET version = {int(version)}")

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

    async def _setup(self) -> None:
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        # Deleted rows (an erased question) are overwritten with zeros, not left in free
        # pages: Debian's SQLite does it by default, other builds (python.org's, macOS) do not.
        await self._db.execute("PRAGMA secure_delete=ON")
        async with self._db.execute("PRAGMA quick_check") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {row}")
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in _to_apply(current, "sqlite"):
            log.info("Applying database migration %04d", version)
            async with self._transaction():
                for statement in _split_sql(sql):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version={version}")

    @property
    def broken(self) -> bool:
        """True once a PostgreSQL connection is closed under the store (the server ended the
        session or went away); it is not reopened in place, :mod:`peerbot.store.leader` notices
        and the runner starts over. Never on SQLite."""
        return isinstance(self._db, PgDriver) and self._db.closed

    async def close(self) -> None:
        """Close the connection and release the instance lock (SQLite)."""
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
        sql = "SELECT version FROM peerbot_schema" if self.url else "PRAGMA user_version"
        async with self._db.execute(sql) as cur:
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
        row = await self._row("SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,))
        return row is not None

    async def mark_handled(self, event_id: str, room_id: str) -> None:
        """Remember that this event was acted on."""
        await self._write(
            "INSERT OR IGNORE INTO handled_events (event_id, room_id, handled_at) VALUES (?, ?, ?)",
            (event_id, room_id, now_ms()),
        )

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
