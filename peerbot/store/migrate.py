"""``peerbot migrate-store``: copy a SQLite database into PostgreSQL, then check the copy.

Both ends are opened as stores first (the SQLite file's lock proves no bot runs on it; both are
migrated to the same schema version). Every table of the SQLite file is copied with COPY (a table
after those its foreign keys reference: ``question_vectors`` after ``questions``), the
identity sequences are moved past the copied keys, and the copy is checked: the row count of
every table, and a sample of rows (evenly spread over the primary key) compared column by
column. A target that already holds rows is refused unless ``replace`` is given, which empties
it first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerbot.store.db import Database, StoreError
from peerbot.store.postgres import PgDriver, pg_value, redact

__all__ = ["MigrationReport", "TableReport", "migrate_store"]

log = logging.getLogger("peerbot.store")

_BATCH = 2000
_SAMPLE = 50


@dataclass(frozen=True)
class TableReport:
    """What happened to one table."""

    table: str
    source_rows: int
    target_rows: int
    sampled: int
    mismatches: int

    @property
    def ok(self) -> bool:
        """Counts equal and every sampled row identical."""
        return self.source_rows == self.target_rows and self.mismatches == 0

    def line(self) -> str:
        """One line for the operator."""
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.table}: {self.source_rows} row(s) in SQLite, {self.target_rows} in "
            f"PostgreSQL, {self.sampled} sampled, {self.mismatches} different: {verdict}"
        )


@dataclass
class MigrationReport:
    """Every table's report."""

    tables: list[TableReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every table checks out."""
        return all(t.ok for t in self.tables)

    def lines(self) -> list[str]:
        """The report, one line per table and a verdict."""
        out = [t.line() for t in self.tables]
        total = sum(t.source_rows for t in self.tables)
        out.append(
            f"copied {total} row(s) in {len(self.tables)} table(s): "
            + ("the copy checks out" if self.ok else "THE COPY DIFFERS, do not use it")
        )
        return out


async def _rows(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with db._db.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def _sqlite_tables(src: Database) -> list[tuple[str, list[str], list[str]]]:
    """(table, columns, primary-key columns) of every table of the SQLite file, a table after
    those its foreign keys reference (PostgreSQL checks them row by row during the COPY)."""
    names = await _rows(
        src,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name",
    )
    found: dict[str, tuple[str, list[str], list[str]]] = {}
    refs: dict[str, set[str]] = {}
    for (name,) in names:
        info = await _rows(src, f'PRAGMA table_info("{name}")')
        columns = [str(r[1]) for r in info]
        pk = [str(r[1]) for r in sorted(info, key=lambda r: r[5]) if r[5]]
        found[str(name)] = (str(name), columns, pk or columns)
        fks = await _rows(src, f'PRAGMA foreign_key_list("{name}")')
        refs[str(name)] = {str(r[2]) for r in fks} - {str(name)}
    return [found[t] for t in _referenced_first(refs)]


def _referenced_first(refs: dict[str, set[str]]) -> list[str]:
    """The tables (in their given order where nothing forces another) with every table after
    the ones it references; a cycle (none in our schema) keeps the given order."""
    out: list[str] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(t: str) -> None:
        if t in placed or t in visiting or t not in refs:
            return
        visiting.add(t)
        for r in sorted(refs[t]):
            place(r)
        visiting.discard(t)
        placed.add(t)
        out.append(t)

    for t in refs:
        place(t)
    return out


async def migrate_store(
    source: Path, target: str, *, password: str | None = None, replace: bool = False
) -> MigrationReport:
    """Copy ``source`` (SQLite) into ``target`` (postgresql:// URL); StoreError on a refusal."""
    if not source.is_file():
        raise StoreError(f"--from: no such file: {source}")
    src = await Database.open(source)
    try:
        dst = await Database.open(target, password=password)
        try:
            return await _copy(src, dst, target, replace)
        finally:
            await dst.close()
    finally:
        await src.close()


async def _copy(src: Database, dst: Database, target: str, replace: bool) -> MigrationReport:
    driver = dst._db
    assert isinstance(driver, PgDriver)
    conn = driver.conn
    if await src.schema_version() != await dst.schema_version():
        raise StoreError("--to: the two databases are at different schema versions")
    tables = await _sqlite_tables(src)
    known = {
        str(r["table_name"])
        for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    missing = [t for t, _, _ in tables if t not in known]
    if missing:
        raise StoreError(f"--to: PostgreSQL has no table {', '.join(missing)} (schema differs)")
    filled = [
        t for t, _, _ in tables if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{t}")')
    ]
    if filled and not replace:
        raise StoreError(
            f"--to: {redact(target)} already holds rows ({', '.join(filled)}); "
            "pass --replace to empty it first"
        )
    report = MigrationReport()
    async with conn.transaction():
        if filled:
            quoted = ", ".join(f'"{t}"' for t, _, _ in tables)
            await conn.execute(f"TRUNCATE {quoted}")
        for table, columns, _ in tables:
            cols = ", ".join(f'"{c}"' for c in columns)
            offset = 0
            while True:
                batch = await _rows(
                    src, f'SELECT {cols} FROM "{table}" LIMIT ? OFFSET ?', (_BATCH, offset)
                )
                if not batch:
                    break
                records = [tuple(pg_value(v) for v in row) for row in batch]
                try:
                    await conn.copy_records_to_table(table, records=records, columns=columns)
                except Exception as exc:  # asyncpg's: a value PostgreSQL's column refuses
                    raise StoreError(f"{table}: cannot copy rows {offset}+: {exc}") from exc
                offset += len(batch)
            log.info("Copied %d row(s) of %s", offset, table)
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND is_identity = 'YES'"
        ):
            t, c = str(r["table_name"]), str(r["column_name"])
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('\"{t}\"', '{c}'), "
                f'COALESCE((SELECT MAX("{c}") FROM "{t}"), 0) + 1, false)'
            )
    for table, columns, pk in tables:
        report.tables.append(await _check(src, conn, table, columns, pk))
    return report


async def _check(
    src: Database, conn: Any, table: str, columns: list[str], pk: list[str]
) -> TableReport:
    """Counts, and every n-th row by primary key compared column by column."""
    (count,) = (await _rows(src, f'SELECT COUNT(*) FROM "{table}"'))[0]
    target_count = int(await conn.fetchval(f'SELECT COUNT(*) FROM "{table}"'))
    cols = ", ".join(f'"{c}"' for c in columns)
    order = ", ".join(f'"{c}"' for c in pk)
    step = max(1, int(count) // _SAMPLE)
    sample = await _rows(src, f'SELECT {cols} FROM "{table}" ORDER BY {order}')
    sample = sample[::step][:_SAMPLE]
    mismatches = 0
    key_at = [columns.index(c) for c in pk]
    where = " AND ".join(f'"{c}" IS NOT DISTINCT FROM ${i + 1}' for i, c in enumerate(pk))
    stmt = await conn.prepare(f'SELECT {cols} FROM "{table}" WHERE {where}')
    for row in sample:
        want = tuple(pg_value(v) for v in row)
        got = await stmt.fetchrow(*(want[i] for i in key_at))
        if got is None or tuple(got) != want:
            mismatches += 1
    return TableReport(table, int(count), target_count, len(sample), mismatches)
