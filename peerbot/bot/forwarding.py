"""The worker's forwarding lanes: one per target room, in question order, rooms side by side.

The worker takes waiting questions oldest first, has the pipeline check and route each one,
and queues the routed ones on their target room's lane. A lane sends its room's forwards one
at a time, in the order the questions were asked; different rooms are served side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from peerbot.bot.outbox import Stopping
from peerbot.bot.pipeline import QuestionPipeline
from peerbot.core.records import WAITING, QuestionRow, QuestionState
from peerbot.matrix import MatrixError
from peerbot.store import Store

__all__ = ["Lanes"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

BATCH = 200


class Lanes:
    """Routes waiting questions and sends their forwards, one lane per target room."""

    def __init__(
        self,
        store: Store,
        pipeline: QuestionPipeline,
        stopping: asyncio.Event,
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self._stopping = stopping
        self._wake = wake
        self._queues: dict[str, asyncio.Queue[QuestionRow]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self.in_lane: set[str] = set()
        """Questions queued or being forwarded (the worker skips them)."""
        self.all_sending = asyncio.Event()
        """Set when no routed question waits in a lane's queue (each lane took its forward,
        whose send then begins): the sync loop lets these go first."""
        self.all_sending.set()
        self._fresh: dict[str, QuestionRow] = {}
        """Questions just recorded by the sync's handlers, in order, not yet routed."""

    def hand(self, q: QuestionRow | None) -> None:
        """A question just recorded (routed next without reading it back from the store);
        None: something else changed since (an edit, a command...), so the worker reads what
        waits from the store instead of trusting what it was handed."""
        if q is None:
            self._fresh.clear()
        else:
            self._fresh[q.event_id] = q

    async def route_waiting(self) -> bool:
        """Check and route the waiting questions, oldest first; True if there were any."""
        did = False
        # What the handlers just recorded goes first, without a read (one trip less on the
        # way to the forward); then what waits in the store, that read included.
        while self._fresh and not self._stopping.is_set():
            q = self._fresh.pop(next(iter(self._fresh)))
            if q.event_id not in self.in_lane:
                did = True
                await self._take(q)
        # The questions on a lane are left out by the query itself: the worker wakes at each
        # sync and each forward, and re-reading a queue that grew under load cost more CPU
        # than anything else PeerBot does (bench_load.py --profile).
        waiting = await self.store.questions_in_state(*WAITING, limit=BATCH, exclude=self.in_lane)
        for q in waiting:
            if self._stopping.is_set():
                return did
            self._fresh.pop(q.event_id, None)  # read here: not taken again from a hand-off
            if q.event_id in self.in_lane:
                continue
            did = True
            await self._take(q)
        return did

    async def _take(self, q: QuestionRow) -> None:
        """Check and route one question; queue it on its room's lane when routed."""
        routed = await self._failing_on_error(q, self.pipeline.prepare(q, self._free))
        if routed is not None:
            assert routed.target_room is not None
            self.in_lane.add(q.event_id)
            self.all_sending.clear()
            self._queue(routed.target_room).put_nowait(routed)

    def _free(self, room_id: str) -> bool:
        """No forward is queued or being sent to this room (its next one is taken at once)."""
        return room_id not in self._runners

    def _queue(self, room_id: str) -> asyncio.Queue[QuestionRow]:
        """The queue of forwards for one room; its runner starts when work arrives."""
        queue = self._queues.setdefault(room_id, asyncio.Queue())
        if room_id not in self._runners:
            task = asyncio.create_task(self._run(room_id, queue), name="peerbot-lane")
            self._runners[room_id] = task
        return queue

    async def _run(self, room_id: str, queue: asyncio.Queue[QuestionRow]) -> None:
        """Send one room's forwards in order; end when the queue is empty (or on stop: then
        only a forward recorded with its routing step still goes, see ``prepare``)."""
        try:
            while not queue.empty():
                q = queue.get_nowait()
                self._taken()
                if self._stopping.is_set() and not self.pipeline.forward_recorded(q.event_id):
                    self.in_lane.discard(q.event_id)
                    continue
                try:
                    await self._failing_on_error(q, self.pipeline.forward(q))
                except Exception:
                    log.exception("Forwarding %s failed; retried later", q.event_id)
                finally:
                    self.in_lane.discard(q.event_id)
                    self._wake()
        finally:
            # No await between the emptiness check and here: a forward queued after it finds
            # no runner and starts a new one.
            del self._runners[room_id]
            if self._stopping.is_set():  # cancelled at the stop's deadline
                while not queue.empty():
                    self.in_lane.discard(queue.get_nowait().event_id)
                self._taken()

    def _taken(self) -> None:
        """A lane took a question off its queue: all_sending once every queue is empty."""
        if all(queue.empty() for queue in self._queues.values()):
            self.all_sending.set()

    async def _failing_on_error(self, q: QuestionRow, step: Awaitable[_T]) -> _T | None:
        """Run one step for ``q``; a Matrix error fails the question, a stop skips it."""
        try:
            return await step
        except Stopping:
            return None
        except MatrixError as exc:
            log.error("Question %s could not be handled: %s", q.event_id, exc)
            await self.store.update_question(
                q.event_id, state=QuestionState.FAILED.value, error=str(exc)
            )
            return None

    async def finish(self, deadline: float) -> None:
        """At a stop: each lane finishes the forward in flight and takes no other."""
        if self._runners:
            left = max(0.1, deadline - time.monotonic())
            _, late = await asyncio.wait(set(self._runners.values()), timeout=left)
            for task in late:
                task.cancel()
