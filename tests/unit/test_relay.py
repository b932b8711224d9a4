"""The relay decision (pure): relay, hold, refuse, ignore; who rings; edits, redactions, state."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerbot.core.ids import tx_id
from peerbot.core.messages import texts_for
from peerbot.core.records import QuestionRow, QuestionState, RouteRecord, ThreadMessage
from peerbot.core.relay import (
    COPY_OF,
    RelayAction,
    RelayInputs,
    RelayLabels,
    decide,
    forward_state_edit,
    latest_body,
    redaction,
    without_reply_fallback,
)
from peerbot.plugin_api import Finding, GuardAction, Verdict

BOT = "@peerbot:x"
ASKER = "@alice:x"
FR, EN = texts_for("fr"), texts_for("en")

Q = QuestionRow(
    seq=1,
    event_id="$q",
    room_id="!entraide:x",
    sender=ASKER,
    sender_name="Alice Martin",
    body="ECG ?",
    created_ts=1,
    trigger_event_id="$q",
    state=QuestionState.DONE,
    specialty="Cardiologie",
    target_room="!cardio:x",
    decision=RouteRecord(),
    forward_event_id="$fwd",
    ack_event_id="$ack",
)
ANSWER = ThreadMessage("$a", "$q", "!cardio:x", "forward", "@bob:x", 5, answer=True)
CLARIF = ThreadMessage("$c", "$q", "!entraide:x", "origin", ASKER, 6, answer=False)
LABELS = RelayLabels(
    author_name="Bob Durand",
    source_label="#cardio:x",
    source_url="https://matrix.to/#/%21cardio%3Ax/%24a",
    target_label="#entraide:x",
    asker_name="Alice Martin",
)
NIR = Finding("nir", "un numéro de sécurité sociale", "il identifie la personne")


def inputs(m: ThreadMessage = ANSWER, text: str = "Regarde le QT", **kw: object) -> RelayInputs:
    kw.setdefault("labels", LABELS)
    return RelayInputs(message=m, text=text, question=Q, bot_id=BOT, **kw)  # type: ignore[arg-type]


def test_answer_from_the_forward_rings_the_asker_only_with_credit_and_link() -> None:
    d = decide(inputs(), FR)
    assert d.action is RelayAction.RELAY
    (out,) = d.effects
    assert (out.tx_id, out.kind, out.room_id) == (tx_id("relay", "$a"), "relay", "!entraide:x")
    c = out.content
    assert c["msgtype"] == "m.text"  # m.notice would be silenced by .m.rule.suppress_notices
    assert c["m.mentions"] == {"user_ids": [ASKER]}
    assert c["m.relates_to"]["rel_type"] == "m.thread" and c["m.relates_to"]["event_id"] == "$q"
    assert c["body"].startswith(
        "Alice Martin : réponse de Bob Durand (@\u2060bob:x) dans #cardio:x"
    )
    assert "> Regarde le QT" in c["body"] and LABELS.source_url in c["body"]
    assert f'<a href="https://matrix.to/#/{ASKER}">Alice Martin</a>' in c["formatted_body"]
    assert "@room" not in c["body"]


def test_clarification_goes_to_the_forward_as_a_silent_notice() -> None:
    d = decide(
        inputs(CLARIF, "Il a 80 ans", labels=replace(LABELS, author_name="Alice Martin")), EN
    )
    (out,) = d.effects
    assert out.room_id == "!cardio:x" and out.content["m.relates_to"]["event_id"] == "$fwd"
    assert out.content["msgtype"] == "m.notice" and out.content["m.mentions"] == {}
    assert out.content["body"].startswith("Alice Martin (@\u2060alice:x), who asked, adds in")


def test_someone_else_in_the_origin_thread_is_relayed_as_such() -> None:
    other = replace(CLARIF, event_id="$o", sender="@carol:x", answer=True)
    (out,) = decide(inputs(other, "Moi aussi"), EN).effects
    assert out.content["msgtype"] == "m.notice" and " writes in " in out.content["body"]


def test_pings_in_relayed_text_are_defanged() -> None:
    (out,) = decide(inputs(text="@room venez voir, @carol:x aussi"), EN).effects
    assert "@room" not in out.content["body"] and "@carol:x" not in out.content["body"]


@pytest.mark.parametrize("action", [GuardAction.HOLD, GuardAction.EDIT])
def test_guarded_answer_is_held_and_its_author_told_in_their_thread(action: GuardAction) -> None:
    verdicts = [("guard", Verdict(action, (NIR,)))]
    d = decide(inputs(text="NIR 1 41 03 75 123 456 78", verdicts=verdicts), FR)
    assert d.action is RelayAction.HOLD and d.findings == ("nir",) and d.relay_tx is None
    (told,) = d.effects
    assert told.room_id == "!cardio:x"  # the author's own room and thread, not the asker's
    assert told.content["m.relates_to"]["event_id"] == "$fwd"
    assert told.content["m.relates_to"]["m.in_reply_to"] == {"event_id": "$a"}
    assert "pas été relayé" in told.content["body"] and "1 41 03" not in told.content["body"]


def test_passing_verdicts_relay() -> None:
    assert decide(inputs(verdicts=[("g", Verdict())]), FR).action is RelayAction.RELAY


def test_encrypted_to_unencrypted_needs_consent() -> None:
    refused = decide(inputs(CLARIF, source_encrypted=True), FR)
    assert refused.action is RelayAction.REFUSE
    (told,) = refused.effects
    assert told.room_id == "!entraide:x" and "!confirm" in told.content["body"]
    assert decide(inputs(CLARIF, source_encrypted=True, consented=True), FR).relay_tx
    allowed = inputs(CLARIF, source_encrypted=True, target_allows_from_encrypted=True)
    assert decide(allowed, FR).action is RelayAction.RELAY
    both = inputs(CLARIF, source_encrypted=True, target_encrypted=True)
    assert decide(both, FR).action is RelayAction.RELAY


def test_the_bot_is_ignored_and_an_early_detail_waits_for_the_forward() -> None:
    mine = replace(ANSWER, sender=BOT)
    assert decide(inputs(mine), FR).action is RelayAction.IGNORE
    # The asker adds a detail before the forward exists: kept until it does, not dropped.
    early = replace(inputs(CLARIF), question=replace(Q, forward_event_id=None))
    assert decide(early, FR) == decide(early, FR)
    assert decide(early, FR).action is RelayAction.WAIT and not decide(early, FR).effects
    later = decide(inputs(CLARIF), FR)
    assert later.action is RelayAction.RELAY
    (copy,) = later.effects
    assert copy.room_id == "!cardio:x" and copy.content["m.relates_to"]["event_id"] == "$fwd"


def test_relays_follow_the_current_copy_after_a_move() -> None:
    moved = replace(Q, target_room="!pedia:x", forward_event_id="$moved")
    (to_new,) = decide(replace(inputs(CLARIF), question=moved), FR).effects
    assert to_new.room_id == "!pedia:x"
    assert to_new.content["m.relates_to"]["event_id"] == "$moved"
    # An answer still written under the first copy reaches the asker all the same.
    (back,) = decide(replace(inputs(ANSWER), question=moved), FR).effects
    assert back.room_id == "!entraide:x" and back.content["m.relates_to"]["event_id"] == "$q"


def test_edit_of_a_relayed_message_edits_its_copy() -> None:
    sent = decide(
        inputs(text="QT long", edit_event_id="$e", copy_tx="tx", copy_event_id="$copy"), FR
    )
    (out,) = sent.effects
    assert (out.kind, out.tx_id) == ("relay_edit", tx_id("relay-edit", "$e"))
    c = out.content
    assert c["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$copy"}
    assert "> QT long" in c["m.new_content"]["body"] and c["body"].startswith("* ")
    assert c["m.new_content"]["m.mentions"] == {"user_ids": [ASKER]}
    assert c["m.mentions"] == {} and COPY_OF not in c  # the edit rings nobody again
    pending = decide(inputs(edit_event_id="$e", copy_tx="tx", copy_event_id=None), FR)
    assert pending.effects[0].content[COPY_OF] == "tx"


def test_redaction_takes_the_copy_down() -> None:
    assert redaction(ANSWER, "!entraide:x", None) is None  # never relayed
    relayed = replace(ANSWER, relay_tx_id="tx")
    out = redaction(relayed, "!entraide:x", "$copy")
    assert out is not None and out.event_type == "m.room.redaction"
    assert out.content == {"redacts": "$copy"} and out.room_id == "!entraide:x"
    later = redaction(relayed, "!entraide:x", None)
    assert later is not None and later.content[COPY_OF] == "tx"


def test_forward_state_edit_shows_answers_and_solved_once_per_cause() -> None:
    fwd = {"msgtype": "m.notice", "body": "Question transmise", "formatted_body": "<p>Q</p>"}
    out = forward_state_edit(replace(Q, answers=2, solved=True), fwd, "$r", FR)
    assert out is not None and out.room_id == "!cardio:x" and out.kind == "forward_state"
    new = out.content["m.new_content"]
    assert new["body"] == "Question transmise\nRéponses : 2 · ✅ Résolu"
    assert out.content["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$fwd"}
    again = forward_state_edit(replace(Q, answers=2, solved=True), fwd, "$r", FR)
    assert again is not None and again.tx_id == out.tx_id
    other = forward_state_edit(replace(Q, answers=3), fwd, "$a3", EN)
    assert other is not None and other.tx_id != out.tx_id
    assert other.content["m.new_content"]["body"].endswith("Answers: 3")
    assert forward_state_edit(replace(Q, forward_event_id=None), fwd, "$r", FR) is None


def test_a_rich_replys_quote_is_not_relayed() -> None:
    body = "> <@peerbot:x> Question transmise par PeerBot\n> > ECG ?\n\nRegarde le QT"
    assert without_reply_fallback(body) == "Regarde le QT"
    assert without_reply_fallback("Regarde le QT\n> cité") == "Regarde le QT\n> cité"
    assert without_reply_fallback("> seulement une citation") == "> seulement une citation"


def test_a_late_relay_reads_the_latest_edit_by_its_author_only() -> None:
    def event(edit_sender: str) -> dict[str, object]:
        edit = {"sender": edit_sender, "content": {"m.new_content": {"body": "72 kg"}}}
        return {"sender": ASKER, "unsigned": {"m.relations": {"m.replace": edit}}}

    assert latest_body(event(ASKER)) == "72 kg"
    assert latest_body(event("@mallory:x")) is None
    assert latest_body({"sender": ASKER, "content": {"body": "x"}}) is None
    assert latest_body({"sender": ASKER, "unsigned": {"m.relations": {"m.replace": "?"}}}) is None
