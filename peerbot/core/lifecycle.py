"""A question's life: its states, the decision record, and the next step (pure).

The async pipeline gathers the inputs (guard verdicts, the routing decision, rooms' encryption,
labels and links) and calls :func:`route_step`; the store applies the returned :class:`Step` in
one transaction — the new state, the decision record and every effect to send — and the outbox
delivers the effects. Nothing here awaits, so a crash can never fall between a state and the
message that tells the asker about it: both are written together or not at all.

States::

    new --route_step--> held           (a guard, or encrypted -> unencrypted; notice recorded)
        \\------------> forwarding     (routed; the lane records and sends the forward)
    forwarding --acknowledged--> done  (the acknowledgement recorded; the outbox sends it)
    forwarding --forward_failed--> failed (the apology recorded)
    held --edit / !confirm / !forward--> new
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from peerbot.core.ids import tx_id
from peerbot.core.messages import RelatedLine, Rendered, Texts
from peerbot.core.records import QuestionRow, QuestionState, RouteRecord
from peerbot.core.routing import Decision
from peerbot.plugin_api import Finding, GuardAction, Verdict

__all__ = [
    "Labels",
    "Outgoing",
    "RouteInputs",
    "Step",
    "acknowledged",
    "forward_failed",
    "forward_outgoing",
    "route_step",
    "thread_relation",
]


@dataclass(frozen=True)
class Outgoing:
    """A message (or redaction) to record in the outbox and send."""

    tx_id: str
    kind: str
    room_id: str
    content: Mapping[str, Any]
    event_type: str = "m.room.message"


@dataclass(frozen=True)
class Step:
    """What applying one decision changes: the question's row and the effects to send."""

    state: QuestionState
    record: RouteRecord | None = None
    """The new decision record (None: unchanged)."""
    specialty: str | None = None
    target_room: str | None = None
    """With ``routed``: where the question goes (None: unchanged)."""
    routed: bool = False
    """True when ``specialty`` and ``target_room`` are set by this step."""
    sender_name: str | None = None
    forward_event_id: str | None = None
    error: str | None = None
    effects: tuple[Outgoing, ...] = ()

    def columns(self) -> dict[str, Any]:
        """The question's columns this step sets."""
        out: dict[str, Any] = {"state": self.state.value}
        if self.record is not None:
            out["decision"] = self.record.to_json()
        if self.routed:
            out["specialty"] = self.specialty
            out["target_room"] = self.target_room
        if self.sender_name is not None:
            out["sender_name"] = self.sender_name
        if self.forward_event_id is not None:
            out["forward_event_id"] = self.forward_event_id
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Labels:
    """How the rooms and the asker are shown: names, links (already resolved)."""

    sender_name: str = ""
    target_label: str = ""
    source_label: str = ""
    source_url: str = ""


@dataclass(frozen=True)
class RouteInputs:
    """Everything :func:`route_step` decides from, gathered by the pipeline."""

    verdicts: Sequence[tuple[str, Verdict]] = ()
    """(plugin name, verdict) of each guard that ran (none when the guards were skipped)."""
    route: Decision | None = None
    """The routing decision; None when the question was routed before (a resumed one)."""
    source_encrypted: bool = False
    target_encrypted: bool = False
    target_allows_from_encrypted: bool = False
    """bot.yaml's ``allow_from_encrypted`` for the target room."""
    labels: Labels = field(default_factory=Labels)


def thread_relation(root: str, reply_to: str) -> dict[str, Any]:
    """The relation that puts a message in a thread, with the reply fallback."""
    return {
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": reply_to},
    }


def _in_thread(rendered: Rendered | Mapping[str, Any], root: str, reply_to: str) -> dict[str, Any]:
    content = dict(rendered.content() if isinstance(rendered, Rendered) else rendered)
    content["m.relates_to"] = thread_relation(root, reply_to)
    return content


