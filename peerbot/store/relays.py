"""Relays: a thread message and the effects it causes, recorded in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

from peerbot.core.lifecycle import Outgoing
from peerbot.core.records import ThreadMessage
from peerbot.store.answers import AnswerQueries
from peerbot.store.db import now_ms
from peerbot.store.effects import EffectQueries

__all__ = ["RelayQueries"]


class RelayQueries(EffectQueries, AnswerQueries):
    """Messages and their relays together, so a crash neither loses nor repeats a relay."""

    async def record_thread_message(
        self, m: ThreadMessage, effects: Sequence[Outgoing] = ()
    ) -> bool:
        """Record a message once with its relay state and effects (False: known already, and
        nothing was recorded: its effects were recorded the first time)."""
        now = now_ms()
        async with self._transaction():
            added = await self._insert_thread_message(m)
            if added:
                for e in effects:
                    await self._drive(
                        self._insert_effect(
                            e.tx_id, m.question_id, e.kind, e.room_id, e.content, e.event_type, now
                        )
                    )
        return added

    async def record_relay(
        self,
        event_id: str,
        question_id: str,
        *,
        state: str | None,
        effects: Sequence[Outgoing] = (),
        relay_tx: str | None = None,
    ) -> None:
        """A later decision about a recorded message (an edit, a consent): its new relay state,
        the tx ID of its copy when one is recorded now, and the effects, in one transaction."""
        now = now_ms()
        async with self._transaction():
            if state is not None:
                await self._db.execute(
                    "UPDATE thread_messages SET relay_state = ? WHERE event_id = ?",
                    (state, event_id),
                )
            if relay_tx is not None:
                await self._db.execute(
                    "UPDATE thread_messages SET relay_tx_id = ? WHERE event_id = ?",
                    (relay_tx, event_id),
                )
            for e in effects:
                await self._drive(
                    self._insert_effect(
                        e.tx_id, question_id, e.kind, e.room_id, e.content, e.event_type, now
                    )
                )

    async def relay_sent(self, relay_tx: str, event_id: str) -> None:
        """Note the event ID of a sent copy on the message it copies."""
        await self._write(
            "UPDATE thread_messages SET relay_event_id = ? WHERE relay_tx_id = ?",
            (event_id, relay_tx),
        )

    async def effect_superseded(self, tx_id: str) -> None:
        """A pending effect a later one of the same kind makes useless (a forward's state)."""
        await self._write(
            "UPDATE effects SET state = 'superseded', updated_at = ? "
            "WHERE tx_id = ? AND state = 'pending'",
            (now_ms(), tx_id),
        )

    async def refused_relays(self, question_id: str, sender: str) -> list[ThreadMessage]:
        """A person's messages of a question whose relay waits for their consent."""
        return [
            m
            for m in await self.thread_messages(question_id)
            if m.sender == sender and m.relay_state == "refused"
        ]
