"""Issue 12, part 2: nobody's question dies — escalation to volunteer experts and the triage
room, deadlines that survive a SIGKILL, digests (once, a missed one once after a restart), and
``!expert`` / ``!unanswered`` / ``!stats`` in French and English, against a real Synapse."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botproc import BotProcess
from conftest import World  # type: ignore[import-not-found]
from helpers import Event, MakeUser, TestUser, in_thread, unique_name
from test_faults import (  # type: ignore[import-not-found]
    bot_messages,
    bots,  # noqa: F401 - the fixture
    history,
    make_site,
)

from peerbot.bot.app import PeerBot
from peerbot.dev.devserver import SynapseServer

ASK = "#DocTocToc ECG avec arythmie {run}, quel bilan ?"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a deadline is the point
    """Wait until ``check()`` is true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


def from_bot(bot_id: str, root: str) -> Callable[[Event], bool]:
    """A bot message in the thread of ``root``."""
    return lambda e: (
        in_thread(root)(e) and e.get("sender") == bot_id and e.get("type") == "m.room.message"
    )


async def highlights(server: SynapseServer, user: TestUser, event_id: str) -> list[bool]:
    """For each of the user's notifications about ``event_id``: does it ring (highlight)?"""
    url = f"{server.base_url}/_matrix/client/v3/notifications"
    headers = {"Authorization": f"Bearer {user.client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        data = await resp.json()
    return [
        any(
            isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True)
            for a in n["actions"]
        )
        for n in data["notifications"]
        if n["event"]["event_id"] == event_id
    ]


async def command(
    world: World, user: TestUser, room: str, text: str, bot: PeerBot, thread: str | None = None
) -> str:
    """Type a command (in ``thread``, if given); the body of the bot's answer."""
    event_id = await user.send_text(room, text, thread_root=thread)
    bot_id = world.bot_user.user_id
    answer = await user.wait_for_event(
        room,
        lambda e: (
            e.get("sender") == bot_id
            and (in_thread(event_id)(e) or (thread is not None and _replies_to(e, event_id)))
        ),
        30,
    )
    return str(answer["content"]["body"])


def _replies_to(event: Event, event_id: str) -> bool:
    rel = (event.get("content") or {}).get("m.relates_to") or {}
    return bool((rel.get("m.in_reply_to") or {}).get("event_id") == event_id)


async def ask(world: World, run: str) -> tuple[str, Event]:
    """Alice asks a cardiology question; its ID and its forward as Bob sees it."""
    qid = await world.alice.send_text(world.rooms["entraide"], ASK.format(run=run))
    fwd = await world.bob.wait_for_event(
        world.rooms["cardio"],
        lambda e: e.get("sender") == world.bot_user.user_id and run in str(e["content"]["body"]),
        30,
    )
    return qid, fwd


async def test_unanswered_question_pings_only_the_expert_then_reaches_triage(
    world: World,
) -> None:
    bot = await world.start_bot(world.config(escalation={"after": ["4s", "8s"]}))
    cardio, triage, entraide = world.rooms["cardio"], world.rooms["triage"], world.rooms["entraide"]
    bot_id = world.bot_user.user_id
    joined = await command(world, world.bob, cardio, "!expert join Cardiologie", bot)
    assert "volontaire pour Cardiologie" in joined
    run = unique_name("esc")
    qid, fwd = await ask(world, run)

    # Step 1: a reminder in the forward's thread, an m.text naming exactly the expert.
    reminder = await world.bob.wait_for_event(cardio, from_bot(bot_id, fwd["event_id"]), 30)
    # Synapse's own push evaluation: it rings the expert, not another member of the room
    # (who gets at most the grey badge every message in a group room gives).
    await until(
        lambda: _rings(world.synapse, world.bob, reminder["event_id"]),
        "the expert's /notifications highlight the reminder",
    )
    assert not any(await highlights(world.synapse, world.admin, reminder["event_id"]))
    c = reminder["content"]
    assert c["msgtype"] == "m.text"
    assert c["m.mentions"] == {"user_ids": [world.bob.user_id]}
    assert "attend toujours une réponse" in c["body"]

    # Last step: shown in the triage room, and the asker told in their thread.
    copy = await world.admin.wait_for_event(
        triage, lambda e: e.get("sender") == bot_id and run in str(e["content"].get("body")), 30
    )
    assert "Toujours sans réponse" in copy["content"]["body"]
    assert copy["content"]["m.mentions"] == {}
    told = await world.alice.wait_for_event(
        entraide,
        lambda e: from_bot(bot_id, qid)(e) and "toujours ouverte" in e["content"]["body"],
        30,
    )
    assert told["content"]["m.mentions"] == {"user_ids": [world.alice.user_id]}
    await until(
        lambda: _rings(world.synapse, world.alice, told["event_id"]),
        "the asker's /notifications highlight the notice",
    )
    await bot.wait_idle(10)
    in_fwd_thread = [e for e in world.bob.events(cardio) if from_bot(bot_id, fwd["event_id"])(e)]
    assert len(in_fwd_thread) == 2, [e["content"]["body"] for e in in_fwd_thread]  # one a step
    assert all(
        e["content"]["m.mentions"] == {"user_ids": [world.bob.user_id]} for e in in_fwd_thread
    )
    # On time: each step settled within 2 s of its due time (the measure).
    late = await _lateness(world.db, qid)
    print(f"escalation steps settled late by (ms): {late}")
    assert len(late) == 2 and all(0 <= ms < 2000 for ms in late), late


