"""Wires the parts: the sync loop, the handlers, and the worker that sends what was decided."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from . import intake, routing
from .commands import parse_command
from .config import Config, IntakeRoom, Trigger, is_room_ref
from .ids import server_of, tx_id
from .lifecycle import (
    Labels,
    RouteInputs,
    acknowledged,
    forward_failed,
    forward_outgoing,
    route_step,
    thread_relation,
)
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
from .outbox import Backoff, Outbox, Stopping
from .permissions import power_level
from .plugin_api import Question, SpecialtyInfo, Verdict
from .plugins import PluginSet
from .records import WAITING, QuestionState
from .related import DEFAULT_MIN_SCORE, RelatedIndex
from .store import Effect, QuestionRow, Store
from .visibility import Communities, shown_rooms

__all__ = ["Backoff", "PeerBot", "StartupError", "tx_id"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

FAILED = QuestionState.FAILED.value
MAX_DECRYPT_ATTEMPTS = 5
"""Tries, once an event's room key is known, before giving up on decrypting it."""
SOLVED_KEYS = frozenset({"✅", "✔️", "✔", "☑️", "☑"})


class StartupError(RuntimeError):
    """The bot cannot start; the message says why and what to do."""


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
    communities: Communities = field(default_factory=Communities)
    """bot.yaml's ``communities``, as room IDs."""


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
        self.outbox = Outbox(store, client, self._stopping)
        """Sends everything recorded but the forwards (the lanes send those)."""
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
        for path, ref, join in self._room_refs():
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
            if join and room_id not in joined:
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
        self.rooms.configured = {resolved[ref] for _, ref, join in self._room_refs() if join}
        self.rooms.communities = Communities.of(
            [resolved[r] for r in c.rooms] for c in cfg.communities
        )
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

    def _room_refs(self) -> list[tuple[str, str, bool]]:
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
        outbox = asyncio.create_task(self.outbox.run(), name="peerbot-outbox")
        sync = asyncio.create_task(self._sync_loop(), name="peerbot-sync")
        stop = asyncio.create_task(self._stopping.wait(), name="peerbot-stop")
        try:
            done, _ = await asyncio.wait(
                {worker, outbox, sync, stop}, return_when=asyncio.FIRST_COMPLETED
            )
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
            # What was recorded meanwhile (acknowledgements, notices) goes out too (1 s more).
            await self.outbox.drain(max(1.0, finish_by + 1.0 - time.monotonic()))
            outbox.cancel()
            for task in (outbox, sync):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def stop(self) -> None:
        """Ask the loops to stop (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()
        self.outbox.wake()

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
        if q.state == QuestionState.HELD:
            # Checked again with the new text; forwarded if it is clean now.
            changes["state"] = QuestionState.NEW.value
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
                    self.outbox.wake()
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
        """Handle new questions (and nudge the outbox). True if anything was done.

        Questions are checked and routed here, oldest first, then queued on their target room's
        lane: each room gets its forwards one at a time in the order the questions were asked,
        and different rooms are served side by side. Everything else the bot says (notices,
        acknowledgements, command answers) is recorded and goes out through the outbox.
        """
        did = await self.outbox.pump() > 0
        for q in await self.store.questions_in_state(*WAITING, limit=200):
            if self._stopping.is_set():
                return did
            if q.event_id in self._in_lane:
                continue
            did = True
            routed = await self._failing_on_error(q, self._prepare(q))
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
                    await self._failing_on_error(q, self._forward(q))
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

    async def _failing_on_error(self, q: QuestionRow, step: Awaitable[_T]) -> _T | None:
        """Run one step for ``q``; a Matrix error fails the question, a stop skips it."""
        try:
            return await step
        except Stopping:
            return None
        except MatrixError as exc:
            log.error("Question %s could not be handled: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state=FAILED, error=str(exc))
            return None

    # -- one question: gather the inputs, decide (lifecycle), apply in one transaction --------

    async def _prepare(self, q: QuestionRow) -> QuestionRow | None:
        """Check and route one question; the routed question, or None (held or failed)."""
        if q.body is None or q.sender is None:
            q = await self._fetch_root(q)
            if q.state == QuestionState.FAILED:
                return None
        assert q.body is not None and q.sender is not None
        verdicts: list[tuple[str, Verdict]] = []
        route: routing.Decision | None = None
        sender_name = q.sender_name or ""
        if q.target_room is None:
            if not q.guard_override and self.plugins.guards:
                checked = await self.plugins.check(self.as_question(q))
                verdicts = [(plugin.name, verdict) for plugin, verdict in checked]
            route = await self.route(q.body, self.as_question(q))
            name = self.mx.display_name(q.room_id, q.sender) or await self._profile(q.sender)
            sender_name = name
        target = route.room if route is not None else q.target_room
        assert target is not None
        inputs = RouteInputs(
            verdicts=verdicts,
            route=route,
            source_encrypted=self.mx.is_encrypted(q.room_id),
            target_encrypted=self.mx.is_encrypted(target),
            target_allows_from_encrypted=self.allows_from_encrypted(target),
            labels=Labels(sender_name=sender_name, target_label=self.room_label(target)),
        )
        step = route_step(q, inputs, self.texts)
        await self.store.apply(q.event_id, step)
        if step.effects:
            self.outbox.wake()
        if step.state is QuestionState.HELD:
            log.info(
                "Question %s held (%s)",
                q.event_id,
                ", ".join(step.record.held) if step.record and step.record.held else "encryption",
            )
            _fault_point("held")
            return None
        if step.routed:
            log.info("Question %s -> %s (%s)", q.event_id, target, step.specialty or "fallback")
            return replace(
                q,
                state=step.state,
                specialty=step.specialty,
                target_room=step.target_room,
                decision=step.record or q.decision,
                sender_name=step.sender_name or q.sender_name,
            )
        return replace(q, state=step.state)

    def _labels(self, q: QuestionRow) -> Labels:
        assert q.sender is not None and q.target_room is not None
        return Labels(
            sender_name=q.sender_name or q.sender,
            target_label=self.room_label(q.target_room),
            source_label=self.room_label(q.room_id),
            source_url=permalink(q.room_id, q.event_id, self.via(q.room_id, q.sender)),
        )

    async def _forward(self, q: QuestionRow) -> None:
        """Record a routed question's forward and send it inline (the same transaction ID after
        a crash: the server keeps one); then record the acknowledgement for the outbox."""
        assert q.body is not None and q.sender is not None and q.target_room is not None
        labels = self._labels(q)
        forward = forward_outgoing(
            q, question=q.body, sender_id=q.sender, labels=labels, texts=self.texts
        )
        effect = await self.store.add_effect(
            tx_id=forward.tx_id,
            kind=forward.kind,
            room_id=forward.room_id,
            content=dict(forward.content),
            question_id=q.event_id,
        )
        fwd_event = await self.outbox.deliver(effect)
        if fwd_event is None:
            await self.store.apply(q.event_id, forward_failed(q, "forward failed", self.texts))
            self.outbox.wake()
            return
        if self._stopping.is_set():
            # No new acknowledgement once stopping (it could be cut off mid-send): the question
            # stays forwarding and is acknowledged after the restart.
            await self.store.update_question(q.event_id, forward_event_id=fwd_event)
            return
        target = RoomID(q.target_room)
        # Everyone who can read the asker's room, now or later, reads this list.
        related = await self.related_lines(q.body, q.room_id, exclude=(q.event_id,))
        step = acknowledged(
            q,
            forward_event_id=fwd_event,
            forward_url=permalink(target, fwd_event, self.via(target)),
            related=related,
            labels=labels,
            texts=self.texts,
        )
        await self.store.apply(q.event_id, step)
        self.outbox.wake()
        # Indexed once acknowledged: the question itself is never its own related thread.
        self.index.add(q.event_id, q.body, room_id=q.room_id, solved=q.solved)
        if q.specialty:
            self.plugins.learn(q.body, q.specialty)

    def allows_from_encrypted(self, room_id: str) -> bool:
        """bot.yaml's ``allow_from_encrypted`` for a target room (resolved to its ID)."""
        r = self.config.routing
        allowed = {s.room for s in r.specialties if s.allow_from_encrypted}
        if r.fallback_allow_from_encrypted:
            allowed.add(r.fallback_room)
        return room_id in {self.rooms.resolved.get(a, RoomID(a)) for a in allowed}

    async def _fetch_root(self, q: QuestionRow) -> QuestionRow:
        try:
            event = await self.mx.get_event(q.room_id, q.event_id)
        except (NotFound, Forbidden) as exc:
            log.warning("The thread root %s cannot be read: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state=FAILED, error=str(exc))
            return replace(q, state=QuestionState.FAILED)
        msg = intake.parse_message(event)
        if msg is None or msg.sender == self.mx.user_id or msg.msgtype != "m.text":
            await self.store.update_question(
                q.event_id, state=FAILED, error="the thread root is not a text message"
            )
            return replace(q, state=QuestionState.FAILED)
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

    async def route(self, text: str, question: Question | None = None) -> routing.Decision:
        """The routing decision for a text: keywords and router plugins."""
        proposals = []
        if question is not None and self.plugins.routers:
            proposals = await self.plugins.propose(question, self.specialty_infos())
        return routing.decide(text, self.rules, self.rooms.fallback, proposals)

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
        """The forwarded message for a question (as if routed to ``specialty``)."""
        assert q.sender is not None and q.body is not None
        moved = replace(q, specialty=specialty)
        out = forward_outgoing(
            moved, question=q.body, sender_id=q.sender, labels=self._labels(q), texts=self.texts
        )
        return dict(out.content)

    def rooms_shown_in(self, room_id: str) -> set[str]:
        """The indexed rooms whose threads may be shown in this room (core.visibility's rule)."""
        return shown_rooms(
            self.index.rooms(), room_id, self.mx.room_privacy, self.rooms.communities
        )

    async def related_lines(
        self, text: str, shown_in: str, exclude: tuple[str, ...] = ()
    ) -> list[RelatedLine]:
        """Related past threads for a text, from the rooms that may be shown in ``shown_in``."""
        limit = self.config.related.max_results
        rooms = self.rooms_shown_in(shown_in)
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

    async def reply(
        self, room_id: str, to: intake.Message, rendered: Any, kind: str = "reply"
    ) -> None:
        """Queue a notice in the thread of the message ``to`` (a command's answer)."""
        content = rendered.content()
        root = to.thread_root or to.event_id
        content["m.relates_to"] = thread_relation(root, to.event_id)
        await self.store.add_effect(
            tx_id=tx_id(kind, to.event_id), kind=kind, room_id=room_id, content=content
        )
        self.outbox.wake()

    async def deliver(self, effect: Effect) -> str | None:
        """Send one effect now (tools and tests); the outbox does this for everything else."""
        return await self.outbox.deliver(effect)

    # -- for tests and tools ----------------------------------------------------------------

    async def wait_idle(self, seconds: float = 10.0) -> None:
        """Wait until the worker and the outbox have nothing left to do."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (
                self.idle.is_set()
                and not self._wake.is_set()
                and not self._in_lane
                and not self.outbox.busy
            ):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the worker is still busy")

    def wake(self) -> None:
        """Ask the worker to look for work now."""
        self._wake.set()
        self.outbox.wake()


_FAULT = os.environ.get("PEERBOT_TEST_FAULT", "")
"""Fault tests only: ``exit-after-held`` makes the process die right after a hold is applied."""


def _fault_point(where: str) -> None:
    if f"exit-after-{where}" == _FAULT:
        os._exit(137)
