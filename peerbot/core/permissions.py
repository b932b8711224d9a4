"""Who may do what in a room, from its create and power-levels events (pure).

nio 0.26 gets room version 12 wrong: there the room's creators (the create event's sender and
``content.additional_creators``) rank above everyone and are absent from ``power_levels.users``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CREATOR_POWER", "creators_rank_highest", "power_level"]

CREATOR_POWER = math.inf
"""A creator's power in room version 12 and later: above any number."""

# Room versions before 12 where creators are ordinary users (v12 introduced "creators").
_OLD_VERSIONS = {str(v) for v in range(1, 12)}


def creators_rank_highest(room_version: str | None) -> bool:
    """True for room versions where creators outrank every power level (12 and later)."""
    if room_version is None:
        return False
    return room_version not in _OLD_VERSIONS


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return default


def power_level(
    user_id: str,
    create_event: Mapping[str, Any] | None,
    power_levels: Mapping[str, Any] | None,
) -> float:
    """The user's effective power level in the room."""
    create_content = (create_event or {}).get("content") or {}
    version = str(create_content.get("room_version", "1"))
    if creators_rank_highest(version):
        creators = {(create_event or {}).get("sender")}
        extra = create_content.get("additional_creators")
        if isinstance(extra, list):
            creators |= {c for c in extra if isinstance(c, str)}
        if user_id in creators:
            return CREATOR_POWER
    if power_levels is None:
        # No power-levels event: the creator has 100, everyone else 0 (spec).
        return 100 if (create_event or {}).get("sender") == user_id else 0
    users = power_levels.get("users")
    if isinstance(users, Mapping) and user_id in users:
        return _int(users[user_id], 0)
    return _int(power_levels.get("users_default"), 0)