async def _lateness(db: Path, qid: str) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT done_ts - due_ts FROM due_actions WHERE question_id = ? AND kind = 'escalate' "
            "ORDER BY step",
            (qid,),
        ).fetchall()
    finally:
        conn.close()
    return [int(r[0]) for r in rows]


async def _rings(server: SynapseServer, user: TestUser, event_id: str) -> bool:
    return any(await highlights(server, user, event_id))


async def test_answered_question_escalates_nothing(world: World) -> None:
    bot = await world.start_bot(world.config(language="en", escalation={"after": ["4s", "6s"]}))
    cardio = world.rooms["cardio"]
    run = unique_name("answered")
    qid, fwd = await ask(world, run)
    await world.bob.send_text(cardio, f"Answer {run}: a Holter", thread_root=fwd["event_id"])
    for step in (0, 1):
        key = f"escalate:{qid}:{step}"

        async def skipped(key: str = key) -> bool:
            return await bot.store.due_state(key) == "skipped"

        await until(skipped, f"{key} skipped")
    await bot.wait_idle(10)
    bot_id = world.bot_user.user_id
    assert not [e for e in world.bob.events(cardio) if from_bot(bot_id, fwd["event_id"])(e)]
    assert not [
        e
        for e in world.admin.events(world.rooms["triage"])
        if e.get("sender") == bot_id and e.get("type") == "m.room.message"
    ]
    row = await bot.store.question(qid)
    assert row is not None and row.answers == 1


WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "joined": "volontaire pour Cardiologie",
        "wrong": "pas de « Pédiatrie »",
        "quiet": "Heures calmes : 22:00-07:00 (Europe/Paris)",
        "bad_tz": "n'est pas un fuseau horaire connu",
        "unanswered": "Questions sans réponse dans ce salon (1)",
        "none": "Aucune question sans réponse",
        "stats": "Cardiologie, 7 j : 1 question(s), 0% avec réponse",
        "denied": "réservée aux administrateurs",
        "left": "n'est plus volontaire",
        "not_here": "salon de spécialité",
    },
    "en": {
        "joined": "volunteers for Cardiologie",
        "wrong": "not “Pédiatrie”",
        "quiet": "Quiet hours: 22:00-07:00 (Europe/Paris)",
        "bad_tz": "is not a known time zone",
        "unanswered": "Unanswered questions in this room (1)",
        "none": "No unanswered question",
        "stats": "Cardiologie, 7 d: 1 question(s), 0% answered",
        "denied": "for this room's administrators",
        "left": "no longer volunteers",
        "not_here": "specialty room",
    },
}


@pytest.mark.parametrize("language", ["fr", "en"])
async def test_commands_in_both_languages(world: World, language: str) -> None:
    bot = await world.start_bot(world.config(language=language))
    w = WORDS[language]
    cardio, entraide = world.rooms["cardio"], world.rooms["entraide"]
    bob, admin = world.bob, world.admin
    assert w["wrong"] in await command(world, bob, cardio, "!expert join Pédiatrie", bot)
    assert w["joined"] in await command(world, bob, cardio, "!expert join", bot)
    quiet = await command(world, bob, cardio, "!expert quiet 22:00-07:00 Europe/Paris", bot)
    assert w["quiet"] in quiet
    assert w["bad_tz"] in await command(world, bob, cardio, "!expert tz Mars/Olympus", bot)
    assert w["not_here"] in await command(world, world.alice, entraide, "!unanswered", bot)
    assert w["none"] in await command(world, bob, cardio, "!unanswered", bot)

    run = unique_name("cmd")
    _, fwd = await ask(world, run)
    await until(lambda: _forwarded(bot, fwd["event_id"]), "the forward recorded as acknowledged")
    listing = await command(world, bob, cardio, "!unanswered", bot)
    assert w["unanswered"] in listing and run in listing
    assert w["denied"] in await command(world, bob, cardio, "!stats", bot)
    stats = await command(world, admin, cardio, "!stats", bot)
    assert w["stats"] in stats, stats
    assert w["left"] in await command(world, bob, cardio, "!expert leave", bot)
    experts = await bot.store.experts_in(cardio, 0)
    assert experts == []
    tz, quiet_span = await bot.store.expert_settings(bob.user_id)
    assert (tz, quiet_span) == ("Europe/Paris", (22 * 60, 7 * 60))


