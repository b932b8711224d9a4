"""The pure lifecycle: one question and its gathered inputs -> the next step (no event loop)."""

from __future__ import annotations

import pytest

from peerbot.core.ids import tx_id
from peerbot.core.lifecycle import (
    Labels,
    RouteInputs,
    acknowledged,
    forward_failed,
    forward_outgoing,
    route_step,
)
from peerbot.core.messages import RelatedLine, texts_for
from peerbot.core.records import QuestionRow, QuestionState, RouteRecord
from peerbot.core.routing import Decision, KeywordHit
from peerbot.plugin_api import Finding, GuardAction, Verdict

FR = texts_for("fr")
EN = texts_for("en")
CARDIO = "!cardio:x"
ROUTE = Decision(
    room=CARDIO,
    specialty="Cardiologie",
    score=0.6,
    hits=(KeywordHit("ecg", "ecg", 0.6),),
    reasons=("LearnedRouter: 0.81",),
)
NIR = Finding("nir", "un numéro de sécurité sociale", "il identifie le patient")


def question(**over: object) -> QuestionRow:
    base: dict[str, object] = {
        "seq": 1,
        "event_id": "$q",
        "room_id": "!intake:x",
        "sender": "@alice:x",
        "sender_name": None,
        "body": "#DocTocToc ECG ?",
        "created_ts": 1,
        "trigger_event_id": "$q",
        "state": QuestionState.NEW,
        "specialty": None,
        "target_room": None,
        "decision": RouteRecord(),
        "forward_event_id": None,
        "ack_event_id": None,
    }
    base.update(over)
    return QuestionRow(**base)  # type: ignore[arg-type]


def test_clean_question_is_routed_with_its_decision_record() -> None:
    step = route_step(question(), RouteInputs(route=ROUTE, labels=Labels("Alice")), FR)
    assert step.state is QuestionState.FORWARDING
    assert step.routed and step.specialty == "Cardiologie" and step.target_room == CARDIO
    assert step.record is not None
    assert step.record.words == (("ecg", "ecg", True),)
    assert step.record.reasons == ("LearnedRouter: 0.81",)
    assert step.effects == ()
    cols = step.columns()
    assert cols["state"] == "forwarding" and cols["sender_name"] == "Alice"
    assert RouteRecord.from_json(cols["decision"]) == step.record


def test_guard_hold_and_its_notice_are_one_step() -> None:
    verdicts = [("PatientDataGuard", Verdict(GuardAction.HOLD, (NIR,)))]
    step = route_step(question(), RouteInputs(verdicts=verdicts, route=ROUTE), FR)
    assert step.state is QuestionState.HELD
    assert step.record == RouteRecord(held=("nir",), confirmable=True)
    assert not step.routed
    (notice,) = step.effects
    assert notice.kind == "guard" and notice.room_id == "!intake:x"
    assert notice.tx_id == tx_id("guard", "$q")
    assert notice.content["m.relates_to"]["event_id"] == "$q"
    assert "!confirm" in notice.content["body"]


def test_edit_only_guard_is_not_confirmable_and_notice_keys_on_revision() -> None:
    verdicts = [("G", Verdict(GuardAction.EDIT, (NIR,)))]
    step = route_step(question(revision="$edit"), RouteInputs(verdicts=verdicts, route=ROUTE), EN)
    assert step.record is not None and not step.record.confirmable
    (notice,) = step.effects
    assert notice.tx_id == tx_id("guard", "$edit")
    assert "!confirm" not in notice.content["body"]


def test_guard_notices_go_out_whatever_the_action_and_override_skips_the_hold() -> None:
    verdicts = [
        ("Urgent", Verdict(GuardAction.PASS, notice="Appelez le 15")),
        ("Guard", Verdict(GuardAction.HOLD, (NIR,))),
    ]
    step = route_step(
        question(guard_override=True), RouteInputs(verdicts=verdicts, route=ROUTE), FR
    )
    assert step.state is QuestionState.FORWARDING
    assert [e.kind for e in step.effects] == ["notice"]
    assert step.effects[0].content["body"] == "Appelez le 15"
    assert step.effects[0].content["m.mentions"] == {}


@pytest.mark.parametrize(
    ("target_encrypted", "allowed", "confirmed", "held"),
    [
        (False, False, False, True),
        (True, False, False, False),
        (False, True, False, False),
        (False, False, True, False),
    ],
)
def test_encrypted_to_plain_is_held_unless_allowed_or_confirmed(
    target_encrypted: bool, allowed: bool, confirmed: bool, held: bool
) -> None:
    q = question(decision=RouteRecord(forward_confirmed=confirmed))
    inputs = RouteInputs(
        route=ROUTE,
        source_encrypted=True,
        target_encrypted=target_encrypted,
        target_allows_from_encrypted=allowed,
        labels=Labels(target_label="#cardio:x"),
    )
    step = route_step(q, inputs, FR)
    assert (step.state is QuestionState.HELD) is held
    if held:
        assert step.record is not None and step.record.unencrypted_target
        assert "#cardio:x" in step.effects[-1].content["body"]
        assert "!forward" in step.effects[-1].content["body"]
    else:
        assert step.record is not None and step.record.forward_confirmed is confirmed


def test_resumed_question_keeps_its_route_and_needs_one() -> None:
    routed = question(state=QuestionState.FORWARDING, target_room=CARDIO, specialty="Cardiologie")
    step = route_step(routed, RouteInputs(), FR)
    assert step.state is QuestionState.FORWARDING and not step.routed
    assert "specialty" not in step.columns()
    with pytest.raises(ValueError, match="no target room"):
        route_step(question(), RouteInputs(), FR)


def test_forward_ack_and_failure_effects() -> None:
    q = question(target_room=CARDIO, specialty="Cardiologie", state=QuestionState.FORWARDING)
    labels = Labels("Alice", "#cardio:x", "#entraide:x", "https://matrix.to/#/src")
    fwd = forward_outgoing(q, question=q.body or "", sender_id="@alice:x", labels=labels, texts=FR)
    assert fwd.room_id == CARDIO and fwd.tx_id == tx_id("fwd", "$q")
    assert "https://matrix.to/#/src" in fwd.content["body"]
    line = RelatedLine("https://matrix.to/#/old", "Ancienne question", 3, 1, True)
    done = acknowledged(
        q, forward_event_id="$f", forward_url="https://f", related=[line], labels=labels, texts=FR
    )
    assert done.state is QuestionState.DONE and done.columns()["forward_event_id"] == "$f"
    (ack,) = done.effects
    assert ack.kind == "ack" and ack.room_id == "!intake:x"
    assert "https://matrix.to/#/old" in ack.content["body"]
    failed = forward_failed(q, "M_FORBIDDEN", EN)
    assert failed.state is QuestionState.FAILED and failed.columns()["error"] == "M_FORBIDDEN"
    assert failed.effects[0].tx_id == tx_id("sorry", "$q")


def test_route_record_reads_rows_written_by_older_versions() -> None:
    old = {"score": 0.84, "words": [["ecg", "ecg", True]], "reasons": []}
    assert RouteRecord.from_json(old).words == (("ecg", "ecg", True),)
    assert RouteRecord.from_json({"held": ["nir"], "confirmable": True}).held == ("nir",)
    assert RouteRecord.from_json(None) == RouteRecord()
