"""The follow-up scheduler: one task that plans deadlines in the database, sleeps until the
next one (or a wake), and settles what is due.

Settling a deadline marks it done and records its messages in the outbox in one transaction
(transaction IDs derived from the deadline's key): a crash before it leaves the deadline pending
(fired after the restart), a crash after it leaves messages the outbox sends once. The decisions
are pure (:mod:`peerbot.core.followup`, :mod:`peerbot.core.followup_effects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from peerbot.bot.outbox import Outbox
from peerbot.bot.rooms import RoomDirectory
from peerbot.config import Config, DigestConfig
from peerbot.core.followup import (
    DAY_MS,
    DigestTime,
    DueAction,
    escalation_skip,
    next_digest,
    parse_clock,
    pick_experts,
    solve_reminder_due,
)
from peerbot.core.followup_effects import (
    MAX_LISTED,
    EscalationInputs,
    Listed,
    digest_effect,
    escalation_effects,
    solve_reminder_effect,
)
from peerbot.core.messages import Texts, permalink, texts_for
from peerbot.core.records import QuestionRow
from peerbot.matrix import MatrixClient
from peerbot.store import Store
from peerbot.store.db import now_ms

__all__ = ["FollowupScheduler"]

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0
"""Look again at least this often (seconds), even without a wake."""


class FollowupScheduler:
    """Escalations, ✅ reminders and digests, from the ``due_actions`` table."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: MatrixClient,
        rooms: RoomDirectory,
        outbox: Outbox,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.store = store
        self.mx = client
        self.rooms = rooms
        self.outbox = outbox
        self.t: Texts = texts_for(config.language)
        self._wake = asyncio.Event()
        self.clock = clock
        self.fired = 0
        """Deadlines settled so far (sent or skipped)."""

    def wake(self) -> None:
        """Something changed (a forward, an answer, a restart): plan and look now."""
        self._wake.set()

    async def run(self) -> None:
        """Plan, settle what is due, sleep until the next deadline; until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.tick()
                delay = await self._until_next()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("The follow-up scheduler failed; retrying shortly")
                delay = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _until_next(self) -> float:
        due = await self.store.next_due_ts()
        if due is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, max(0.05, (due - self.clock()) / 1000))

    async def tick(self) -> int:
        """Plan new deadlines, then settle every one due now; the number settled."""
        await self.plan()
        settled = 0
        for due in await self.store.due_actions(self.clock()):
            try:
                if await self.settle(due):
                    settled += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Follow-up %s failed; retried later", due.kind)
        if settled:
            self.fired += settled
            self.outbox.wake()
        return settled

    # -- planning ----------------------------------------------------------------------------

    def _escalation_by_specialty(self) -> dict[str, tuple[float, ...]]:
        return {
            s.name.casefold(): s.escalation_after
            for s in self.config.routing.specialties
            if s.escalation_after is not None
        }

    def _digest_times(self) -> dict[str, DigestConfig]:
        """Each specialty room's digest time (its own, else the top-level one)."""
        own = {s.name.casefold(): s.digest for s in self.config.routing.specialties}
        out: dict[str, DigestConfig] = {}
        for rule in self.rooms.rules.rules:
            when = own.get(rule.name.casefold()) or self.config.digest
            if when is not None:
                out.setdefault(str(rule.room), when)
        return out

    async def plan(self) -> None:
        """Record the deadlines that follow from the questions and the config."""
        await self.store.plan_escalations(
            self._escalation_by_specialty(), self.config.escalation.after
        )
        if self.config.reminders.solve_after is not None:
            await self.store.plan_solve_reminders(self.config.reminders.solve_after)
        now = self.clock()
        for room_id, when in self._digest_times().items():
            key, due = next_digest(
                DigestTime(parse_clock(when.at), when.timezone, when.every_s), now
            )
            await self.store.plan_digest(room_id, key, due)

    # -- settling ----------------------------------------------------------------------------

    async def settle(self, due: DueAction) -> bool:
        """Act on one due deadline; True when it was settled now."""
        if due.kind == "escalate":
            return await self._escalate(due)
        if due.kind == "solve":
            return await self._solve_reminder(due)
        if due.kind == "digest":
            return await self._digest(due)
        return await self.store.settle(due.key, note=f"unknown kind {due.kind}")

    def _url(self, room_id: str, event_id: str | None, *users: str) -> str:
        return permalink(room_id, event_id, self.rooms.via_servers(room_id, *users))

    async def _escalate(self, due: DueAction) -> bool:
        q = await self.store.question(due.question_id or "")
        skip = escalation_skip(q)
        if skip is not None or q is None:
            log.info("Escalation %s skipped: %s", due.key, skip)
            return await self.store.settle(due.key, question_id=due.question_id, note=skip)
        q = await self._current_copy(q)
        assert q.target_room is not None
        now = self.clock()
        cfg = self.config.experts
        chosen = pick_experts(
            await self.store.experts_in(q.target_room, now),
            now,
            limit=cfg.pings_per_step,
            daily_cap=cfg.daily_cap,
            default_tz=cfg.timezone,
        )
        fallback = str(self.rooms.fallback)
        inputs = EscalationInputs(
            experts=chosen,
            waited_s=(now - (q.forwarded_ts or now)) / 1000,
            target_label=self.rooms.label(q.target_room),
            forward_url=self._url(q.target_room, q.forward_event_id),
            fallback_room=fallback,
            fallback_label=self.rooms.label(fallback),
            show_text=self._may_copy(q, fallback),
        )
        effects = escalation_effects(q, due, inputs, self.t)
        settled = await self.store.settle(
            due.key,
            question_id=q.event_id,
            effects=effects,
            pinged=[(u, q.target_room) for u in chosen],
            unless_answered=True,  # an answer recorded since the read above wins
        )
        if settled:
            log.info(
                "Question %s escalated (step %d%s), %d expert(s) pinged",
                q.event_id,
                due.step + 1,
                ", last" if due.last_step else "",
                len(chosen),
            )
        return settled

    async def _current_copy(self, q: QuestionRow) -> QuestionRow:
        """The question with the copy in its target room as its forward: after ``!route move``
        the reminder goes under the moved copy, in the room the question is in now."""
        if not q.corrected:
            return q
        moved = [
            e
            for e in await self.store.effects_for(q.event_id)
            if e.kind == "move" and e.room_id == q.target_room and e.event_id
        ]
        return replace(q, forward_event_id=moved[-1].event_id) if moved else q

    def _may_copy(self, q: QuestionRow, room_id: str) -> bool:
        """The question's text may go into ``room_id``: nothing leaves an encrypted room for
        an unencrypted one unless the asker said !forward or bot.yaml allows that room."""
        if not self.mx.is_encrypted(q.room_id) or self.mx.is_encrypted(room_id):
            return True
        return q.decision.forward_confirmed or self.rooms.allows_from_encrypted(room_id)

    async def _solve_reminder(self, due: DueAction) -> bool:
        q = await self.store.question(due.question_id or "")
        after = self.config.reminders.solve_after
        when = solve_reminder_due(q, after, self.clock()) if after is not None else None
        if q is None or when is None:
            return await self.store.settle(
                due.key, question_id=due.question_id, note="solved or gone"
            )
        if when > self.clock():
            await self.store.reschedule(due.key, when)
            return False
        effect = solve_reminder_effect(q, self.t)
        settled = await self.store.settle(
            due.key, question_id=q.event_id, effects=[effect] if effect else []
        )
        if settled:
            log.info("Question %s: the asker was asked to mark the answer that helped", q.event_id)
        return settled

    def _listed(self, q: QuestionRow, since_ts: int | None, now: int) -> Listed:
        assert q.target_room is not None
        start = since_ts if since_ts is not None else q.forwarded_ts or q.created_ts or now
        return Listed(
            first_line=q.body or "",
            age_s=(now - start) / 1000,
            answers=q.answers,
            url=self._url(q.target_room, q.forward_event_id),
        )

    async def _digest(self, due: DueAction) -> bool:
        now = self.clock()
        room = due.room_id
        open_rows, total = await self.store.open_questions(
            room, unanswered_only=False, limit=MAX_LISTED
        )
        since = await self.store.last_digest_ts(room) or now - DAY_MS
        solved, solved_total = await self.store.solved_since(room, since, MAX_LISTED)
        effect = digest_effect(
            due,
            self.rooms.label(room),
            [self._listed(q, None, now) for q in open_rows],
            total,
            [self._listed(q, None, now) for q in solved],
            self.t,
            solved_total=solved_total,
        )
        settled = await self.store.settle(
            due.key,
            effects=[effect] if effect else [],
            note=None if effect else "nothing to say",
        )
        if settled:
            log.info(
                "Digest %s: %d open, %d solved%s",
                due.key,
                total,
                solved_total,
                "" if effect else " (not posted)",
            )
            # The next one, planned at once: a stop right now loses nothing.
            self.wake()
        return settled
