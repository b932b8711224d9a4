"""Chat commands of the follow-ups: ``!expert`` and ``!unanswered`` in specialty rooms,
``!stats`` for admins. Registered in :class:`peerbot.bot.admin.ChatCommands`'s table."""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable

from peerbot.bot.outbox import Outbox
from peerbot.bot.replies import Replies
from peerbot.bot.rooms import RoomDirectory
from peerbot.config import Config
from peerbot.core.commands import Command
from peerbot.core.followup import DAY_MS, parse_quiet, specialty_stats, zone
from peerbot.core.followup_effects import MAX_LISTED, Listed, listed_lines, stats_lines
from peerbot.core.intake import Message
from peerbot.core.messages import Rendered, Texts, permalink
from peerbot.store import Store
from peerbot.store.db import now_ms

__all__ = ["FollowupCommands"]

log = logging.getLogger(__name__)

Handler = Callable[[str, Message, Command], Awaitable[None]]


class FollowupCommands:
    """``!expert``, ``!unanswered``, ``!stats``; answers go through the outbox."""

    def __init__(
        self,
        config: Config,
        store: Store,
        rooms: RoomDirectory,
        outbox: Outbox,
        texts: Texts,
    ) -> None:
        self.config = config
        self.store = store
        self.rooms = rooms
        self.outbox = outbox
        self.t = texts
        replies = Replies(store, outbox, texts)
        self._reply = replies.reply
        self._say = replies.say
        self.handlers: dict[str, Handler] = {
            "expert": self.cmd_expert,
            "unanswered": self.cmd_unanswered,
            "stats": self.cmd_stats,
        }
        """The commands this class answers, for ChatCommands's table."""
        self._expert: dict[str, Callable[[str, Message, list[str]], Awaitable[None]]] = {
            "join": self.expert_join,
            "leave": self.expert_leave,
            "quiet": self.expert_quiet,
            "tz": self.expert_tz,
        }

    def _specialty_of(self, room_id: str) -> str | None:
        """The specialty whose room this is (the triage room counts, by its label)."""
        for rule in self.rooms.rules.rules:
            if str(rule.room) == room_id:
                return rule.name
        if room_id == str(self.rooms.fallback):
            return self.t.s("stats_triage")
        return None

    # -- !expert -----------------------------------------------------------------------------

    async def cmd_expert(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!expert join [specialty] | leave | quiet <span> [zone] | quiet off | tz <zone>``."""
        handler = self._expert.get(cmd.sub)
        if handler is None:
            await self._say(room_id, msg, self.t.s("expert_usage"))
            return
        await handler(room_id, msg, cmd.words)

    async def expert_join(self, room_id: str, msg: Message, words: list[str]) -> None:
        """Volunteer in this specialty room."""
        specialty = self._specialty_of(room_id)
        if specialty is None:
            await self._say(room_id, msg, self.t.s("not_specialty_room"))
            return
        name = " ".join(words).strip().strip('"')
        if name and name.casefold() != specialty.casefold():
            await self._say(
                room_id, msg, self.t.s("expert_wrong_specialty", specialty=specialty, name=name)
            )
            return
        if await self.store.expert_join(room_id, msg.sender, specialty):
            log.info("%s volunteers in %s", msg.sender, room_id)
            cap = self.config.experts.daily_cap
            await self._say(
                room_id,
                msg,
                self.t.s("expert_joined", user=msg.sender, specialty=specialty, cap=cap),
            )
        else:
            await self._say(room_id, msg, self.t.s("expert_already", user=msg.sender))

    async def expert_leave(self, room_id: str, msg: Message, words: list[str]) -> None:
        """Stop volunteering in this room."""
        left = await self.store.expert_leave(room_id, msg.sender)
        key = "expert_left" if left else "expert_not_member"
        await self._say(room_id, msg, self.t.s(key, user=msg.sender))

    async def expert_quiet(self, room_id: str, msg: Message, words: list[str]) -> None:
        """Quiet hours (``22:00-07:00 [zone]``) or ``off``."""
        tz, _ = await self.store.expert_settings(msg.sender)
        if words and words[0].lower() in ("off", "non", "aucune", "none"):
            await self.store.set_expert_settings(msg.sender, timezone=tz, quiet=None)
            await self._say(room_id, msg, self.t.s("expert_quiet_off"))
            return
        if not words:
            await self._say(room_id, msg, self.t.s("expert_usage"))
            return
        try:
            quiet = parse_quiet(words[0])
        except ValueError:
            await self._say(room_id, msg, self.t.s("expert_bad_quiet", span=words[0]))
            return
        if len(words) > 1:
            try:
                zone(words[1])
            except ValueError:
                await self._say(room_id, msg, self.t.s("expert_bad_tz", zone=words[1]))
                return
            tz = words[1]
        await self.store.set_expert_settings(msg.sender, timezone=tz, quiet=quiet)
        shown = tz or self.config.experts.timezone
        await self._say(room_id, msg, self.t.s("expert_quiet_set", span=words[0], zone=shown))

    async def expert_tz(self, room_id: str, msg: Message, words: list[str]) -> None:
        """The expert's time zone."""
        if not words:
            await self._say(room_id, msg, self.t.s("expert_usage"))
            return
        try:
            zone(words[0])
        except ValueError:
            await self._say(room_id, msg, self.t.s("expert_bad_tz", zone=words[0]))
            return
        _, quiet = await self.store.expert_settings(msg.sender)
        await self.store.set_expert_settings(msg.sender, timezone=words[0], quiet=quiet)
        await self._say(room_id, msg, self.t.s("expert_tz_set", zone=words[0]))

    # -- !unanswered, !stats -----------------------------------------------------------------

    async def cmd_unanswered(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!unanswered``: this room's unanswered questions, oldest first."""
        if self._specialty_of(room_id) is None:
            await self._say(room_id, msg, self.t.s("not_specialty_room"))
            return
        rows, total = await self.store.open_questions(
            room_id, unanswered_only=True, limit=MAX_LISTED
        )
        if not rows:
            await self._say(room_id, msg, self.t.s("unanswered_none"))
            return
        now = now_ms()
        items = [
            Listed(
                first_line=q.body or "",
                age_s=(now - (q.forwarded_ts or now)) / 1000,
                answers=q.answers,
                url=permalink(room_id, q.forward_event_id, self.rooms.via_servers(room_id)),
            )
            for q in rows
        ]
        txt, htm = listed_lines(items, total, self.t)
        title = self.t.s("unanswered_title", n=total)
        await self._reply(
            room_id,
            msg,
            Rendered("\n".join([title, *txt]), f"<p>{_esc(title)}</p><ul>{''.join(htm)}</ul>"),
        )

    async def cmd_stats(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!stats`` (admins): per specialty, questions, answered share, p50 / p90."""
        if not await self.rooms.is_admin(room_id, msg.sender):
            level = self.config.admin.power_level
            await self._say(room_id, msg, self.t.s("not_admin", level=level))
            return
        now = now_ms()
        stats = specialty_stats(await self.store.stat_rows(now - 30 * DAY_MS), now)
        if not stats:
            await self._say(room_id, msg, self.t.s("stats_none", days=30))
            return
        await self._say(room_id, msg, *stats_lines(stats, self.t))


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
