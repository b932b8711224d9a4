"""Issue 3 end to end: related threads in acknowledgements, !related, thread state, import."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import quote

import nio
from conftest import World  # type: ignore[import-not-found]
from helpers import in_thread

from peerbot.bot.history import import_history
from peerbot.matrix import MatrixClient
from peerbot.store import Store

Event = dict[str, Any]

Q1 = "#DocTocToc Patiente de 82 ans en fibrillation auriculaire, faut-il anticoaguler par AOD ?"
Q2 = "#DocTocToc Fibrillation auriculaire chez une patiente âgée : anticoagulation par AOD ?"
Q_OTHER = "#DocTocToc Quel vaccin faire à un nourrisson de 2 mois ?"


def link(room: str, event: str) -> str:
    return f"https://matrix.to/#/{quote(room, safe='')}/{quote(event, safe='')}"


def bot_reply(world: World, root: str) -> Any:
    return lambda e: in_thread(root)(e) and e["sender"] == world.bot_user.user_id


def bot_answer(world: World, to: str) -> Any:
    """The bot's message replying to ``to`` (in whatever thread)."""

    def check(e: Event) -> bool:
        rel = e["content"].get("m.relates_to") or {}
        return (
            e["sender"] == world.bot_user.user_id
            and (rel.get("m.in_reply_to") or {}).get("event_id") == to
        )

    return check


async def ask(world: World, text: str, user: Any = None) -> tuple[str, Event]:
    user = user or world.alice
    room = world.rooms["entraide"]
    qid = await user.send_text(room, text)
    ack = await user.wait_for_event(room, bot_reply(world, qid))
    return qid, ack


async def command(world: World, text: str, user: Any = None, room: str | None = None) -> Event:
    user = user or world.alice
    room = room or world.rooms["entraide"]
    cid = await user.send_text(room, text)
    return await user.wait_for_event(room, bot_reply(world, cid))


async def test_second_question_links_first_with_replies_and_solved(world: World) -> None:
    await world.start_bot()
    room = world.rooms["entraide"]
    q1, ack1 = await ask(world, Q1)
    assert "Fils similaires" not in ack1["content"]["body"]  # nothing before it
    # A peer answers in the thread, the asker marks it solved with a reaction.
    await world.bob.send_text(room, "Oui, CHA2DS2-VASc élevé : AOD.", thread_root=q1)
    await world.alice.react(room, q1, "✅")
    q2, ack2 = await ask(world, Q2)
    body = ack2["content"]["body"]
    assert "Fils similaires déjà posés" in body
    assert link(room, q1) in body
    assert "1 réponse(s)" in body and "✅" in body
    assert link(room, q2) not in body  # never its own related thread
    # An unrelated question lists nothing: no noise.
    _, ack3 = await ask(world, Q_OTHER)
    assert "Fils similaires" not in ack3["content"]["body"]


async def test_reaction_by_someone_else_does_not_solve(world: World) -> None:
    await world.start_bot()
    room = world.rooms["entraide"]
    q1, _ = await ask(world, Q1)
    await world.bob.react(room, q1, "✅")  # Bob neither asked nor moderates
    reply = await command(world, "!related fibrillation auriculaire anticoagulation AOD", world.bob)
    assert link(room, q1) in reply["content"]["body"]
    assert "✅" not in reply["content"]["body"]
    # !solved from the asker in the thread works, !unsolved undoes it.
    cid = await world.alice.send_text(room, "!solved", thread_root=q1)
    done = await world.alice.wait_for_event(room, bot_answer(world, cid))
    assert "résolu" in done["content"]["body"]
    reply = await command(world, "!search fibrillation auriculaire AOD")
    assert "✅" in reply["content"]["body"]


async def test_edit_changes_what_is_found_and_redaction_erases(world: World) -> None:
    bot = await world.start_bot()
    room = world.rooms["entraide"]
    q1, _ = await ask(world, Q1)
    fwd = await world.bob.wait_for_event(
        world.rooms["cardio"], lambda e: "fibrillation" in e["content"].get("body", "")
    )
    await world.alice.edit(room, q1, "#DocTocToc Escarre du talon stade 3, quel pansement ?")
    reply = await command(world, "!related escarre talon pansement")
    assert link(room, q1) in reply["content"]["body"]
    reply = await command(world, "!related fibrillation auriculaire anticoaguler AOD")
    assert link(room, q1) not in reply["content"]["body"]

    await world.alice.redact(room, q1)
    # The bot takes down its forward, which quoted the deleted text.
    await world.bob.wait_for_event(
        world.rooms["cardio"],
        lambda e: (
            e["type"] == "m.room.redaction"
            and (e.get("redacts") or e["content"].get("redacts")) == fwd["event_id"]
        ),
    )
    reply = await command(world, "!related escarre talon pansement")
    assert link(room, q1) not in reply["content"]["body"]
    assert q1 not in bot.index
    assert await bot.store.question(q1) is None
    for effect in await bot.store.effects_for(q1):
        assert "Escarre" not in str(effect.content) and "fibrillation" not in str(effect.content)