async def _forwarded(bot: PeerBot, forward_event_id: str) -> bool:
    q = await bot.store.question_by_forward(forward_event_id)
    return q is not None and q.forwarded_ts is not None


def _digests(events: list[Event], bot_id: str, title: str) -> list[Event]:
    return [e for e in bot_messages(events, bot_id) if str(e["content"]["body"]).startswith(title)]


def _digest_rows(db: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT key, state, due_ts FROM due_actions WHERE kind = 'digest' ORDER BY due_ts"
        ).fetchall()
    finally:
        conn.close()


async def test_digest_once_and_a_missed_one_once_after_restart(world: World) -> None:
    period = 6
    config = world.config(
        language="en",
        escalation={"after": ["1d"]},
        routing={
            "fallback_room": world.aliases["triage"],
            "specialties": [
                {
                    "name": "Cardiologie",
                    "room": world.aliases["cardio"],
                    "keywords": ["ecg", "arythmie"],
                    "digest": {"every": f"{period}s"},
                }
            ],
        },
    )
    bot = await world.start_bot(config)
    cardio = world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    # Nothing to say yet: the first slot passes without a digest.
    await until(
        lambda: _has_settled(world.db, "skipped"), "an empty digest slot settled", 3 * period
    )
    run = unique_name("digest")
    await ask(world, run)
    first = await world.bob.wait_for_event(
        cardio,
        lambda e: e.get("sender") == bot_id and "Digest of" in str(e["content"]["body"]),
        3 * period,
    )
    assert run in first["content"]["body"] and "1 open question(s)" in first["content"]["body"]
    await world.stop_bots()
    pending = [r for r in _digest_rows(world.db) if r[1] == "pending"]
    assert len(pending) == 1, pending
    missed_key, _, missed_due = pending[0]
    # Down across two digest times (the clock, not luck: the stored due time has passed).
    await asyncio.sleep(max(0.0, (missed_due + period * 1000 + 500) / 1000 - time.time()))
    bot = await world.start_bot(config)
    await until(lambda: _state_is(world.db, missed_key, "done"), "the missed digest posted", 20)
    await bot.wait_idle(10)
    await world.stop_bots()
    rows = _digest_rows(world.db)
    done = [r for r in rows if r[1] == "done"]
    slots = sorted(int(k.rsplit("slot-", 1)[1]) for k, _, _ in rows)
    missed_slot = int(missed_key.rsplit("slot-", 1)[1])
    # Missed twice, posted once: the slot after the missed one was never planned.
    assert missed_slot + 1 not in slots, rows
    events = await history(world.bob, cardio)
    posted = _digests(events, bot_id, "Digest of")
    assert len(posted) == len(done), ([p["content"]["body"] for p in posted], rows)


async def _has_settled(db: Path, state: str) -> bool:
    return db.exists() and any(r[1] == state for r in _digest_rows(db))


async def _state_is(db: Path, key: str, state: str) -> bool:
    return any(r[0] == key and r[1] == state for r in _digest_rows(db))


