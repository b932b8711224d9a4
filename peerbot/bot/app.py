"""Wires the parts and runs them: start-up, the sync loop, the worker, an orderly stop.

The parts, each with one job and given what it needs (see the README's Development section):
the room directory (:mod:`.rooms`), the event handlers (:mod:`.events`), the question
pipeline (:mod:`.pipeline`) with its pure decisions (:mod:`.lifecycle`), the forwarding lanes
(:mod:`.forwarding`), the outbox (:mod:`.outbox`) and the chat commands (:mod:`.admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from peerbot.bot import stages
from peerbot.bot.admin import ChatCommands
from peerbot.bot.events import EventHandlers
from peerbot.bot.followup import FollowupScheduler
from peerbot.bot.followup_commands import FollowupCommands
from peerbot.bot.forwarding import Lanes
from peerbot.bot.metrics import Metrics
from peerbot.bot.outbox import Backoff, Outbox
from peerbot.bot.pipeline import QuestionPipeline
from peerbot.bot.plugins import PluginSet
from peerbot.bot.related import RelatedThreads
from peerbot.bot.relays import Relays
from peerbot.bot.rooms import RoomDirectory, StartupError
from peerbot.config import Config
from peerbot.core import routing
from peerbot.core.ids import RoomID, tx_id
from peerbot.core.messages import Texts, texts_for
from peerbot.core.related import RelatedIndex
from peerbot.matrix import Forbidden, MatrixClient, MatrixError, SyncBatch, Transient
from peerbot.store import Effect, Store, unavailable

__all__ = ["Backoff", "PeerBot", "StartupError", "tx_id"]

log = logging.getLogger(__name__)

FORWARD_FIRST_S = 0.02
"""How long the next long-poll waits, at most, for the worker to route what a sync brought and
the homeserver to answer the sends of its forwards (a sync request or the token's write
reaching it first delayed them: ``bench_load.py --profile``)."""


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
        self.related = RelatedThreads(config, store)
        """The related-threads index, and its embeddings when the semantic extra loads."""
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._since: str | None = None
        self.idle = asyncio.Event()
        """Set whenever the worker has nothing left to do (tests and tools wait on it)."""
        self.metrics = Metrics()
        """Figures for /metrics and the sync's health for /health (see :mod:`.ops`)."""
        self.rooms = RoomDirectory(config, client, store)
        self.outbox = Outbox(store, client, self._stopping)
        """Sends everything recorded but the forwards (the lanes send those)."""
        self.relays = Relays(store, client, self.rooms, self.plugins, self.outbox, self.texts)
        """Copies each message of a question's two threads to the other one."""
        self.pipeline = QuestionPipeline(
            config,
            store,
            client,
            self.rooms,
            self.plugins,
            self.related,
            self.outbox,
            self.texts,
            self._stopping,
            metrics=self.metrics,
            forwarded=self.relays.forward_exists,
        )
        self.followup = FollowupScheduler(config, store, client, self.rooms, self.outbox)
        self.lanes = Lanes(store, self.pipeline, self._stopping, self.wake)
        self.commands = ChatCommands(
            config,
            store,
            client,
            self.rooms,
            self.pipeline,
            self.plugins,
            self.related,
            self.outbox,
            self.texts,
            self.relays,
            extra=FollowupCommands(config, store, self.rooms, self.outbox, self.texts).handlers,
        )
        self.events = EventHandlers(
            config,
            store,
            client,
            self.rooms,
            self.related,
            self.commands,
            self.outbox,
            self.texts,
            functools.partial(self.wake, worker_only=True),
            encryption=self.encryption_on,
            relays=self.relays,
            metrics=self.metrics,
            fresh=self.lanes.hand,
        )
        self.metrics.read_from(self.events, self.plugins, client)

    @property
    def rules(self) -> routing.RuleSet:
        """The specialties now (bot.yaml, then chat changes)."""
        return self.rooms.rules

    @rules.setter
    def rules(self, rules: routing.RuleSet) -> None:
        self.rooms.rules = rules

    @property
    def index(self) -> RelatedIndex:
        """The related-threads index (lexical, or hybrid with vectors)."""
        return self.related.index

    @property
    def handler_errors(self) -> int:
        """Event handler failures so far."""
        return self.events.errors

    async def handle_event(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        """One timeline event (see :class:`EventHandlers`)."""
        await self.events.handle_event(room_id, event)

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
        # The embedding model loads in a worker thread meanwhile (seconds for USE).
        self.related.begin_warm()
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
            await self.events.guard(self.events.handle_invite(invite), "invite")
        await self.rooms.resolve_configured()
        self.plugins.scope(self.rooms.room_id)
        self.rooms.log_states(encryption_on=self.encryption_on)
        await self.rooms.reload_overrides()
        await self.related.load()
        if self.plugins.routers:
            for text, specialty in await self.store.routed_examples():
                self.plugins.learn(text, specialty)
        if self.encryption_on:
            await self.events.guard(self.events.retry_undecryptable(), "decrypt retry")
        # Messages that waited for a forward sent just before a crash: relayed now, once.
        await self.events.guard(self.relays.flush_waiting(), "waiting relays")

    # -- the loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync and work until stopped or cancelled."""
        worker = asyncio.create_task(self._work_loop(), name="peerbot-worker")
        outbox = asyncio.create_task(self.outbox.run(), name="peerbot-outbox")
        sync = asyncio.create_task(self._sync_loop(), name="peerbot-sync")
        embed = asyncio.create_task(self.related.run(self._stopping), name="peerbot-embed")
        followup = asyncio.create_task(self.followup.run(), name="peerbot-followup")
        stop = asyncio.create_task(self._stopping.wait(), name="peerbot-stop")
        try:
            done, _ = await asyncio.wait(
                {worker, outbox, sync, embed, followup, stop}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (sync, embed, followup, stop):
                task.cancel()
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
            # Each lane finishes the forward in flight and takes no other (4 s in all).
            await self.lanes.finish(finish_by)
            # What was recorded meanwhile (acknowledgements, notices) goes out too (1 s more).
            await self.outbox.drain(max(1.0, finish_by + 1.0 - time.monotonic()))
            outbox.cancel()
            for task in (outbox, sync, embed, followup):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.events.invites.close()

    def stop(self) -> None:
        """Ask the loops to stop (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()
        self.outbox.wake()

    async def _sync_loop(self) -> None:
        backoff = Backoff()
        health = self.metrics.health
        while not self._stopping.is_set():
            try:
                # The first one answers at once: start-up (READY, /health) ends when the bot
                # has caught up, not after a 30 s long-poll in a quiet room.
                batch = await self.mx.sync(
                    self._since, full_state=False, wait=health.first_ok_at is not None
                )
            except Transient as exc:
                delay = backoff.next_delay()
                self.metrics.sync_failed(type(exc).__name__)
                log.warning("Sync failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            except MatrixError as exc:
                if isinstance(exc, Forbidden) and exc.errcode in ("M_UNKNOWN_TOKEN",):
                    raise
                delay = backoff.next_delay()
                self.metrics.sync_failed(exc.errcode or type(exc).__name__)
                log.error("Sync refused (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self.handle_batch(batch, save_token=False)
                # New questions' forwards go out before the token's write and the next long-poll
                # (either one first delayed them); events meanwhile wait in the homeserver.
                await _until_set(
                    (self.idle, self.lanes.all_sending, self.pipeline.sends.answered),
                    FORWARD_FIRST_S,
                )
                await self._save_token(batch)
            except Exception as exc:
                await _database_down(exc, backoff, self.metrics)
                continue
            backoff.reset()
            self.metrics.sync_ok()

    async def handle_batch(self, batch: SyncBatch, *, save_token: bool = True) -> None:
        """Handle one sync's invites and events, then save its token (unless ``save_token``)."""
        events = self.events
        if batch.received_at is not None:  # bench_load.py --profile (so is the next mark)
            stages.mark_events(batch.events, "http", batch.received_at)
        stages.mark_events(batch.events, "sync")
        for invite in batch.invites:
            await events.guard(events.handle_invite(invite), "invite")
        for room_id, event in batch.events:
            await events.guard(events.handle_event(room_id, event), "event")
        for undecryptable in batch.undecryptable:
            await events.guard(events.on_undecryptable(undecryptable), "undecryptable")
        if self.encryption_on:
            await events.guard(events.retry_undecryptable(), "decrypt retry")
        for room_id in batch.left:
            log.info("PeerBot left or was removed from %s", room_id)
        if save_token:
            await self._save_token(batch)

    async def _save_token(self, batch: SyncBatch) -> None:
        # Only now: a crash before this line replays the batch, and handled events are skipped.
        self._since = batch.next_batch
        if not batch.only_from(self.mx.user_id):  # see SyncBatch.only_from
            await self.store.put("sync_token", batch.next_batch)
            stages.mark_events(batch.events, "token")  # bench_load.py --profile
            self.wake()

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
        """Route waiting questions onto their lanes (and nudge the outbox); True if any work."""
        # Routing first: a new question's forward does not wait for the outbox's read.
        did = await self.lanes.route_waiting()
        return await self.outbox.pump() > 0 or did

    async def deliver(self, effect: Effect) -> str | None:
        """Send one effect now (tools and tests); the outbox does this for everything else."""
        return await self.outbox.deliver(effect)

    # -- for tests and tools ----------------------------------------------------------------

    async def wait_idle(self, seconds: float = 10.0) -> None:
        """Wait until the worker and the outbox have nothing left to do."""
        await _wait_idle(self, self._wake, seconds)

    def wake(self, *, worker_only: bool = False) -> None:
        """Ask the worker, the outbox and the follow-ups to look for work now (or the worker
        alone: the sync's handlers, which the sync loop waits for)."""
        self.idle.clear()
        self._wake.set()
        if not worker_only:
            self.outbox.wake()
            self.followup.wake()


async def _wait_idle(bot: PeerBot, wake: asyncio.Event, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lanes, outbox = bot.lanes, bot.outbox
        if bot.idle.is_set() and not wake.is_set() and not lanes.in_lane and not outbox.busy:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the worker is still busy")


async def _until_set(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Wait until each of ``events`` is set (in turn), ``seconds`` at most in all."""
    deadline = time.monotonic() + seconds
    for event in events:
        left = deadline - time.monotonic()
        if event.is_set() or left <= 0:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), left)


async def _database_down(exc: Exception, backoff: Backoff, metrics: Metrics) -> None:
    """A batch failed: wait and let the sync hand it over again if the database is only
    unavailable (the token did not move; what was already recorded is skipped), else raise."""
    if not unavailable(exc):
        raise exc
    delay = backoff.next_delay()
    metrics.sync_failed("database")
    log.error("The database is unavailable (%s); the batch again in %.1f s", exc, delay)
    await asyncio.sleep(delay)
