"""Questions, hashtags and keyword routing (pure)."""

from __future__ import annotations

from typing import Any

from peerbot.config import Trigger
from peerbot.core.intake import detect_question, has_hashtag, parse_message
from peerbot.core.routing import PluginProposal, Rule, RuleSet, decide
from peerbot.core.textnorm import fold


def ev(
    body: Any, *, eid: str = "$q", rel: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": extra.pop("msgtype", "m.text"), "body": body}
    if rel is not None:
        content["m.relates_to"] = rel
    content.update(extra)
    return {
        "type": "m.room.message",
        "event_id": eid,
        "sender": "@alice:example.org",
        "origin_server_ts": 1,
        "content": content,
    }


TAGS = ("#DocTocToc",)


def q(event: dict[str, Any], trigger: Trigger = Trigger.HASHTAG) -> str | None:
    msg = parse_message(event)
    assert msg is not None
    return detect_question(msg, trigger, TAGS)


def test_fold() -> None:
    assert fold("ÉCG, Arythmie !") == "ecg arythmie"
    assert fold("cœur") == "coeur"


def test_hashtag_case_accent_and_boundaries() -> None:
    assert has_hashtag("#doctoctoc une question", TAGS)
    assert has_hashtag("question ? #DÖCTOCTOC", TAGS)
    assert not has_hashtag("#DocTocTocs", TAGS)
    assert not has_hashtag("DocTocToc sans dièse", TAGS)
    assert not has_hashtag("##DocTocToc", TAGS)


def test_hashtag_top_level_is_its_own_question() -> None:
    assert q(ev("#DocTocToc ECG ?")) == "$q"
    assert q(ev("bonjour à tous")) is None


def test_hashtag_in_thread_reply_points_to_root() -> None:
    rel = {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$other"},
    }
    assert q(ev("#DocTocToc", eid="$r", rel=rel)) == "$root"
    reply = {"m.in_reply_to": {"event_id": "$parent"}}
    assert q(ev("> quoted\n\n#doctoctoc", eid="$r", rel=reply)) == "$parent"


def test_edits_notices_commands_ignored() -> None:
    edit = {"rel_type": "m.replace", "event_id": "$q"}
    assert (
        q(
            ev(
                "* #DocTocToc ?",
                rel=edit,
                **{"m.new_content": {"msgtype": "m.text", "body": "#DocTocToc ?"}},
            )
        )
        is None
    )
    assert q(ev("#DocTocToc ?", msgtype="m.notice")) is None
    assert q(ev("!route test #DocTocToc")) is None


def test_question_and_all_triggers() -> None:
    assert q(ev("Une dose ?"), Trigger.QUESTION) == "$q"
    assert q(ev("Une dose."), Trigger.QUESTION) is None
    thread = {"rel_type": "m.thread", "event_id": "$root"}
    assert q(ev("et alors ?", rel=thread), Trigger.QUESTION) is None
    assert q(ev("n'importe quoi"), Trigger.ALL) == "$q"


def test_malformed_events_are_none() -> None:
    for bad in (
        {},
        {"type": "m.room.message"},
        {**ev("x"), "content": "nope"},
        {**ev("x"), "event_id": 5},
        ev(None),
        ev(["list"]),
        ev("x", rel="weird"),  # type: ignore[arg-type]
        {"type": "m.room.message", "event_id": "$e", "sender": "@a:b", "content": {"body": "x"}},
    ):
        assert parse_message(bad) is None or parse_message(bad).body == "x"  # type: ignore[union-attr]


RULES = RuleSet(
    [
        Rule(
            "Cardiologie", "!cardio", ("ecg", "arythmie", "fibrillation auriculaire", "infarctus")
        ),
        Rule("Pédiatrie", "!pedia", ("nourrisson", "enfant", "ECG pédiatrique")),
    ]
)


def test_keywords_decide_with_reasons() -> None:
    d = decide(
        "#DocTocToc Patiente de 82 ans, ECG avec arythmie, faut-il anticoaguler ?", RULES, "!triage"
    )
    assert d.room == "!cardio" and d.specialty == "Cardiologie"
    assert sorted(h.keyword for h in d.hits) == ["arythmie", "ecg"]
    assert d.score > 0.8


def test_accents_case_plurals_and_phrases() -> None:
    assert decide("ÉCG anormal", RULES, "!t").room == "!cardio"
    assert decide("deux infarctus", RULES, "!t").room == "!cardio"
    d = decide("Fibrillation  Auriculaire récente", RULES, "!t")
    assert [h.keyword for h in d.hits] == ["fibrillation auriculaire"]
    assert decide("une fibrillation ventriculaire", RULES, "!t").is_fallback


def test_typos_tolerated_only_in_long_words() -> None:
    d = decide("une arithmie depuis hier", RULES, "!t")
    assert d.specialty == "Cardiologie"
    assert not d.hits[0].exact and d.hits[0].found == "arithmie"
    # "ecg" is too short for fuzzy matching: "ecb" is not "ecg".
    assert decide("un ecb", RULES, "!t").is_fallback


def test_word_boundaries() -> None:
    assert decide("l'enfantillage", RULES, "!t").is_fallback
    assert decide("mon enfant tousse", RULES, "!t").specialty == "Pédiatrie"


def test_best_score_wins_ties_by_order() -> None:
    # One keyword each: tie -> the first configured.
    assert decide("ecg chez un enfant", RULES, "!t").specialty == "Cardiologie"
    # Two for pediatrics (phrase + word) beat one for cardiology.
    d = decide("ECG pédiatrique d'un nourrisson", RULES, "!t")
    assert d.specialty == "Pédiatrie"


def test_fallback_when_nothing_matches() -> None:
    d = decide("Question de pharmacie sur un antibiotique ?", RULES, "!triage")
    assert d.is_fallback and d.room == "!triage" and d.hits == ()


def test_plugin_proposals_compete() -> None:
    p = [PluginProposal("Learned", "pédiatrie", 0.9, "appris")]
    d = decide("ecg de contrôle", RULES, "!t", p)
    assert d.specialty == "Pédiatrie" and d.reasons == ("Learned: appris",)
    unknown = [PluginProposal("Learned", "Dermatologie", 0.99, "?")]
    assert decide("rien", RULES, "!t", unknown).is_fallback
