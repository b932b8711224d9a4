"""Wires the parts: the sync loop, the handlers, and the worker that sends what was decided."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from . import intake, routing
from .commands import parse_command
from .config import Config, IntakeRoom, Trigger, is_room_ref
from .matrix import (
    Forbidden,
    Invite,
    MatrixClient,
    MatrixError,
    NotFound,
    RoomID,
    SyncBatch,
    Transient,
    Undecryptable,
)
from .messages import RelatedLine, Texts, permalink, texts_for
from .permissions import power_level
from .plugin_api import GuardAction, Question, SpecialtyInfo
from .plugins import PluginSet
from .related import DEFAULT_MIN_SCORE, RelatedIndex
from .store import Effect, QuestionRow, Store

__all__ = ["PeerBot", "StartupError", "tx_id"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
ACK_CONCURRENCY = 8
MAX_DECRYPT_ATTEMPTS = 5
"""Tries, once an event's room key is known, before giving up on decrypting it."""
SOLVED_KEYS = frozenset({"✅", "✔️", "✔", "☑️", "☑"})


class StartupError(RuntimeError):
    """The bot cannot start; the message says why and what to do."""


def tx_id(kind: str, event_id: str) -> str:
    """A transaction ID derived from the source event: a re-send is deduplicated by the server."""
    digest = hashlib.sha256(f"{kind}\0{event_id}".encode()).hexdigest()[:32]
    return f"peerbot.{kind}.{digest}"


def server_of(mxid: str) -> str:
    """The server part of a user, room or alias ID ("" when there is none)."""
    return mxid.split(":", 1)[1] if ":" in mxid else ""


def thread_content(root: str, reply_to: str) -> dict[str, Any]:
    """The relation that puts a message in a thread, with the reply fallback."""
    return {
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": reply_to},
    }


@dataclass
class Rooms:
    """Configured rooms, resolved to room IDs at start-up, with chat overrides applied."""

    intake: dict[RoomID, IntakeRoom] = field(default_factory=dict)
    fallback: RoomID = field(default_factory=lambda: RoomID(""))
    labels: dict[RoomID, str] = field(default_factory=dict)
    via: dict[RoomID, list[str]] = field(default_factory=dict)
    configured: set[RoomID] = field(default_factory=set)
    """Every room of bot.yaml (intake, specialties, triage): related threads come from these."""
    yaml_intake: dict[RoomID, IntakeRoom] = field(default_factory=dict)
    resolved: dict[str, RoomID] = field(default_factory=dict)


