"""May a thread from one room be shown in another? One rule for every place that does it (pure).

A thread from room S may be quoted, linked or counted in room R only if everyone who can read R,
now or later, may read S: S is R itself; or S is public (anyone may join it, and members read
its whole history); or the operator declared R and S one community in ``bot.yaml``
(``communities``). Who is in R today is not enough: a message posted in R stays readable by
whoever joins R later. And a thread from an encrypted room is never shown in an unencrypted one,
whatever else holds. Rooms whose state the bot does not know count as closed.

The acknowledgement's related threads, ``!related``, digests and escalations call
:func:`may_show` (or :func:`shown_rooms`) with the rooms' current state, so a room that turns
private stops sharing at the next sync. Relays (:mod:`peerbot.core.relay`) are not listings: a
message written in a question's thread is written to the asker (the forward says so), and only
the encryption rule applies to it, with the author's consent as the way past it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

__all__ = ["Communities", "RoomPrivacy", "is_public", "may_show", "shown_rooms"]

PUBLIC_JOIN_RULES = frozenset({"public"})
"""Join rules that let anyone in (``knock``, ``restricted`` and ``invite`` do not)."""
FULL_HISTORY = frozenset({"shared", "world_readable"})
"""History visibilities under which a member reads what was said before they joined."""


@dataclass(frozen=True)
class RoomPrivacy:
    """What decides who can read a room: its join rule, history visibility and encryption."""

    room_id: str
    join_rule: str | None
    """``public``, ``invite``, ``knock``, ``restricted``...; None when unknown."""
    history_visibility: str | None
    """``world_readable``, ``shared``, ``invited``, ``joined``; None when unknown."""
    encrypted: bool


@dataclass(frozen=True)
class Communities:
    """Groups of rooms the operator declared readable by the same people (room IDs)."""

    groups: tuple[frozenset[str], ...] = ()

    @classmethod
    def of(cls, groups: Iterable[Iterable[str]]) -> Communities:
        """Communities from lists of room IDs."""
        return cls(tuple(frozenset(g) for g in groups))

    def together(self, a: str, b: str) -> bool:
        """True when one declared community holds both rooms."""
        return any(a in g and b in g for g in self.groups)


def is_public(room: RoomPrivacy) -> bool:
    """Anyone may join the room and, once in, read its whole history."""
    return room.join_rule in PUBLIC_JOIN_RULES and room.history_visibility in FULL_HISTORY


def may_show(
    source: RoomPrivacy | None, target: RoomPrivacy | None, communities: Communities
) -> bool:
    """True when a thread of ``source`` may be shown (quoted, linked, counted) in ``target``.

    None stands for a room whose state is unknown: it shares nothing and is shown nothing
    (:func:`shown_rooms` still lets a room's own threads be shown in it).
    """
    if source is None or target is None:
        return False
    if source.room_id == target.room_id:
        return True
    if source.encrypted and not target.encrypted:
        return False
    return is_public(source) or communities.together(source.room_id, target.room_id)


def shown_rooms(
    sources: Collection[str],
    target: str,
    privacy: Callable[[str], RoomPrivacy | None],
    communities: Communities,
) -> set[str]:
    """The rooms among ``sources`` whose threads may be shown in ``target``."""
    there = privacy(target)
    allowed = {target} if target in sources else set()
    for room_id in sources:
        if room_id != target and may_show(privacy(room_id), there, communities):
            allowed.add(room_id)
    return allowed