def route_step(q: QuestionRow, inputs: RouteInputs, texts: Texts) -> Step:
    """The next step of a new question: held (and the asker told why), or on to forwarding."""
    effects: list[Outgoing] = []
    for plugin, verdict in inputs.verdicts:
        if verdict.notice:
            notice = {"msgtype": "m.notice", "body": verdict.notice, "m.mentions": {}}
            effects.append(
                Outgoing(
                    tx_id(f"notice-{plugin}", q.event_id),
                    "notice",
                    q.room_id,
                    _in_thread(notice, q.event_id, q.trigger_event_id),
                )
            )
    blocking = [v for _, v in inputs.verdicts if v.action is not GuardAction.PASS]
    if blocking and not q.guard_override:
        findings: list[Finding] = [f for v in blocking for f in v.findings]
        confirmable = all(v.action is GuardAction.HOLD for v in blocking)
        held = texts.guard_held(findings, confirmable)
        effects.append(
            Outgoing(
                tx_id("guard", q.revision or q.event_id),
                "guard",
                q.room_id,
                _in_thread(held, q.event_id, q.revision or q.trigger_event_id),
            )
        )
        record = RouteRecord(held=tuple(f.kind for f in findings), confirmable=confirmable)
        return Step(QuestionState.HELD, record=record, effects=tuple(effects))

    record = q.decision
    target = q.target_room
    step = Step(QuestionState.FORWARDING, effects=tuple(effects))
    if inputs.route is not None:
        record = RouteRecord(
            score=inputs.route.score,
            words=tuple((h.keyword, h.found, h.exact) for h in inputs.route.hits),
            reasons=tuple(inputs.route.reasons),
            forward_confirmed=record.forward_confirmed,
        )
        target = inputs.route.room
        step = replace(
            step,
            record=record,
            routed=True,
            specialty=inputs.route.specialty,
            target_room=target,
            sender_name=inputs.labels.sender_name or None,
        )
    if target is None:
        raise ValueError(f"question {q.event_id} has no target room and no routing decision")
    if (
        q.forward_event_id is None
        and not record.forward_confirmed
        and inputs.source_encrypted
        and not inputs.target_encrypted
        and not inputs.target_allows_from_encrypted
    ):
        refusal = texts.plain("unencrypted_target", room=inputs.labels.target_label or target)
        told = Outgoing(
            tx_id("unencrypted", q.revision or q.event_id),
            "notice",
            q.room_id,
            _in_thread(refusal, q.event_id, q.trigger_event_id),
        )
        return replace(
            step,
            state=QuestionState.HELD,
            record=replace(record, unencrypted_target=True),
            effects=(*step.effects, told),
        )
    return step


def forward_outgoing(
    q: QuestionRow, *, question: str, sender_id: str, labels: Labels, texts: Texts
) -> Outgoing:
    """The forward of a routed question into its target room."""
    if q.target_room is None:
        raise ValueError(f"question {q.event_id} is not routed")
    rendered = texts.forward(
        question=question,
        sender_name=labels.sender_name or sender_id,
        sender_id=sender_id,
        source_room=labels.source_label,
        source_url=labels.source_url,
        specialty=q.specialty,
    )
    return Outgoing(tx_id("fwd", q.event_id), "forward", q.target_room, rendered.content())


def acknowledged(
    q: QuestionRow,
    *,
    forward_event_id: str,
    forward_url: str,
    related: Sequence[RelatedLine],
    labels: Labels,
    texts: Texts,
) -> Step:
    """The forward went out: done, with the acknowledgement in the asker's thread."""
    rendered = texts.acknowledgement(
        target_room=labels.target_label,
        specialty=q.specialty,
        forward_url=forward_url,
        words=q.decision.words,
        reasons=q.decision.reasons,
        related=related,
    )
    ack = Outgoing(
        tx_id("ack", q.event_id),
        "ack",
        q.room_id,
        _in_thread(rendered, q.event_id, q.trigger_event_id),
    )
    return Step(QuestionState.DONE, forward_event_id=forward_event_id, effects=(ack,))


def forward_failed(q: QuestionRow, error: str, texts: Texts) -> Step:
    """The forward can never be sent: failed, and an apology in the asker's thread."""
    apology = Outgoing(
        tx_id("sorry", q.event_id),
        "notice",
        q.room_id,
        _in_thread(texts.plain("apology"), q.event_id, q.trigger_event_id),
    )
    return Step(QuestionState.FAILED, error=error, effects=(apology,))
