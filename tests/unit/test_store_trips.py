"""The store on a question's path: each transaction and each read is one trip to aiosqlite's
thread (issue 15), and a transaction is still all or nothing, cancelled or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from peerbot.core.lifecycle import Outgoing, Step
from peerbot.core.records import QuestionState
from peerbot.store import Store
from peerbot.store.driver import Plan
from peerbot.store.questions import EXCLUDE_IN_SQL


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """SQLite: the trips are aiosqlite's."""
    s = await Store.open(tmp_path / "bot.db")
    try:
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture
async def both(db_target: Path | str) -> AsyncIterator[Store]:
    """The same behaviour on both backends (on PostgreSQL a plan's statements are awaited)."""
    s = await Store.open(db_target)
    try:
        yield s
    finally:
        await s.close()


class Trips:
    """Counts the functions queued on the store's aiosqlite thread."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        db = store._db
        real: Callable[..., Any] = db._execute

        async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(db, "_execute", counting)

    async def of(self, coro: Any) -> int:
        before = self.n
        await coro
        return self.n - before


async def add(store: Store, eid: str, **kw: Any) -> bool:
    return None is not await store.record_question(
        event_id=eid,
        room_id="!r:x",
        trigger_event_id=eid,
        sender="@a:x",
        body="#DocTocToc ECG ?",
        created_ts=1,
        **kw,
    )


async def test_a_question_on_its_way_costs_one_trip_per_step(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = Trips(store, monkeypatch)
    assert await trips.of(add(store, "$q", skip_handled=True)) == 1
    assert await trips.of(store.is_handled("$q")) == 1
    assert await trips.of(store.question("$q")) == 1
    assert await trips.of(store.questions_in_state("new", exclude={"$other"})) == 1
    step = Step(
        state=QuestionState.FORWARDING,
        effects=(Outgoing("t-ack", "ack", "!r:x", {"body": "ok"}),),
    )
    assert await trips.of(store.apply("$q", step)) == 1
    assert (
        await trips.of(
            store.add_effect(
                tx_id="t-fwd",
                kind="forward",
                room_id="!s:x",
                content={"body": "f"},
                question_id="$q",
            )
        )
        == 1
    )
    assert await trips.of(store.pending_effects()) == 1
    assert await trips.of(store.effect("t-fwd")) == 1


async def test_the_question_row_and_its_handled_mark_are_one_transaction(store: Store) -> None:
    # The second insert fails: the first must not stay behind.
    await store.execute_script(
        [
            "CREATE TRIGGER no_mark BEFORE INSERT ON handled_events "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    )
    with pytest.raises(Exception, match="refused"):
        await add(store, "$q")
    assert await store.question("$q") is None
    await store.execute_script(["DROP TRIGGER no_mark"])
    # And the connection is usable again, outside any transaction.
    assert await add(store, "$q")
    assert await store.is_handled("$q")
    assert not store._db._conn.in_transaction


async def test_a_cancelled_caller_leaves_no_transaction_open(store: Store) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow() -> Plan[None]:
        yield ("INSERT INTO kv (key, value) VALUES ('k', 'v')", ())
        loop.call_soon_threadsafe(started.set)
        # Held on the database thread until the caller has been cancelled.
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

    task = asyncio.create_task(store._atomic(slow))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The work ran to its COMMIT on the thread: no half-open transaction, the write kept.
    assert await store.get("k") == "v"
    assert not store._db._conn.in_transaction
    await store.put("k2", "w")
    assert await store.get("k2") == "w"


async def test_a_plan_reads_what_it_wrote_and_is_all_or_nothing(both: Store) -> None:
    def plan() -> Plan[int]:
        yield ("INSERT INTO kv (key, value) VALUES (?, ?)", ("a", "1"))
        done = yield ("SELECT value FROM kv WHERE key = ?", ("a",))
        return int(done.rows[0][0])

    assert await both._atomic(plan) == 1

    def failing() -> Plan[None]:
        yield ("INSERT INTO kv (key, value) VALUES (?, ?)", ("b", "2"))
        yield ("INSERT INTO kv (key, value) VALUES (?, ?)", ("a", "again"))  # key taken

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await both._atomic(failing)
    assert await both.get("b") is None
    # The connection is usable again, outside any transaction, and the rows helpers agree.
    await both.put("c", "3")
    assert [tuple(r) for r in await both._rows("SELECT key FROM kv ORDER BY key")] == [
        ("a",),
        ("c",),
    ]
    assert await both._row("SELECT key FROM kv WHERE key = ?", ("zz",)) is None


async def test_the_one_trip_steps_on_both_backends(both: Store) -> None:
    assert await add(both, "$q", skip_handled=True)
    assert not await add(both, "$q")
    assert await both.is_handled("$q")
    step = Step(
        state=QuestionState.FORWARDING,
        effects=(Outgoing("t-ack", "ack", "!r:x", {"body": "ok"}),),
    )
    await both.apply("$q", step)
    await both.apply("$q", step)  # again (a crash): nothing twice
    q = await both.question("$q")
    assert q is not None and q.state == QuestionState.FORWARDING
    fwd = await both.add_effect(
        tx_id="t-fwd", kind="forward", room_id="!s:x", content={"body": "f"}, question_id="$q"
    )
    assert (fwd.tx_id, fwd.content, fwd.state) == ("t-fwd", {"body": "f"}, "pending")
    assert [e.tx_id for e in await both.pending_effects()] == ["t-ack", "t-fwd"]


async def test_a_replayed_handled_question_is_not_recorded_again(both: Store) -> None:
    store = both
    assert await add(store, "$q", skip_handled=True)
    await store.erase_question("$q")
    # The sync replays it (a crash before the token was saved): it stays erased.
    assert not await add(store, "$q", skip_handled=True)
    assert await store.question("$q") is None
    # Without skip_handled (a thread reply naming an erased root), it is recorded.
    assert await add(store, "$q")


@pytest.mark.parametrize("lane", [1, EXCLUDE_IN_SQL + 1])
async def test_questions_on_a_lane_are_left_out(both: Store, lane: int) -> None:
    store = both
    for i in range(3):
        await add(store, f"$q{i}")
    on_lane = {"$q0", "$q2"} | {f"$elsewhere{i}" for i in range(lane)}
    waiting = await store.questions_in_state("new", "forwarding", exclude=on_lane)
    assert [q.event_id for q in waiting] == ["$q1"]
    everything = await store.questions_in_state("new", "forwarding")
    assert [q.event_id for q in everything] == ["$q0", "$q1", "$q2"]


async def test_a_route_move_is_one_transaction(
    both: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question's new specialty and the copy to send: one trip (SQLite), both written."""
    copy = Outgoing("tx-move", "move", "!pneumo:x", {"body": "copie"})
    await both.record_question(
        event_id="$q",
        room_id="!r:x",
        trigger_event_id="$q",
        sender="@a:x",
        body="dyspnée ?",
        created_ts=1,
    )
    if both.backend == "sqlite":
        trips = Trips(both, monkeypatch)
        assert await trips.of(both.record_move("$q", "Pneumologie", copy)) == 1
    else:
        await both.record_move("$q", "Pneumologie", copy)
    await both.record_move("$q", "Pneumologie", copy)  # redelivered: nothing twice
    row = await both.question("$q")
    assert row is not None and row.specialty == "Pneumologie" and row.corrected
    [pending] = await both.pending_effects()
    assert (pending.tx_id, pending.kind, pending.room_id, pending.question_id) == (
        "tx-move",
        "move",
        "!pneumo:x",
        "$q",
    )
