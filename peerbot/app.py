"""Wires the parts: the sync loop, the handlers, and the worker that sends what was decided."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import intake, routing
from .config import Config, IntakeRoom, is_room_ref
from .matrix import (
    Forbidden,
    Invite,
    MatrixClient,
    MatrixError,
    NotFound,
    RoomID,
    SyncBatch,
    Transient,
)
from .messages import Texts, permalink, texts_for
from .store import Effect, QuestionRow, Store

__all__ = ["PeerBot", "StartupError", "tx_id"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


class StartupError(RuntimeError):
    """The bot cannot start; the message says why and what to do."""


def tx_id(kind: str, event_id: str) -> str:
    """A transaction ID derived from the source event: a re-send is deduplicated by the server."""
    digest = hashlib.sha256(f"{kind}\0{event_id}".encode()).hexdigest()[:32]
    return f"peerbot.{kind}.{digest}"


def _server_of(mxid: str) -> str:
    return mxid.split(":", 1)[1] if ":" in mxid else ""


@dataclass
class Rooms:
    """Configured rooms, resolved to room IDs at start-up."""

    intake: dict[RoomID, IntakeRoom] = field(default_factory=dict)
    fallback: RoomID = field(default_factory=lambda: RoomID(""))
    labels: dict[RoomID, str] = field(default_factory=dict)
    via: dict[RoomID, list[str]] = field(default_factory=dict)


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

    def __init__(self, config: Config, store: Store, client: MatrixClient) -> None:
        self.config = config
        self.store = store
        self.mx = client
        self.texts: Texts = texts_for(config.language)
        self.rooms = Rooms()
        self.rules = routing.RuleSet(())
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._since: str | None = None
        self.handler_errors = 0
        self.idle = asyncio.Event()
        """Set whenever the worker has nothing left to do (tests and tools wait on it)."""

    # -- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in, reuse the device, resolve configured rooms; skip history on a first start."""
        device = await self.store.get("device_id")
        token = await self.store.get("access_token")
        await self.mx.login(device, token)
        await self.store.put("device_id", self.mx.device_id or "")
        await self.store.put("access_token", self.mx.access_token)
        log.info("Logged in as %s, device %s", self.mx.user_id, self.mx.device_id)
        self._since = await self.store.get("sync_token")
        if self._since is None:
            # First ever start: take the current position, do not replay history.
            batch = await self.mx.sync(None, full_state=True, first=True)
            for invite in batch.invites:
                await self._guard(self.handle_invite(invite), "invite")
            self._since = batch.next_batch
            await self.store.put("sync_token", batch.next_batch)
            log.info("First start: history skipped")
        else:
            # Resume: full_state so that room state (members, encryption) is known again.
            batch = await self.mx.sync(self._since, full_state=True, first=True)
            for invite in batch.invites:
                await self._guard(self.handle_invite(invite), "invite")
        await self._resolve_rooms()

    async def _resolve_rooms(self) -> None:
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
        self.rooms.intake = {resolved[i.room]: i for i in cfg.intake}
        self.rooms.fallback = resolved[cfg.routing.fallback_room]
        self.rules = routing.RuleSet(
            [routing.Rule(s.name, resolved[s.room], s.keywords) for s in cfg.routing.specialties]
        )
        for room_id in self.rooms.intake:
            if self.mx.is_encrypted(room_id):
                log.warning("Intake room %s is encrypted: this PeerBot cannot read it", room_id)

    def _room_refs(self) -> list[tuple[str, str]]:
        cfg = self.config
        refs = [(f"intake[{i}].room", r.room) for i, r in enumerate(cfg.intake)]
        refs += [
            (f"routing.specialties[{i}].room", s.room)
            for i, s in enumerate(cfg.routing.specialties)
        ]
        refs.append(("routing.fallback_room", cfg.routing.fallback_room))
        return [(p, r) for p, r in refs if is_room_ref(r)]

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
            try:
                await asyncio.wait_for(asyncio.shield(worker), timeout=4.0)
            except (TimeoutError, asyncio.CancelledError):
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
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
        if invite.encrypted:
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
        """One timeline event: record a question if it is one. Fast: the worker sends."""
        if not isinstance(event, Mapping):
            return
        etype = event.get("type")
        if etype == "m.room.encryption" and room_id in self.rooms.intake:
            log.warning("Intake room %s turned on encryption: PeerBot cannot read it", room_id)
            return
        if event.get("sender") == self.mx.user_id:
            return
        msg = intake.parse_message(event)
        if msg is None or msg.msgtype == "m.notice":
            return
        rule = self.rooms.intake.get(room_id)
        if rule is None:
            return
        question_id = intake.detect_question(msg, rule.trigger, rule.hashtags)
        if question_id is None:
            return
        if await self.store.is_handled(msg.event_id):
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
        """Send what is pending, then handle new questions. True if anything was done."""
        did = False
        for q in await self.store.questions_in_state("new", "forwarding", limit=50):
            if self._stopping.is_set():
                return did
            await self._process(q)
            did = True
        for effect in await self.store.pending_effects(limit=50):
            if self._stopping.is_set():
                return did
            if effect.question_id is None:
                await self._deliver(effect)
                did = True
        return did

    async def _process(self, q: QuestionRow) -> None:
        """Route one question and send its forward, then its acknowledgement. Re-entrant."""
        try:
            if q.body is None or q.sender is None:
                q = await self._fetch_root(q)
                if q.state == "failed":
                    return
            assert q.body is not None and q.sender is not None
            if q.target_room is None:
                q = await self._decide(q)
            assert q.target_room is not None
            forward = await self._forward_effect(q)
            fwd_event = await self._deliver(forward)
            if fwd_event is None:
                await self.store.update_question(q.event_id, state="failed", error="forward failed")
                return
            await self.store.update_question(q.event_id, forward_event_id=fwd_event)
            ack = await self._ack_effect(q, fwd_event)
            ack_event = await self._deliver(ack)
            await self.store.update_question(
                q.event_id,
                ack_event_id=ack_event,
                state="done" if ack_event else "failed",
            )
        except _Stopping:
            return
        except MatrixError as exc:
            log.error("Question %s could not be handled: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state="failed", error=str(exc))

    async def _fetch_root(self, q: QuestionRow) -> QuestionRow:
        try:
            event = await self.mx.get_event(q.room_id, q.event_id)
        except (NotFound, Forbidden) as exc:
            log.warning("The thread root %s cannot be read: %s", q.event_id, exc)
            await self.store.update_question(q.event_id, state="failed", error=str(exc))
            return _replace(q, state="failed")
        msg = intake.parse_message(event)
        if msg is None or msg.sender == self.mx.user_id or msg.msgtype != "m.text":
            await self.store.update_question(
                q.event_id, state="failed", error="the thread root is not a text message"
            )
            return _replace(q, state="failed")
        await self.store.update_question(
            q.event_id, sender=msg.sender, body=msg.body, created_ts=msg.ts
        )
        await self.store.mark_handled(q.event_id, q.room_id)
        return _replace(q, sender=msg.sender, body=msg.body, created_ts=msg.ts)

    async def _decide(self, q: QuestionRow) -> QuestionRow:
        assert q.body is not None and q.sender is not None
        decision = routing.decide(q.body, self.rules, self.rooms.fallback)
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
        return _replace(
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

    def _via(self, room_id: str, *users: str) -> list[str]:
        servers = [_server_of(u) for u in users]
        servers += self.rooms.via.get(RoomID(room_id), [])
        servers.append(_server_of(self.mx.user_id))
        if ":" in room_id:
            servers.append(_server_of(room_id))
        return list(dict.fromkeys(s for s in servers if s))

    async def _forward_effect(self, q: QuestionRow) -> Effect:
        assert q.body is not None and q.sender is not None and q.target_room is not None
        source_url = permalink(q.room_id, q.event_id, self._via(q.room_id, q.sender))
        rendered = self.texts.forward(
            question=q.body,
            sender_name=q.sender_name or q.sender,
            sender_id=q.sender,
            source_room=self.rooms.labels.get(RoomID(q.room_id)) or self.mx.room_label(q.room_id),
            source_url=source_url,
            specialty=q.specialty,
        )
        return await self.store.add_effect(
            tx_id=tx_id("fwd", q.event_id),
            kind="forward",
            room_id=q.target_room,
            content=rendered.content(),
            question_id=q.event_id,
            question_state="forwarding",
        )

    async def _ack_effect(self, q: QuestionRow, forward_event: str) -> Effect:
        assert q.target_room is not None
        decision = q.decision or {}
        words = [(str(w[0]), str(w[1]), bool(w[2])) for w in decision.get("words", [])]
        target = RoomID(q.target_room)
        rendered = self.texts.acknowledgement(
            target_room=self.rooms.labels.get(target) or self.mx.room_label(target),
            specialty=q.specialty,
            forward_url=permalink(target, forward_event, self._via(target)),
            words=words,
            reasons=[str(r) for r in decision.get("reasons", [])],
        )
        content = rendered.content()
        content["m.relates_to"] = {
            "rel_type": "m.thread",
            "event_id": q.event_id,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": q.trigger_event_id},
        }
        return await self.store.add_effect(
            tx_id=tx_id("ack", q.event_id),
            kind="ack",
            room_id=q.room_id,
            content=content,
            question_id=q.event_id,
        )

    async def _deliver(self, effect: Effect) -> str | None:
        """Send an effect until it is sent or cannot ever be; None when it failed for good."""
        if effect.state == "done":
            return effect.event_id
        if effect.state == "failed":
            return None
        backoff = Backoff()
        while True:
            try:
                event_id = await self.mx.send(effect.room_id, effect.content, effect.tx_id)
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
            if self.idle.is_set() and not self._wake.is_set():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the worker is still busy")


class _Stopping(Exception):
    """The bot is stopping in the middle of a retry."""


def _replace(q: QuestionRow, **changes: Any) -> QuestionRow:
    from dataclasses import replace

    return replace(q, **changes)
