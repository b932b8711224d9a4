"""One question's way: gather the inputs, let the lifecycle decide, apply the step.

:meth:`QuestionPipeline.prepare` checks and routes a waiting question (guards, routers, both
rooms' encryption) and applies :func:`peerbot.lifecycle.route_step` in one transaction;
:meth:`QuestionPipeline.forward` sends a routed question's forward inline and records its
acknowledgement, with the related threads its room may show. Everything else goes out through
the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from peerbot.bot import stages
from peerbot.bot.metrics import Metrics
from peerbot.bot.outbox import Outbox
from peerbot.bot.plugins import PluginSet
from peerbot.bot.related import RelatedThreads
from peerbot.bot.rooms import RoomDirectory
from peerbot.config import Config
from peerbot.core import intake, routing
from peerbot.core.ids import RoomID
from peerbot.core.lifecycle import (
    Labels,
    Outgoing,
    RouteInputs,
    Step,
    acknowledged,
    forward_failed,
    forward_outgoing,
    route_step,
)
from peerbot.core.messages import RelatedLine, Texts, permalink
from peerbot.core.records import Effect, QuestionRow, QuestionState
from peerbot.matrix import Forbidden, MatrixClient, NotFound
from peerbot.plugin_api import Question, SpecialtyInfo, Verdict
from peerbot.store import Store

__all__ = ["QuestionPipeline"]

log = logging.getLogger(__name__)

FAILED = QuestionState.FAILED.value

_FAULT = os.environ.get("PEERBOT_TEST_FAULT", "")
"""Fault tests only: ``exit-after-held`` (``-forward-acknowledged``) makes the process die right
after a hold (a forward's acknowledgement, before the relays that waited for it) is applied."""


def _fault_point(where: str) -> None:
    if f"exit-after-{where}" == _FAULT:
        os._exit(137)


class SendsInFlight:
    """Counts the sends in flight (``with sends: await send``); ``answered`` is set while none
    waits for the homeserver's answer."""

    def __init__(self) -> None:
        self._n = 0
        self.answered = asyncio.Event()
        self.answered.set()

    def __enter__(self) -> None:
        self._n += 1
        self.answered.clear()

    def __exit__(self, *exc: object) -> None:
        self._n -= 1
        if not self._n:
            self.answered.set()


class QuestionPipeline:
    """Decides and records what happens to one question; sends only its forward."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: MatrixClient,
        rooms: RoomDirectory,
        plugins: PluginSet,
        related: RelatedThreads,
        outbox: Outbox,
        texts: Texts,
        stopping: asyncio.Event,
        metrics: Metrics | None = None,
        forwarded: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.config = config
        self._forwarded = forwarded
        """Called with a question's ID once its forward exists (the relays that waited)."""
        self.metrics = metrics or Metrics()
        self.store = store
        self.mx = client
        self.rooms = rooms
        self.plugins = plugins
        self.related = related
        self.outbox = outbox
        self.texts = texts
        self._stopping = stopping
        self._recorded: dict[str, Effect] = {}
        """Forwards recorded with their routing step, until their lane sends them."""
        self.sends = SendsInFlight()
        """The forwards' sends waiting for the homeserver's answer."""

    # -- deciding -------------------------------------------------------------------------------

    async def prepare(
        self, q: QuestionRow, lane_free: Callable[[str], bool] = lambda room: True
    ) -> QuestionRow | None:
        """Check and route one question; the routed question, or None (held or failed).

        When ``lane_free(target room)``, its forward is recorded in the same transaction
        (:meth:`forward` sends it); else its lane records it when it takes the question, so
        that a stop leaves no recorded forward waiting behind others in a lane."""
        stages.mark(q.event_id, "picked")  # bench_load.py --profile (so are the marks below)
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
            stages.mark(q.event_id, "guarded")
            route = await self.route(q.body, self.as_question(q))
            sender_name = self.mx.display_name(q.room_id, q.sender) or await self._profile(q.sender)
            stages.mark(q.event_id, "routed")
        target = route.room if route is not None else q.target_room
        assert target is not None
        inputs = RouteInputs(
            verdicts=verdicts,
            route=route,
            source_encrypted=self.mx.is_encrypted(q.room_id),
            target_encrypted=self.mx.is_encrypted(target),
            target_allows_from_encrypted=self.rooms.allows_from_encrypted(target),
            labels=Labels(sender_name=sender_name, target_label=self.rooms.label(target)),
        )
        step = route_step(q, inputs, self.texts)
        routed = self._routed(q, step)
        forward = None
        if (
            routed is not None
            and step.state is not QuestionState.HELD
            and routed.target_room is not None
            and lane_free(routed.target_room)
        ):
            # The forward is recorded with the routing step (one transaction, one trip); its
            # lane, idle, takes it at once and sends it (the outbox leaves it alone).
            forward = self._forward_of(routed)
            step = replace(step, effects=(*step.effects, forward))
        recorded = await self.store.apply(
            q.event_id, step, read_back=forward.tx_id if forward is not None else None
        )
        if recorded is not None:
            self._recorded[q.event_id] = recorded
        stages.mark(q.event_id, "route_applied")
        if any(e is not forward for e in step.effects):
            self.outbox.wake()
        if step.state is QuestionState.HELD:
            held = step.record.held if step.record else ()
            self.metrics.question_held()
            log.info("Question %s held (%s)", q.event_id, ", ".join(held) or "encryption")
            _fault_point("held")
            return None
        if routed is None:
            return replace(q, state=step.state)
        log.info("Question %s -> %s (%s)", q.event_id, target, step.specialty or "fallback")
        return routed

    def forward_recorded(self, question_id: str) -> bool:
        """The question's forward was recorded with its routing step and is not sent yet."""
        return question_id in self._recorded

    def _forward_of(self, q: QuestionRow) -> Outgoing:
        """The forward of a routed question, as its lane sends it."""
        assert q.body is not None and q.sender is not None
        return forward_outgoing(
            q, question=q.body, sender_id=q.sender, labels=self.labels(q), texts=self.texts
        )

    @staticmethod
    def _routed(q: QuestionRow, step: Step) -> QuestionRow | None:
        """The question as a routing step leaves it, when the step routes it (else None)."""
        if not step.routed:
            return None
        return replace(
            q,
            state=step.state,
            specialty=step.specialty,
            target_room=step.target_room,
            decision=step.record or q.decision,
            sender_name=step.sender_name or q.sender_name,
        )

    async def route(self, text: str, question: Question | None = None) -> routing.Decision:
        """The routing decision for a text: keywords and router plugins."""
        proposals = []
        if question is not None and self.plugins.routers:
            proposals = await self.plugins.propose(question, self.specialty_infos())
        return routing.decide(text, self.rooms.rules, self.rooms.fallback, proposals)

    def as_question(self, q: QuestionRow) -> Question:
        """A stored question as plugins see it."""
        return Question(
            text=q.body or "", room_id=q.room_id, sender=q.sender or "", event_id=q.event_id
        )

    def specialty_infos(self) -> list[SpecialtyInfo]:
        """The current specialties as plugins see them."""
        return [SpecialtyInfo(r.name, r.room, r.keywords) for r in self.rooms.rules.rules]

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

    async def _profile(self, user_id: str) -> str:
        try:
            return await self.mx.profile_name(user_id) or user_id
        except Exception:
            return user_id

    # -- forwarding -----------------------------------------------------------------------------

    def labels(self, q: QuestionRow) -> Labels:
        """How a routed question's asker and rooms are shown."""
        assert q.sender is not None and q.target_room is not None
        return Labels(
            sender_name=q.sender_name or q.sender,
            target_label=self.rooms.label(q.target_room),
            source_label=self.rooms.label(q.room_id),
            source_url=permalink(
                q.room_id, q.event_id, self.rooms.via_servers(q.room_id, q.sender)
            ),
        )

    async def forward(self, q: QuestionRow) -> None:
        """Send a routed question's forward inline, recorded with its routing step (or now,
        after a restart; the same transaction ID after a crash: the server keeps one); then
        record the acknowledgement for the outbox."""
        assert q.body is not None and q.sender is not None and q.target_room is not None
        stages.mark(q.event_id, "lane")  # bench_load.py --profile (so are the marks below)
        labels = self.labels(q)
        effect = self._recorded.pop(q.event_id, None)  # recorded with the routing step
        if effect is None:  # routed before a restart, or recorded by an older version
            forward = self._forward_of(q)
            effect = await self.store.add_effect(
                tx_id=forward.tx_id,
                kind=forward.kind,
                room_id=forward.room_id,
                content=dict(forward.content),
                question_id=q.event_id,
            )
        stages.mark(q.event_id, "effect_recorded")
        with self.sends:
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
        self.metrics.question_forwarded()
        target = RoomID(q.target_room)
        # Everyone who can read the asker's room, now or later, reads this list.
        related = await self.related_lines(q.body, q.room_id, exclude=(q.event_id,))
        step = acknowledged(
            q,
            forward_event_id=fwd_event,
            forward_url=permalink(target, fwd_event, self.rooms.via_servers(target)),
            related=related,
            labels=labels,
            texts=self.texts,
        )
        await self.store.apply(q.event_id, step)
        stages.mark(q.event_id, "ack_recorded")
        self.outbox.wake()
        _fault_point("forward-acknowledged")
        if self._forwarded is not None:
            try:
                await self._forwarded(q.event_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The forward is sent and acknowledged; what waited is relayed at the next start.
                log.exception("Relaying the messages that waited for %s failed", q.event_id)
        # Indexed once acknowledged: the question itself is never its own related thread. Read
        # again: an edit handled since this question was taken is in the store, not in ``q``.
        # Its vector is computed later, off the loop (RelatedThreads.run).
        now = await self.store.question(q.event_id) or q
        if now.body is not None:
            self.related.add(
                now.event_id,
                now.body,
                room_id=now.room_id,
                solved=now.solved,
                revision=now.revision or now.event_id,
            )
        if q.specialty:
            self.plugins.learn(q.body, q.specialty)

    def forward_content(self, q: QuestionRow, specialty: str | None) -> dict[str, Any]:
        """The forwarded message for a question (as if routed to ``specialty``)."""
        assert q.sender is not None and q.body is not None
        out = forward_outgoing(
            replace(q, specialty=specialty),
            question=q.body,
            sender_id=q.sender,
            labels=self.labels(q),
            texts=self.texts,
        )
        return dict(out.content)

    # -- related threads ------------------------------------------------------------------------

    async def related_lines(
        self, text: str, shown_in: str, exclude: tuple[str, ...] = (), *, keywords: bool = False
    ) -> list[RelatedLine]:
        """Related past threads for a text, from the rooms that may be shown in ``shown_in``
        (``keywords``: the text is search words, as in ``!related``, not a question)."""
        limit = self.config.related.max_results
        rooms = self.rooms.shown_in(shown_in, self.related.rooms())
        if limit <= 0 or not rooms:
            return []
        # The query is embedded in a worker thread (hybrid engine); the search itself is quick.
        hits = await self.related.search(
            text, limit=limit, rooms=rooms, exclude=exclude, keywords=keywords
        )
        now = time.time() * 1000
        lines: list[RelatedLine] = []
        for hit in hits:
            row = await self.store.question(hit.thread_id)
            if row is None or row.body is None:
                continue
            lines.append(
                RelatedLine(
                    url=permalink(row.room_id, row.event_id, self.rooms.via_servers(row.room_id)),
                    first_line=row.body,
                    age_days=max(0.0, (now - row.created_ts) / 86_400_000) if row.created_ts else 0,
                    replies=row.replies,
                    solved=row.solved,
                )
            )
        return lines
