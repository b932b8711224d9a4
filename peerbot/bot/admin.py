"""Chat commands: ``!related``, ``!solved``, ``!confirm`` for everyone; ``!route``, ``!intake``,
``!plugins`` for room admins; ``!peerbot help``.

long: the handler table and every handler sit together, so the command list lives in one place
(splitting the admin commands into their own module is left for when they grow again).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from peerbot.bot.outbox import Outbox
from peerbot.bot.pipeline import QuestionPipeline
from peerbot.bot.plugins import PluginSet
from peerbot.bot.related import RelatedThreads
from peerbot.bot.relays import Relays
from peerbot.bot.replies import Replies
from peerbot.bot.rooms import RoomDirectory
from peerbot.bot.route_commands import RouteCommands
from peerbot.config import Config, Trigger
from peerbot.core.commands import COMMAND_NAMES, Command
from peerbot.core.ids import RoomID
from peerbot.core.intake import Message
from peerbot.core.messages import Rendered, Texts
from peerbot.core.records import QuestionRow, QuestionState
from peerbot.matrix import MatrixClient, MatrixError
from peerbot.store import Store

__all__ = ["ChatCommands"]

log = logging.getLogger(__name__)

ADMIN_COMMANDS = frozenset({"route", "intake", "plugins"})


class ChatCommands:
    """Runs commands; every answer goes through the outbox into the command's thread."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: MatrixClient,
        rooms: RoomDirectory,
        pipeline: QuestionPipeline,
        plugins: PluginSet,
        related: RelatedThreads,
        outbox: Outbox,
        texts: Texts,
        relays: Relays,
        extra: Mapping[str, Callable[[str, Message, Command], Awaitable[None]]] | None = None,
    ) -> None:
        self.config = config
        self.relays = relays
        self.store = store
        self.mx = client
        self.rooms = rooms
        self.pipeline = pipeline
        self.plugins = plugins
        self.related = related
        self.outbox = outbox
        self.t = texts
        replies = Replies(store, outbox, texts)
        self.reply = replies.reply
        self.say = replies.say
        self.routes = RouteCommands(
            store, rooms, pipeline, plugins, texts, self.say, self._thread_question
        )
        Handler = Callable[[str, Message, Command], Awaitable[None]]
        # Every command, once: parse_command knows the names, this table their handlers.
        self.handlers: dict[str, Handler] = {
            "related": self.cmd_related,
            "solved": self.cmd_solved,
            "unsolved": self.cmd_unsolved,
            "confirm": self.cmd_confirm,
            "forward": self.cmd_forward,
            "peerbot": self.cmd_peerbot,
            "plugins": self.cmd_plugins,
            "intake": self.cmd_intake,
            "route": self.routes.handle,
            **(extra or {}),  # other modules' commands (the follow-ups')
        }
        missing = set(COMMAND_NAMES) - set(self.handlers)
        assert not missing, f"commands without a handler: {sorted(missing)}"

    async def handle(self, room_id: str, msg: Message, cmd: Command) -> None:
        """Run one command; an unexpected failure gets an apology, never a traceback."""
        try:
            if cmd.name in ADMIN_COMMANDS and not await self.rooms.is_admin(room_id, msg.sender):
                level = self.config.admin.power_level
                await self.say(room_id, msg, self.t.s("not_admin", level=level))
                return
            handler = self.handlers.get(cmd.name)
            if handler is None:
                await self.say(room_id, msg, self.t.s("unknown_command"))
                return
            await handler(room_id, msg, cmd)
        except MatrixError as exc:
            log.warning("Command %s failed: %s", cmd.name, exc)
            await self.say(room_id, msg, self.t.s("command_failed"))
        except Exception:
            log.exception("Command %s failed", cmd.name)
            await self.say(room_id, msg, self.t.s("command_failed"))

    # -- everyone ---------------------------------------------------------------------------

    async def cmd_related(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!related <text>``: related threads that may be shown in this room."""
        text = cmd.rest.strip()
        if not text:
            await self.say(room_id, msg, self.t.s("related_usage"))
            return
            # The answer is posted here: the rule is about who can read this room, not the asker.
        lines = await self.pipeline.related_lines(text, room_id, keywords=True)
        if not lines:
            await self.say(room_id, msg, self.t.s("related_none"))
            return
        body, html = self.t.related_list(lines)

        await self.reply(room_id, msg, Rendered(body, html))

    async def _thread_question(self, room_id: str, msg: Message) -> QuestionRow | None:
        root = msg.thread_root or msg.reply_to
        if root is None:
            return None
        q = await self.store.question(root)
        return q if q is not None and q.room_id == room_id else None

    async def cmd_solved(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!solved`` in a question's thread."""
        await self._set_solved(room_id, msg, True)

    async def cmd_unsolved(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!unsolved`` in a question's thread."""
        await self._set_solved(room_id, msg, False)

    async def _set_solved(self, room_id: str, msg: Message, solved: bool) -> None:
        q = await self._thread_question(room_id, msg)
        if q is None:
            await self.say(room_id, msg, self.t.s("not_in_question_thread"))
            return
        if not await self.rooms.may_moderate(room_id, msg.sender, q.sender):
            await self.say(room_id, msg, self.t.s("solved_denied"))
            return
        # The mark and the forward's state edit in one transaction: a crash loses neither.
        await self.relays.set_solved(
            q.event_id, solved, msg.event_id if solved else None, cause=msg.event_id
        )
        self.related.set_solved(q.event_id, solved)
        await self.say(room_id, msg, self.t.s("solved_done" if solved else "unsolved_done"))

    async def cmd_confirm(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!confirm`` in the thread of a question held by a guard."""
        q = await self._thread_question(room_id, msg)
        # Not the question held: the author's messages held back from an unencrypted room.
        if q is not None and q.state != QuestionState.HELD:  # noqa: SIM102 - two different whys
            if await self.relays.consent(room_id, msg, q):
                room = self.rooms.label(q.target_room or "")
                await self.say(room_id, msg, self.t.s("relay_confirmed", room=room))
                return
        if q is None or q.state != QuestionState.HELD:
            await self.say(room_id, msg, self.t.s("guard_nothing_held"))
            return
        if msg.sender != q.sender:
            await self.say(room_id, msg, self.t.s("guard_confirm_denied"))
            return
        if not q.decision.confirmable:
            await self.say(room_id, msg, self.t.s("guard_confirm_edit_only"))
            return
        await self.store.update_question(
            q.event_id, state=QuestionState.NEW.value, guard_override=True
        )
        log.info("Question %s confirmed by its author despite a guard", q.event_id)

    async def cmd_forward(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!forward`` in the thread of a question held because its target is not encrypted."""
        q = await self._thread_question(room_id, msg)
        if q is None or q.state != QuestionState.HELD or not q.decision.unencrypted_target:
            await self.say(room_id, msg, self.t.s("forward_nothing_held"))
            return
        if msg.sender != q.sender:
            await self.say(room_id, msg, self.t.s("forward_denied"))
            return
        decision = replace(q.decision, forward_confirmed=True)
        await self.store.update_question(
            q.event_id, state=QuestionState.NEW.value, decision=decision.to_json()
        )
        log.info("Question %s: its author confirmed forwarding to an unencrypted room", q.event_id)

    async def cmd_peerbot(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!peerbot help``."""
        lines = [self.t.s("help_intro")]
        rule = self.rooms.intake.get(RoomID(room_id))
        if rule is not None:
            tags = f" ({', '.join(rule.hashtags)})" if rule.trigger is Trigger.HASHTAG else ""
            lines.append(self.t.s("help_intake", trigger=rule.trigger.value, tags=tags))
        else:
            lines.append(self.t.s("help_not_intake"))
        lines.append(self.t.s("help_everyone"))
        lines.append(self.t.s("help_followup"))
        if await self.rooms.is_admin(room_id, msg.sender):
            lines.append(self.t.s("help_admin"))
            states = ", ".join(
                f"{self.rooms.label(r)} {'🔒' if self.mx.is_encrypted(r) else '—'}"
                for r in sorted(self.rooms.configured)
            )
            lines.append(self.t.s("help_encryption", rooms=states))
        await self.say(room_id, msg, *lines)

    # -- admins -----------------------------------------------------------------------------

    async def cmd_plugins(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!plugins``: loaded plugins, their rooms and error counts."""
        if not self.plugins.plugins:
            await self.say(room_id, msg, self.t.s("plugins_none"))
            return
        lines = []
        for p in self.plugins.plugins:
            rooms = (
                ", ".join(self.rooms.label(r) for r in sorted(p.rooms))
                if p.rooms is not None
                else self.t.s("plugins_all_intake")
            )
            lines.append(
                self.t.s(
                    "plugins_item",
                    name=p.name,
                    kind=p.kind,
                    rooms=rooms,
                    calls=p.calls,
                    errors=p.errors,
                    timeouts=p.timeouts,
                )
            )
        await self.say(room_id, msg, *lines)

    async def cmd_intake(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!intake on|off [hashtag|question|all]`` for the current room."""
        if cmd.sub not in ("on", "off"):
            await self.say(room_id, msg, self.t.s("intake_usage"))
            return
        current = self.rooms.intake.get(RoomID(room_id))
        trigger = current.trigger if current else Trigger.HASHTAG
        if cmd.words:
            try:
                trigger = Trigger(cmd.words[0].lower())
            except ValueError:
                await self.say(room_id, msg, self.t.s("intake_usage"))
                return
        hashtags: tuple[str, ...] = current.hashtags if current else ()
        if not hashtags:
            hashtags = next((i.hashtags for i in self.config.intake if i.hashtags), ("#DocTocToc",))
        await self.store.set_intake_override(
            room_id,
            enabled=cmd.sub == "on",
            trigger=trigger.value,
            hashtags=hashtags,
            by=msg.sender,
        )
        await self.rooms.reload_overrides()
        if cmd.sub == "on":
            await self.say(room_id, msg, self.t.s("intake_on", trigger=trigger.value))
        else:
            await self.say(room_id, msg, self.t.s("intake_off"))
