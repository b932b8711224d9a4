"""``peerbot migrate-store``: a SQLite database with rows in every table, copied into a real
PostgreSQL; counts, samples, sequences, refusals, and the command line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import PostgresServer

from peerbot.core.lifecycle import Outgoing, Step
from peerbot.core.records import QuestionState, ThreadMessage
from peerbot.store import Store, StoreError
from peerbot.store.migrate import _check, migrate_store
from peerbot.store.postgres import PgDriver


async def _fill(path: Path, n: int = 120) -> None:
    async with await Store.open(path) as s:
        await s.put("sync_token", "s_42")
        await s.put("access_token", "syt_secret")
        for i in range(n):
            eid = f"$q{i}"
            body = "NUL\x00inside" if i == 7 else f"question {i} é 🏥"
            await s.record_question(
                event_id=eid,
                room_id="!r:x",
                trigger_event_id=eid,
                sender="@a:x",
                body=body,
                created_ts=1_700_000_000_000 + i,
            )
            step = Step(
                QuestionState.DONE,
                specialty="Cardio",
                target_room="!c:x",
                routed=True,
                forward_event_id=f"$f{i}",
                effects=(Outgoing(f"tx{i}", "forward", "!c:x", {"body": body}),),
            )
            await s.apply(eid, step)
        await s.add_thread_message(ThreadMessage("$m", "$q1", "!r:x", "origin", "@b:x", 5, True))
        await s.set_route_override("Cardio", "!c:x", ["ecg"], removed=False, by="@admin:x")
        await s.set_intake_override("!r:x", enabled=True, trigger="all", hashtags=[], by="@a:x")
        await s.add_undecryptable(
            event_id="$u", room_id="!r:x", sender="@a:x", session_id="s", sender_key="k"
        )
        # Follow-ups (0005) and vectors (0007): deadlines, experts, pings, a BLOB under a FK.
        await s.plan_escalations({}, (3600.0,))
        await s.expert_join("!c:x", "@doc:x", "Cardio")
        await s.set_expert_settings("@doc:x", timezone="Europe/Paris", quiet=(1320, 420))
        await s.settle("escalate:$q0:0", question_id="$q0", pinged=[("@doc:x", "!c:x")])
        blob = b"\x01\x02\x00\xff" * 130  # NUL bytes: a BYTEA keeps them
        assert await s.put_vectors([(f"$q{i}", f"$q{i}", blob) for i in range(n)], "use-m3-q6")


async def test_every_table_is_copied_and_checked(tmp_path: Path, postgres: PostgresServer) -> None:
    db = tmp_path / "bot.db"
    await _fill(db)
    url = await postgres.create_database()
    report = await migrate_store(db, url)
    assert report.ok, report.lines()
    by_table = {t.table: t for t in report.tables}
    assert set(by_table) >= {
        "kv",
        "handled_events",
        "questions",
        "effects",
        "thread_messages",
        "route_overrides",
        "intake_overrides",
        "undecryptable",
        "due_actions",
        "experts",
        "expert_settings",
        "expert_pings",
        "question_vectors",
    }
    assert all(t.source_rows > 0 for t in report.tables), report.lines()
    assert by_table["questions"].target_rows == 120 and by_table["questions"].sampled >= 50
    async with await Store.open(url) as pg, await Store.open(db) as lite:
        for i in (0, 7, 119):
            original = await lite.question(f"$q{i}")
            assert original is not None
            if i == 7:  # PostgreSQL texts cannot hold NUL
                original = dataclasses.replace(original, body="NUL\ufffdinside")
            assert await pg.question(f"$q{i}") == original
        assert await pg.get("sync_token") == "s_42"
        assert len(await pg.effects_for("$q3")) == 1
        assert await pg.vector_of("$q7") == await lite.vector_of("$q7")
        assert await pg.experts_in("!c:x", 0) == await lite.experts_in("!c:x", 0)
        # The sequences continue after the copied keys: a new question gets a new seq.
        assert await pg.record_question(
            event_id="$new",
            room_id="!r:x",
            trigger_event_id="$new",
            sender=None,
            body="x",
            created_ts=1,
        )
        new = await pg.question("$new")
        assert new is not None and new.seq > 120


async def test_a_non_empty_target_is_refused_unless_replaced(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    db = tmp_path / "bot.db"
    await _fill(db, n=3)
    url = await postgres.create_database()
    async with await Store.open(url) as pg:
        await pg.put("sync_token", "other bot")
    with pytest.raises(StoreError, match=r"already holds rows \(kv\); pass --replace"):
        await migrate_store(db, url)
    report = await migrate_store(db, url, replace=True)
    assert report.ok
    async with await Store.open(url) as pg:
        assert await pg.get("sync_token") == "s_42"


async def test_a_different_row_is_caught(tmp_path: Path, postgres: PostgresServer) -> None:
    """The check must be able to fail: change one copied row, check again."""
    db = tmp_path / "bot.db"
    await _fill(db, n=10)
    url = await postgres.create_database()
    assert (await migrate_store(db, url)).ok
    async with await Store.open(url) as pg, await Store.open(db) as lite:
        driver = pg._db
        assert isinstance(driver, PgDriver)
        await driver.conn.execute("UPDATE questions SET body = 'tampered' WHERE event_id = '$q0'")
        await driver.conn.execute("DELETE FROM kv WHERE key = 'sync_token'")
        columns = [c.strip() for c in "seq, event_id, body".split(",")]
        q = await _check(lite, driver.conn, "questions", columns, ["seq"])
        kv = await _check(lite, driver.conn, "kv", ["key", "value"], ["key"])
    assert q.mismatches == 1 and not q.ok
    assert kv.target_rows == kv.source_rows - 1 and not kv.ok


def test_the_command_line(tmp_path: Path, postgres: PostgresServer) -> None:
    import asyncio

    db = tmp_path / "bot.db"
    asyncio.run(_fill(db, n=5))
    url = asyncio.run(postgres.create_database())
    cmd = [sys.executable, "-m", "peerbot.cli", "migrate-store", "--from", str(db), "--to", url]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "questions: 5 row(s) in SQLite, 5 in PostgreSQL" in first.stdout
    assert first.stdout.rstrip().endswith("the copy checks out")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "pass --replace" in again.stderr
    bad = subprocess.run([*cmd[:-1], "mysql://x/y"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--to: not a postgresql:// URL" in bad.stderr
