"""The room directory: bot.yaml's rooms resolved, chat overrides applied, labels, links, power.

One place resolves a room reference (alias or ID) to a room ID and joins it; start-up, the
``!route add`` command and import-history all go through it. It also answers who may do what in
a room (power levels, room v12 creators) and which rooms' threads may be shown in a room
(:mod:`peerbot.visibility`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from peerbot.config import Config, IntakeRoom, Trigger, is_room_ref
from peerbot.core import routing
from peerbot.core.ids import RoomID, server_of
from peerbot.core.permissions import power_level
from peerbot.core.visibility import Communities, shown_rooms
from peerbot.matrix import MatrixClient, MatrixError, NotFound
from peerbot.store import Store

__all__ = ["RoomDirectory", "StartupError"]

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The bot cannot start; the message says why and what to do."""


class RoomDirectory:
    """Configured rooms by ID, with chat overrides applied; labels, ``via``, power levels."""

    def __init__(self, config: Config, client: MatrixClient, store: Store) -> None:
        self.config = config
        self.mx = client
        self.store = store
        self.intake: dict[RoomID, IntakeRoom] = {}
        """Intake rooms now (bot.yaml, then ``!intake on|off``)."""
        self.fallback = RoomID("")
        self.labels: dict[RoomID, str] = {}
        self.via: dict[RoomID, list[str]] = {}
        self.configured: set[RoomID] = set()
        """Every room of bot.yaml the bot must be in (intake, specialties, triage, plugins)."""
        self.yaml_intake: dict[RoomID, IntakeRoom] = {}
        self.resolved: dict[str, RoomID] = {}
        self.communities = Communities()
        """bot.yaml's ``communities``, as room IDs."""
        self.rules = routing.RuleSet(())
        """The specialties now (bot.yaml, then ``!route`` changes)."""

    # -- resolution ---------------------------------------------------------------------------

    def refs(self) -> list[tuple[str, str, bool]]:
        """(key path, room, whether the bot must be in it) for every room bot.yaml names."""
        cfg = self.config
        refs = [(f"intake[{i}].room", r.room, True) for i, r in enumerate(cfg.intake)]
        refs += [
            (f"routing.specialties[{i}].room", s.room, True)
            for i, s in enumerate(cfg.routing.specialties)
        ]
        refs.append(("routing.fallback_room", cfg.routing.fallback_room, True))
        refs += [
            (f"{p.path}.rooms[{j}]", r, True)
            for p in cfg.plugins
            for j, r in enumerate(p.rooms or ())
        ]
        refs += [
            (f"communities[{i}].rooms[{j}]", r, False)
            for i, c in enumerate(cfg.communities)
            for j, r in enumerate(c.rooms)
        ]
        return [(p, r, j) for p, r, j in refs if is_room_ref(r)]

    async def resolve(self, ref: str, *, join: bool = True, why: str = "") -> RoomID:
        """The room ID behind an alias or ID (NotFound if none); joined when asked."""
        if ref.startswith("#"):
            room_id, servers = await self.mx.resolve_alias(ref)
            self.via[room_id] = servers
            self.labels[room_id] = ref
        else:
            room_id = RoomID(ref)
        if join and room_id not in self.mx.joined_rooms():
            try:
                await self.mx.join(ref)
                log.info("Joined %s", ref)
            except MatrixError as exc:
                log.warning(
                    "PeerBot is not in %s (%s) and cannot join it (%s): invite it there",
                    ref,
                    why or "a room it needs",
                    exc.errcode or exc,
                )
        return room_id

    async def resolve_configured(self) -> None:
        """Resolve every room of bot.yaml (StartupError naming the keys of missing ones)."""
        cfg = self.config
        resolved: dict[str, RoomID] = {}
        problems: list[str] = []
        for path, ref, join in self.refs():
            if ref in resolved:
                continue
            try:
                resolved[ref] = await self.resolve(ref, join=join, why=path)
            except NotFound:
                problems.append(f"{path}: the room {ref} does not exist on the server")
        if problems:
            raise StartupError("\n".join(problems))
        self.resolved = resolved
        self.yaml_intake = {resolved[i.room]: i for i in cfg.intake}
        self.fallback = resolved[cfg.routing.fallback_room]
        self.configured = {resolved[ref] for _, ref, join in self.refs() if join}
        self.communities = Communities.of([resolved[r] for r in c.rooms] for c in cfg.communities)

    def room_id(self, ref: str) -> RoomID:
        """A configured reference as a room ID (itself when it was not resolved)."""
        return self.resolved.get(ref, RoomID(ref))

    async def reload_overrides(self) -> None:
        """Apply in-chat changes (routes, intake) on top of bot.yaml."""
        specialties: dict[str, routing.Rule] = {}
        for s in self.config.routing.specialties:
            specialties[s.name.casefold()] = routing.Rule(s.name, self.room_id(s.room), s.keywords)
        for o in await self.store.route_overrides():
            key = o.name.casefold()
            if o.removed:
                specialties.pop(key, None)
            else:
                specialties[key] = routing.Rule(o.name, o.room, o.keywords)
        self.rules = routing.RuleSet(list(specialties.values()))
        intake_rooms = dict(self.yaml_intake)
        for io in await self.store.intake_overrides():
            room = RoomID(io.room_id)
            if io.enabled:
                intake_rooms[room] = IntakeRoom(io.room_id, Trigger(io.trigger), io.hashtags)
            else:
                intake_rooms.pop(room, None)
        self.intake = intake_rooms

    # -- for people ---------------------------------------------------------------------------

    def label(self, room_id: str) -> str:
        """An alias or name for a room, for people."""
        return self.labels.get(RoomID(room_id)) or self.mx.room_label(room_id)

    def via_servers(self, room_id: str, *users: str) -> list[str]:
        """Servers to name in a permalink to this room."""
        servers = [server_of(u) for u in users]
        servers += self.via.get(RoomID(room_id), [])
        servers.append(server_of(self.mx.user_id))
        if ":" in room_id:
            servers.append(server_of(room_id))
        return list(dict.fromkeys(s for s in servers if s))

    def allows_from_encrypted(self, room_id: str) -> bool:
        """bot.yaml's ``allow_from_encrypted`` for a target room (resolved to its ID)."""
        r = self.config.routing
        allowed = {s.room for s in r.specialties if s.allow_from_encrypted}
        if r.fallback_allow_from_encrypted:
            allowed.add(r.fallback_room)
        return room_id in {self.room_id(a) for a in allowed}

    def shown_in(self, room_id: str, sources: set[str]) -> set[str]:
        """The rooms among ``sources`` whose threads may be shown in this room."""
        return shown_rooms(sources, room_id, self.mx.room_privacy, self.communities)

    # -- power ----------------------------------------------------------------------------------

    async def power_of(self, room_id: str, user_id: str) -> float:
        """The user's power level in a room, creators of room v12+ above everyone."""
        try:
            create = await self.mx.state_event(room_id, "m.room.create")
        except MatrixError:
            create = None
        try:
            levels = await self.mx.state_event(room_id, "m.room.power_levels")
        except NotFound:
            levels = None
        content = (levels or {}).get("content")
        return power_level(user_id, create, content if isinstance(content, Mapping) else None)

    async def is_admin(self, room_id: str, user_id: str) -> bool:
        """True when the user may use admin commands in this room."""
        return await self.power_of(room_id, user_id) >= self.config.admin.power_level

    async def may_moderate(self, room_id: str, user_id: str, asker: str | None) -> bool:
        """The asker, or a room moderator, may mark a question solved."""
        return user_id == asker or await self.is_admin(room_id, user_id)

    def log_states(self, *, encryption_on: bool) -> None:
        """Log each configured room's encryption state once at start-up (and what to fix)."""
        joined = self.mx.joined_rooms()
        for room_id in self.configured:
            state = "encrypted" if self.mx.is_encrypted(room_id) else "not encrypted"
            if room_id not in joined:
                # Joined just now: nio knows its state after the next sync.
                state = "joined now; encryption state shown by !peerbot help"
            log.info("Room %s (%s): %s", self.label(room_id), room_id, state)
            if room_id in self.yaml_intake and self.mx.is_encrypted(room_id) and not encryption_on:
                log.warning(
                    "Intake room %s is encrypted: set encryption.enabled in bot.yaml to read it",
                    room_id,
                )
