"""Active/standby: which of several ``peerbot run`` on one PostgreSQL database does the work.

The leader holds a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its
own. The lock lives exactly as long as that connection: when the leader's process dies (SIGKILL,
a crashed machine once TCP notices), PostgreSQL ends its session and frees the lock, and a
standby polling every ``storage.standby_poll_ms`` takes it. The new leader then logs in with the
access token and device saved in the database (``kv``), resumes from the saved sync token, and
its outbox sends what the old leader recorded but did not send: the same transaction IDs, on the
same access token, so Synapse deduplicates anything that was in fact sent.

A leader that loses its lock connection stops at once (someone else may lead by then);
:func:`peerbot.bot.runner.run_bot` then waits for the database and the lead again. On SQLite
there is nothing to decide: the lock file lets only one instance open the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from peerbot.store.db import Database
from peerbot.store.postgres import connect, redact

__all__ = ["LEADER_LOCK", "Leadership"]

log = logging.getLogger("peerbot.store")

LEADER_LOCK = 0x70656572_626F7402
"""The advisory lock key of the lead ("peerbot" + 2; migrations hold ...01 briefly)."""

_WATCH_SECONDS = 1.0


class Leadership:
    """The lead on a database: :meth:`acquire` waits for it, :meth:`lost` returns on its loss."""

    def __init__(self, store: Database, *, password: str | None, poll_ms: int) -> None:
        self.store = store
        self._password = password
        self._poll = poll_ms / 1000
        self._conn: Any = None
        self.waited = 0.0
        """Seconds spent as a standby before taking the lead."""

    @property
    def shared(self) -> bool:
        """True when several instances may open the database (PostgreSQL)."""
        return self.store.url is not None

    async def acquire(self) -> None:
        """Return once this instance leads (at once on SQLite); cancel to give up waiting."""
        url = self.store.url
        if url is None:
            return
        started = time.monotonic()
        announced = False
        while True:
            if self._conn is None or self._conn.is_closed():
                try:
                    self._conn = await connect(url, self._password)
                except Exception as exc:  # unreachable for now: a standby keeps trying
                    log.warning("Standby: cannot reach %s: %s", redact(url), exc)
                    await asyncio.sleep(max(self._poll, 1.0))
                    continue
            try:
                got = bool(
                    await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
                )
            except Exception as exc:
                log.warning("Standby: the lead check failed: %s", exc)
                await self._drop()
                continue
            if got:
                break
            if not announced:
                log.info("Standby: another PeerBot leads on this database; waiting to take over")
                announced = True
            await asyncio.sleep(self._poll)
        self.waited = time.monotonic() - started
        if announced:
            log.warning("Taking over as the leader after %.1f s on standby", self.waited)
        else:
            log.info("Leading on this database")

    async def lost(self) -> str:
        """Return (with the reason) when the lead is lost; runs until then."""
        if self._conn is None:
            await asyncio.Event().wait()  # SQLite: never
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            try:
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), 10)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return f"the connection holding the lead broke ({exc or type(exc).__name__})"
            if self.store.broken:  # the lead is held, but no work can be stored any more
                return "the database connection broke"

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def release(self) -> None:
        """Give the lead up (closing its connection frees the lock)."""
        await self._drop()
