"""Answers travel both ways, once: what to do with a message in either thread of a question (pure).

A person's message in the forward's thread (in the specialty room) is relayed into the asker's
thread, crediting its author, with a link to the original; a message in the asker's thread is
relayed into the forward's thread, so the specialty room reads the whole conversation. The sync
handler gathers the inputs (the recorded message, its question, both rooms' encryption, the
guards' verdicts, names and links) and calls :func:`decide`; the store records the message and
the returned effects in one transaction, and the outbox sends them in order per question. The
transaction IDs derive from the source events, so a crash neither loses nor repeats a relay.

Decisions::

    ignore   the bot's own message: nothing to relay
    wait     a message in the asker's thread while the forward is not sent yet (the asker adds
             a detail a second after asking): relayed, in order, once the forward exists
    hold     a guard found patient data: the author is told why, in their thread
    refuse   encrypted source, unencrypted destination, no consent: the author is told and may
             consent with !confirm (replying to the message)
    relay    the copy (or, for an edit of a relayed message, an edit of the copy)

Notifications: an answer relayed into the asker's thread must ring the asker, and only them:
``m.text`` (``.m.rule.suppress_notices`` silences ``m.notice`` whatever it mentions) with
``m.mentions: {"user_ids": [asker]}`` and the asker's pill. Everything relayed into the forward's
thread is an ``m.notice`` mentioning nobody.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from peerbot.core.ids import tx_id
from peerbot.core.lifecycle import Outgoing, thread_relation
from peerbot.core.messages import Rendered, Texts
from peerbot.core.records import QuestionRow, ThreadMessage
from peerbot.plugin_api import Finding, GuardAction, Verdict

__all__ = [
    "COPY_OF",
    "RelayAction",
    "RelayDecision",
    "RelayInputs",
    "RelayLabels",
    "decide",
    "destination",
    "forward_state_edit",
    "latest_body",
    "redaction",
    "without_reply_fallback",
]

COPY_OF = "peerbot.copy_of"
"""Content key of an edit or redaction whose target copy was not sent yet when it was recorded:
the tx ID of the copy, which the outbox resolves to its event ID (and removes) before sending."""


class RelayAction(StrEnum):
    """What becomes of a message in a question's thread (the ``relay_state`` column)."""

    RELAY = "relayed"
    HOLD = "held"
    REFUSE = "refused"
    IGNORE = "ignored"
    WAIT = "waiting"


@dataclass(frozen=True)
class RelayLabels:
    """How the author and the rooms are shown (already resolved)."""

    author_name: str = ""
    source_label: str = ""
    """The room the message was written in."""
    source_url: str = ""
    """A permalink to the original message."""
    target_label: str = ""
    """The room it would be relayed to."""
    asker_name: str = ""


@dataclass(frozen=True)
class RelayInputs:
    """Everything :func:`decide` decides from, gathered by the sync handler."""

    message: ThreadMessage
    text: str
    question: QuestionRow
    bot_id: str
    source_encrypted: bool = False
    target_encrypted: bool = False
    target_allows_from_encrypted: bool = False
    """bot.yaml's ``allow_from_encrypted`` for the destination room."""
    consented: bool = False
    """The author confirmed relaying from an encrypted room to an unencrypted one."""
    verdicts: Sequence[tuple[str, Verdict]] = ()
    labels: RelayLabels = RelayLabels()
    edit_event_id: str | None = None
    """For an edit: the edit's event (``text`` is then the new text)."""
    copy_tx: str | None = None
    """For an edit of a message already relayed: the tx ID of its copy."""
    copy_event_id: str | None = None
    """...and the copy's event ID, once sent."""


@dataclass(frozen=True)
class RelayDecision:
    """The decision, its effects, and why."""

    action: RelayAction
    effects: tuple[Outgoing, ...] = ()
    reason: str = ""
    findings: tuple[str, ...] = ()

    @property
    def relay_tx(self) -> str | None:
        """The tx ID of the copy this decision records, if any."""
        return next((e.tx_id for e in self.effects if e.kind == "relay"), None)


def without_reply_fallback(body: str) -> str:
    """A rich reply's text without the quote of the message it replies to (older clients put
    one before the answer: ``> <@bot:x> Question...`` then a blank line)."""
    if not body.startswith(">"):
        return body
    lines = body.split("\n")
    n = 0
    while n < len(lines) and lines[n].startswith(">"):
        n += 1
    rest = "\n".join(lines[n:]).strip()
    return rest or body


def latest_body(event: Mapping[str, Any]) -> str | None:
    """The text of an event's latest edit by its own author, as the homeserver bundles it
    (``unsigned.m.relations.m.replace``); None when it was not edited (or the edit is not
    readable: encrypted). A message relayed late (it waited for the forward) is relayed as
    it reads now."""
    unsigned = event.get("unsigned")
    relations = unsigned.get("m.relations") if isinstance(unsigned, Mapping) else None
    edit = relations.get("m.replace") if isinstance(relations, Mapping) else None
    if not isinstance(edit, Mapping) or edit.get("sender") != event.get("sender"):
        return None
    content = edit.get("content")
    new = content.get("m.new_content") if isinstance(content, Mapping) else None
    body = new.get("body") if isinstance(new, Mapping) else None
    return body if isinstance(body, str) else None


def destination(q: QuestionRow, side: str) -> tuple[str, str] | None:
    """The other thread of a question: (room, thread root); None before the forward exists.

    The forward's side is the current copy after a ``!route move``; a message under an older
    copy (side ``forward`` too) still goes to the asker's thread."""
    if side == "forward":
        return q.room_id, q.event_id
    if q.forward_event_id is None or q.target_room is None:
        return None
    return q.target_room, q.forward_event_id