async def test_sigkill_between_schedule_and_due_fires_once(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    site = await make_site(synapse, make_user)
    db = tmp_path / "peerbot.db"
    config: dict[str, Any] = site.config(db, escalation={"after": ["8s", "1d"]})
    bot = bots(config)
    run = unique_name("kill")
    await bot.start_ready()
    qid = await site.alice.send_text(site.rooms["entraide"], ASK.format(run=run))
    fwd = await site.bob.wait_for_event(
        site.rooms["cardio"],
        lambda e: e.get("sender") == site.bot_user.user_id and run in str(e["content"]["body"]),
        60,
    )
    key = f"escalate:{qid}:0"

    async def scheduled() -> bool:
        return _due_state(db, key) == "pending"

    await until(scheduled, "the first step scheduled in the database", 30)
    await bot.kill9()
    assert _due_state(db, key) == "pending"  # killed before its due time
    await bot.start_ready()
    reminder = await site.bob.wait_for_event(
        site.rooms["cardio"], from_bot(site.bot_user.user_id, fwd["event_id"]), 60
    )
    assert "still" in reminder["content"]["body"] or "toujours" in reminder["content"]["body"]
    # Killed again right after it fired, and restarted: it is not fired again.
    await bot.kill9()
    await bot.start_ready()
    other = await site.alice.send_text(site.rooms["entraide"], ASK.format(run=run + "b"))
    await site.alice.wait_for_event(
        site.rooms["entraide"], from_bot(site.bot_user.user_id, other), 60
    )
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    assert _due_state(db, key) == "done"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        effects = conn.execute(
            "SELECT state FROM effects WHERE question_id = ? AND kind = 'escalation'", (qid,)
        ).fetchall()
    finally:
        conn.close()
    assert effects == [("done",)]
    events = await history(site.bob, site.rooms["cardio"])
    in_thread_msgs = [
        e for e in bot_messages(events, site.bot_user.user_id) if in_thread(fwd["event_id"])(e)
    ]
    assert len(in_thread_msgs) == 1, [e["content"]["body"] for e in in_thread_msgs]


def _due_state(db: Path, key: str) -> str | None:
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT state FROM due_actions WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return str(row[0]) if row else None


async def test_solve_reminder_once_then_a_check_mark_on_the_answer_solves(world: World) -> None:
    bot = await world.start_bot(
        world.config(language="en", escalation={"after": ["1d"]}, reminders={"solve_after": "3s"})
    )
    entraide = world.rooms["entraide"]
    bot_id = world.bot_user.user_id
    run = unique_name("solve")
    qid, _ = await ask(world, run)
    answer = await world.bob.send_text(entraide, f"A Holter first {run}", thread_root=qid)
    reminder = await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "✅" in e["content"]["body"], 30
    )
    c = reminder["content"]
    assert c["msgtype"] == "m.text" and c["m.mentions"] == {"user_ids": [world.alice.user_id]}
    assert await bot.store.due_state(f"solve:{qid}") == "done"
    await world.alice.react(entraide, answer, "✅")

    async def solved() -> bool:
        q = await bot.store.question(qid)
        return q is not None and q.solved

    await until(solved, "the question solved by ✅ on the answer")
    # Asked once: a later message in the thread does not ask again.
    await world.bob.send_text(entraide, f"You're welcome {run}", thread_root=qid)
    await bot.wait_idle(10)
    reminders = [
        e
        for e in world.alice.events(entraide)
        if from_bot(bot_id, qid)(e) and "✅" in e["content"]["body"]
    ]
    assert len(reminders) == 1


async def test_redacted_question_escalates_nothing_and_its_triage_copy_goes(world: World) -> None:
    bot = await world.start_bot(world.config(escalation={"after": ["3s"]}))
    entraide, triage = world.rooms["entraide"], world.rooms["triage"]
    bot_id = world.bot_user.user_id
    gone_run, kept_run = unique_name("gone"), unique_name("kept")
    gone, _ = await ask(world, gone_run)
    await world.alice.redact(entraide, gone)
    kept, _ = await ask(world, kept_run)
    # One step, so it is the last: the kept question is copied into the triage room.
    copy = await world.admin.wait_for_event(
        triage,
        lambda e: e.get("sender") == bot_id and kept_run in str(e["content"].get("body")),
        30,
    )

    async def skipped() -> bool:
        return await bot.store.due_state(f"escalate:{gone}:0") == "skipped"

    await until(skipped, "the redacted question's step skipped")
    assert not [
        e
        for e in world.admin.events(triage)
        if e.get("sender") == bot_id and gone_run in str((e.get("content") or {}).get("body"))
    ]
    # Deleting the kept question takes its copy in the triage room down too.
    await world.alice.redact(entraide, kept)
    await world.admin.wait_for_event(
        triage,
        lambda e: e.get("type") == "m.room.redaction" and e.get("redacts") == copy["event_id"],
        30,
    )


async def test_after_route_move_the_reminder_goes_under_the_moved_copy(world: World) -> None:
    bot = await world.start_bot(world.config(escalation={"after": ["5s", "1d"]}))
    entraide, pedia = world.rooms["entraide"], world.rooms["pedia"]
    bot_id = world.bot_user.user_id
    run = unique_name("moved")
    qid, _ = await ask(world, run)
    moved_to = await command(world, world.admin, entraide, "!route move Pédiatrie", bot, qid)
    assert "Pédiatrie" in moved_to
    moved = await world.admin.wait_for_event(
        pedia, lambda e: e.get("sender") == bot_id and run in str(e["content"].get("body")), 30
    )
    reminder = await world.admin.wait_for_event(pedia, from_bot(bot_id, moved["event_id"]), 30)
    assert "attend toujours" in reminder["content"]["body"]
    assert await bot.store.due_state(f"escalate:{qid}:0") == "done"
