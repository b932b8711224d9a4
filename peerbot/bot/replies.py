"""Answers to a chat command, in the command's thread, through the outbox."""

from __future__ import annotations

from peerbot.bot.outbox import Outbox
from peerbot.core.ids import tx_id
from peerbot.core.intake import Message
from peerbot.core.lifecycle import thread_relation
from peerbot.core.messages import Rendered, Texts
from peerbot.store import Store

__all__ = ["Replies"]


class Replies:
    """Records a notice in the thread of a command (one per command: the tx ID derives from it)."""

    def __init__(self, store: Store, outbox: Outbox, texts: Texts) -> None:
        self.store = store
        self.outbox = outbox
        self.t = texts

    async def reply(
        self, room_id: str, to: Message, rendered: Rendered, kind: str = "reply"
    ) -> None:
        """Record a notice in the thread of the message ``to``; the outbox sends it."""
        content = rendered.content()
        content["m.relates_to"] = thread_relation(to.thread_root or to.event_id, to.event_id)
        await self.store.add_effect(
            tx_id=tx_id(kind, to.event_id), kind=kind, room_id=room_id, content=content
        )
        self.outbox.wake()

    async def say(self, room_id: str, msg: Message, *lines: str) -> None:
        """Answer in the command's thread, one line each."""
        await self.reply(room_id, msg, self.t.lines(list(lines)))