def _author_thread(i: RelayInputs, rendered: Rendered, key: str) -> Outgoing:
    """A notice to the author, in the thread they wrote in, replying to their message."""
    m, q = i.message, i.question
    root = q.event_id if m.side == "origin" else (q.forward_event_id or q.event_id)
    content = rendered.content()
    content["m.relates_to"] = thread_relation(root, i.edit_event_id or m.event_id)
    return Outgoing(tx_id(key, i.edit_event_id or m.event_id), "relay_notice", m.room_id, content)


def _copy_content(i: RelayInputs, texts: Texts) -> dict[str, Any]:
    m, q = i.message, i.question
    asker = q.sender or ""
    rings = m.side == "forward" and m.answer and bool(asker)
    if rings:
        head = "relay_answer"
    elif m.side == "origin" and m.sender == asker:
        head = "relay_from_asker"
    else:
        head = "relay_from_other"
    rendered = texts.relayed(
        head=head,
        text=i.text,
        author_name=i.labels.author_name,
        author_id=m.sender,
        room=i.labels.source_label or m.room_id,
        url=i.labels.source_url,
        asker_name=i.labels.asker_name or asker,
        asker_id=asker,
    )
    if rings:
        content = rendered.content("m.text")
        content["m.mentions"] = {"user_ids": [asker]}
        return content
    return rendered.content()


def decide(i: RelayInputs, texts: Texts) -> RelayDecision:
    """Relay, hold, refuse or ignore one message (or an edit of one); see the module docstring."""
    m, q = i.message, i.question
    if m.sender == i.bot_id:
        return RelayDecision(RelayAction.IGNORE, reason="the bot's own message")
    where = destination(q, m.side)
    if where is None:
        return RelayDecision(RelayAction.WAIT, reason="the question has no forward yet")
    room, root = where
    blocking = [v for _, v in i.verdicts if v.action is not GuardAction.PASS]
    if blocking:
        findings: list[Finding] = [f for v in blocking for f in v.findings]
        held = texts.guard_held(findings, confirmable=False, key="relay_held")
        return RelayDecision(
            RelayAction.HOLD,
            (_author_thread(i, held, "relay-guard"),),
            reason="a guard found patient data",
            findings=tuple(f.kind for f in findings),
        )
    if (
        i.source_encrypted
        and not i.target_encrypted
        and not i.target_allows_from_encrypted
        and not i.consented
    ):
        refusal = texts.plain("relay_unencrypted", room=i.labels.target_label or room)
        return RelayDecision(
            RelayAction.REFUSE,
            (_author_thread(i, refusal, "relay-unencrypted"),),
            reason="encrypted source, unencrypted destination",
        )
    content = _copy_content(i, texts)
    if i.copy_tx is not None and i.edit_event_id is not None:
        return RelayDecision(
            RelayAction.RELAY,
            (_edit_of_copy(i.copy_tx, i.copy_event_id, room, content, i.edit_event_id),),
            reason="an edit of a relayed message",
        )
    content["m.relates_to"] = thread_relation(root, root)
    return RelayDecision(
        RelayAction.RELAY, (Outgoing(tx_id("relay", m.event_id), "relay", room, content),)
    )


def _replacing(
    target_event: str | None, copy_tx: str, new: Mapping[str, Any], tx: str, kind: str, room: str
) -> Outgoing:
    """An ``m.replace`` of a copy (its event ID resolved by the outbox when not known yet)."""
    inner = {k: v for k, v in new.items() if k != "m.relates_to"}
    content: dict[str, Any] = {
        "msgtype": inner.get("msgtype", "m.notice"),
        "body": "* " + str(inner.get("body", "")),
        "m.new_content": inner,
        "m.relates_to": {"rel_type": "m.replace", "event_id": target_event or ""},
        # An edit rings nobody again: the copy already mentioned whom it had to.
        "m.mentions": {},
    }
    if "formatted_body" in inner:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = "* " + str(inner["formatted_body"])
    if target_event is None:
        content[COPY_OF] = copy_tx
    return Outgoing(tx, kind, room, content)


def _edit_of_copy(
    copy_tx: str, copy_event: str | None, room: str, new: Mapping[str, Any], edit_event: str
) -> Outgoing:
    return _replacing(copy_event, copy_tx, new, tx_id("relay-edit", edit_event), "relay_edit", room)


def redaction(m: ThreadMessage, room: str, copy_event: str | None) -> Outgoing | None:
    """Take down the copy of a redacted message (None when it was never relayed)."""
    if m.relay_tx_id is None:
        return None
    content: dict[str, Any] = {"redacts": copy_event or ""}
    if copy_event is None:
        content[COPY_OF] = m.relay_tx_id
    return Outgoing(
        tx_id("relay-redact", m.event_id), "relay_redact", room, content, "m.room.redaction"
    )


def forward_state_edit(
    q: QuestionRow, forward: Mapping[str, Any], cause: str, texts: Texts
) -> Outgoing | None:
    """Edit the forward in place to show its state (answers so far, solved).

    ``cause`` is the event that changed the state (an answer, a ✅, a command): one edit per
    change, and a replayed cause records nothing twice. The outbox sends only the latest of
    several pending ones."""
    if q.forward_event_id is None or q.target_room is None:
        return None
    rendered = texts.forward_state(forward, q.answers, q.solved)
    new = rendered.content(str(forward.get("msgtype", "m.notice")))
    return _replacing(
        q.forward_event_id,
        "",
        new,
        tx_id("fwd-state", f"{q.event_id}\0{cause}"),
        "forward_state",
        q.target_room,
    )
