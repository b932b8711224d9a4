"""The outbox: delivers every recorded effect, with back-off, across crashes.

Every message the bot sends is first recorded (``effects``, with a transaction ID derived from
its source event) in the same transaction as the state change it belongs to; this loop sends
what is pending, oldest first, and marks it done with its event ID. A restart sends the same
transaction IDs again, which the homeserver deduplicates. The one exception is a question's
forward: its lane sends it inline, because the acknowledgement needs the forward's event ID.

Effects of different questions (or rooms) go out side by side; those of one question go out
one at a time in the order they were recorded, so a thread reads in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import replace

from peerbot.bot import stages
from peerbot.core.records import Effect, QuestionState
from peerbot.core.relay import COPY_OF
from peerbot.matrix import MatrixClient, MatrixError, Transient
from peerbot.store import Store

__all__ = ["MAX_BACKOFF", "Backoff", "Outbox", "Stopping"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
CONCURRENCY = 8
"""Effects in flight at once (each in its own thread or room)."""
BATCH = 100


class Stopping(Exception):
    """The bot is stopping in the middle of a retry."""


class Backoff:
    """Exponential back-off with jitter, reset on success: 1 s doubling to 60 s."""

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


def _lane_owned(effect: Effect) -> bool:
    """A question's own forward: its lane sends it (the acknowledgement needs its event ID)."""
    return effect.kind == "forward" and effect.question_id is not None


class Outbox:
    """Sends pending effects until stopped; ``deliver`` sends one (used by the lanes too)."""

    def __init__(
        self,
        store: Store,
        client: MatrixClient,
        stopping: asyncio.Event,
    ) -> None:
        self.store = store
        self.mx = client
        self._stopping = stopping
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._draining = False
        self.idle = asyncio.Event()
        """Set while nothing is pending or in flight."""

    def wake(self) -> None:
        """Something new was recorded: look now."""
        self.idle.clear()
        self._wake.set()

    @property
    def busy(self) -> bool:
        """True while effects are in flight or a look is due."""
        return bool(self._in_flight) or self._wake.is_set() or not self.idle.is_set()

    async def run(self) -> None:
        """Deliver pending effects until the bot stops."""
        while not self._stopping.is_set():
            self._wake.clear()
            self.idle.clear()
            try:
                started = await self._start_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("The outbox failed; retrying shortly")
                started = 0
                await asyncio.sleep(1.0)
            if not started and not self._in_flight and not self._wake.is_set():
                self.idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)

    async def pump(self) -> int:
        """Start sending what is pending now; the number of groups started."""
        return await self._start_pending()

    async def drain(self, seconds: float) -> None:
        """At a stop: send what is recorded and pending, for at most ``seconds``."""
        self._draining = True
        try:
            with contextlib.suppress(Exception):
                await self._start_pending()
            await self.finish(seconds)
        finally:
            self._draining = False

    async def _start_pending(self) -> int:
        groups: dict[str, list[Effect]] = {}
        for effect in await self.store.pending_effects(limit=BATCH):
            if effect.tx_id in self._in_flight or _lane_owned(effect):
                continue
            groups.setdefault(effect.question_id or effect.tx_id, []).append(effect)
        for key, effects in groups.items():
            if any(e.tx_id in self._in_flight for e in effects):
                continue
            self._in_flight.update(e.tx_id for e in effects)
            task = asyncio.create_task(self._send_group(effects), name=f"peerbot-outbox-{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(groups)

    async def _send_group(self, effects: list[Effect]) -> None:
        try:
            async with self._slots:
                for n, effect in enumerate(effects):
                    if self._stopping.is_set() and not self._draining:
                        return
                    if effect.kind == "forward_state" and any(
                        e.kind == "forward_state" for e in effects[n + 1 :]
                    ):
                        # Each edit of the forward shows its whole state: only the latest counts.
                        await self.store.effect_superseded(effect.tx_id)
                        continue
                    try:
                        await self.deliver(effect)
                    except Stopping:
                        return
                    except Exception:
                        log.exception("Sending %s failed; retried later", effect.kind)
                        return
        finally:
            self._in_flight.difference_update(e.tx_id for e in effects)
            self._wake.set()

    async def finish(self, seconds: float) -> None:
        """Let the sends in flight end (at most ``seconds``), then cancel the rest."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=seconds)
            for task in late:
                task.cancel()

    async def deliver(self, effect: Effect) -> str | None:
        """Send an effect until it is sent or cannot ever be; None when it failed for good."""
        if effect.state == "done":
            return effect.event_id
        if effect.state in ("failed", "superseded"):
            return None
        if COPY_OF in effect.content:
            resolved = await self._resolve_copy(effect)
            if resolved is None:
                return None
            effect = resolved
        backoff = Backoff()
        while True:
            try:
                if effect.kind in ("redact", "relay_redact"):
                    event_id: str = await self.mx.redact(
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
                    raise Stopping() from exc
                delay = backoff.next_delay()
                log.warning("Sending %s failed (%s); retrying in %.1f s", effect.kind, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                continue
            except MatrixError as exc:
                log.error("Sending %s to %s failed for good: %s", effect.kind, effect.room_id, exc)
                await self.store.effect_failed(effect.tx_id, str(exc))
                await self._settled(effect, None, str(exc))
                return None
            if effect.kind == "forward" and effect.question_id:  # bench_load.py --profile
                stages.mark(effect.question_id, "sent")
            if effect.kind == "move" and effect.question_id is not None:
                # Relays and follow-ups follow the question to its current copy.
                await self.store.copy_moved(
                    effect.tx_id, effect.question_id, effect.room_id, event_id
                )
            else:
                await self.store.effect_done(effect.tx_id, event_id)
            await self._settled(effect, event_id, None)
            if effect.kind == "forward" and effect.question_id:
                stages.mark(effect.question_id, "done_marked")
            return event_id

    async def _resolve_copy(self, effect: Effect) -> Effect | None:
        """An edit or redaction of a copy recorded before the copy was sent: its event ID now.

        None when it cannot be sent yet (the copy is pending: retried on a later pass) or ever
        (the copy was never sent: failed for good)."""
        copy = await self.store.effect(str(effect.content[COPY_OF]))
        if copy is not None and copy.state == "pending":
            return None
        if copy is None or copy.event_id is None:
            await self.store.effect_failed(effect.tx_id, "the copy it changes was never sent")
            return None
        content = {k: v for k, v in effect.content.items() if k != COPY_OF}
        if effect.kind == "relay_redact":
            content["redacts"] = copy.event_id
        else:
            content["m.relates_to"] = {**content["m.relates_to"], "event_id": copy.event_id}
        return replace(effect, content=content)

    async def _settled(self, effect: Effect, event_id: str | None, error: str | None) -> None:
        """An acknowledgement's fate is its question's: its event ID, or the question failed."""
        if effect.kind == "relay" and event_id is not None:
            await self.store.relay_sent(effect.tx_id, event_id)
        if effect.kind == "ack" and effect.question_id is not None:
            if event_id is not None:
                await self.store.update_question(effect.question_id, ack_event_id=event_id)
            else:
                await self.store.update_question(
                    effect.question_id, state=QuestionState.FAILED.value, error=error
                )