async def test_related_shows_only_what_everyone_in_the_room_may_read(
    world: World, make_user: Any
) -> None:
    carol = await make_user("carol")
    closed = await world.admin.create_room(invite=[world.bot_user.user_id, carol.user_id])
    await carol.join(closed)
    await carol.join(world.rooms["entraide"])
    intake = [
        {"room": world.aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]},
        {"room": closed, "trigger": "question"},
    ]
    await world.start_bot(world.config(intake=intake))
    secret_q = await carol.send_text(closed, "Hématome sous-dural sous AOD, reprise à quel délai ?")
    await carol.wait_for_event(closed, bot_reply(world, secret_q))
    # Alice is not in the closed room: its question never shows up for her.
    reply = await command(world, "!related hématome sous-dural reprise AOD délai")
    assert link(closed, secret_q) not in reply["content"]["body"]
    assert "Aucun fil similaire" in reply["content"]["body"]
    # Carol may read it, but the answer is posted in the public room: not there either.
    reply = await command(world, "!related hématome sous-dural reprise AOD délai", carol)
    assert link(closed, secret_q) not in reply["content"]["body"]
    # In the closed room itself, she finds it.
    reply = await command(world, "!related hématome sous-dural reprise AOD délai", carol, closed)
    assert link(closed, secret_q) in reply["content"]["body"]


async def test_related_in_unconfigured_room_and_usage(world: World) -> None:
    await world.start_bot()
    q1, _ = await ask(world, Q1)
    lounge = await world.alice.create_room(invite=[world.bot_user.user_id])
    await world.alice.wait_joined(lounge, world.bot_user.user_id)
    reply = await command(world, "!related fibrillation auriculaire AOD", room=lounge)
    assert link(world.rooms["entraide"], q1) in reply["content"]["body"]
    reply = await command(world, "!related", room=lounge)
    assert "!related" in reply["content"]["body"]


async def test_import_history_indexes_once(world: World) -> None:
    room = world.rooms["entraide"]
    # History written before the bot ever ran.
    old = await world.alice.send_text(room, Q1)
    await world.bob.send_text(room, "Réponse", thread_root=old)
    await world.alice.send_text(room, "bonjour sans hashtag")
    tagged_later = await world.alice.send_text(room, "Escarre talon, quel pansement ?")
    await world.bob.send_text(room, "#DocTocToc", thread_root=tagged_later)
    config = world.config()
    # The bot's first start joins the rooms and skips their history; the operator then stops it
    # and backfills the index.
    await world.start_bot(config)
    await world.admin.wait_joined(room, world.bot_user.user_id)
    await world.stop_bots()
    for run in range(2):
        store = await Store.open(config.storage.database)
        client = MatrixClient(config.matrix)
        try:
            from peerbot.bot.app import PeerBot

            await PeerBot(config, store, client).login()
            out = io.StringIO()
            summary = await import_history(
                config, store, client, [world.aliases["entraide"]], stream=out
            )
        finally:
            await client.close()
            await store.close()
        assert summary.rooms[0].questions == 2, summary.lines()
        assert summary.new == (2 if run == 0 else 0), summary.lines()
        assert "2 questions" in out.getvalue()
    bot = await world.start_bot(config)
    assert old in bot.index and tagged_later in bot.index
    row = await bot.store.question(old)
    assert row is not None and row.replies == 1 and row.state == "imported"
    _q2, ack = await ask(world, Q2)
    assert link(room, old) in ack["content"]["body"]
    # Imported questions are history: none of them was forwarded.
    forwards = [
        e
        for e in world.bob.events(world.rooms["cardio"])
        if "82 ans" in e["content"].get("body", "")
    ]
    assert forwards == []


async def test_the_sync_filter_keeps_typing_receipts_and_presence_away(world: World) -> None:
    """The bot's uploaded sync filter: a colleague typing or reading in a room the bot is in
    does not come back in the bot's sync (each would end its long-poll for nothing), while the
    same sync without the filter does bring it."""
    config = world.config()
    await world.start_bot(config)
    room = world.rooms["entraide"]
    await world.admin.wait_joined(room, world.bot_user.user_id)
    await world.stop_bots()
    client = MatrixClient(config.matrix)
    try:
        await client.login(None, None)
        filter_id = await client._sync_filter(50)
        assert isinstance(filter_id, str), filter_id  # uploaded, not sent inline
        status, first = await client.raw(
            "GET", f"/_matrix/client/v3/sync?timeout=0&filter={filter_id}", None
        )
        assert status == 200 and first is not None
        since = first["next_batch"]
        asked = await world.alice.send_text(room, "#DocTocToc Escarre talon, quel pansement ?")
        typing = await world.alice.client.room_typing(room, True, timeout=30_000)
        read = await world.alice.client.room_read_markers(room, asked, asked)
        assert not isinstance(typing, nio.ErrorResponse) and not isinstance(read, nio.ErrorResponse)

        async def sync(with_filter: bool) -> dict[str, Any]:
            query = f"since={since}&timeout=0" + (f"&filter={filter_id}" if with_filter else "")
            status, answer = await client.raw("GET", f"/_matrix/client/v3/sync?{query}", None)
            assert status == 200 and answer is not None
            return answer

        bare = await sync(False)
        types = {e["type"] for e in bare["rooms"]["join"][room]["ephemeral"]["events"]}
        assert {"m.typing", "m.receipt"} <= types  # what the filter is there to keep away
        filtered = await sync(True)
        joined = filtered["rooms"]["join"][room]
        assert joined.get("ephemeral", {}).get("events", []) == []
        assert filtered.get("presence", {}).get("events", []) == []
        assert filtered.get("account_data", {}).get("events", []) == []
        # ...and the question itself is there, as the bot needs it.
        assert asked in [e["event_id"] for e in joined["timeline"]["events"]]
    finally:
        await client.close()
