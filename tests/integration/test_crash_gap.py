"""Issue 10's crash gap: a question held, the process killed before its notice went out.

The hold and the notice telling the asker are one transaction now (core lifecycle step applied
by the store), and the outbox sends every recorded effect, question-bound ones included. A test
hook (PEERBOT_TEST_FAULT=exit-after-held) kills the process right after that transaction and
before any send; after a restart the asker must get exactly one notice, and the question must
not be forwarded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from botproc import BotProcess
from helpers import MakeUser, in_thread, unique_name
from test_faults import (  # type: ignore[import-not-found]
    bot_messages,
    bots,  # noqa: F401 - the fixture
    history,
    make_site,
)

from peerbot.dev.devserver import SynapseServer

HELD_BY_GUARD = "#DocTocToc ECG de la patiente, son e-mail marie.durand{run}@example.org, avis ?"
CLEAN = "#DocTocToc ECG avec arythmie chez un patient de 70 ans {run}, faut-il anticoaguler ?"


async def test_sigkill_between_hold_and_notice_gives_exactly_one_notice(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = await make_site(synapse, make_user)
    db = tmp_path / "peerbot.db"
    config = site.config(db, plugins=[{"use": "plugins.patient_data_guard:PatientDataGuard"}])
    bot = bots(config)
    room = site.rooms["entraide"]
    run = unique_name("gap")

    monkeypatch.setenv("PEERBOT_TEST_FAULT", "exit-after-held")
    await bot.start_ready()
    monkeypatch.delenv("PEERBOT_TEST_FAULT")
    held_q = await site.alice.send_text(room, HELD_BY_GUARD.format(run=run))
    status = await bot.wait_exit(60)
    assert status == 137, bot.log_tail()
    # The hold and its notice were recorded together, and nothing was sent.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        state = conn.execute("SELECT state FROM questions WHERE event_id = ?", (held_q,)).fetchone()
        notices = conn.execute(
            "SELECT state FROM effects WHERE question_id = ? AND kind = 'guard'", (held_q,)
        ).fetchall()
    finally:
        conn.close()
    assert state == ("held",)
    assert notices == [("pending",)]
    assert not [e for e in bot_messages(site.alice.events(room), site.bot_user.user_id)]

    await bot.start_ready()
    notice = await site.alice.wait_for_event(
        room, lambda e: in_thread(held_q)(e) and e["sender"] == site.bot_user.user_id, 60
    )
    assert "pas encore été transmise" in notice["content"]["body"]
    # A later clean question is forwarded and acknowledged: the bot went on.
    clean_q = await site.alice.send_text(room, CLEAN.format(run=run))
    await site.alice.wait_for_event(
        room, lambda e: in_thread(clean_q)(e) and e["sender"] == site.bot_user.user_id, 60
    )
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    events = await history(site.alice, room)
    in_held_thread = [
        e for e in bot_messages(events, site.bot_user.user_id) if in_thread(held_q)(e)
    ]
    assert len(in_held_thread) == 1, [e["content"].get("body") for e in in_held_thread]
    # Held means held: the question never reached the specialty room (the clean one did).
    forwarded = [
        str(e["content"].get("body"))
        for e in bot_messages(await history(site.bob, site.rooms["cardio"]), site.bot_user.user_id)
    ]
    assert not [b for b in forwarded if f"marie.durand{run}" in b]
    assert [b for b in forwarded if f"70 ans {run}" in b]
