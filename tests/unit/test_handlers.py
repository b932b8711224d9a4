"""The sync handlers on a real database, without a homeserver: duplicates, threads, edits,
reactions and redactions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from peerbot.bot.app import PeerBot
from peerbot.config import IntakeRoom, Trigger, parse_config
from peerbot.core.ids import tx_id
from peerbot.matrix import EventID, RoomID, SyncBatch, Undecryptable
from peerbot.store import Store, StoreError, unavailable

ROOM = RoomID("!intake:x")
ME = "@peerbot:x"


class OfflineClient:
    """Just enough of MatrixClient for handlers that never touch the network."""

    user_id = ME

    def __init__(self) -> None:
        self.encrypted: set[str] = set()
        self.sent: dict[str, dict[str, Any]] = {}
        """Events get_event can read (what the server would have)."""

    def joined_rooms(self) -> set[RoomID]:
        return {ROOM}

    def is_encrypted(self, room_id: str) -> bool:
        return room_id in self.encrypted

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return self.sent[event_id]

    def display_name(self, room_id: str, user_id: str) -> str | None:
        return None

    async def profile_name(self, user_id: str) -> str | None:
        return None

    def room_label(self, room_id: str) -> str:
        return room_id


@pytest_asyncio.fixture
async def bot(db_target: Path | str) -> AsyncIterator[PeerBot]:
    cfg = parse_config(
        json.dumps(
            {
                "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": ME, "password": "p"},
                "routing": {"fallback_room": "!triage:x"},
            }
        ),
        env={},
    )
    store = await Store.open(db_target)  # each test runs on SQLite and on PostgreSQL
    b = PeerBot(cfg, store, OfflineClient())  # type: ignore[arg-type]
    b.rooms.intake = {ROOM: IntakeRoom(ROOM, Trigger.HASHTAG, ("#DocTocToc",))}
    try:
        yield b
    finally:
        await store.close()


def msg(eid: str, body: str, sender: str = "@alice:x", **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": eid,
        "sender": sender,
        "origin_server_ts": 1000,
        "content": {"msgtype": "m.text", "body": body, **content},
    }


async def test_redelivered_batch_is_a_noop(bot: PeerBot) -> None:
    batch = SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))])
    await bot.handle_batch(batch)
    await bot.handle_batch(SyncBatch("t2", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    assert await bot.store.count_questions() == 1
    assert await bot.store.get("sync_token") == "t2"
    assert bot.handler_errors == 0


async def test_a_batch_of_the_bots_own_sends_writes_and_wakes_nothing(bot: PeerBot) -> None:
    # The sync brings back each of the bot's sends (no not_senders: see the sync filter).
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    bot._wake.clear()
    own = [(ROOM, msg("$fwd", "#DocTocToc ECG ? (forwarded)", sender=ME))]
    await bot.handle_batch(SyncBatch("t2", events=own))
    assert await bot.store.get("sync_token") == "t1"  # not written for its own events
    assert bot._since == "t2" and not bot._wake.is_set()  # but the next sync goes on from t2
    assert await bot.store.count_questions() == 1
    await bot.handle_batch(SyncBatch("t3", events=[*own, (ROOM, msg("$r", "merci", "@bob:x"))]))
    assert await bot.store.get("sync_token") == "t3" and bot._wake.is_set()


def test_only_from_is_false_for_anything_another_user_or_the_server_brings() -> None:
    own = (ROOM, msg("$a", "x", sender=ME))
    assert SyncBatch("t").only_from(ME)  # an empty (timed-out) sync
    assert SyncBatch("t", events=[own, own]).only_from(ME)
    assert not SyncBatch("t", events=[own, (ROOM, msg("$b", "y"))]).only_from(ME)
    assert not SyncBatch("t", events=[(ROOM, "garbage")]).only_from(ME)  # type: ignore[list-item]
    assert not SyncBatch("t", left=[ROOM]).only_from(ME)
    sealed = [Undecryptable(ROOM, EventID("$e"), "@bob:x", "session", "key")]
    assert not SyncBatch("t", events=[own], undecryptable=sealed).only_from(ME)
    mine = [Undecryptable(ROOM, EventID("$e"), ME, "session", "key")]
    assert SyncBatch("t", events=[own], undecryptable=mine).only_from(ME)
    assert not SyncBatch("t", events=[own], invites=[object()]).only_from(ME)  # type: ignore[list-item]


async def test_thread_reply_hashtag_records_the_root(bot: PeerBot) -> None:
    rel = {
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$root"},
        }
    }
    await bot.handle_event(ROOM, msg("$r", "#doctoctoc", sender="@bob:x", **rel))
    q = await bot.store.question("$root")
    assert q is not None and q.body is None and q.trigger_event_id == "$r" and q.state == "new"


async def test_own_messages_notices_and_chat_ignored(bot: PeerBot) -> None:
    await bot.handle_event(ROOM, msg("$1", "#DocTocToc ?", sender=ME))
    await bot.handle_event(ROOM, msg("$2", "#DocTocToc ?", msgtype="m.notice"))
    await bot.handle_event(ROOM, msg("$3", "bonjour"))
    await bot.handle_event(RoomID("!elsewhere:x"), msg("$4", "#DocTocToc ?"))
    assert await bot.store.count_questions() == 0


async def test_edit_by_author_only(bot: PeerBot) -> None:
    await bot.handle_event(ROOM, msg("$q", "#DocTocToc ECG ?"))

    def edit(eid: str, sender: str, text: str) -> dict[str, Any]:
        return msg(
            eid,
            "* " + text,
            sender=sender,
            **{
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$q"},
            },
        )

    await bot.handle_event(ROOM, edit("$e1", "@mallory:x", "piraté"))
    q = await bot.store.question("$q")
    assert q is not None and q.body == "#DocTocToc ECG ?"
    await bot.handle_event(ROOM, edit("$e2", "@alice:x", "#DocTocToc ECG et syncope ?"))
    q = await bot.store.question("$q")
    assert q is not None and q.body == "#DocTocToc ECG et syncope ?" and q.revision == "$e2"


async def test_reaction_and_redactions(bot: PeerBot) -> None:
    await bot.handle_event(ROOM, msg("$q", "#DocTocToc ECG ?"))
    reaction = {
        "type": "m.reaction",
        "event_id": "$re",
        "sender": "@alice:x",
        "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$q", "key": "✅"}},
    }
    await bot.handle_event(ROOM, reaction)
    q = await bot.store.question("$q")
    assert q is not None and q.solved and q.solved_by == "$re"
    # Taking the reaction back un-solves; redacting the question erases it.
    await bot.handle_event(
        ROOM,
        {
            "type": "m.room.redaction",
            "event_id": "$x1",
            "sender": "@alice:x",
            "redacts": "$re",
            "content": {},
        },
    )
    q = await bot.store.question("$q")
    assert q is not None and not q.solved
    bot.index.add("$q", "ECG", room_id=ROOM)
    await bot.handle_event(
        ROOM,
        {
            "type": "m.room.redaction",
            "event_id": "$x2",
            "sender": "@alice:x",
            "content": {"redacts": "$q"},
        },
    )
    assert await bot.store.question("$q") is None
    assert "$q" not in bot.index


@pytest.mark.parametrize("event", [None, 5, "x", [], {"type": 3}, {"sender": ["@a:x"]}])
async def test_garbage_never_raises(bot: PeerBot, event: Any) -> None:
    await bot.handle_batch(SyncBatch("t", events=[(ROOM, event)]))
    assert bot.handler_errors == 0


def in_thread(root: str) -> dict[str, Any]:
    return {
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": root},
        }
    }


async def test_both_threads_of_a_question_are_recorded_once(bot: PeerBot) -> None:
    specialty = RoomID("!cardio:x")
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    await bot.store.update_question("$q", target_room=specialty, forward_event_id="$fwd")
    answer = {**msg("$a1", "Regarde le QT", sender="@bob:x", **in_thread("$fwd"))}
    answer["origin_server_ts"] = 5000
    clarif = {**msg("$c1", "Il a 80 ans", **in_thread("$q"))}
    clarif["origin_server_ts"] = 7000
    rich_reply = msg(
        "$a2",
        "> ...\n\nOui",
        sender="@carol:x",
        **{"m.relates_to": {"m.in_reply_to": {"event_id": "$fwd"}}},
    )
    rich_reply["origin_server_ts"] = 9000
    stray = msg("$s", "autre chose", sender="@bob:x", **in_thread("$other"))
    batch = [(specialty, answer), (ROOM, clarif), (specialty, rich_reply), (specialty, stray)]
    await bot.handle_batch(SyncBatch("t2", events=batch))
    await bot.handle_batch(SyncBatch("t3", events=batch))  # delivered twice: counted once
    q = await bot.store.question("$q")
    assert q is not None
    assert (q.answers, q.first_answer_ts, q.last_activity_ts) == (2, 5000, 9000)
    got = [(m.event_id, m.side, m.answer) for m in await bot.store.thread_messages("$q")]
    assert got == [("$a1", "forward", True), ("$c1", "origin", False), ("$a2", "forward", True)]
    # Each message is relayed to the other thread once, however often it is delivered.
    relays = [e for e in await bot.store.effects_for("$q") if e.kind == "relay"]
    assert [(e.tx_id, e.room_id) for e in relays] == [
        (tx_id("relay", "$a1"), ROOM),
        (tx_id("relay", "$c1"), specialty),
        (tx_id("relay", "$a2"), ROOM),
    ]
    assert [e.content["msgtype"] for e in relays] == ["m.text", "m.notice", "m.text"]
    assert relays[0].content["m.mentions"] == {"user_ids": ["@alice:x"]}
    assert relays[1].content["m.relates_to"]["event_id"] == "$fwd"
    # A reply in the forward's thread typed in another room is not part of it.
    elsewhere = msg("$x", "hors sujet", sender="@bob:x", **in_thread("$fwd"))
    await bot.handle_batch(SyncBatch("t4", events=[(RoomID("!autre:x"), elsewhere)]))
    assert await bot.store.thread_message("$x") is None
    assert bot.handler_errors == 0


async def test_encrypted_clarification_waits_for_its_authors_confirm(bot: PeerBot) -> None:
    client = bot.mx
    assert isinstance(client, OfflineClient)
    client.encrypted.add(ROOM)  # the intake room is encrypted, the specialty room is not
    specialty = RoomID("!cardio:x")
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    await bot.store.update_question(
        "$q", target_room=specialty, forward_event_id="$fwd", state="done"
    )
    clarif = msg("$c", "Il a 80 ans", **in_thread("$q"))
    client.sent["$c"] = clarif
    other = msg("$o", "!confirm", sender="@bob:x", **in_thread("$q"))
    mine = msg("$k", "!confirm", **in_thread("$q"))
    await bot.handle_batch(SyncBatch("t2", events=[(ROOM, clarif), (ROOM, other)]))

    def kinds() -> list[tuple[str, str]]:
        return [(e.kind, e.room_id) for e in effects]

    effects = await bot.store.effects_for("$q")
    assert kinds() == [("relay_notice", ROOM)]  # told, in her thread; nothing left the room
    assert "!confirm" in effects[0].content["body"]
    stored = await bot.store.thread_message("$c")
    assert stored is not None and stored.relay_state == "refused"
    # Bob's !confirm is not hers: nothing relayed.
    assert await bot.store.refused_relays("$q", "@alice:x")
    await bot.handle_batch(SyncBatch("t3", events=[(ROOM, mine), (ROOM, mine)]))
    effects = await bot.store.effects_for("$q")
    assert kinds() == [("relay_notice", ROOM), ("relay", specialty)]
    assert "Il a 80 ans" in effects[1].content["body"]
    assert not await bot.store.refused_relays("$q", "@alice:x")
    assert bot.handler_errors == 0


async def test_an_unavailable_database_fails_the_batch_instead_of_skipping_it(
    bot: PeerBot, db_target: Path | str
) -> None:
    """A question the handler could not record must come again: the batch raises (the sync
    loop backs off and asks again from the same token), it is not counted as a bad event."""
    batch = SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))])
    if isinstance(db_target, Path):  # SQLite: another program holds the write lock
        await bot.store._db.execute("PRAGMA busy_timeout=100")
        holder = sqlite3.connect(db_target)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(sqlite3.OperationalError) as err:
                await bot.handle_batch(batch)
        finally:
            holder.rollback()
            holder.close()
        again = bot
    else:  # PostgreSQL: the server ends the store's session
        import asyncpg

        admin = await asyncpg.connect(db_target)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        with pytest.raises(Exception) as err:
            await bot.handle_batch(batch)
        assert bot.store.broken
        store = await Store.open(db_target)  # what the runner does after a broken store
        again = PeerBot(bot.config, store, OfflineClient())  # type: ignore[arg-type]
        again.rooms.intake = bot.rooms.intake
    assert unavailable(err.value), repr(err.value)
    assert bot.handler_errors == 0
    try:
        assert await again.store.get("sync_token") is None
        await again.handle_batch(batch)  # the next sync hands the same events over
        assert await again.store.count_questions() == 1
        assert await again.store.get("sync_token") == "t1"
    finally:
        if again is not bot:
            await again.store.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (StoreError("cannot reach", transient=True), True),
        (StoreError("bad password"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (ValueError("malformed event"), False),
        (KeyError("body"), False),
    ],
)
def test_unavailable_tells_a_database_outage_from_a_bad_event(
    exc: BaseException, expected: bool
) -> None:
    assert unavailable(exc) is expected


def test_unavailable_knows_asyncpg_errors() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    assert unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert unavailable(asyncpg.exceptions.InterfaceError("the underlying connection is closed"))
    assert unavailable(asyncpg.exceptions.InternalClientError("cannot switch to state 15"))
    assert not unavailable(asyncpg.exceptions.UniqueViolationError("duplicate key"))


class SendingClient(OfflineClient):
    """An OfflineClient whose sends succeed (the homeserver's answer, without one), in the
    triage room too."""

    def joined_rooms(self) -> set[RoomID]:
        return {ROOM, RoomID("!triage:x")}

    def room_privacy(self, room_id: str) -> None:
        return None  # unknown: the related threads of other rooms are not shown

    async def send(
        self, room_id: str, content: dict[str, Any], tx_id: str, event_type: str = ""
    ) -> str:
        event_id = f"$sent-{tx_id}"
        self.sent[event_id] = {"room_id": room_id, "content": content}
        return event_id


@pytest_asyncio.fixture
async def sending(db_target: Path | str) -> AsyncIterator[tuple[PeerBot, Store, SendingClient]]:
    """A bot whose sends succeed, routing everything to the triage room."""
    cfg = parse_config(
        json.dumps(
            {
                "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": ME, "password": "p"},
                "routing": {"fallback_room": "!triage:x"},
            }
        ),
        env={},
    )
    store = await Store.open(db_target)
    client = SendingClient()
    bot = PeerBot(cfg, store, client)  # type: ignore[arg-type]
    bot.rooms.intake = {ROOM: IntakeRoom(ROOM, Trigger.HASHTAG, ("#DocTocToc",))}
    await bot.rooms.resolve_configured()
    try:
        yield bot, store, client
    finally:
        await store.close()


async def test_the_forward_is_recorded_with_the_routing_step_and_sent_from_it(
    sending: tuple[PeerBot, Store, SendingClient],
) -> None:
    bot, store, client = sending
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    q = await store.question("$q")
    assert q is not None
    routed = await bot.pipeline.prepare(q)
    assert routed is not None and routed.target_room == "!triage:x"
    # Recorded already, by the routing step's transaction: a crash now loses nothing.
    pending = [e for e in await store.pending_effects() if e.kind == "forward"]
    assert [(e.question_id, e.room_id) for e in pending] == [("$q", "!triage:x")]
    stored = (await store.question("$q")) or q
    assert stored.target_room == "!triage:x"
    await bot.pipeline.forward(routed)
    forwards = [v for v in client.sent.values() if v["room_id"] == "!triage:x"]
    assert len(forwards) == 1 and forwards[0]["content"] == pending[0].content
    done = await store.effect(pending[0].tx_id)
    assert done is not None and done.state == "done"
    assert not [e for e in await store.pending_effects() if e.kind == "forward"]


async def test_a_stop_sends_the_forwards_recorded_with_routing_and_leaves_none_pending(
    sending: tuple[PeerBot, Store, SendingClient],
) -> None:
    """A forward is recorded with its routing step only when its lane is free (taken at once);
    behind another in a lane, the lane records it. A stop then sends the first and drops the
    second unrecorded: nothing is left recorded and unsent (test_faults' clean SIGTERM)."""
    bot, store, client = sending
    events = [(ROOM, msg("$a", "#DocTocToc ECG ?")), (ROOM, msg("$b", "#DocTocToc EEG ?"))]
    await bot.handle_batch(SyncBatch("t1", events=events))
    a, b = await store.question("$a"), await store.question("$b")
    assert a is not None and b is not None
    routed_a = await bot.pipeline.prepare(a, lambda room: True)
    routed_b = await bot.pipeline.prepare(b, lambda room: False)
    assert routed_a is not None and routed_b is not None
    pending = [e.question_id for e in await store.pending_effects() if e.kind == "forward"]
    assert pending == ["$a"]
    assert bot.pipeline.forward_recorded("$a") and not bot.pipeline.forward_recorded("$b")

    bot.stop()
    for routed in (routed_a, routed_b):
        bot.lanes.in_lane.add(routed.event_id)
        bot.lanes._queue("!triage:x").put_nowait(routed)
    await bot.lanes.finish(time.monotonic() + 5)
    sent = [v["content"]["body"] for v in client.sent.values() if v["room_id"] == "!triage:x"]
    assert len(sent) == 1 and "ECG" in sent[0], sent
    assert not [e for e in await store.pending_effects() if e.kind == "forward"]
    assert bot.lanes.in_lane == set()


async def _forwards_sent(bot: PeerBot, client: SendingClient) -> list[str]:
    """Route what waits and let the lanes send it; the bodies sent to the triage room."""
    await bot.lanes.route_waiting()
    await bot.lanes.finish(time.monotonic() + 5)
    return [v["content"]["body"] for v in client.sent.values() if v["room_id"] == "!triage:x"]


async def test_a_question_just_recorded_is_routed_before_the_worker_reads_the_store(
    sending: tuple[PeerBot, Store, SendingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handlers hand the recorded row to the worker: its routing step does not wait for a
    read of the waiting questions (one trip less before the forward)."""
    bot, store, client = sending
    read = store.questions_in_state
    routed_before_read: list[bool] = []

    async def watched(*args: Any, **kwargs: Any) -> Any:
        routed_before_read.append("$q" in bot.lanes.in_lane)
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "questions_in_state", watched)
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    sent = await _forwards_sent(bot, client)
    assert routed_before_read == [True]
    assert len(sent) == 1 and "ECG ?" in sent[0]
    # Handed once, routed once: the worker's next round finds nothing to do.
    assert not await bot.lanes.route_waiting()


async def test_an_edit_after_the_question_in_one_batch_is_what_gets_forwarded(
    sending: tuple[PeerBot, Store, SendingClient],
) -> None:
    """What the handlers handed over is dropped once an edit (or a command, a redaction, a
    reaction) is handled: the worker reads the edited question from the store instead."""
    bot, _, client = sending
    edit = msg(
        "$e",
        "* #DocTocToc ECG et syncope ?",
        **{
            "m.new_content": {"msgtype": "m.text", "body": "#DocTocToc ECG et syncope ?"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$q"},
        },
    )
    events = [(ROOM, msg("$q", "#DocTocToc ECG ?")), (ROOM, edit)]
    await bot.handle_batch(SyncBatch("t1", events=events))
    sent = await _forwards_sent(bot, client)
    assert len(sent) == 1 and "ECG et syncope ?" in sent[0], sent


async def test_the_forwards_send_is_counted_in_flight_until_the_homeserver_answers(
    sending: tuple[PeerBot, Store, SendingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync loop holds its next long-poll and the token's write until this is set
    (FORWARD_FIRST_S at most): a sync request reaching Synapse first delayed the forward."""
    bot, store, client = sending
    answer, asked = asyncio.Event(), asyncio.Event()
    send = client.send

    async def slow_send(*args: Any, **kwargs: Any) -> str:
        asked.set()
        await answer.wait()
        return await send(*args, **kwargs)

    monkeypatch.setattr(client, "send", slow_send)
    await bot.handle_batch(SyncBatch("t1", events=[(ROOM, msg("$q", "#DocTocToc ECG ?"))]))
    q = await store.question("$q")
    assert q is not None
    routed = await bot.pipeline.prepare(q)
    assert routed is not None and bot.pipeline.sends.answered.is_set()
    forwarding = asyncio.create_task(bot.pipeline.forward(routed))
    await asyncio.wait_for(asked.wait(), 5)
    assert not bot.pipeline.sends.answered.is_set()
    assert not [v for v in client.sent.values() if v["room_id"] == "!triage:x"]
    answer.set()
    await asyncio.wait_for(bot.pipeline.sends.answered.wait(), 5)
    await asyncio.wait_for(forwarding, 5)
    assert [v for v in client.sent.values() if v["room_id"] == "!triage:x"]
