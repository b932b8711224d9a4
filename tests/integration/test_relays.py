"""Issue 12, answers travel both ways, against a real Synapse: relays with credit and link, the
asker's notification as Synapse's own push rules decide it, edits, redactions, the guard, the
forward's state, and exactly once across a SIGKILL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from botproc import BotProcess
from conftest import World  # type: ignore[import-not-found]
from helpers import MakeUser, TestUser, in_thread, unique_name
from test_faults import (  # type: ignore[import-not-found]
    bot_messages,
    bots,  # noqa: F401 - the fixture
    history,
    make_site,
)

from peerbot.dev.devserver import SynapseServer

Event = dict[str, Any]
GUARD = [{"use": "plugins.patient_data_guard:PatientDataGuard"}]
QUESTION = "#DocTocToc Patient de 70 ans, ECG avec arythmie, faut-il anticoaguler ? {run}"


def from_bot(world_bot: str, root: str) -> Callable[[Event], bool]:
    """The bot's message in the thread of ``root``."""
    return lambda e: e["sender"] == world_bot and in_thread(root)(e)


def replacing(event_id: str, needle: str = "") -> Callable[[Event], bool]:
    """An edit (``m.replace``) of ``event_id`` whose new text holds ``needle``."""

    def check(e: Event) -> bool:
        c = e["content"]
        rel = c.get("m.relates_to") or {}
        return (
            rel.get("rel_type") == "m.replace"
            and rel.get("event_id") == event_id
            and needle in c["m.new_content"]["body"]
        )

    return check


def is_forward_of(qid: str) -> Callable[[Event], bool]:
    needle = quote(qid, safe="")
    return lambda e: e["content"].get("msgtype") == "m.notice" and needle in e["content"]["body"]


async def ask(world: World, run: str) -> tuple[str, Event]:
    """Alice asks; the question's ID and its forward as Bob sees it in #cardio."""
    qid = await world.alice.send_text(world.rooms["entraide"], QUESTION.format(run=run))
    fwd = await world.bob.wait_for_event(world.rooms["cardio"], is_forward_of(qid))
    # The acknowledgement first: it is the first message in the asker's thread.
    await world.alice.wait_for_event(world.rooms["entraide"], from_bot(world.bot_user.user_id, qid))
    return qid, fwd


