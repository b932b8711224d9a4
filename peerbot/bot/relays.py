"""Relays between a question's two threads: gather the inputs, let :mod:`peerbot.core.relay`
decide, record the message and its effects in one transaction; the outbox sends them.

Called by the sync handlers for a person's message in either thread, its edits and its
redaction, and by the commands (``!confirm`` to relay from an encrypted room to an unencrypted
one; ``!solved`` / ``!unsolved``, like a ✅, change the forward's state, in the same
transaction as the solved mark). A message of the asker's thread written before the forward
exists waits (``waiting``) and is relayed, in order, once the lane has sent the forward
(:meth:`Relays.forward_exists`, and at start for a crash in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace

from peerbot.bot.outbox import Outbox
from peerbot.bot.plugins import PluginSet
from peerbot.bot.rooms import RoomDirectory
from peerbot.core import intake, relay
from peerbot.core.lifecycle import Outgoing
from peerbot.core.messages import Texts, permalink
from peerbot.core.records import QuestionRow, ThreadMessage
from peerbot.core.relay import RelayAction, RelayDecision, RelayInputs, RelayLabels
from peerbot.matrix import Forbidden, MatrixClient, NotFound
from peerbot.plugin_api import Question, Verdict
from peerbot.store import Store

__all__ = ["Relays"]

log = logging.getLogger(__name__)

_FAULT = os.environ.get("PEERBOT_TEST_FAULT", "")
"""Fault tests only: ``exit-after-relay-recorded`` (``-solved-recorded``) makes the process die
right after a relay (a solved mark and its forward edit) is recorded, before the outbox sends it."""


def _fault_point(where: str) -> None:
    if f"exit-after-{where}" == _FAULT:
        os._exit(137)


class Relays:
    """Copies each person's message to the other thread of its question, once."""

    def __init__(
        self,
        store: Store,
        client: MatrixClient,
        rooms: RoomDirectory,
        plugins: PluginSet,
        outbox: Outbox,
        texts: Texts,
    ) -> None:
        self.store = store
        self.mx = client
        self.rooms = rooms
        self.plugins = plugins
        self.outbox = outbox
        self.texts = texts
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _serialised(self, question_id: str) -> AsyncIterator[None]:
        """One question's relays are decided one at a time, so they are recorded in order
        (the lock is dropped when nobody holds or awaits it)."""
        lock, users = self._locks.get(question_id, (asyncio.Lock(), 0))
        self._locks[question_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[question_id]
            if users <= 1:
                del self._locks[question_id]
            else:
                self._locks[question_id] = (lock, users - 1)

    async def on_message(
        self, room_id: str, msg: intake.Message, q: QuestionRow, side: str
    ) -> None:
        """A person's message in one thread of ``q``: recorded with its relay, in one go."""
        if msg.event_id == q.trigger_event_id or msg.sender == self.mx.user_id:
            return
        async with self._serialised(q.event_id):
            if await self.store.thread_message(msg.event_id) is not None:
                return
            # Read again under the lock: the forward may have been sent meanwhile, and the
            # messages that waited for it go first.
            q = await self.store.question(q.event_id) or q
            await self._flush(q)
            await self._record(room_id, msg, q, side)

    async def _record(self, room_id: str, msg: intake.Message, q: QuestionRow, side: str) -> None:
        m = ThreadMessage(
            event_id=msg.event_id,
            question_id=q.event_id,
            room_id=room_id,
            side=side,
            sender=msg.sender,
            ts=msg.ts,
            answer=msg.sender != q.sender,
        )
        text = relay.without_reply_fallback(msg.body) if msg.reply_to else msg.body
        decision = await self._decide(m, text, q)
        m = replace(m, relay_state=decision.action.value, relay_tx_id=decision.relay_tx)
        effects = list(decision.effects)
        if m.answer:
            state = await self._forward_state(replace(q, answers=q.answers + 1), msg.event_id)
            if state is not None:
                effects.append(state)
        if await self.store.record_thread_message(m, effects):
            log.info(
                "Message %s in the %s thread of %s: %s",
                msg.event_id,
                side,
                q.event_id,
                decision.action.value,
            )
            _fault_point("relay-recorded")
            if effects:
                self.outbox.wake()

    async def forward_exists(self, question_id: str) -> int:
        """The question's forward was sent: relay the messages written before it, in order;
        how many were decided now."""
        async with self._serialised(question_id):
            q = await self.store.question(question_id)
            return await self._flush(q) if q is not None else 0

    async def flush_waiting(self) -> int:
        """At start: relay what waited for a forward sent just before a crash."""
        done = 0
        for question_id in await self.store.questions_with_waiting_relays():
            done += await self.forward_exists(question_id)
        return done

    async def _flush(self, q: QuestionRow) -> int:
        """Relay the waiting messages of ``q`` once its forward exists (under its lock). Each
        one's new state and its copy are recorded together: a crash repeats none."""
        if q.forward_event_id is None:
            return 0
        done = 0
        for m in await self.store.waiting_relays(q.event_id):
            try:
                event = await self.mx.get_event(m.room_id, m.event_id)
            except (NotFound, Forbidden) as exc:
                log.warning("Message %s cannot be read any more: %s", m.event_id, exc)
                event = {}
            parsed = intake.parse_message(event)
            if parsed is None:
                await self.store.record_relay(
                    m.event_id, q.event_id, state=RelayAction.IGNORE.value
                )
                continue
            text = relay.latest_body(event) or parsed.body
            text = relay.without_reply_fallback(text) if parsed.reply_to else text
            decision = await self._decide(m, text, q)
            await self._record_decision(m, q, decision)
            log.info(
                "Message %s waited for the forward of %s: %s",
                m.event_id,
                q.event_id,
                decision.action.value,
            )
            done += 1
        if done:
            self.outbox.wake()
        return done

    async def _record_decision(
        self, m: ThreadMessage, q: QuestionRow, decision: RelayDecision
    ) -> None:
        """A recorded message decided again (it waited, or its author consented): its new
        state and its copy, in one transaction."""
        await self.store.record_relay(
            m.event_id,
            q.event_id,
            state=decision.action.value,
            effects=decision.effects,
            relay_tx=decision.relay_tx,
        )

    async def on_edit(self, room_id: str, msg: intake.Message) -> bool:
        """An edit of a recorded message: the copy edited (or, once clean, a held one relayed).
        False when ``msg`` edits no recorded message."""
        assert msg.replaces is not None
        orig = await self.store.thread_message(msg.replaces)
        if orig is None or orig.room_id != room_id:
            return False
        if orig.sender != msg.sender or await self.store.is_handled(msg.event_id):
            return True
        q = await self.store.question(orig.question_id)
        if q is None:
            return True
        state: str | None = None
        if orig.relay_state == RelayAction.RELAY and orig.relay_tx_id is not None:
            copy = await self.store.effect(orig.relay_tx_id)
            decision = await self._decide(
                orig,
                msg.body,
                q,
                edit_event_id=msg.event_id,
                copy_tx=orig.relay_tx_id,
                copy_event_id=copy.event_id if copy is not None else None,
            )
        elif orig.relay_state == RelayAction.HOLD:
            decision = await self._decide(orig, msg.body, q, edit_event_id=msg.event_id)
            state = decision.action.value
        else:
            await self.store.mark_handled(msg.event_id, room_id)
            return True
        await self.store.record_relay(
            orig.event_id,
            q.event_id,
            state=state,
            effects=decision.effects,
            relay_tx=decision.relay_tx,
        )
        await self.store.mark_handled(msg.event_id, room_id)
        log.info("Edit %s of %s: %s", msg.event_id, orig.event_id, decision.action.value)
        if decision.effects:
            self.outbox.wake()
        return True

    async def on_redaction(self, room_id: str, redacts: str) -> bool:
        """A recorded message redacted: its copy redacted too. False when it is not one."""
        orig = await self.store.thread_message(redacts)
        if orig is None or orig.room_id != room_id:
            return False
        q = await self.store.question(orig.question_id)
        where = relay.destination(q, orig.side) if q is not None else None
        if q is not None and where is not None and orig.relay_tx_id is not None:
            copy = await self.store.effect(orig.relay_tx_id)
            out = relay.redaction(orig, where[0], copy.event_id if copy is not None else None)
            if out is not None:
                await self.store.record_relay(orig.event_id, q.event_id, state=None, effects=[out])
                self.outbox.wake()
        await self.store.drop_thread_message(redacts)
        log.info("Message %s redacted: its relayed copy too", redacts)
        return True

    async def consent(self, room_id: str, msg: intake.Message, q: QuestionRow) -> int:
        """``!confirm`` from an author whose messages were not relayed to an unencrypted room:
        relay them now; how many."""
        done = 0
        for m in await self.store.refused_relays(q.event_id, msg.sender):
            if m.room_id != room_id:
                continue
            try:
                event = await self.mx.get_event(room_id, m.event_id)
            except (NotFound, Forbidden) as exc:
                log.warning("Message %s cannot be read any more: %s", m.event_id, exc)
                continue
            parsed = intake.parse_message(event)
            if parsed is None:
                continue
            decision = await self._decide(m, parsed.body, q, consented=True)
            await self._record_decision(m, q, decision)
            done += decision.action is RelayAction.RELAY
        if done:
            self.outbox.wake()
        return done

    async def set_solved(
        self, question_id: str, solved: bool, solved_by: str | None, cause: str
    ) -> None:
        """Mark the question solved or not and show it on the forward, in one transaction."""
        q = await self.store.question(question_id)
        if q is None:
            return
        out = await self._forward_state(replace(q, solved=solved), cause)
        effects = [out] if out is not None else []
        await self.store.set_solved(
            question_id, solved=solved, solved_by=solved_by, effects=effects
        )
        _fault_point("solved-recorded")
        if effects:
            self.outbox.wake()

    # -- gathering the inputs ---------------------------------------------------------------

    async def _forward_state(self, q: QuestionRow, cause: str) -> Outgoing | None:
        if q.forward_event_id is None:
            return None
        effects = await self.store.effects_for(q.event_id)
        sent = [e for e in effects if e.kind in ("forward", "move")]
        forward = next((e for e in sent if e.event_id == q.forward_event_id), None)
        if forward is None:
            return None
        return relay.forward_state_edit(q, forward.content, cause, self.texts)

    async def _decide(
        self,
        m: ThreadMessage,
        text: str,
        q: QuestionRow,
        *,
        edit_event_id: str | None = None,
        copy_tx: str | None = None,
        copy_event_id: str | None = None,
        consented: bool = False,
    ) -> RelayDecision:
        where = relay.destination(q, m.side)
        dest = where[0] if where is not None else None
        verdicts: list[tuple[str, Verdict]] = []
        if dest is not None and self.plugins.guards:
            # The question's room decides which guards apply to its whole conversation.
            asked = Question(text=text, room_id=q.room_id, sender=m.sender, event_id=m.event_id)
            verdicts = [(p.name, v) for p, v in await self.plugins.check(asked)]
        labels = RelayLabels(
            author_name=self.mx.display_name(m.room_id, m.sender) or await self._profile(m.sender),
            source_label=self.rooms.label(m.room_id),
            source_url=permalink(
                m.room_id, m.event_id, self.rooms.via_servers(m.room_id, m.sender)
            ),
            target_label=self.rooms.label(dest) if dest is not None else "",
            asker_name=q.sender_name or q.sender or "",
        )
        allows = dest is not None and self.rooms.allows_from_encrypted(dest)
        inputs = RelayInputs(
            message=m,
            text=text,
            question=q,
            bot_id=self.mx.user_id,
            source_encrypted=self.mx.is_encrypted(m.room_id),
            target_encrypted=dest is not None and self.mx.is_encrypted(dest),
            target_allows_from_encrypted=allows,
            consented=consented,
            verdicts=verdicts,
            labels=labels,
            edit_event_id=edit_event_id,
            copy_tx=copy_tx,
            copy_event_id=copy_event_id,
        )
        return relay.decide(inputs, self.texts)

    async def _profile(self, user_id: str) -> str:
        try:
            return await self.mx.profile_name(user_id) or user_id
        except Exception:
            return user_id
