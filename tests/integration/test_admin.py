"""Issue 4 end to end: admin commands by power level (room v12 creators included), persistence,
and the shipped plugins in a real room."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from conftest import World  # type: ignore[import-not-found]
from helpers import in_thread

Event = dict[str, Any]


def answer_to(world: World, event_id: str) -> Any:
    def check(e: Event) -> bool:
        rel = e["content"].get("m.relates_to") or {}
        return (
            e["sender"] == world.bot_user.user_id
            and (rel.get("m.in_reply_to") or {}).get("event_id") == event_id
        )

    return check


async def say(world: World, user: Any, text: str, room: str | None = None, **kw: Any) -> str:
    room = room or world.rooms["entraide"]
    eid = await user.send_text(room, text, **kw)
    reply = await user.wait_for_event(room, answer_to(world, eid))
    return str(reply["content"]["body"])


def forwards(user: Any, room: str, needle: str) -> list[Event]:
    return [
        e
        for e in user.events(room)
        if e["type"] == "m.room.message"
        and e["content"].get("msgtype") == "m.notice"
        and needle in e["content"].get("body", "")
    ]


async def test_route_commands_admin_only_and_persist(world: World) -> None:
    entraide = world.rooms["entraide"]
    create = next(e for e in world.admin.events(entraide) if e["type"] == "m.room.create")
    assert create["content"].get("room_version") == "12"  # the admin is a v12 creator
    await world.start_bot()

    # Bob has no power here: one polite sentence, nothing changes.
    body = await say(world, world.bob, f"!route add Derm {world.aliases['pedia']} peau")
    assert "réservée aux administrateurs" in body and "50" in body
    assert "Derm" not in await say(world, world.admin, "!route list")

    # A moderator (power 50) may.
    await world.admin.set_power_level(entraide, world.bob.user_id, 50)
    assert "Cardiologie" in await say(world, world.bob, "!route list")

    # The creator (absent from power_levels.users in v12) changes routing.
    body = await say(
        world, world.admin, f"!route add Dermatologie {world.aliases['pedia']} peau, eczéma"
    )
    assert "Dermatologie ajoutée" in body
    body = await say(world, world.admin, "!route keywords Dermatologie add psoriasis")
    assert "psoriasis" in body
    body = await say(world, world.admin, "!route remove Pédiatrie")
    assert "retirée" in body
    body = await say(world, world.admin, "!route test Plaque de psoriasis du coude ?")
    assert "Dermatologie" in body and "rien n'a été envoyé" in body

    # Survives a restart, and routes real questions.
    await world.stop_bots()
    await world.start_bot()
    listing = await say(world, world.admin, "!route list")
    assert "Dermatologie" in listing and "Pédiatrie →" not in listing
    await world.alice.send_text(entraide, "#DocTocToc Eczéma du nourrisson, quelle crème ?")
    fwd = await world.admin.wait_for_event(
        world.rooms["pedia"], lambda e: "Eczéma du nourrisson" in e["content"].get("body", "")
    )
    assert "Dermatologie" in fwd["content"]["body"]
    # The barrier for "!route test sent nothing": a real question routed to the same room
    # after it. Forwards to a room go out in question order, so a forward of the tested text
    # would have come first.
    assert forwards(world.admin, world.rooms["pedia"], "psoriasis") == []


async def test_intake_on_off_and_help(world: World) -> None:
    await world.start_bot()
    lounge = world.rooms["triage"]
    await world.alice.join(lounge)
    body = await say(world, world.alice, "!peerbot help", room=lounge)
    assert "!related" in body and "!route list" not in body and "n'est pas un salon" in body
    body = await say(world, world.admin, "!peerbot help", room=lounge)
    assert "!route list" in body and "Chiffrement" in body

    assert "réservée" in await say(world, world.alice, "!intake on question", room=lounge)
    body = await say(world, world.admin, "!intake on question", room=lounge)
    assert "maintenant un salon d'accueil" in body
    await world.alice.send_text(lounge, "Un ECG pour une syncope ?")
    await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "syncope" in e["content"].get("body", "")
    )
    assert "n'est plus" in await say(world, world.admin, "!intake off", room=lounge)
    await world.alice.send_text(lounge, "Un ECG pour des palpitations ?")
    # The answer proves the bot has handled the message before it (same room, in order); had
    # it been taken as a question, it would now be queued before any question asked later.
    await say(world, world.alice, "!peerbot help", room=lounge)
    # The barrier crosses the path a forward would take: a question asked after it, forwarded
    # to the same room, where forwards go out in question order.
    await world.alice.send_text(
        world.rooms["entraide"], "#DocTocToc Un ECG de contrôle, barrière ?"
    )
    await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "barrière" in e["content"].get("body", "")
    )
    assert forwards(world.bob, world.rooms["cardio"], "palpitations") == []


async def test_plugins_listed_and_failing_ones_isolated(world: World) -> None:
    plugins = [
        {"use": "sample_plugins:RaisingRouter"},
        {"use": "sample_plugins:SlowGuard"},
    ]
    await world.start_bot(world.config(plugins=plugins))
    qid = await world.alice.send_text(world.rooms["entraide"], "#DocTocToc ECG et syncope ?")
    await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "syncope" in e["content"].get("body", "")
    )
    await world.alice.wait_for_event(world.rooms["entraide"], answer_to(world, qid))
    body = await say(world, world.admin, "!plugins")
    assert "RaisingRouter (router)" in body and "erreurs : 1" in body
    assert "SlowGuard (guard)" in body and "délais dépassés : 1" in body


async def test_patient_data_guard_holds_then_forwards(world: World) -> None:
    plugins = [{"use": "plugins.patient_data_guard:PatientDataGuard"}]
    await world.start_bot(world.config(plugins=plugins))
    room = world.rooms["entraide"]
    text = "#DocTocToc Mme Dupont, 06 12 34 56 78, ECG avec arythmie, on anticoagule ?"
    qid = await world.alice.send_text(room, text)
    held = await world.alice.wait_for_event(room, answer_to(world, qid))
    body = held["content"]["body"]
    assert "pas encore été transmise" in body and "!confirm" in body
    for secret in ("Dupont", "06 12", "34 56 78"):
        assert secret not in body and secret not in held["content"]["formatted_body"]
    # Edited clean: forwarded, once.
    edit = await world.alice.edit(room, qid, "#DocTocToc Patiente de 82 ans, ECG avec arythmie ?")
    fwd = await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "82 ans" in e["content"].get("body", "")
    )
    assert "Dupont" not in fwd["content"]["body"]
    # The forward carries the edited text and links to the question, not to the edit.
    assert quote(qid, safe="") in fwd["content"]["body"]
    assert quote(edit, safe="") not in fwd["content"]["body"]
    await world.alice.wait_for_event(
        room, lambda e: in_thread(qid)(e) and "transmise au salon" in e["content"].get("body", "")
    )

    # Held again; Bob may not confirm, Alice may.
    q2 = await world.alice.send_text(room, "#DocTocToc M. Martin né le 12/03/1941, ECG ?")
    await world.alice.wait_for_event(room, answer_to(world, q2))
    assert "Seule la personne" in await say(world, world.bob, "!confirm", thread_root=q2)
    await world.alice.send_text(room, "!confirm", thread_root=q2)
    await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "12/03/1941" in e["content"].get("body", "")
    )


async def test_urgent_wording_answers_first(world: World) -> None:
    plugins = [{"use": "plugins.urgent_wording:UrgentWording"}]
    await world.start_bot(world.config(plugins=plugins))
    room = world.rooms["entraide"]
    qid = await world.alice.send_text(
        room, "#DocTocToc Mon patient a une douleur thoracique en ce moment, ECG en cours ?"
    )
    ack = await world.alice.wait_for_event(
        room, lambda e: in_thread(qid)(e) and "transmise au salon" in e["content"].get("body", "")
    )
    mine = [
        e
        for e in world.alice.events(room)
        if e["sender"] == world.bot_user.user_id and e["type"] == "m.room.message"
    ]
    notice = mine[0]
    assert "15" in notice["content"]["body"] and "112" in notice["content"]["body"]
    assert mine.index(notice) < mine.index(ack)


async def test_learned_router_learns_from_route_move(world: World) -> None:
    plugins = [
        {
            "use": "plugins.learned_router:LearnedRouter",
            "options": {"min_examples": 4, "retrain_every": 1},
        }
    ]
    bot = await world.start_bot(world.config(plugins=plugins))
    room = world.rooms["entraide"]
    for text in (
        "#DocTocToc ECG avec arythmie chez une patiente de 80 ans ?",
        "#DocTocToc Infarctus récent, reprise du sport ?",
        "#DocTocToc Nourrisson fébrile de 2 mois ?",
        "#DocTocToc Bronchiolite chez un nourrisson, kiné ?",
    ):
        qid = await world.alice.send_text(room, text)
        await world.alice.wait_for_event(room, answer_to(world, qid))
    unknown = "#DocTocToc Holter après une syncope à l'effort, combien de temps ?"
    qid = await world.alice.send_text(room, unknown)
    ack = await world.alice.wait_for_event(room, answer_to(world, qid))
    assert "salon de tri" in ack["content"]["body"]
    body = await say(world, world.admin, "!route move Cardiologie", thread_root=qid)
    assert "déplacée" in body
    await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "Holter" in e["content"].get("body", "")
    )
    router = bot.plugins.routers[0].instance
    await asyncio.wait_for(router.retrain(), timeout=60)  # type: ignore[attr-defined]
    again = await world.alice.send_text(room, unknown)
    ack = await world.alice.wait_for_event(room, answer_to(world, again))
    assert "Cardiologie" in ack["content"]["body"]
    assert "Suggestion d'un module" in ack["content"]["body"]
