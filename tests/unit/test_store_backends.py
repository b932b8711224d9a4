"""Every query group on both backends (SQLite file, real PostgreSQL on loopback): same answers,
same idempotence, same transaction discipline; and the SQL translation on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from peerbot.core.lifecycle import Outgoing, Step
from peerbot.core.records import QuestionRow, QuestionState, ThreadMessage
from peerbot.store import Store, StoreError
from peerbot.store.db import _migrations
from peerbot.store.postgres import redact, translate, translate_ddl

if TYPE_CHECKING:
    from pgserver import PostgresServer


@pytest_asyncio.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    s = await Store.open(db_target)
    try:
        yield s
    finally:
        await s.close()


async def _question(store: Store, eid: str = "$q", room: str = "!r:x") -> bool:
    return None is not await store.record_question(
        event_id=eid, room_id=room, trigger_event_id=eid, sender="@a:x", body="ECG ?", created_ts=5
    )


# -- opening and migrations -------------------------------------------------------------------


async def test_migrated_to_the_latest_version_and_reopened_without_change(
    db_target: Path | str,
) -> None:
    latest = _migrations()[-1][0]
    async with await Store.open(db_target) as s:
        assert await s.schema_version() == latest
        await s.put("k", "v")
    async with await Store.open(db_target) as s:
        assert await s.schema_version() == latest
        assert await s.get("k") == "v"


async def test_kv(store: Store) -> None:
    assert await store.get("sync_token") is None
    await store.put("sync_token", "s1")
    await store.put("sync_token", "s2")
    assert await store.get("sync_token") == "s2"
    await store.delete("sync_token")
    assert await store.get("sync_token") is None


# -- questions and handled events -------------------------------------------------------------


async def test_a_recorded_question_comes_back_as_stored_and_only_the_first_time(
    store: Store,
) -> None:
    async def ask(sender: str, body: str) -> QuestionRow | None:
        return await store.record_question(
            event_id="$q",
            room_id="!r:x",
            trigger_event_id="$q",
            sender=sender,
            body=body,
            created_ts=5,
        )

    recorded = await ask("@a:x", "ECG ?")
    assert recorded is not None and recorded == await store.question("$q")
    assert recorded.state == QuestionState.NEW and recorded.seq > 0
    again = await ask("@b:x", "autre")
    assert again is None


async def test_questions_are_recorded_once(store: Store) -> None:
    assert await _question(store) is True
    assert await _question(store) is False
    assert await store.is_handled("$q")
    await store.mark_handled("$q", "!r:x")  # again: a no-op, not an error
    row = await store.question("$q")
    assert row is not None and row.state == QuestionState.NEW and row.body == "ECG ?"
    assert row.created_ts == 5 and row.seq >= 1
    assert await store.count_questions() == 1
    assert [q.event_id for q in await store.questions_in_state("new", "forwarding")] == ["$q"]


async def test_update_question_with_python_bools_and_big_times(store: Store) -> None:
    await _question(store)
    await store.update_question("$q", solved=True, solved_by="$react", guard_override=True)
    row = await store.question("$q")
    assert row is not None and row.solved and row.guard_override
    assert row.solved_ts is not None and row.solved_ts > 2**31  # milliseconds: 64-bit columns
    assert (await store.question_solved_by("$react")) == row
    with pytest.raises(ValueError, match="unknown question columns"):
        await store.update_question("$q", nope=1)


async def test_imports_counts_and_thread_state(store: Store) -> None:
    assert await store.import_question(
        event_id="$i", room_id="!a:x", sender="@b:x", body="old", created_ts=1
    )
    assert not await store.import_question(
        event_id="$i", room_id="!a:x", sender="@b:x", body="old", created_ts=1
    )
    await _question(store, "$q", "!b:x")
    assert await store.question_count_by_room() == {"!a:x": 1, "!b:x": 1}
    await store.set_thread_state("$i", replies=4, solved=True, solved_by="$s")
    await store.set_thread_state("$i", replies=2)  # MAX(replies, ?): never goes down
    assert await store.add_reply("$i", "$reply", "!a:x")
    assert not await store.add_reply("$i", "$reply", "!a:x")
    row = await store.question("$i")
    assert row is not None and row.replies == 5 and row.solved
    assert await store.indexable() == [("$i", "!a:x", "old", True), ("$q", "!b:x", "ECG ?", False)]
    await store.update_question("$i", specialty="Cardio")
    assert await store.routed_examples() == [("old", "Cardio")]


# -- the outbox ---------------------------------------------------------------------------------


async def test_effects_are_recorded_once_and_move_through_their_states(store: Store) -> None:
    a = await store.add_effect(tx_id="t1", kind="notice", room_id="!r:x", content={"b": "é"})
    again = await store.add_effect(tx_id="t1", kind="notice", room_id="!r:x", content={"b": "x"})
    assert again == a and a.content == {"b": "é"} and a.state == "pending"
    await store.add_effect(tx_id="t2", kind="notice", room_id="!r:x", content={})
    assert [e.tx_id for e in await store.pending_effects()] == ["t1", "t2"]
    await store.effect_attempt("t1", "boom")
    await store.effect_done("t1", "$sent")
    await store.effect_failed("t2", "forbidden")
    done = await store.effect("t1")
    assert done is not None and done.state == "done" and done.event_id == "$sent"
    assert done.attempts == 1
    assert await store.pending_effects() == []


async def test_a_step_applied_twice_records_its_effects_once(store: Store) -> None:
    await _question(store)
    out = Outgoing("tx-fwd", "forward", "!cardio:x", {"body": "fwd"})
    step = Step(QuestionState.DONE, specialty="Cardio", target_room="!cardio:x", routed=True)
    step = Step(
        QuestionState.DONE,
        specialty="Cardio",
        target_room="!cardio:x",
        routed=True,
        forward_event_id="$fwd",
        effects=(out,),
    )
    await store.apply("$q", step)
    await store.apply("$q", step)
    effects = await store.effects_for("$q")
    assert [e.tx_id for e in effects] == ["tx-fwd"]
    row = await store.question("$q")
    assert row is not None and row.state == QuestionState.DONE and row.forwarded_ts is not None
    assert (await store.question_by_forward("$fwd")) == row


async def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store._transaction():
            await store._db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("inside", "1"))
            raise RuntimeError("crash mid-transaction")
    assert await store.get("inside") is None
    await store.put("after", "1")  # the connection is usable again
    assert await store.get("after") == "1"


async def test_executemany_and_execute_fetchall(store: Store) -> None:
    """The other two aiosqlite calls a query group might use."""
    async with store._write_lock:
        await store._db.executemany(  # type: ignore[attr-defined]
            "INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)",
            [("a", "1"), ("b", "2"), ("a", "3")],
        )
    rows = await store._db.execute_fetchall(  # type: ignore[attr-defined]
        "SELECT key, value FROM kv WHERE key IN (?, ?) ORDER BY key", ("a", "b")
    )
    assert [tuple(r) for r in rows] == [("a", "1"), ("b", "2")]


async def test_concurrent_writers_neither_lose_nor_duplicate(store: Store) -> None:
    async def one(i: int) -> None:
        await _question(store, f"$q{i % 25}")
        await store.add_effect(tx_id=f"t{i % 10}", kind="ack", room_id="!r:x", content={"i": i})
        await store.put(f"k{i}", str(i))

    await asyncio.gather(*(one(i) for i in range(50)))
    assert await store.count_questions() == 25
    assert len(await store.pending_effects(limit=1000)) == 10
    assert [await store.get(f"k{i}") for i in (0, 49)] == ["0", "49"]


# -- the conversation, overrides, undecryptable ------------------------------------------------


async def test_thread_messages_and_answer_figures(store: Store) -> None:
    await _question(store)
    m1 = ThreadMessage("$m1", "$q", "!r:x", "origin", "@b:x", 300, answer=True)
    m2 = ThreadMessage("$m2", "$q", "!r:x", "forward", "@c:x", 200, answer=True)
    m3 = ThreadMessage("$m3", "$q", "!r:x", "origin", "@a:x", 400, answer=False)
    for m in (m1, m2, m3, m1):
        await store.add_thread_message(m)
    row = await store.question("$q")
    assert row is not None and row.answers == 2
    assert row.first_answer_ts == 200 and row.last_activity_ts == 400
    await store.set_relay("$m1", tx_id="tx-r", relay_event_id="$copy")
    assert (await store.thread_message_by_relay("$copy")) == ThreadMessage(
        "$m1", "$q", "!r:x", "origin", "@b:x", 300, True, "tx-r", "$copy"
    )
    assert [m.event_id for m in await store.thread_messages("$q")] == ["$m2", "$m1", "$m3"]
    assert await store.drop_thread_message("$m2") == m2
    assert await store.thread_message("$m2") is None


async def test_erasing_a_question_removes_its_text_everywhere(store: Store) -> None:
    await _question(store)
    await store.add_effect(
        tx_id="t", kind="forward", room_id="!c:x", content={"body": "ECG ?"}, question_id="$q"
    )
    await store.add_thread_message(ThreadMessage("$m", "$q", "!r:x", "origin", "@b:x", 1, True))
    erased = await store.erase_question("$q")
    assert erased is not None and erased.body == "ECG ?"
    assert await store.question("$q") is None and await store.thread_messages("$q") == []
    effect = await store.effect("t")
    assert effect is not None and effect.content == {} and effect.state == "failed"


async def test_an_erased_text_is_not_left_in_the_sqlite_files(tmp_path: Path) -> None:
    """Deleted rows stay in SQLite's free pages unless ``secure_delete`` is on, which depends
    on how the library was built: the store turns it on, and checkpoints the WAL."""
    path = tmp_path / "peerbot.db"
    store = await Store.open(path)
    marker = "Mme Zorglubovitch née le 12/03/1951, IPP 40417731"
    try:
        (on,) = next(iter(await store._db.execute_fetchall("PRAGMA secure_delete")))
        assert on == 1
        for i in range(50):  # a few pages of other questions around it
            await store.record_question(
                event_id=f"$o{i}",
                room_id="!r:x",
                trigger_event_id=f"$o{i}",
                sender="@a:x",
                body=f"question {i} " + "x" * 200,
                created_ts=i,
            )
        await store.record_question(
            event_id="$q",
            room_id="!r:x",
            trigger_event_id="$q",
            sender="@a:x",
            body=marker,
            created_ts=99,
        )
        await store.add_effect(
            tx_id="t", kind="forward", room_id="!c:x", content={"body": marker}, question_id="$q"
        )
        await store._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        assert marker.encode() in path.read_bytes()  # it was written to the main file
        assert await store.erase_question("$q") is not None
    finally:
        await store.close()
    for file in tmp_path.iterdir():
        assert marker.encode() not in file.read_bytes(), file.name


async def test_overrides_are_upserted(store: Store) -> None:
    await store.set_route_override("Cardio", "!a:x", ["ecg"], removed=False, by="@admin:x")
    await store.set_route_override("cardio", "!b:x", ["ecg", "holter"], removed=True, by="@x:x")
    [route] = await store.route_overrides()
    assert (route.room, route.keywords, route.removed) == ("!b:x", ("ecg", "holter"), True)
    await store.set_intake_override("!r:x", enabled=False, trigger="all", hashtags=[], by="@a:x")
    await store.set_intake_override(
        "!r:x", enabled=True, trigger="hashtag", hashtags=["#a"], by="a"
    )
    [intake] = await store.intake_overrides()
    assert (intake.enabled, intake.trigger, intake.hashtags) == (True, "hashtag", ("#a",))


async def test_odd_text_is_stored(store: Store) -> None:
    """NUL: SQLite keeps it, PostgreSQL cannot (it becomes U+FFFD)."""
    body = "a\x00b \U0001f3e5 c ? é"
    await store.record_question(
        event_id="$odd",
        room_id="!r:x",
        trigger_event_id="$odd",
        sender=None,
        body=body,
        created_ts=1,
    )
    row = await store.question("$odd")
    assert row is not None and row.body is not None
    if store.backend == "postgresql":
        assert row.body == "a\ufffdb \U0001f3e5 c ? é"
    else:
        assert row.body == body


async def test_undecryptable_events(store: Store) -> None:
    args = {"event_id": "$e", "room_id": "!r:x", "sender": "@a:x", "session_id": "s"}
    assert await store.add_undecryptable(**args, sender_key="k")
    assert not await store.add_undecryptable(**args, sender_key="k")
    await store.undecryptable_attempt("$e")
    [row] = await store.undecryptable()
    assert row.attempts == 1
    await store.drop_undecryptable("$e")
    assert await store.undecryptable() == []


# -- PostgreSQL only ----------------------------------------------------------------------------


async def test_two_instances_on_one_postgresql_database_share_one_outbox(
    postgres: object,
) -> None:
    from pgserver import PostgresServer

    assert isinstance(postgres, PostgresServer)
    url = await postgres.create_database()
    a, b = await Store.open(url), await Store.open(url)  # no lock file: both may open it
    try:

        async def record(s: Store, i: int) -> None:
            await s.add_effect(tx_id=f"t{i % 7}", kind="ack", room_id="!r:x", content={})

        await asyncio.gather(*(record(a if i % 2 else b, i) for i in range(40)))
        assert len(await a.pending_effects()) == 7
        await b.effect_done("t0", "$x")
        done = await a.effect("t0")
        assert done is not None and done.state == "done"
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_postgresql_is_a_clear_error(postgres: object) -> None:
    from pgserver import _free_port

    url = f"postgresql://peerbot:secret@127.0.0.1:{_free_port()}/nope"
    with pytest.raises(StoreError, match=r"storage\.database: cannot reach PostgreSQL") as err:
        await Store.open(url)
    assert "secret" not in str(err.value)
    assert err.value.transient  # worth trying again: `peerbot run` waits for it


async def test_a_missing_postgresql_database_fails_at_once_even_when_waiting(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    from peerbot.bot.runner import open_store
    from peerbot.config import parse_config

    config = parse_config(
        "matrix: {homeserver: 'http://127.0.0.1:1', user_id: '@b:example.org', password: x}\n"
        f"storage: {{database: '{postgres.url('no_such_database')}'}}\n"
        "routing: {fallback_room: '#triage:example.org'}\n",
        base_dir=tmp_path,
        env={},
    )
    with pytest.raises(StoreError, match="no_such_database") as err:
        await asyncio.wait_for(open_store(config, wait=True), 20)
    assert not err.value.transient


# -- the translation, pure ----------------------------------------------------------------------


def test_translate_placeholders_ignore_and_scalar_minmax() -> None:
    assert translate("INSERT OR IGNORE INTO t (a, b) VALUES (?, ?)") == (
        "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    )
    assert translate("SELECT MAX(seq), MIN(a) FROM t WHERE x = '?' AND y = ?") == (
        "SELECT MAX(seq), MIN(a) FROM t WHERE x = '?' AND y = $1"
    )
    assert translate("UPDATE t SET a = MAX(COALESCE(a, 0), ?), b = MIN(f(b, 1), ?)") == (
        "UPDATE t SET a = GREATEST(COALESCE(a, 0), $1), b = LEAST(f(b, 1), $2)"
    )
    assert translate("BEGIN IMMEDIATE") == "BEGIN"
    assert translate("PRAGMA wal_checkpoint(TRUNCATE)") == ""


def test_translate_ddl() -> None:
    sql = translate_ddl(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, v BLOB, "
        "r REAL, s TEXT DEFAULT 'INTEGER') -- the asker's INTEGER\n"
    )
    assert sql == (
        "CREATE TABLE t (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, "
        "v BYTEA, r DOUBLE PRECISION, s TEXT DEFAULT 'INTEGER') -- the asker's INTEGER\n"
    )


def test_redact_hides_the_password() -> None:
    assert redact("postgresql://bob:p@ss@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact("postgresql://bob@db/x") == "postgresql://bob@db/x"
