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

    async def waiting_relays(self, question_id: str) -> list[ThreadMessage]:
        """A question's messages written before its forward existed, oldest first."""
        return [m for m in await self.thread_messages(question_id) if m.relay_state == "waiting"]

    async def questions_with_waiting_relays(self) -> list[str]:
        """Questions with a message still waiting for the forward (a restart relays them)."""
        rows = await self._rows(
            "SELECT DISTINCT question_id FROM thread_messages WHERE relay_state = 'waiting'"
        )
        return [str(r[0]) for r in rows]

    async def set_solved(
        self,
        question_id: str,
        *,
        solved: bool,
        solved_by: str | None,
        effects: Sequence[Outgoing] = (),
    ) -> None:
        """Mark a question solved (or not) and record what shows it (the forward's state
        edit) in one transaction: a crash between the two can lose neither."""
        now = now_ms()
        async with self._transaction():
            await self._db.execute(
                "UPDATE questions SET solved = ?, solved_by = ?, solved_ts = ?, updated_at = ? "
                "WHERE event_id = ?",
                (int(solved), solved_by, now if solved else None, now, question_id),
            )
            for e in effects:
                await self._drive(
                    self._insert_effect(
                        e.tx_id, question_id, e.kind, e.room_id, e.content, e.event_type, now
                    )
                )

    async def copy_moved(self, tx_id: str, question_id: str, room_id: str, event_id: str) -> None:
        """A ``!route move`` copy was sent: marked done and made the question's forward in one
        transaction (its room and event together, so relays never pair one copy's room with
        another's event, and a crash cannot leave the copy sent but not followed)."""
        now = now_ms()
        async with self._transaction():
            await self._db.execute(
                "UPDATE effects SET state = 'done', event_id = ?, error = NULL, updated_at = ? "
                "WHERE tx_id = ?",
                (event_id, now, tx_id),
            )
            await self._db.execute(
                "UPDATE questions SET target_room = ?, forward_event_id = ?, updated_at = ? "
                "WHERE event_id = ?",
                (room_id, event_id, now, question_id),
            )

    async def refused_relays(self, question_id: str, sender: str) -> list[ThreadMessage]:
        """A person's messages of a question whose relay waits for their consent."""
        return [
            m
            for m in await self.thread_messages(question_id)
            if m.sender == sender and m.relay_state == "refused"
        ]
