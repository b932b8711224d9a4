"""Issue 2 end to end against a real Synapse: invites, questions, routing, threads, restarts."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
from conftest import World  # type: ignore[import-not-found]
from helpers import in_thread

Event = dict[str, Any]


def is_forward(needle: str) -> Any:
    def check(e: Event) -> bool:
        c = e.get("content") or {}
        return (
            e.get("type") == "m.room.message"
            and c.get("msgtype") == "m.notice"
            and needle in str(c.get("body", ""))
        )

    return check


def notices(user: Any, room_id: str) -> list[Event]:
    return [
        e
        for e in user.events(room_id)
        if e.get("type") == "m.room.message" and e["content"].get("msgtype") == "m.notice"
    ]


async def test_invites_from_allowed_servers_only(world: World) -> None:
    # The bot joins an invite-only room on the admin's invite (server allowed), before and
    # after it started...
    before = await world.admin.create_room(invite=[world.bot_user.user_id])
    await world.start_bot()
    await world.admin.wait_joined(before, world.bot_user.user_id)
    after = await world.admin.create_room(invite=[world.bot_user.user_id])
    await world.admin.wait_joined(after, world.bot_user.user_id)
    # ...and a bot that trusts only another server declines, saying why.
    await world.stop_bots()
    room = await world.admin.create_room(invite=[world.bot_user.user_id])
    await world.start_bot(world.config(invites={"allowed_servers": ["elsewhere.example"]}))

    def declined(e: Event) -> bool:
        return (
            e.get("type") == "m.room.member"
            and e.get("state_key") == world.bot_user.user_id
            and e["content"].get("membership") == "leave"
        )

    event = await world.admin.wait_for_event(room, declined)
    assert "serveurs autorisés" in event["content"].get("reason", "")


async def test_hashtag_question_forwarded_and_acknowledged(world: World) -> None:
    await world.start_bot()
    text = "#DocTocToc Patiente de 82 ans, ECG avec arythmie, faut-il anticoaguler ?"
    qid = await world.alice.send_text(world.rooms["entraide"], text)

    fwd = await world.bob.wait_for_event(world.rooms["cardio"], is_forward("Patiente de 82 ans"))
    body = fwd["content"]["body"]
    assert fwd["sender"] == world.bot_user.user_id
    assert "Alice Martin" in body and world.alice.user_id.replace("@", "@\u2060") in body
    link = (
        f"https://matrix.to/#/{quote(world.rooms['entraide'], safe='')}/{quote(qid, safe='')}"
        f"?via={world.synapse.server_name}"
    )
    assert link in body
    assert fwd["content"]["m.mentions"] == {}

    ack = await world.alice.wait_for_event(world.rooms["entraide"], in_thread(qid))
    c = ack["content"]
    assert c["msgtype"] == "m.notice"
    assert c["m.relates_to"]["m.in_reply_to"] == {"event_id": qid}
    assert c["m.relates_to"]["is_falling_back"] is True
    assert "Cardiologie" in c["body"] and world.aliases["cardio"] in c["body"]
    assert quote(fwd["event_id"], safe="") in c["body"]
    assert "Mots décisifs : ecg, arythmie." in c["body"]


async def test_thread_reply_hashtag_makes_root_the_question(world: World) -> None:
    await world.start_bot()
    room = world.rooms["entraide"]
    root = await world.alice.send_text(
        room, "Nourrisson de 3 mois avec une bronchiolite, on hospitalise ?"
    )
    reply = await world.bob.send_text(room, "Bonne question #DocTocToc", thread_root=root)
    fwd = await world.admin.wait_for_event(world.rooms["pedia"], is_forward("Nourrisson de 3 mois"))
    assert "Alice Martin" in fwd["content"]["body"]
    assert "Bonne question" not in fwd["content"]["body"]
    ack = await world.alice.wait_for_event(
        room, lambda e: in_thread(root)(e) and e["sender"] == world.bot_user.user_id
    )
    assert ack["content"]["m.relates_to"]["m.in_reply_to"] == {"event_id": reply}


async def test_unmatched_question_goes_to_triage(world: World) -> None:
    await world.start_bot()
    qid = await world.alice.send_text(
        world.rooms["entraide"], "#doctoctoc Quel délai pour renouveler une ordonnance ?"
    )
    await world.admin.wait_for_event(world.rooms["triage"], is_forward("renouveler une ordonnance"))
    ack = await world.alice.wait_for_event(world.rooms["entraide"], in_thread(qid))
    assert "salon de tri" in ack["content"]["body"]


async def test_chat_notices_edits_and_own_messages_ignored(world: World) -> None:
    await world.start_bot()
    room = world.rooms["entraide"]
    chat = await world.alice.send_text(room, "Bonjour à tous, ECG du jour normal.")
    await world.bob.send_text(room, "#DocTocToc ECG notice ?", msgtype="m.notice")
    await world.alice.edit(room, chat, "#DocTocToc Bonjour, ECG ?")
    sentinel = await world.alice.send_text(room, "#DocTocToc sentinelle ECG ?")
    await world.bob.wait_for_event(world.rooms["cardio"], is_forward("sentinelle"))
    await world.alice.wait_for_event(room, in_thread(sentinel))
    forwards = notices(world.bob, world.rooms["cardio"])
    assert len(forwards) == 1, [f["content"]["body"] for f in forwards]
    bot_msgs = [e for e in world.alice.events(room) if e["sender"] == world.bot_user.user_id]
    assert len([e for e in bot_msgs if e["type"] == "m.room.message"]) == 1


async def test_no_pings_and_html_escaped(world: World) -> None:
    await world.start_bot()
    room = world.rooms["entraide"]
    pill = f'<a href="https://matrix.to/#/{world.bob.user_id}">Bob</a>'
    text = f"#DocTocToc @room {world.bob.user_id} <b>ECG</b> <script>x</script> ?"
    await world.alice.send_text(
        room, text, formatted_body=f"#DocTocToc @room {pill} &lt;b&gt;ECG ?"
    )
    fwd = await world.bob.wait_for_event(world.rooms["cardio"], is_forward("ECG"))
    c = fwd["content"]
    assert c["m.mentions"] == {}
    assert "<b>" not in c["formatted_body"] and "<script>" not in c["formatted_body"]
    assert "&lt;script&gt;" in c["formatted_body"]
    assert "@room" not in c["body"] and world.bob.user_id not in c["body"]
    # The homeserver agrees: Bob's notifications for the forward are not highlights (pings).
    url = f"{world.synapse.base_url}/_matrix/client/v3/notifications"
    headers = {"Authorization": f"Bearer {world.bob.client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        data = await resp.json()
    mine = [n for n in data["notifications"] if n["event"]["event_id"] == fwd["event_id"]]
    assert all(
        not any(
            a.get("set_tweak") == "highlight" and a.get("value", True)
            for a in n["actions"]
            if isinstance(a, dict)
        )
        for n in mine
    ), mine


async def test_restart_handles_missed_question_once(world: World) -> None:
    bot = await world.start_bot()
    room = world.rooms["entraide"]
    first = await world.alice.send_text(room, "#DocTocToc Premier ECG ?")
    await world.alice.wait_for_event(room, in_thread(first))
    device = bot.mx.device_id
    await world.stop_bots()

    missed = await world.alice.send_text(room, "#DocTocToc Deuxième ECG pendant la panne ?")
    bot = await world.start_bot()
    assert bot.mx.device_id == device, "a restart must reuse the same device"
    await world.alice.wait_for_event(room, in_thread(missed))
    third = await world.alice.send_text(room, "#DocTocToc Troisième ECG ?")
    await world.alice.wait_for_event(room, in_thread(third))
    await world.bob.wait_for_event(world.rooms["cardio"], is_forward("Troisième"))
    bodies = [f["content"]["body"] for f in notices(world.bob, world.rooms["cardio"])]
    for word in ("Premier", "Deuxième", "Troisième"):
        assert sum(word in b for b in bodies) == 1, bodies
    acks = [e for e in notices(world.alice, room)]
    assert len(acks) == 3


async def test_alias_that_does_not_exist_stops_start(world: World) -> None:
    import pytest

    from peerbot.bot.app import StartupError

    cfg = world.config(
        routing={"fallback_room": f"#nope-missing:{world.synapse.server_name}", "specialties": []}
    )
    with pytest.raises(StartupError, match=r"routing.fallback_room: the room #nope-missing"):
        await world.start_bot(cfg)
    await asyncio.sleep(0)


async def test_forward_refused_tells_the_asker(world: World) -> None:
    # A specialty room the bot was never invited to: the forward is refused by the server.
    closed = await world.admin.create_room()
    cfg = world.config(
        routing={
            "fallback_room": world.aliases["triage"],
            "specialties": [{"name": "Fermé", "room": closed, "keywords": ["ecg"]}],
        }
    )
    bot = await world.start_bot(cfg)
    qid = await world.alice.send_text(world.rooms["entraide"], "#DocTocToc ECG ?")
    sorry = await world.alice.wait_for_event(world.rooms["entraide"], in_thread(qid))
    assert sorry["sender"] == world.bot_user.user_id
    assert "Désolé" in sorry["content"]["body"]
    row = await bot.store.question(qid)
    assert row is not None and row.state == "failed"