class Backoff:
    """Exponential back-off with jitter, reset on success."""

    def __init__(self, first: float = 1.0, cap: float = MAX_BACKOFF) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next try."""
        self.failures += 1
        delay = min(self.cap, self.first * 2 ** (self.failures - 1))
        return float(delay * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        """Back to the shortest delay."""
        self.failures = 0


class PeerBot:
    """The running bot. ``await bot.start()``, then ``await bot.run()`` until cancelled."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: MatrixClient,
        plugins: PluginSet | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.mx = client
        # getattr: stand-ins for MatrixClient in tests may predate encryption.
        self.encryption_on = bool(getattr(client, "encrypted", False))
        """End-to-end encryption is on: encrypted rooms are joined, read and written."""
        self.plugins = plugins or PluginSet()
        self.texts: Texts = texts_for(config.language)
        self.rooms = Rooms()
        self.rules = routing.RuleSet(())
        self.index = RelatedIndex()
        self.min_score = (
            config.related.min_score if config.related.min_score is not None else DEFAULT_MIN_SCORE
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acking: set[str] = set()
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._ack_slots = asyncio.Semaphore(ACK_CONCURRENCY)
        # One lane per target room: forwards to a room go out one at a time in question order,
        # while different rooms are served side by side.
        self._lanes: dict[str, asyncio.Queue[QuestionRow]] = {}
        self._lane_runners: dict[str, asyncio.Task[None]] = {}
        self._in_lane: set[str] = set()
        self._since: str | None = None
        self.handler_errors = 0
        self.idle = asyncio.Event()
        """Set whenever the worker has nothing left to do (tests and tools wait on it)."""
        from .admin import ChatCommands

        self.commands = ChatCommands(self)

    # -- start-up ---------------------------------------------------------------------------

    async def login(self) -> None:
        """Log in, reusing the saved device and token."""
        device = await self.store.get("device_id")
        token = await self.store.get("access_token")
        await self.mx.login(device, token)
        await self.store.put("device_id", self.mx.device_id or "")
        await self.store.put("access_token", self.mx.access_token)
        log.info("Logged in as %s, device %s", self.mx.user_id, self.mx.device_id)
        # Encryption: device keys and the cross-signing bootstrap, before any sync or send
        # (a message sent before the device is signed is unreadable in Element).
        if self.encryption_on:
            await self.mx.setup_encryption()

    async def start(self) -> None:
        """Log in, reuse the device, resolve configured rooms; skip history on a first start."""
        await self.login()
        self._since = await self.store.get("sync_token")
        if self._since is None:
            # First ever start: take the current position, do not replay history.
            batch = await self.mx.sync(None, full_state=True, first=True)
            self._since = batch.next_batch
            await self.store.put("sync_token", batch.next_batch)
            log.info("First start: history skipped")
        else:
            # Resume: full_state so that room state (members, encryption) is known again.
            batch = await self.mx.sync(self._since, full_state=True, first=True)
        for invite in batch.invites:
            await self._guard(self.handle_invite(invite), "invite")
        await self.resolve_rooms()
        await self.reload_overrides()
        await self._load_index()
        await self._teach_routers()
        if self.encryption_on:
            await self._guard(self.retry_undecryptable(), "decrypt retry")

    async def resolve_rooms(self) -> None:
        """Resolve every configured room; join those the bot is not in yet."""
        cfg = self.config
        resolved: dict[str, RoomID] = {}
        problems: list[str] = []
        joined = self.mx.joined_rooms()
        for path, ref in self._room_refs():
            if ref in resolved:
                continue
            try:
                if ref.startswith("#"):
                    room_id, servers = await self.mx.resolve_alias(ref)
                    self.rooms.via[room_id] = servers
                    self.rooms.labels[room_id] = ref
                else:
                    room_id = RoomID(ref)
            except NotFound:
                problems.append(f"{path}: the room {ref} does not exist on the server")
                continue
            resolved[ref] = room_id
            if room_id not in joined:
                try:
                    await self.mx.join(ref)
                    log.info("Joined %s", ref)
                except MatrixError as exc:
                    log.warning(
                        "PeerBot is not in %s (%s) and cannot join it (%s): invite it there",
                        ref,
                        path,
                        exc.errcode or exc,
                    )
        if problems:
            raise StartupError("\n".join(problems))
        self.rooms.resolved = resolved
        self.rooms.yaml_intake = {resolved[i.room]: i for i in cfg.intake}
        self.rooms.fallback = resolved[cfg.routing.fallback_room]
        self.rooms.configured = set(resolved.values())
        for plugin in self.plugins.plugins:
            if plugin.entry.rooms is not None:
                plugin.rooms = frozenset(resolved.get(r, RoomID(r)) for r in plugin.entry.rooms)
            else:
                plugin.rooms = None
        for room_id in self.rooms.configured:
            state = "encrypted" if self.mx.is_encrypted(room_id) else "not encrypted"
            if room_id not in joined:
                # Joined just now: nio knows its state after the next sync.
                state = "joined now; encryption state shown by !peerbot help"
            log.info("Room %s (%s): %s", self.room_label(room_id), room_id, state)
            if (
                room_id in self.rooms.yaml_intake
                and self.mx.is_encrypted(room_id)
                and not self.encryption_on
            ):
                log.warning(
                    "Intake room %s is encrypted: set encryption.enabled in bot.yaml to read it",
                    room_id,
                )

    def _room_refs(self) -> list[tuple[str, str]]:
        cfg = self.config
        refs = [(f"intake[{i}].room", r.room) for i, r in enumerate(cfg.intake)]
        refs += [
            (f"routing.specialties[{i}].room", s.room)
            for i, s in enumerate(cfg.routing.specialties)
        ]
        refs.append(("routing.fallback_room", cfg.routing.fallback_room))
        refs += [
            (f"{p.path}.rooms[{j}]", r) for p in cfg.plugins for j, r in enumerate(p.rooms or ())
        ]
        return [(p, r) for p, r in refs if is_room_ref(r)]

    async def reload_overrides(self) -> None:
        """Apply in-chat changes (routes, intake) on top of bot.yaml."""
        specialties: dict[str, routing.Rule] = {}
        for s in self.config.routing.specialties:
            specialties[s.name.casefold()] = routing.Rule(
                s.name, self.rooms.resolved.get(s.room, RoomID(s.room)), s.keywords
            )
        for o in await self.store.route_overrides():
            key = o.name.casefold()
            if o.removed:
                specialties.pop(key, None)
            else:
                specialties[key] = routing.Rule(o.name, o.room, o.keywords)
        self.rules = routing.RuleSet(list(specialties.values()))
        intake_rooms = dict(self.rooms.yaml_intake)
        for io in await self.store.intake_overrides():
            room = RoomID(io.room_id)
            if io.enabled:
                intake_rooms[room] = IntakeRoom(io.room_id, Trigger(io.trigger), io.hashtags)
            else:
                intake_rooms.pop(room, None)
        self.rooms.intake = intake_rooms

    async def _load_index(self) -> None:
        started = time.monotonic()
        for event_id, room_id, body, solved in await self.store.indexable():
            self.index.add(event_id, body, room_id=room_id, solved=solved)
        log.info(
            "Related-threads index: %d questions loaded in %.2f s",
            len(self.index),
            time.monotonic() - started,
        )

    async def _teach_routers(self) -> None:
        if not self.plugins.routers:
            return
        for text, specialty in await self.store.routed_examples():
            self.plugins.learn(text, specialty)

    def room_label(self, room_id: str) -> str:
        """An alias or name for a room, for people."""
        return self.rooms.labels.get(RoomID(room_id)) or self.mx.room_label(room_id)

    # -- the loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync and work until stopped or cancelled."""
        worker = asyncio.create_task(self._work_loop(), name="peerbot-worker")
        sync = asyncio.create_task(self._sync_loop(), name="peerbot-sync")
        stop = asyncio.create_task(self._stopping.wait(), name="peerbot-stop")
        try:
            done, _ = await asyncio.wait({worker, sync, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            sync.cancel()
            stop.cancel()
            # Let the worker finish the message in flight, then stop it.
            self._stopping.set()
            self._wake.set()
            finish_by = time.monotonic() + 4.0
            try:
                await asyncio.wait_for(asyncio.shield(worker), timeout=4.0)
            except (TimeoutError, asyncio.CancelledError):
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
            if self._lane_runners:
                # Each lane finishes the forward in flight and takes no other (4 s in all).
                left = max(0.1, finish_by - time.monotonic())
                _, late = await asyncio.wait(set(self._lane_runners.values()), timeout=left)
                for task in late:
                    task.cancel()
            if self._ack_tasks:
                # Acknowledgements in flight get what is left of the same 4 s (a slow homeserver
                # can take longer than a second to answer a send).
                left = max(0.1, finish_by - time.monotonic())
                _, late = await asyncio.wait(set(self._ack_tasks), timeout=left)
                for task in late:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync

    def stop(self) -> None:
        """Ask the loops to stop (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    async def _sync_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                batch = await self.mx.sync(self._since, full_state=False)
            except Transient as exc:
                delay = backoff.next_delay()
                log.warning("Sync failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            except MatrixError as exc:
                if isinstance(exc, Forbidden) and exc.errcode in ("M_UNKNOWN_TOKEN",):
                    raise
                delay = backoff.next_delay()
                log.error("Sync refused (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            await self.handle_batch(batch)

    async def handle_batch(self, batch: SyncBatch) -> None:
        """Handle one sync's invites and events, then save its token."""
        for invite in batch.invites:
            await self._guard(self.handle_invite(invite), "invite")
        for room_id, event in batch.events:
            await self._guard(self.handle_event(room_id, event), "event")
        for undecryptable in batch.undecryptable:
            await self._guard(self._on_undecryptable(undecryptable), "undecryptable")
        if self.encryption_on:
            await self._guard(self.retry_undecryptable(), "decrypt retry")
        for room_id in batch.left:
            log.info("PeerBot left or was removed from %s", room_id)
        # Only now: a crash before this line replays the batch, and handled events are skipped.
        self._since = batch.next_batch
        await self.store.put("sync_token", batch.next_batch)
        self._wake.set()

    async def _guard(self, coro: Any, what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.handler_errors += 1
            log.exception("A %s handler failed; the bot goes on", what)

    # -- handlers ---------------------------------------------------------------------------

    async def handle_invite(self, invite: Invite) -> None:
        """Join when the inviter's server is allowed; decline otherwise, saying why."""
        if invite.room_id in self.mx.joined_rooms():
            return
        inviter = invite.inviter or ""
        if not inviter or not self.config.invites.allows(inviter):
            log.info("Declining an invite to %s from %s", invite.room_id, inviter or "unknown")
            await self._decline(invite.room_id, "invite_declined")
            return
        if invite.encrypted and not self.encryption_on:
            log.warning(
                "Declining an invite to encrypted room %s from %s: encryption is not enabled",
                invite.room_id,
                inviter,
            )
            await self._decline(invite.room_id, "encrypted_room")
            return
        try:
            await self.mx.join(invite.room_id)
            log.info("Joined %s on %s's invite", invite.room_id, inviter)
        except MatrixError as exc:
            log.warning("Could not join %s: %s", invite.room_id, exc)

    async def _decline(self, room_id: RoomID, key: str) -> None:
        try:
            await self.mx.decline(room_id, self.texts.s(key))
        except MatrixError as exc:
            log.warning("Could not decline the invite to %s: %s", room_id, exc)

    async def handle_event(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        """One timeline event. Fast: questions are recorded here and sent by the worker."""
        if not isinstance(event, Mapping):
            return
        etype = event.get("type")
        sender = event.get("sender")
        if not isinstance(sender, str) or sender == self.mx.user_id:
            return
        if etype == "m.room.encryption" and room_id in self.rooms.intake:
            if not self.encryption_on:
                log.warning("Intake room %s turned on encryption: PeerBot cannot read it", room_id)
            return
        if etype == "m.room.redaction":
            await self._on_redaction(room_id, event)
            return
        if etype == "m.reaction":
            await self._on_reaction(room_id, event)
            return
        msg = intake.parse_message(event)
        if msg is None or msg.msgtype == "m.notice":
            return
        if msg.replaces is not None:
            await self._on_edit(room_id, msg)
            return
        command = parse_command(msg.body) if msg.msgtype == "m.text" else None
        if command is not None:
            if not await self.store.is_handled(msg.event_id):
                await self.store.mark_handled(msg.event_id, room_id)
                await self.commands.handle(room_id, msg, command)
                self._wake.set()
            return
        if msg.thread_root is not None:
            root = await self.store.question(msg.thread_root)
            if root is not None and root.room_id == room_id:
                await self.store.add_reply(root.event_id, msg.event_id, room_id)
        rule = self.rooms.intake.get(room_id)
        if rule is None:
            return
        question_id = intake.detect_question(msg, rule.trigger, rule.hashtags)
        if question_id is None:
            return
        if await self.store.is_handled(msg.event_id) and question_id == msg.event_id:
            return
        own = question_id == msg.event_id
        added = await self.store.add_question(
            event_id=question_id,
            room_id=room_id,
            trigger_event_id=msg.event_id,
            sender=msg.sender if own else None,
            body=msg.body if own else None,
            created_ts=msg.ts if own else 0,
        )
        if added:
            log.info("Question %s noticed in %s", question_id, room_id)
            self._wake.set()

    # -- encrypted events the bot cannot read (yet) -------------------------------------------

    async def _on_undecryptable(self, u: Undecryptable) -> None:
        """Record it, ask for its key; it is handled when the key arrives."""
        if u.sender == self.mx.user_id or await self.store.is_handled(u.event_id):
            return
        added = await self.store.add_undecryptable(
            event_id=u.event_id,
            room_id=u.room_id,
            sender=u.sender,
            session_id=u.session_id,
            sender_key=u.sender_key,
        )
        if not added:
            return
        log.warning(
            "Cannot decrypt event %s from %s in %s (no key for session %s): key requested",
            u.event_id,
            u.sender,
            u.room_id,
            u.session_id,
        )
        try:
            await self.mx.request_room_key(u.room_id, u.event_id)
        except MatrixError as exc:
            log.warning("Could not request the key of %s: %s", u.event_id, exc)

    async def retry_undecryptable(self) -> int:
        """Handle recorded events whose room key has arrived; the number decrypted."""
        done = 0
        for row in await self.store.undecryptable():
            if not self.mx.has_room_key(row.room_id, row.sender_key, row.session_id):
                continue
            try:
                event = await self.mx.decrypt_later(row.room_id, row.event_id)
            except (NotFound, Forbidden) as exc:
                log.warning("Undecryptable event %s is gone: %s", row.event_id, exc)
                await self.store.drop_undecryptable(row.event_id)
                continue
            if event is None:
                # The key arrived but does not open this event (e.g. it starts at a later
                # message index): a few more tries as other keys come, then give up.
                if row.attempts + 1 >= MAX_DECRYPT_ATTEMPTS:
                    log.warning(
                        "Giving up on event %s from %s in %s: the known key does not open it",
                        row.event_id,
                        row.sender,
                        row.room_id,
                    )
                    await self.store.drop_undecryptable(row.event_id)
                else:
                    await self.store.undecryptable_attempt(row.event_id)
                continue
            log.info("Event %s decrypted late: its room key arrived", row.event_id)
            await self._guard(self.handle_event(RoomID(row.room_id), event), "event")
            await self.store.drop_undecryptable(row.event_id)
            done += 1
        return done

    async def _on_edit(self, room_id: RoomID, msg: intake.Message) -> None:
        assert msg.replaces is not None
        q = await self.store.question(msg.replaces)
        if q is None or q.room_id != room_id or q.sender != msg.sender:
            return
        if await self.store.is_handled(msg.event_id):
            return
        await self.store.mark_handled(msg.event_id, room_id)
        changes: dict[str, Any] = {"body": msg.body, "revision": msg.event_id}
        if q.state == "held":
            # Checked again with the new text; forwarded if it is clean now.
            changes["state"] = "new"
        await self.store.update_question(q.event_id, **changes)
        if q.event_id in self.index:
            self.index.update_text(q.event_id, msg.body)
        log.info("Question %s edited", q.event_id)
        self._wake.set()

    async def _on_redaction(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        redacts = event.get("redacts")
        if not isinstance(redacts, str) and isinstance(content, Mapping):
            redacts = content.get("redacts")
        if not isinstance(redacts, str):
            return
        q = await self.store.question(redacts)
        if q is not None and q.room_id == room_id:
            self.index.remove(redacts)
            erased = await self.store.erase_question(redacts)
            log.info("Question %s redacted: removed from the index and the database", redacts)
            # Every copy quotes the deleted text (the forward, and each !route move of it): take
            # each one down, in the room it was sent to.
            copies = await self.store.effects_for(redacts) if erased is not None else []
            for copy in copies:
                if copy.kind in ("forward", "move") and copy.event_id:
                    await self.store.add_effect(
                        tx_id=tx_id("redact", copy.event_id),
                        kind="redact",
                        room_id=copy.room_id,
                        content={"redacts": copy.event_id},
                        event_type="m.room.redaction",
                    )
                    self._wake.set()
            return
        solved = await self.store.question_solved_by(redacts)
        if solved is not None:
            await self.store.update_question(solved.event_id, solved=False, solved_by=None)
            self.index.set_solved(solved.event_id, False)

    async def _on_reaction(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        rel = content.get("m.relates_to") if isinstance(content, Mapping) else None
        if not isinstance(rel, Mapping) or rel.get("rel_type") != "m.annotation":
            return
        key, target = rel.get("key"), rel.get("event_id")
        if key not in SOLVED_KEYS or not isinstance(target, str):
            return
        q = await self.store.question(target)
        if q is None or q.room_id != room_id or q.solved:
            return
        sender = str(event.get("sender"))
        if not await self.may_moderate(room_id, sender, q):
            return
        await self.store.update_question(
            q.event_id, solved=True, solved_by=str(event.get("event_id"))
        )
        self.index.set_solved(q.event_id, True)
        log.info("Question %s marked solved", q.event_id)

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

    async def may_moderate(self, room_id: str, user_id: str, q: QuestionRow) -> bool:
        """The asker, or a room moderator, may mark a question solved."""
        return user_id == q.sender or await self.is_admin(room_id, user_id)

    # -- the worker -------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self._work_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("The worker failed; retrying shortly")
                busy = False
                await asyncio.sleep(1.0)
            if self._stopping.is_set():
                return
            if not busy:
                self.idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                self.idle.clear()

    async def _work_once(self) -> bool:
        """Send what is pending, then handle new questions. True if anything was done.

        Questions are checked and routed here, oldest first, then queued on their target room's
        lane: each room gets its forwards one at a time in the order the questions were asked,
        and different rooms are served side by side. Acknowledgements (each in its own thread)
        go out in parallel behind the forwards.
        """
        did = False
        for effect in await self.store.pending_effects(limit=50):
            if self._stopping.is_set():
                return did
            if effect.question_id is None or effect.kind == "move":
                await self.deliver(effect)
                did = True
        for q in await self.store.questions_in_state("new", "forwarding", limit=200):
            if self._stopping.is_set():
                return did
            if q.event_id in self._acking or q.event_id in self._in_lane:
                continue
            did = True
            routed = await self._prepare_forward(q)
            if routed is not None:
                assert routed.target_room is not None
                self._in_lane.add(q.event_id)
                self._lane(routed.target_room).put_nowait(routed)
        return did

    def _lane(self, room_id: str) -> asyncio.Queue[QuestionRow]:
        """The queue of forwards for one room; its runner starts when work arrives."""
        queue = self._lanes.setdefault(room_id, asyncio.Queue())
        if room_id not in self._lane_runners:
            task = asyncio.create_task(self._lane_loop(room_id, queue), name="peerbot-lane")
            self._lane_runners[room_id] = task
        return queue

    async def _lane_loop(self, room_id: str, queue: asyncio.Queue[QuestionRow]) -> None:
        """Send one room's forwards in order; end when the queue is empty (or on stop)."""
        try:
            while not queue.empty() and not self._stopping.is_set():
                q = queue.get_nowait()
                try:
                    forwarded = await self._send_forward(q)
                    # Stopping: start no new message (an ack cut off mid-send would be left
                    # half-done); the question stays "forwarding" and is acknowledged on restart.
                    if forwarded is not None and not self._stopping.is_set():
                        self._acking.add(q.event_id)
                        await self._ack_slots.acquire()
                        task = asyncio.create_task(self._ack_stage(*forwarded), name="peerbot-ack")
                        self._ack_tasks.add(task)
                        task.add_done_callback(self._ack_done)
                except Exception:
                    log.exception("Forwarding %s failed; retried later", q.event_id)
                finally:
                    self._in_lane.discard(q.event_id)
                    self._wake.set()
        finally:
            # No await between the emptiness check and here: a forward queued after it finds
            # no runner and starts a new one.
            del self._lane_runners[room_id]
            if self._stopping.is_set():
                while not queue.empty():
                    self._in_lane.discard(queue.get_nowait().event_id)

    def _ack_done(self, task: asyncio.Task[None]) -> None:
        self._ack_tasks.discard(task)
        self._ack_slots.release()
        self._wake.set()

    async def _forward_step(self, q: QuestionRow, step: Awaitable[_T]) -> _T | None:
        """Run one step of forwarding ``q``; a Matrix error fails the question, a stop skips it."""
        try:
            return await step
        except _Stopping:
            return None
        except MatrixError as exc:
            log.error("Question %s could not be handled: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state="failed", error=str(exc))
            return None

    async def _prepare_forward(self, q: QuestionRow) -> QuestionRow | None:
        """Check and route one question (None: held or failed). Re-entrant: nothing twice."""
        return await self._forward_step(q, self._route_checked(q))

    async def _route_checked(self, q: QuestionRow) -> QuestionRow | None:
        if q.body is None or q.sender is None:
            q = await self._fetch_root(q)
            if q.state == "failed":
                return None
        assert q.body is not None and q.sender is not None
        if q.target_room is None:
            if not q.guard_override and not await self._run_guards(q):
                return None
            q = await self._decide(q)
        assert q.target_room is not None
        if not await self._encryption_allows(q):
            return None
        return q

    async def _send_forward(self, q: QuestionRow) -> tuple[QuestionRow, str] | None:
        """Record a routed question's forward, then send it (the same transaction ID after a
        crash: the server keeps one)."""
        return await self._forward_step(q, self._forward_and_record(q))

    async def _forward_and_record(self, q: QuestionRow) -> tuple[QuestionRow, str] | None:
        fwd_event = await self.deliver(await self._forward_effect(q))
        if fwd_event is None:
            await self.store.update_question(q.event_id, state="failed", error="forward failed")
            await self._apologise(q)
            return None
        if q.forward_event_id != fwd_event:
            await self.store.update_question(q.event_id, forward_event_id=fwd_event)
        return q, fwd_event

    def allows_from_encrypted(self, room_id: str) -> bool:
        """bot.yaml's ``allow_from_encrypted`` for a target room (resolved to its ID)."""
        r = self.config.routing
        allowed = {s.room for s in r.specialties if s.allow_from_encrypted}
        if r.fallback_allow_from_encrypted:
            allowed.add(r.fallback_room)
        return room_id in {self.rooms.resolved.get(a, RoomID(a)) for a in allowed}

    async def _encryption_allows(self, q: QuestionRow) -> bool:
        """False (and the question held, the asker told) for encrypted -> unencrypted."""
        assert q.target_room is not None
        decision = dict(q.decision or {})
        if (
            q.forward_event_id
            or decision.get("forward_confirmed")
            or not self.mx.is_encrypted(q.room_id)
            or self.mx.is_encrypted(q.target_room)
            or self.allows_from_encrypted(q.target_room)
        ):
            return True
        decision["unencrypted_target"] = True
        await self.store.update_question(q.event_id, state="held", decision=decision)
        content = self.texts.plain(
            "unencrypted_target", room=self.room_label(q.target_room)
        ).content()
        content["m.relates_to"] = thread_content(q.event_id, q.trigger_event_id)
        effect = await self.store.add_effect(
            tx_id=tx_id("unencrypted", q.revision or q.event_id),
            kind="notice",
            room_id=q.room_id,
            content=content,
            question_id=q.event_id,
        )
        await self.deliver(effect)
        log.info(
            "Question %s held: encrypted room %s -> unencrypted %s",
            q.event_id,
            q.room_id,
            q.target_room,
        )
        return False

    async def _apologise(self, q: QuestionRow) -> None:
        """Tell the asker their question could not be forwarded (the log says why)."""
        content = self.texts.plain("apology").content()
        content["m.relates_to"] = thread_content(q.event_id, q.trigger_event_id)
        effect = await self.store.add_effect(
            tx_id=tx_id("sorry", q.event_id),
            kind="notice",
            room_id=q.room_id,
            content=content,
            question_id=q.event_id,
        )
        await self.deliver(effect)

    async def _ack_stage(self, q: QuestionRow, fwd_event: str) -> None:
        """Acknowledge a forwarded question in its thread."""
        try:
            ack = await self._ack_effect(q, fwd_event)
            ack_event = await self.deliver(ack)
            await self.store.update_question(
                q.event_id,
                ack_event_id=ack_event,
                state="done" if ack_event else "failed",
            )
            if q.specialty and ack_event and q.body:
                self.plugins.learn(q.body, q.specialty)
        except _Stopping:
            return
        except MatrixError as exc:
            log.error("Question %s could not be acknowledged: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state="failed", error=str(exc))
        except Exception:
            log.exception("Acknowledging %s failed; retried later", q.event_id)
        finally:
            self._acking.discard(q.event_id)

    async def _fetch_root(self, q: QuestionRow) -> QuestionRow:
        try:
            event = await self.mx.get_event(q.room_id, q.event_id)
        except (NotFound, Forbidden) as exc:
            log.warning("The thread root %s cannot be read: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state="failed", error=str(exc))
            return replace(q, state="failed")
        msg = intake.parse_message(event)
        if msg is None or msg.sender == self.mx.user_id or msg.msgtype != "m.text":
            await self.store.update_question(
                q.event_id, state="failed", error="the thread root is not a text message"
            )
            return replace(q, state="failed")
        await self.store.update_question(
            q.event_id, sender=msg.sender, body=msg.body, created_ts=msg.ts
        )
        await self.store.mark_handled(q.event_id, q.room_id)
        return replace(q, sender=msg.sender, body=msg.body, created_ts=msg.ts)

    def as_question(self, q: QuestionRow) -> Question:
        """A stored question as plugins see it."""
        return Question(
            text=q.body or "", room_id=q.room_id, sender=q.sender or "", event_id=q.event_id
        )

    def specialty_infos(self) -> list[SpecialtyInfo]:
        """The current specialties as plugins see them."""
        return [SpecialtyInfo(r.name, r.room, r.keywords) for r in self.rules.rules]

    async def _run_guards(self, q: QuestionRow) -> bool:
        """Run the guards; post their notices; False when the question is held."""
        if not self.plugins.guards:
            return True
        verdicts = await self.plugins.check(self.as_question(q))
        revision = q.revision or q.event_id
        for plugin, verdict in verdicts:
            if verdict.notice:
                effect = await self.store.add_effect(
                    tx_id=tx_id(f"notice-{plugin.name}", q.event_id),
                    kind="notice",
                    room_id=q.room_id,
                    content={
                        "msgtype": "m.notice",
                        "body": verdict.notice,
                        "m.mentions": {},
                        "m.relates_to": thread_content(q.event_id, q.trigger_event_id),
                    },
                    question_id=q.event_id,
                )
                await self.deliver(effect)
        blocking = [(p, v) for p, v in verdicts if v.action is not GuardAction.PASS]
        if not blocking:
            return True
        findings = [f for _, v in blocking for f in v.findings]
        confirmable = all(v.action is GuardAction.HOLD for _, v in blocking)
        rendered = self.texts.guard_held(findings, confirmable)
        content = rendered.content()
        content["m.relates_to"] = thread_content(q.event_id, q.revision or q.trigger_event_id)
        await self.store.update_question(
            q.event_id,
            state="held",
            decision={"held": [f.kind for f in findings], "confirmable": confirmable},
        )
        effect = await self.store.add_effect(
            tx_id=tx_id("guard", revision),
            kind="guard",
            room_id=q.room_id,
            content=content,
            question_id=q.event_id,
        )
        await self.deliver(effect)
        log.info("Question %s held by %s", q.event_id, ", ".join(p.name for p, _ in blocking))
        return False

    async def route(self, text: str, question: Question | None = None) -> routing.Decision:
        """The routing decision for a text: keywords and router plugins."""
        proposals = []
        if question is not None and self.plugins.routers:
            proposals = await self.plugins.propose(question, self.specialty_infos())
        return routing.decide(text, self.rules, self.rooms.fallback, proposals)

    async def _decide(self, q: QuestionRow) -> QuestionRow:
        assert q.body is not None and q.sender is not None
        decision = await self.route(q.body, self.as_question(q))
        name = self.mx.display_name(q.room_id, q.sender) or await self._profile(q.sender)
        record = {
            "score": round(decision.score, 4),
            "words": [[h.keyword, h.found, h.exact] for h in decision.hits],
            "reasons": list(decision.reasons),
        }
        await self.store.update_question(
            q.event_id,
            specialty=decision.specialty,
            target_room=decision.room,
            decision=record,
            sender_name=name,
        )
        log.info(
            "Question %s -> %s (%s)", q.event_id, decision.room, decision.specialty or "fallback"
        )
        return replace(
            q,
            specialty=decision.specialty,
            target_room=decision.room,
            decision=record,
            sender_name=name,
        )

    async def _profile(self, user_id: str) -> str:
        try:
            return await self.mx.profile_name(user_id) or user_id
        except Exception:
            return user_id

    def via(self, room_id: str, *users: str) -> list[str]:
        """Servers to name in a permalink to this room."""
        servers = [server_of(u) for u in users]
        servers += self.rooms.via.get(RoomID(room_id), [])
        servers.append(server_of(self.mx.user_id))
        if ":" in room_id:
            servers.append(server_of(room_id))
        return list(dict.fromkeys(s for s in servers if s))

    def forward_content(self, q: QuestionRow, specialty: str | None) -> dict[str, Any]:
        """The forwarded message for a question."""
        assert q.body is not None and q.sender is not None
        source_url = permalink(q.room_id, q.event_id, self.via(q.room_id, q.sender))
        rendered = self.texts.forward(
            question=q.body,
            sender_name=q.sender_name or q.sender,
            sender_id=q.sender,
            source_room=self.room_label(q.room_id),
            source_url=source_url,
            specialty=specialty,
        )
        return rendered.content()

    async def _forward_effect(self, q: QuestionRow) -> Effect:
        assert q.target_room is not None
        return await self.store.add_effect(
            tx_id=tx_id("fwd", q.event_id),
            kind="forward",
            room_id=q.target_room,
            content=self.forward_content(q, q.specialty),
            question_id=q.event_id,
            question_state="forwarding",
        )

    async def related_lines(
        self, text: str, rooms: set[RoomID], exclude: tuple[str, ...] = ()
    ) -> list[RelatedLine]:
        """Related past threads for a text, among these rooms."""
        limit = self.config.related.max_results
        if limit <= 0 or not rooms:
            return []
        hits = self.index.search(
            text, limit=limit, min_score=self.min_score, rooms=rooms, exclude=exclude
        )
        now = time.time() * 1000
        lines: list[RelatedLine] = []
        for hit in hits:
            row = await self.store.question(hit.thread_id)
            if row is None or row.body is None:
                continue
            lines.append(
                RelatedLine(
                    url=permalink(row.room_id, row.event_id, self.via(row.room_id)),
                    first_line=row.body,
                    age_days=max(0.0, (now - row.created_ts) / 86_400_000) if row.created_ts else 0,
                    replies=row.replies,
                    solved=row.solved,
                )
            )
        return lines

    async def _ack_effect(self, q: QuestionRow, forward_event: str) -> Effect:
        assert q.target_room is not None and q.body is not None
        existing = await self.store.effect(tx_id("ack", q.event_id))
        if existing is not None:
            return existing
        decision = q.decision or {}
        words = [(str(w[0]), str(w[1]), bool(w[2])) for w in decision.get("words", [])]
        target = RoomID(q.target_room)
        # Related threads: from this room and the configured rooms only (everyone here sees it).
        rooms = self.rooms.configured | {RoomID(q.room_id)}
        related = await self.related_lines(q.body, rooms, exclude=(q.event_id,))
        rendered = self.texts.acknowledgement(
            target_room=self.room_label(target),
            specialty=q.specialty,
            forward_url=permalink(target, forward_event, self.via(target)),
            words=words,
            reasons=[str(r) for r in decision.get("reasons", [])],
            related=related,
        )
        content = rendered.content()
        content["m.relates_to"] = thread_content(q.event_id, q.trigger_event_id)
        effect = await self.store.add_effect(
            tx_id=tx_id("ack", q.event_id),
            kind="ack",
            room_id=q.room_id,
            content=content,
            question_id=q.event_id,
        )
        # Indexed once acknowledged: the question itself is never its own related thread.
        self.index.add(q.event_id, q.body, room_id=q.room_id, solved=q.solved)
        return effect

    async def reply(
        self, room_id: str, to: intake.Message, rendered: Any, kind: str = "reply"
    ) -> None:
        """Queue a notice in the thread of the message ``to`` (a command's answer)."""
        content = rendered.content()
        root = to.thread_root or to.event_id
        content["m.relates_to"] = thread_content(root, to.event_id)
        await self.store.add_effect(
            tx_id=tx_id(kind, to.event_id), kind=kind, room_id=room_id, content=content
        )
        self._wake.set()

    async def deliver(self, effect: Effect) -> str | None:
        """Send an effect until it is sent or cannot ever be; None when it failed for good."""
        if effect.state == "done":
            return effect.event_id
        if effect.state == "failed":
            return None
        backoff = Backoff()
        while True:
            try:
                if effect.kind == "redact":
                    event_id = await self.mx.redact(
                        effect.room_id,
                        str(effect.content.get("redacts")),
                        "redacted by its author",
                        effect.tx_id,
                    )
                else:
                    event_id = await self.mx.send(
                        effect.room_id, effect.content, effect.tx_id, effect.event_type
                    )
            except Transient as exc:
                await self.store.effect_attempt(effect.tx_id, str(exc))
                if self._stopping.is_set():
                    raise _Stopping() from exc
                delay = backoff.next_delay()
                log.warning("Sending %s failed (%s); retrying in %.1f s", effect.kind, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                continue
            except MatrixError as exc:
                log.error("Sending %s to %s failed for good: %s", effect.kind, effect.room_id, exc)
                await self.store.effect_failed(effect.tx_id, str(exc))
                return None
            await self.store.effect_done(effect.tx_id, event_id)
            return event_id

    # -- for tests and tools ----------------------------------------------------------------

    async def wait_idle(self, seconds: float = 10.0) -> None:
        """Wait until the worker has nothing left to do."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (
                self.idle.is_set()
                and not self._wake.is_set()
                and not self._ack_tasks
                and not self._in_lane
            ):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the worker is still busy")

    def wake(self) -> None:
        """Ask the worker to look for work now."""
        self._wake.set()


class _Stopping(Exception):
    """The bot is stopping in the middle of a retry."""
