"""What the bot does with each event a sync brings: invites, messages, edits, redactions,
reactions, encrypted events it cannot read yet.

Fast and idempotent: a handler records what must happen (a question, a reply count, an
effect) and returns; the worker and the outbox do the slow part. An event delivered twice is
a no-op. A handler that fails is logged and counted (``errors``), and the sync goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from peerbot.bot import stages
from peerbot.bot.admin import ChatCommands
from peerbot.bot.invites import InviteAnswers
from peerbot.bot.metrics import Metrics
from peerbot.bot.outbox import Outbox
from peerbot.bot.related import RelatedThreads
from peerbot.bot.relays import Relays
from peerbot.bot.rooms import RoomDirectory
from peerbot.config import Config
from peerbot.core import intake
from peerbot.core.commands import parse_command
from peerbot.core.ids import RoomID, tx_id
from peerbot.core.messages import Texts
from peerbot.core.records import QuestionRow, QuestionState
from peerbot.matrix import Forbidden, Invite, MatrixClient, MatrixError, NotFound, Undecryptable
from peerbot.store import Store, unavailable

__all__ = ["SOLVED_KEYS", "EventHandlers"]

log = logging.getLogger(__name__)

MAX_DECRYPT_ATTEMPTS = 5
"""Tries, once an event's room key is known, before giving up on decrypting it."""
SOLVED_KEYS = frozenset({"✅", "✔️", "✔", "☑️", "☑"})


