"""Issue 12's last gaps, against a real Synapse: relays follow a question moved with
``!route move``; a detail the asker writes before the forward exists is relayed once it does
(in order, once, across a SIGKILL too); a solved mark and the forward's "✅" edit are one
transaction (a SIGKILL right after it loses neither)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botproc import BotProcess
from conftest import World  # type: ignore[import-not-found]
from helpers import MakeUser, in_thread, unique_name
from test_faults import (  # type: ignore[import-not-found]
    bot_messages,
    bots,  # noqa: F401 - the fixture
    history,
    make_site,
)
from test_relays import (  # type: ignore[import-not-found]
    GUARD,
    ask,
    from_bot,
    is_forward_of,
    replacing,
)

from peerbot.dev.devserver import SynapseServer

Event = dict[str, Any]
HELD = "#DocTocToc ECG de la patiente, son e-mail marie.durand{run}@example.org, avis ?"
CLEAN = "#DocTocToc ECG avec arythmie chez une patiente de 70 ans {run}, faut-il anticoaguler ?"


def body_has(needle: str) -> Callable[[Event], bool]:
    return lambda e: needle in str(e["content"].get("body", ""))


def _rows(db: Path, sql: str, *params: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def test_relays_follow_the_question_moved_to_another_room(world: World) -> None:
    entraide, cardio, pedia = world.rooms["entraide"], world.rooms["cardio"], world.rooms["pedia"]
    bot_id = world.bot_user.user_id
    await world.bob.join(pedia)
    await world.start_bot(world.config())
    qid, fwd = await ask(world, unique_name("mv"))

    move = await world.admin.send_text(entraide, "!route move Pédiatrie", thread_root=qid)
    await world.admin.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and ("déplacée" in e["content"]["body"]), 30
    )
    moved = await world.bob.wait_for_event(pedia, is_forward_of(qid), 30)
    assert move != moved["event_id"]

    # An answer under the moved copy comes back to the asker.
    await world.bob.send_text(pedia, "Pédiatre ici : échographie", thread_root=moved["event_id"])
    await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "échographie" in e["content"]["body"], 30
    )
    # The asker's clarification reaches the current copy, not the first one.
    await world.alice.send_text(entraide, "Précision : il a 6 ans", thread_root=qid)
    await world.bob.wait_for_event(
        pedia, lambda e: from_bot(bot_id, moved["event_id"])(e) and "6 ans" in e["content"]["body"]
    )
    # An answer still written under the first copy is not lost: it reaches the asker too.
    await world.bob.send_text(cardio, "Cardio ici : Holter", thread_root=fwd["event_id"])
    await world.alice.wait_for_event(
        entraide, lambda e: from_bot(bot_id, qid)(e) and "Holter" in e["content"]["body"], 30
    )
    assert not [
        e
        for e in world.bob.events(cardio)
        if from_bot(bot_id, fwd["event_id"])(e) and "6 ans" in e["content"]["body"]
    ]
    # The state edits go to the current copy (two answers so far).
    await world.bob.wait_for_event(pedia, replacing(moved["event_id"], "2"), 30)


async def test_details_written_before_the_forward_are_relayed_in_order(world: World) -> None:
    entraide, cardio = world.rooms["entraide"], world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    await world.start_bot(world.config(plugins=GUARD))
    run = unique_name("early")
    qid = await world.alice.send_text(entraide, HELD.format(run=run))
    # Held by the guard: no forward exists while the asker adds two details.
    await world.alice.wait_for_event(entraide, from_bot(bot_id, qid), 30)
    one = await world.alice.send_text(entraide, f"Détail un {run}", thread_root=qid)
    await world.alice.send_text(entraide, f"Détail deux {run}", thread_root=qid)
    # Edited while it waits: relayed as it reads now.
    await world.alice.edit(entraide, one, f"Détail un {run} (72 kg)")
    await world.alice.edit(entraide, qid, CLEAN.format(run=run))
    fwd = await world.bob.wait_for_event(cardio, is_forward_of(qid), 30)
    second = await world.bob.wait_for_event(
        cardio,
        lambda e: from_bot(bot_id, fwd["event_id"])(e) and "Détail deux" in e["content"]["body"],
        30,
    )
    # A later message is relayed after both: the barrier for "no duplicate, in order".
    await world.alice.send_text(entraide, f"Détail trois {run}", thread_root=qid)
    await world.bob.wait_for_event(
        cardio,
        lambda e: from_bot(bot_id, fwd["event_id"])(e) and "Détail trois" in e["content"]["body"],
        30,
    )
    copies = [
        e["content"]["body"]
        for e in world.bob.events(cardio)
        if from_bot(bot_id, fwd["event_id"])(e) and "Détail" in e["content"]["body"]
    ]
    order = [next(w for w in ("un", "deux", "trois") if f"Détail {w} " in b) for b in copies]
    assert order == ["un", "deux", "trois"], copies
    assert "(72 kg)" in copies[0], copies
    assert second["content"]["m.mentions"] == {}


async def test_a_detail_waiting_for_the_forward_is_relayed_once_across_a_sigkill(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = await make_site(synapse, make_user)
    db = tmp_path / "peerbot.db"
    bot = bots(site.config(db, plugins=GUARD))
    entraide, cardio = site.rooms["entraide"], site.rooms["cardio"]
    bot_id = site.bot_user.user_id
    run = unique_name("wait")
    # Killed right after the forward's acknowledgement is recorded, before the waiting relays.
    monkeypatch.setenv("PEERBOT_TEST_FAULT", "exit-after-forward-acknowledged")
    await bot.start_ready()
    monkeypatch.delenv("PEERBOT_TEST_FAULT")
    qid = await site.alice.send_text(entraide, HELD.format(run=run))
    await site.alice.wait_for_event(
        entraide, lambda e: e["sender"] == bot_id and in_thread(qid)(e), 60
    )
    detail = await site.alice.send_text(entraide, f"Détail {run}", thread_root=qid)
    await site.alice.edit(entraide, qid, CLEAN.format(run=run))
    assert await bot.wait_exit(60) == 137, bot.log_tail()
    assert _rows(db, "SELECT relay_state FROM thread_messages WHERE event_id = ?", detail) == [
        ("waiting",)
    ]
    assert _rows(db, "SELECT state FROM questions WHERE event_id = ?", qid) == [("done",)]

    await bot.start_ready()
    fwd = await site.bob.wait_for_event(cardio, is_forward_of(qid), 60)
    await site.bob.wait_for_event(
        cardio,
        lambda e: from_bot(bot_id, fwd["event_id"])(e) and f"Détail {run}" in e["content"]["body"],
        60,
    )
    # Restarted once more: nothing waits, nothing is sent twice.
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    await bot.start_ready()
    barrier = await site.alice.send_text(entraide, f"Après {run}", thread_root=qid)
    await site.bob.wait_for_event(cardio, body_has(f"Après {run}"), 60)
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    copies = [
        e
        for e in bot_messages(await history(site.bob, cardio), bot_id)
        if f"Détail {run}" in e["content"].get("body", "")
    ]
    assert len(copies) == 1, copies
    assert _rows(db, "SELECT relay_state FROM thread_messages WHERE event_id = ?", barrier) == [
        ("relayed",)
    ]


async def test_solved_mark_and_forward_edit_survive_a_sigkill_between_them(
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
    monkeypatch.setenv("PEERBOT_TEST_FAULT", "exit-after-solved-recorded")
    await bot.start_ready()
    monkeypatch.delenv("PEERBOT_TEST_FAULT")
    qid = await site.alice.send_text(entraide, CLEAN.format(run=unique_name("sol")))
    fwd = await site.bob.wait_for_event(cardio, is_forward_of(qid), 60)
    await site.alice.wait_for_event(entraide, from_bot(bot_id, qid), 60)
    await site.alice.send_text(entraide, "!solved", thread_root=qid)
    assert await bot.wait_exit(60) == 137, bot.log_tail()
    # The mark and the edit showing it were recorded together, before any send.
    assert _rows(db, "SELECT solved FROM questions WHERE event_id = ?", qid) == [(1,)]
    assert _rows(
        db, "SELECT state FROM effects WHERE question_id = ? AND kind = 'forward_state'", qid
    ) == [("pending",)]

    await bot.start_ready()
    await site.bob.wait_for_event(cardio, replacing(fwd["event_id"], "✅ Résolu"), 60)
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
