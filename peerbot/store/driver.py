"""What the store's connection runs on: the driver both backends offer (aiosqlite's connection,
or :class:`peerbot.store.postgres.PgDriver`), and a transaction written once as a plan (see
:meth:`peerbot.store.db.Connection._atomic`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

__all__ = ["Cursor", "Done", "Driver", "Execution", "Plan", "Statement", "drive_sync"]

_T = TypeVar("_T")


class Cursor(Protocol):
    """What a statement gives back (aiosqlite's cursor, or postgres.PgCursor)."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Any: ...


class Execution(Protocol):
    """``execute``'s result: awaited, or used as ``async with ... as cur``."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...

    async def __aenter__(self) -> Cursor: ...

    async def __aexit__(self, *exc: Any) -> Any: ...


class Driver(Protocol):
    """The one method the query groups use: aiosqlite's ``execute`` (or PgDriver's)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Execution: ...

    async def execute_fetchall(self, sql: str, parameters: Any = ..., /) -> Iterable[Any]: ...

    async def close(self) -> None: ...


class Done:
    """What one statement of a plan gave: its rows (read to the end) and its row count."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount


Statement = tuple[str, Sequence[Any]]
"""One statement of a plan: SQL text (``?`` placeholders) and its parameters."""

Plan: TypeAlias = Generator[Statement, Done, _T]
"""A transaction's statements as a generator (see :meth:`Connection._atomic`)."""


def drive_sync(conn: sqlite3.Connection, plan: Plan[_T]) -> _T:
    """Run a plan on the database thread. Every statement's rows are read to the end: a
    statement left mid-step would make the COMMIT fail ("SQL statements in progress")."""
    try:
        statement = next(plan)
        while True:
            cur = conn.execute(*statement)
            statement = plan.send(Done(cur.fetchall(), cur.rowcount))
    except StopIteration as stop:
        result: _T = stop.value
        return result
