"""The outbox's part in relays, on a real store and a client that records what it sends: an edit
or redaction recorded before its copy was sent gets the copy's event ID; a forward's pending
state edits coalesce into the latest; a sent copy's event ID is noted on its message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from peerbot.bot.outbox import Outbox
from peerbot.core.ids import tx_id
from peerbot.core.messages import texts_for
from peerbot.core.records import QuestionRow, QuestionState, RouteRecord, ThreadMessage
from peerbot.core.relay import RelayInputs, decide, forward_state_edit, redaction
from peerbot.store import Store

Q = QuestionRow(
    seq=1,
    event_id="$q",
    room_id="!entraide:x",
    sender="@alice:x",
    sender_name="Alice",
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
FR = texts_for("fr")


class RecordingClient:
    """Sends nothing: records (room, content, tx, type) and answers an event ID per tx."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str, str]] = []

    async def send(self, room: str, content: dict[str, Any], tx: str, etype: str) -> str:
        self.sent.append((room, content, tx, etype))
        return f"$sent-{len(self.sent)}"

    async def redact(self, room: str, event_id: str, reason: str, tx: str) -> str:
        self.sent.append((room, {"redacts": event_id}, tx, "m.room.redaction"))
        return f"$sent-{len(self.sent)}"


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.db")
    try:
        yield s
    finally:
        await s.close()


async def test_edit_and_redaction_recorded_before_the_copy_was_sent(store: Store) -> None:
    client = RecordingClient()
    outbox = Outbox(store, client, asyncio.Event())  # type: ignore[arg-type]
    base = RelayInputs(message=ANSWER, text="QT", question=Q, bot_id="@bot:x")
    (copy,) = decide(base, FR).effects
    relayed = ThreadMessage(
        **{**ANSWER.__dict__, "relay_tx_id": copy.tx_id, "relay_state": "relayed"}
    )
    assert await store.record_thread_message(relayed, [copy])
    edit = RelayInputs(
        message=relayed,
        text="QT long",
        question=Q,
        bot_id="@bot:x",
        edit_event_id="$e",
        copy_tx=copy.tx_id,
        copy_event_id=None,
    )
    gone = redaction(relayed, "!entraide:x", None)
    assert gone is not None
    await store.record_relay("$a", "$q", state=None, effects=[*decide(edit, FR).effects, gone])

    await outbox.pump()
    await outbox.finish(5)
    rooms_types = [(room, etype) for room, _, _, etype in client.sent]
    assert rooms_types == [("!entraide:x", "m.room.message")] * 2 + [
        ("!entraide:x", "m.room.redaction")
    ]
    copy_id = "$sent-1"
    assert client.sent[1][1]["m.relates_to"] == {"rel_type": "m.replace", "event_id": copy_id}
    assert "peerbot.copy_of" not in client.sent[1][1]
    assert client.sent[2][1] == {"redacts": copy_id}
    noted = await store.thread_message("$a")
    assert noted is not None and noted.relay_event_id == copy_id


async def test_pending_forward_states_coalesce_into_the_latest(store: Store) -> None:
    client = RecordingClient()
    outbox = Outbox(store, client, asyncio.Event())  # type: ignore[arg-type]
    fwd = {"msgtype": "m.notice", "body": "Question transmise"}
    edits = [
        forward_state_edit(QuestionRow(**{**Q.__dict__, "answers": n}), fwd, f"$a{n}", FR)
        for n in (1, 2, 3)
    ]
    await store.record_relay("$x", "$q", state=None, effects=[e for e in edits if e is not None])
    await outbox.pump()
    await outbox.finish(5)
    assert len(client.sent) == 1
    assert client.sent[0][1]["m.new_content"]["body"].endswith("Réponses : 3")
    states = [(e.tx_id, e.state) for e in await store.effects_for("$q")]
    assert [s for _, s in states] == ["superseded", "superseded", "done"]
    assert states[0][0] == tx_id("fwd-state", "$q\0$a1")