async def mentions_only(user: TestUser, room_id: str) -> None:
    """The room set to "Mentions and keywords", as Element does: a room rule that notifies
    nothing; mentions (override rules) still ring."""
    url = (
        f"{user.server.base_url}/_matrix/client/v3/pushrules/global/room/{quote(room_id, safe='')}"
    )
    headers = {"Authorization": f"Bearer {user.client.access_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, headers=headers, json={"actions": []}) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def notifications(user: TestUser) -> list[Event]:
    """What Synapse's push evaluation listed for ``user`` (``GET /notifications``)."""
    url = f"{user.server.base_url}/_matrix/client/v3/notifications"
    headers = {"Authorization": f"Bearer {user.client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["notifications"])


def highlighted(actions: list[Any]) -> bool:
    """The push actions highlight (a mention), not only notify."""
    return any(
        isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True)
        for a in actions
    )


async def wait_notified(user: TestUser, event_id: str, seconds: float = 20.0) -> Event:
    """The notification of ``event_id`` in ``user``'s list (polled until a deadline)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for n in await notifications(user):
            if n["event"]["event_id"] == event_id:
                return n
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user.user_id} was never notified of {event_id}")


async def test_answer_comes_back_to_the_asker_and_rings_only_her(world: World) -> None:
    entraide, cardio = world.rooms["entraide"], world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    await asyncio.gather(mentions_only(world.alice, entraide), mentions_only(world.admin, entraide))
    await world.start_bot()
    qid, fwd = await ask(world, unique_name("r"))

    answer = await world.bob.send_text(
        cardio, "Regarde le QT avant tout", thread_root=fwd["event_id"]
    )
    relayed = await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "Regarde le QT" in e["content"]["body"]
    )
    c = relayed["content"]
    assert c["msgtype"] == "m.text"  # an m.notice would be silenced by .m.rule.suppress_notices
    assert c["m.mentions"] == {"user_ids": [world.alice.user_id]}
    assert c["body"].startswith("Alice Martin : réponse de ")
    assert world.bob.user_id.replace("@", "@\u2060") in c["body"]  # credited, not pinged
    assert world.aliases["cardio"] in c["body"]  # the room it came from
    link = f"https://matrix.to/#/{quote(cardio, safe='')}/{quote(answer, safe='')}"
    assert link in c["body"]  # the original answer
    assert f'href="https://matrix.to/#/{world.alice.user_id}"' in c["formatted_body"]  # her pill

    # Synapse's own push rules: the asker is notified (highlighted), another member is not.
    note = await wait_notified(world.alice, relayed["event_id"])
    assert highlighted(note["actions"]), note
    others = {n["event"]["event_id"] for n in await notifications(world.admin)}
    assert relayed["event_id"] not in others
    # Bob, credited by name and ID in the body, keeps the room's default rules: at most the
    # room's plain "notify", never a highlight (m.mentions turns the legacy body rules off).
    bobs = [
        n for n in await notifications(world.bob) if n["event"]["event_id"] == relayed["event_id"]
    ]
    assert not any(highlighted(n["actions"]) for n in bobs), bobs

    # A rich reply to the forward (outside its thread) comes back too.
    fallback = f"> <{bot_id}> Question transmise par PeerBot\n\nEt la kaliémie"
    await world.bob.send_text(cardio, fallback, reply_to=fwd["event_id"])
    rich = await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "Et la kaliémie" in e["content"]["body"]
    )
    assert "Question transmise" not in rich["content"]["body"]  # its reply quote is left out
    # The forward shows the state at a glance: answered by 2.
    await world.bob.wait_for_event(cardio, replacing(fwd["event_id"], "Réponses : 2"))
    # ✅ by the asker: the forward says solved.
    await world.alice.react(entraide, qid, "✅")
    await world.bob.wait_for_event(cardio, replacing(fwd["event_id"], "✅ Résolu"))


async def test_clarification_edit_and_redaction_follow_in_english(world: World) -> None:
    entraide, cardio = world.rooms["entraide"], world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    await world.start_bot(world.config(language="en"))
    qid, fwd = await ask(world, unique_name("c"))

    clarif = await world.alice.send_text(entraide, "He is on amiodarone", thread_root=qid)
    copy = await world.bob.wait_for_event(
        cardio,
        lambda e: from_bot(bot_id, fwd["event_id"])(e) and "amiodarone" in e["content"]["body"],
    )
    c = copy["content"]
    assert c["msgtype"] == "m.notice" and c["m.mentions"] == {}
    assert c["body"].startswith("Alice Martin (@\u2060") and ", who asked, adds in " in c["body"]

    await world.alice.edit(entraide, clarif, "He is on amiodarone 200 mg")
    edit = await world.bob.wait_for_event(cardio, replacing(copy["event_id"], "200 mg"))
    assert edit["sender"] == bot_id and edit["content"]["m.mentions"] == {}

    await world.alice.redact(entraide, clarif)
    gone = await world.bob.wait_for_event(
        cardio, lambda e: e["type"] == "m.room.redaction" and e.get("redacts") == copy["event_id"]
    )
    assert gone["sender"] == bot_id


async def test_guarded_answer_is_held_and_its_author_told(world: World) -> None:
    entraide, cardio = world.rooms["entraide"], world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    await world.start_bot(world.config(plugins=GUARD))
    qid, fwd = await ask(world, unique_name("g"))
    root = fwd["event_id"]

    held = await world.bob.send_text(
        cardio, "C'est Mme Durand née le 12/03/1941, je la connais", thread_root=root
    )
    told = await world.bob.wait_for_event(
        cardio, lambda e: from_bot(bot_id, root)(e) and "pas été relayé" in e["content"]["body"]
    )
    assert told["content"]["m.relates_to"]["m.in_reply_to"] == {"event_id": held}
    assert "Durand" not in told["content"]["body"]
    # A clean answer after it arrives; the held one never did (relays go out in order).
    await world.bob.send_text(cardio, "Score CHA2DS2-VASc d'abord", thread_root=root)
    await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "CHA2DS2" in e["content"]["body"]
    )
    assert not [e for e in world.alice.events(entraide) if "Durand" in str(e["content"])]
    # Edited clean, it is relayed.
    await world.bob.edit(cardio, held, "Je la connais, elle a 82 ans")
    await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "elle a 82 ans" in e["content"]["body"]
    )
    assert not [e for e in world.alice.events(entraide) if "Durand" in str(e["content"])]


async def test_relay_sent_exactly_once_across_a_sigkill(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = await make_site(synapse, make_user)
    db = tmp_path / "peerbot.db"
    bot = bots(site.config(db))
    entraide, cardio = site.rooms["entraide"], site.rooms["cardio"]
    bot_id = site.bot_user.user_id
    await bot.start_ready()
    qid = await site.alice.send_text(entraide, QUESTION.format(run=unique_name("k")))
    fwd = await site.bob.wait_for_event(cardio, is_forward_of(qid), 60)
    await site.alice.wait_for_event(entraide, from_bot(bot_id, qid), 60)
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()

    # Killed right after the answer and its relay were recorded, before any send.
    monkeypatch.setenv("PEERBOT_TEST_FAULT", "exit-after-relay-recorded")
    await bot.start_ready()
    monkeypatch.delenv("PEERBOT_TEST_FAULT")
    answer = await site.bob.send_text(cardio, "Anticoaguler oui", thread_root=fwd["event_id"])
    assert await bot.wait_exit(60) == 137, bot.log_tail()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        recorded = conn.execute(
            "SELECT relay_state FROM thread_messages WHERE event_id = ?", (answer,)
        ).fetchall()
        relays = conn.execute(
            "SELECT state FROM effects WHERE question_id = ? AND kind = 'relay'", (qid,)
        ).fetchall()
    finally:
        conn.close()
    assert recorded == [("relayed",)] and relays == [("pending",)]

    await bot.start_ready()
    await site.alice.wait_for_event(
        entraide,
        lambda e: from_bot(bot_id, qid)(e) and "Anticoaguler oui" in e["content"]["body"],
        60,
    )
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    copies = [
        e
        for e in bot_messages(await history(site.alice, entraide), bot_id)
        if "Anticoaguler oui" in e["content"].get("body", "")
    ]
    assert len(copies) == 1, copies
