"""``!route``: the specialties changed in chat by room admins (list, add, remove, keywords),
a dry run (test) and moving a question to another specialty (move)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from peerbot.bot.pipeline import QuestionPipeline
from peerbot.bot.plugins import PluginSet
from peerbot.bot.rooms import RoomDirectory
from peerbot.config import is_room_ref
from peerbot.core.commands import Command, split_keywords
from peerbot.core.ids import RoomID, tx_id
from peerbot.core.intake import Message
from peerbot.core.lifecycle import Outgoing
from peerbot.core.messages import Texts
from peerbot.core.records import QuestionRow
from peerbot.core.routing import Rule
from peerbot.matrix import MatrixError
from peerbot.plugin_api import Question
from peerbot.store import Store

__all__ = ["RouteCommands"]

Say = Callable[..., Awaitable[None]]
"""``say(room_id, msg, *lines)``: answer in the command's thread (through the outbox)."""
ThreadQuestion = Callable[[str, Message], Awaitable[QuestionRow | None]]
"""The question whose thread a command was typed in."""


class RouteCommands:
    """The ``!route`` subcommands, as an explicit table."""

    def __init__(
        self,
        store: Store,
        rooms: RoomDirectory,
        pipeline: QuestionPipeline,
        plugins: PluginSet,
        texts: Texts,
        say: Say,
        thread_question: ThreadQuestion,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.pipeline = pipeline
        self.plugins = plugins
        self.t = texts
        self.say = say
        self.thread_question = thread_question
        self.handlers: dict[str, Callable[[str, Message, str], Awaitable[None]]] = {
            "list": self.route_list,
            "add": self.route_add,
            "remove": self.route_remove,
            "keywords": self.route_keywords,
            "test": self.route_test,
            "move": self.route_move,
        }

    async def handle(self, room_id: str, msg: Message, cmd: Command) -> None:
        """``!route list|add|remove|keywords|test|move``."""
        handler = self.handlers.get(cmd.sub)
        if handler is None:
            await self.say(room_id, msg, self.t.s("route_usage"))
            return
        await handler(room_id, msg, cmd.rest)

    def _rule(self, name: str) -> Rule | None:
        key = name.strip().strip('"').casefold()
        return next((r for r in self.rooms.rules.rules if r.name.casefold() == key), None)

    async def route_list(self, room_id: str, msg: Message, rest: str) -> None:
        """List the specialties."""
        fallback = self.rooms.label(self.rooms.fallback)
        if not self.rooms.rules.rules:
            await self.say(room_id, msg, self.t.s("route_list_empty", room=fallback))
            return
        lines = [self.t.s("route_list_title")]
        for r in self.rooms.rules.rules:
            lines.append(
                "- "
                + self.t.s(
                    "route_list_item",
                    name=r.name,
                    room=self.rooms.label(r.room),
                    keywords=", ".join(r.keywords) or "—",
                )
            )
        lines.append(self.t.s("route_fallback", room=fallback))
        await self.say(room_id, msg, *lines)

    @staticmethod
    def _split_name(rest: str) -> tuple[str, str]:
        rest = rest.strip()
        if rest.startswith('"') and '"' in rest[1:]:
            end = rest.index('"', 1)
            return rest[1:end].strip(), rest[end + 1 :].strip()
        name, _, tail = rest.partition(" ")
        return name.strip(), tail.strip()

    async def _resolve_room(self, ref: str) -> RoomID | None:
        if not is_room_ref(ref):
            return None
        try:
            return await self.rooms.resolve(ref, why="a new route")
        except MatrixError:
            return None

    async def route_add(self, room_id: str, msg: Message, rest: str) -> None:
        """Add (or replace) a specialty."""
        name, tail = self._split_name(rest)
        ref, _, words = tail.partition(" ")
        if not name or not ref:
            await self.say(room_id, msg, self.t.s("route_usage"))
            return
        target = await self._resolve_room(ref)
        if target is None:
            await self.say(room_id, msg, self.t.s("route_bad_room", room=ref))
            return
        keywords = split_keywords(words)
        existed = self._rule(name) is not None
        await self.store.set_route_override(name, target, keywords, removed=False, by=msg.sender)
        await self.rooms.reload_overrides()
        self.rooms.configured.add(target)
        key = "route_updated" if existed else "route_added"
        await self.say(
            room_id,
            msg,
            self.t.s(key, name=name, room=self.rooms.label(target), keywords=", ".join(keywords)),
        )

    async def route_remove(self, room_id: str, msg: Message, rest: str) -> None:
        """Remove a specialty (its questions then go elsewhere)."""
        name, _ = self._split_name(rest)
        rule = self._rule(name)
        if rule is None:
            await self.say(room_id, msg, self.t.s("route_unknown", name=name))
            return
        await self.store.set_route_override(
            rule.name, rule.room, rule.keywords, removed=True, by=msg.sender
        )
        await self.rooms.reload_overrides()
        await self.say(room_id, msg, self.t.s("route_removed", name=rule.name))

    async def route_keywords(self, room_id: str, msg: Message, rest: str) -> None:
        """Add or remove keywords of a specialty."""
        name, tail = self._split_name(rest)
        action, _, words = tail.partition(" ")
        rule = self._rule(name)
        if rule is None:
            await self.say(room_id, msg, self.t.s("route_unknown", name=name))
            return
        if action not in ("add", "remove") or not words.strip():
            await self.say(room_id, msg, self.t.s("route_usage"))
            return
        change = split_keywords(words)
        folded = {c.casefold() for c in change}
        if action == "add":
            keywords = list(rule.keywords) + [
                c for c in change if c.casefold() not in {k.casefold() for k in rule.keywords}
            ]
        else:
            keywords = [k for k in rule.keywords if k.casefold() not in folded]
        await self.store.set_route_override(
            rule.name, rule.room, keywords, removed=False, by=msg.sender
        )
        await self.rooms.reload_overrides()
        await self.say(
            room_id,
            msg,
            self.t.s(
                "route_updated",
                name=rule.name,
                room=self.rooms.label(rule.room),
                keywords=", ".join(keywords) or "—",
            ),
        )

    async def route_test(self, room_id: str, msg: Message, rest: str) -> None:
        """A dry run: where this text would go and why; nothing is sent."""
        text = rest.strip()
        if not text:
            await self.say(room_id, msg, self.t.s("route_usage"))
            return
        question = Question(text=text, room_id=room_id, sender=msg.sender, event_id=msg.event_id)
        decision = await self.pipeline.route(text, question)
        lines = []
        if decision.is_fallback:
            lines.append(self.t.s("route_test_fallback", room=self.rooms.label(decision.room)))
        else:
            lines.append(
                self.t.s(
                    "route_test_result",
                    room=self.rooms.label(decision.room),
                    specialty=decision.specialty,
                    score=f"{decision.score:.2f}",
                )
            )
        if decision.hits:
            words = ", ".join(
                h.keyword if h.exact else f"{h.keyword} (~{h.found})" for h in decision.hits
            )
            lines.append(self.t.s("route_test_words", words=words))
        others = [f"{c.name} {c.score:.2f}" for c in decision.candidates[1:]]
        if others:
            lines.append(self.t.s("route_test_candidates", candidates=", ".join(others)))
        if self.plugins.routers:
            proposals = await self.plugins.propose(question, self.pipeline.specialty_infos())
            shown = ", ".join(
                f"{p.plugin}: {p.specialty} {p.score:.2f} ({p.reason})" for p in proposals
            )
            lines.append(self.t.s("route_test_plugins", proposals=shown or "—"))
        if self.plugins.guards:
            verdicts = await self.plugins.check(question)
            found = [
                f"{p.name}: {v.action.value}"
                + (f" ({', '.join(f.label for f in v.findings)})" if v.findings else "")
                for p, v in verdicts
            ]
            lines.append(self.t.s("route_test_guards", findings=", ".join(found) or "—"))
        lines.append(self.t.s("route_test_nothing_sent"))
        await self.say(room_id, msg, *lines)

    async def route_move(self, room_id: str, msg: Message, rest: str) -> None:
        """In a question's thread: send it to another specialty, and teach the routers."""
        q = await self.thread_question(room_id, msg)
        if q is None or q.body is None:
            await self.say(room_id, msg, self.t.s("not_in_question_thread"))
            return
        name, _ = self._split_name(rest)
        rule = self._rule(name)
        if rule is None:
            await self.say(room_id, msg, self.t.s("route_unknown", name=name))
            return
        if q.specialty and q.specialty.casefold() == rule.name.casefold():
            await self.say(room_id, msg, self.t.s("route_move_same", specialty=rule.name))
            return
        if q.specialty:
            self.plugins.forget(q.body, q.specialty)
        self.plugins.learn(q.body, rule.name)
        # The room and the forward change together once the copy is sent (the outbox's
        # ``copy_moved``): until then relays and follow-ups stay with the copy that exists.
        # The copy is the question's (deleting the question takes it down too).
        copy = Outgoing(
            tx_id("move", msg.event_id),
            "move",
            rule.room,
            self.pipeline.forward_content(q, rule.name),
        )
        await self.store.record_move(q.event_id, rule.name, copy)
        await self.say(
            room_id,
            msg,
            self.t.s("route_moved", room=self.rooms.label(rule.room), specialty=rule.name),
        )
