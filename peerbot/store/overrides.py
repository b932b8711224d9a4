"""Routing and intake changed in chat (admin overrides of bot.yaml)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from peerbot.core.records import IntakeOverride, RouteOverride
from peerbot.store.db import Connection, now_ms

__all__ = ["OverrideQueries"]


class OverrideQueries(Connection):
    """Specialty and intake overrides, as the admin commands record them."""

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
                now_ms(),
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
        self,
        room_id: str,
        *,
        enabled: bool,
        trigger: str,
        hashtags: Sequence[str],
        by: str,
    ) -> None:
        """Switch intake on or off for a room."""
        await self._write(
            "INSERT INTO intake_overrides (room_id, enabled, trigger, hashtags, changed_by, "
            "changed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(room_id) DO UPDATE SET "
            "enabled = excluded.enabled, trigger = excluded.trigger, "
            "hashtags = excluded.hashtags, changed_by = excluded.changed_by, "
            "changed_at = excluded.changed_at",
            (room_id, int(enabled), trigger, json.dumps(list(hashtags)), by, now_ms()),
        )
