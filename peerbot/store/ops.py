"""What operators look at: the outbox's depth for ``/metrics`` and, without opening the
store (the running bot holds its lock), the database's state for ``peerbot doctor``."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from peerbot.core.doctor import DatabaseFacts
from peerbot.store.db import Connection, _migrations, now_ms

__all__ = ["DatabaseInspection", "OpsQueries", "inspect_database"]


class OpsQueries(Connection):
    """Figures read when Prometheus scrapes."""

    async def outbox_summary(self) -> tuple[int, float | None]:
        """Pending effects and the oldest one's age in seconds (None when there is none)."""
        async with self._db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM effects WHERE state = 'pending'"
        ) as cur:
            row = await cur.fetchone()
        if row is None or not row[0]:
            return 0, None
        return int(row[0]), max(0.0, (now_ms() - int(row[1])) / 1000)


@dataclass(frozen=True)
class DatabaseInspection:
    """The facts doctor checks, and the saved session it may reuse to log in."""

    facts: DatabaseFacts
    device_id: str | None = None
    access_token: str | None = None


def inspect_database(path: Path) -> DatabaseInspection:
    """Read the schema version and the saved session read-only; never creates the file."""
    migrations = _migrations()
    latest = migrations[-1][0] if migrations else 0
    folder = path.parent
    if not folder.is_dir():
        return DatabaseInspection(
            DatabaseFacts(str(path), False, latest=latest, folder_exists=False)
        )
    free = shutil.disk_usage(folder).free
    if not path.exists():
        return DatabaseInspection(DatabaseFacts(str(path), False, latest=latest, free_bytes=free))
    mode = os.stat(path).st_mode & 0o777
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            applied = int(db.execute("PRAGMA user_version").fetchone()[0])
            saved: dict[str, str] = {}
            if applied:
                rows = db.execute(
                    "SELECT key, value FROM kv WHERE key IN ('device_id', 'access_token')"
                ).fetchall()
                saved = {str(k): str(v) for k, v in rows}
        finally:
            db.close()
    except sqlite3.Error as exc:
        facts = DatabaseFacts(
            str(path),
            True,
            latest=latest,
            free_bytes=free,
            mode=mode,
            error=f"cannot be read as a PeerBot database: {exc}",
        )
        return DatabaseInspection(facts)
    facts = DatabaseFacts(
        str(path), True, applied=applied, latest=latest, free_bytes=free, mode=mode
    )
    return DatabaseInspection(
        facts, saved.get("device_id") or None, saved.get("access_token") or None
    )