class EventHandlers:
    """Handlers for the events of a sync batch (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: MatrixClient,
        rooms: RoomDirectory,
        related: RelatedThreads,
        commands: ChatCommands,
        outbox: Outbox,
        texts: Texts,
        wake: Callable[[], None],
        *,
        encryption: bool,
        relays: Relays,
        metrics: Metrics | None = None,
        fresh: Callable[[QuestionRow | None], None] = lambda row: None,
    ) -> None:
        self.config = config
        self.store = store
        self.mx = client
        self.rooms = rooms
        self.related = related
        self.commands = commands
        self.outbox = outbox
        self.texts = texts
        self._wake = wake
        self._fresh = fresh
        """Handed each question recorded here (the worker routes it without reading it back),
        and None before any other change a message can make to a question (the worker then
        reads what waits from the store)."""
        self.relays = relays
        self.encryption = encryption
        """End-to-end encryption is on: encrypted rooms are joined, read and written."""
        self.invites = InviteAnswers(client, config.invites, texts, encryption=encryption)
        self.metrics = metrics or Metrics()
        self.errors = 0
        """Handler failures so far (each logged with its traceback)."""

    async def guard(self, coro: Any, what: str) -> None:
        """Run one handler; a failure is logged and counted, never raised into the sync.

        Except the database being unavailable (:func:`peerbot.store.unavailable`): that is
        raised, so that the sync does not save its token and hands the batch over again."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if unavailable(exc) or self.store.broken:
                raise
            self.errors += 1
            log.exception("A %s handler failed; the bot goes on", what)

    # -- handlers ---------------------------------------------------------------------------

    async def handle_invite(self, invite: Invite) -> None:
        """Join when the inviter's server is allowed; decline otherwise, saying why."""
        await self.invites.handle(invite)

    async def handle_event(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        """One timeline event. Fast: questions are recorded here and sent by the worker."""
        if not isinstance(event, Mapping):
            return
        etype = event.get("type")
        sender = event.get("sender")
        if not isinstance(sender, str) or sender == self.mx.user_id:
            return
        if etype == "m.room.encryption" and room_id in self.rooms.intake:
            if not self.encryption:
                log.warning("Intake room %s turned on encryption: PeerBot cannot read it", room_id)
            return
        if etype in ("m.room.redaction", "m.reaction"):
            self._fresh(None)
        if etype == "m.room.redaction":
            await self._on_redaction(room_id, event)
            return
        if etype == "m.reaction":
            await self._on_reaction(room_id, event)
            return
        msg = intake.parse_message(event)
        if msg is None or msg.msgtype == "m.notice":
            return
        if msg.replaces is not None:
            self._fresh(None)
            await self._on_edit(room_id, msg)
            return
        command = parse_command(msg.body) if msg.msgtype == "m.text" else None
        if command is not None:
            self._fresh(None)
            if not await self.store.is_handled(msg.event_id):
                await self.store.mark_handled(msg.event_id, room_id)
                await self.commands.handle(room_id, msg, command)
                self._wake()
            return
        if msg.thread_root is not None:
            root = await self.store.question(msg.thread_root)
            if root is not None and root.room_id == room_id:
                await self.store.add_reply(root.event_id, msg.event_id, room_id)
        await self._note_thread_message(room_id, msg)
        rule = self.rooms.intake.get(room_id)
        if rule is None:
            return
        stages.mark(msg.event_id, "handler")  # bench_load.py --profile
        question_id = intake.detect_question(msg, rule.trigger, rule.hashtags)
        if question_id is None:
            return
        own = question_id == msg.event_id
        # An own question whose event was handled before (erased after a redaction, say) is not
        # recorded again; checked inside record_question's transaction: one trip, not two.
        added = await self.store.record_question(
            event_id=question_id,
            room_id=room_id,
            trigger_event_id=msg.event_id,
            sender=msg.sender if own else None,
            body=msg.body if own else None,
            created_ts=msg.ts if own else 0,
            skip_handled=own,
        )
        stages.mark(question_id, "recorded")  # bench_load.py --profile
        if added is not None:
            self.metrics.question_seen()
            log.info("Question %s noticed in %s", question_id, room_id)
            self._fresh(added)
            self._wake()

    async def _note_thread_message(self, room_id: RoomID, msg: intake.Message) -> None:
        """A person's message in either thread of a question: recorded (answers counted) and
        relayed to the other thread, in one transaction (:class:`Relays`)."""
        found = await self.store.conversation_of(room_id, (msg.thread_root, msg.reply_to))
        if found is None:
            return
        q, side = found
        await self.relays.on_message(room_id, msg, q, side)

    # -- encrypted events the bot cannot read (yet) -------------------------------------------

    async def on_undecryptable(self, u: Undecryptable) -> None:
        """Record it, ask for its key; it is handled when the key arrives."""
        if u.sender == self.mx.user_id or await self.store.is_handled(u.event_id):
            return
        added = await self.store.add_undecryptable(
            event_id=u.event_id,
            room_id=u.room_id,
            sender=u.sender,
            session_id=u.session_id,
            sender_key=u.sender_key,
        )
        if not added:
            return
        log.warning(
            "Cannot decrypt event %s from %s in %s (no key for session %s): key requested",
            u.event_id,
            u.sender,
            u.room_id,
            u.session_id,
        )
        try:
            await self.mx.request_room_key(u.room_id, u.event_id)
        except MatrixError as exc:
            log.warning("Could not request the key of %s: %s", u.event_id, exc)

    async def retry_undecryptable(self) -> int:
        """Handle recorded events whose room key has arrived; the number decrypted."""
        done = 0
        for row in await self.store.undecryptable():
            if not self.mx.has_room_key(row.room_id, row.sender_key, row.session_id):
                continue
            try:
                event = await self.mx.decrypt_later(row.room_id, row.event_id)
            except (NotFound, Forbidden) as exc:
                log.warning("Undecryptable event %s is gone: %s", row.event_id, exc)
                await self.store.drop_undecryptable(row.event_id)
                continue
            if event is None:
                # The key arrived but does not open this event (e.g. it starts at a later
                # message index): a few more tries as other keys come, then give up.
                if row.attempts + 1 >= MAX_DECRYPT_ATTEMPTS:
                    log.warning(
                        "Giving up on event %s from %s in %s: the known key does not open it",
                        row.event_id,
                        row.sender,
                        row.room_id,
                    )
                    await self.store.drop_undecryptable(row.event_id)
                else:
                    await self.store.undecryptable_attempt(row.event_id)
                continue
            log.info("Event %s decrypted late: its room key arrived", row.event_id)
            await self.guard(self.handle_event(RoomID(row.room_id), event), "event")
            await self.store.drop_undecryptable(row.event_id)
            done += 1
        return done

    async def _on_edit(self, room_id: RoomID, msg: intake.Message) -> None:
        assert msg.replaces is not None
        q = await self.store.question(msg.replaces)
        if q is None or q.room_id != room_id:
            await self.relays.on_edit(room_id, msg)
            return
        if q.sender != msg.sender:
            return
        if await self.store.is_handled(msg.event_id):
            return
        await self.store.mark_handled(msg.event_id, room_id)
        changes: dict[str, Any] = {"body": msg.body, "revision": msg.event_id}
        if q.state == QuestionState.HELD:
            # Checked again with the new text; forwarded if it is clean now.
            changes["state"] = QuestionState.NEW.value
        await self.store.update_question(q.event_id, **changes)
        await self.related.edited(q.event_id, msg.body, revision=msg.event_id)
        log.info("Question %s edited", q.event_id)
        self._wake()

    async def _on_redaction(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        redacts = event.get("redacts")
        if not isinstance(redacts, str) and isinstance(content, Mapping):
            redacts = content.get("redacts")
        if not isinstance(redacts, str):
            return
        q = await self.store.question(redacts)
        if q is not None and q.room_id == room_id:
            self.related.remove(redacts)
            erased = await self.store.erase_question(redacts)
            log.info("Question %s redacted: removed from the index and the database", redacts)
            # Every copy quotes the deleted text (the forward, and each !route move of it): take
            # each one down, in the room it was sent to.
            copies = await self.store.effects_for(redacts) if erased is not None else []
            for copy in copies:
                if copy.kind in ("forward", "move", "escalation-triage") and copy.event_id:
                    await self.store.add_effect(
                        tx_id=tx_id("redact", copy.event_id),
                        kind="redact",
                        room_id=copy.room_id,
                        content={"redacts": copy.event_id},
                        event_type="m.room.redaction",
                    )
                    self.outbox.wake()
            return
        if await self.relays.on_redaction(room_id, redacts):
            return
        solved = await self.store.question_solved_by(redacts)
        if solved is not None:
            await self.relays.set_solved(
                solved.event_id, False, None, cause=str(event.get("event_id"))
            )
            self.related.set_solved(solved.event_id, False)

    async def _on_reaction(self, room_id: RoomID, event: Mapping[str, Any]) -> None:
        content = event.get("content")
        rel = content.get("m.relates_to") if isinstance(content, Mapping) else None
        if not isinstance(rel, Mapping) or rel.get("rel_type") != "m.annotation":
            return
        key, target = rel.get("key"), rel.get("event_id")
        if key not in SOLVED_KEYS or not isinstance(target, str):
            return
        q = await self.store.question(target)
        if q is None:
            # ✅ on an answer in the asker's thread (or on its relayed copy) solves it too: the
            # follow-up reminder asks the asker for exactly that.
            answer = await self.store.thread_message(target)
            answer = answer or await self.store.thread_message_by_relay(target)
            if answer is not None:
                q = await self.store.question(answer.question_id)
        if q is None or q.room_id != room_id or q.solved:
            return
        sender = str(event.get("sender"))
        if not await self.rooms.may_moderate(room_id, sender, q.sender):
            return
        reaction = str(event.get("event_id"))
        await self.relays.set_solved(q.event_id, True, reaction, cause=reaction)
        self.related.set_solved(q.event_id, True)
        log.info("Question %s marked solved", q.event_id)
