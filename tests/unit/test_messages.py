"""Sentences, escaping, permalinks."""

from __future__ import annotations

import pytest

from peerbot.core.messages import WORD_JOINER, defang, permalink, shorten, texts_for


def test_permalink_quotes_and_via() -> None:
    url = permalink("!abc:example.org", "$ev/+x", ["example.org", "other.org", "example.org"])
    assert (
        url == "https://matrix.to/#/%21abc%3Aexample.org/%24ev%2F%2Bx?via=example.org&via=other.org"
    )


def test_defang_mentions() -> None:
    out = defang("@room regardez, cc @bob:example.org et a@b")
    assert "@room" not in out and "@bob:example.org" not in out
    assert out.replace(WORD_JOINER, "") == "@room regardez, cc @bob:example.org et a@b"


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_forward_escapes_everything(lang: str) -> None:
    t = texts_for(lang)
    r = t.forward(
        question='<b>gras</b> <a href="https://evil">x</a> & @room',
        sender_name="<img src=x onerror=alert(1)>",
        sender_id="@alice:example.org",
        source_room="#entraide:example.org",
        source_url="https://matrix.to/#/%21r/%24e?via=example.org",
        specialty="Cardiologie",
    )
    assert "<b>" not in r.html and "<img" not in r.html and 'href="https://evil"' not in r.html
    assert "&lt;b&gt;gras&lt;/b&gt;" in r.html
    assert "@room" not in r.body and "@room" not in r.html
    content = r.content()
    assert content["m.mentions"] == {} and content["msgtype"] == "m.notice"


def test_long_question_is_shortened_with_marker() -> None:
    text = "mot " * 30_000
    cut, was_cut = shorten(text)
    assert was_cut and len(cut) <= 4000
    r = texts_for("fr").forward(
        question=text,
        sender_name="A",
        sender_id="@a:b",
        source_room="#r:b",
        source_url="https://matrix.to/#/x",
        specialty=None,
    )
    assert "message raccourci : 120000 caractères" in r.body
    assert len(r.body) < 5000


def test_ack_lists_words_and_typos() -> None:
    r = texts_for("en").acknowledgement(
        target_room="#cardiologie:example.org",
        specialty="Cardiology",
        forward_url="https://matrix.to/#/x",
        words=[("ecg", "ecg", True), ("arythmie", "arithmie", False)],
    )
    assert "Deciding words: ecg, arythmie (read as “arithmie”)." in r.body
    fr = texts_for("fr").acknowledgement(
        target_room="#triage:example.org", specialty=None, forward_url="https://matrix.to/#/x"
    )
    assert "salon de tri #triage:example.org" in fr.body


def test_catalogues_have_same_keys() -> None:
    from peerbot.core import messages

    assert set(messages._FR) == set(messages._EN)
