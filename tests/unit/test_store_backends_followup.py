"""The follow-up and vector query groups on both backends (SQLite file, real PostgreSQL on
loopback), called as peerbot/bot/followup.py, followup_commands.py and related.py call them:
deadlines, experts, the digest and !unanswered / !stats reads, embedding BLOBs; and what the
translated migrations 0005 and 0007 created on PostgreSQL (64-bit times, BYTEA, the cascade)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from peerbot.core.followup import DueAction, StatRow
from peerbot.core.lifecycle import Outgoing, Step
from peerbot.core.records import QuestionState, ThreadMessage
from peerbot.core.semantic import decode_vector, encode_vector
from peerbot.store import Store
from peerbot.store.db import now_ms

CARDIO = "!cardio:x"
INTAKE = "!intake:x"
HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_764_000_000_000  # a December 2025 time in ms: over 32 bits
MODEL = "use-m3-q6"
OTHER_MODEL = "e5-small-q4"


@pytest_asyncio.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    s = await Store.open(db_target)
    try:
        yield s
    finally:
        await s.close()


async def _asked(store: Store, eid: str, body: str = "Douleur thoracique à l'effort ?") -> None:
    assert await store.record_question(
        event_id=eid,
        room_id=INTAKE,
        trigger_event_id=eid,
        sender="@asker:x",
        body=body,
        created_ts=T0,
    )


async def _forwarded(store: Store, eid: str, specialty: str | None = "Cardio") -> int:
    """A question asked and forwarded to CARDIO, as the pipeline leaves it; its forwarded_ts."""
    await _asked(store, eid)
    step = Step(
        QuestionState.DONE,
        specialty=specialty,
        target_room=CARDIO,
        routed=True,
        forward_event_id=f"$fwd{eid}",
        effects=(Outgoing(f"tx-fwd{eid}", "forward", CARDIO, {"body": "fwd"}),),
    )
    await store.apply(eid, step)
    row = await store.question(eid)
    assert row is not None and row.forwarded_ts is not None
    return row.forwarded_ts


async def _answer(store: Store, eid: str, ts: int, *, n: int = 1, answer: bool = True) -> None:
    msg = ThreadMessage(f"$a{eid}{n}", eid, CARDIO, "forward", "@doc:x", ts, answer=answer)
    assert await store.add_thread_message(msg)


# -- deadlines ------------------------------------------------------------------------------


async def test_escalations_are_planned_once_by_specialty_and_read_in_order(store: Store) -> None:
    fwd = await _forwarded(store, "$q1")  # Cardio: its own steps
    fwd2 = await _forwarded(store, "$q2", specialty=None)  # triage: the default steps
    await _asked(store, "$q3")  # not forwarded: nothing to escalate
    after = {"cardio": (3600.0, 14400.5)}
    assert await store.plan_escalations(after, (86400.0,)) == 2
    assert await store.plan_escalations(after, (86400.0,)) == 0
    due = await store.due_actions(fwd + 10 * DAY)
    assert due == [
        DueAction("escalate:$q1:0", "escalate", "$q1", CARDIO, 0, False, fwd + HOUR),
        DueAction("escalate:$q1:1", "escalate", "$q1", CARDIO, 1, True, fwd + 14_400_500),
        DueAction("escalate:$q2:0", "escalate", "$q2", CARDIO, 0, True, fwd2 + DAY),
    ]
    assert await store.next_due_ts() == fwd + HOUR
    assert await store.due_actions(fwd + HOUR) == due[:1]  # due at ``now`` included
    assert await store.due_actions(fwd + HOUR - 1) == []
    assert [d.key for d in await store.due_actions(fwd + 10 * DAY, limit=2)] == [
        "escalate:$q1:0",
        "escalate:$q1:1",
    ]


async def test_no_deadline_means_none(store: Store) -> None:
    assert await store.next_due_ts() is None
    assert await store.due_actions(now_ms()) == []
    assert await store.plan_escalations({}, (60.0,)) == 0
    assert await store.due_state("escalate:$nope:0") is None
    assert await store.last_digest_ts(CARDIO) is None


async def test_settling_records_effects_and_pings_once(store: Store) -> None:
    fwd = await _forwarded(store, "$q")
    await store.plan_escalations({}, (3600.0,))
    [due] = await store.due_actions(fwd + DAY)
    assert await store.expert_join(CARDIO, "@doc:x", "Cardio")
    ping = Outgoing("tx-esc-$q-0", "escalate", CARDIO, {"body": "Toujours sans réponse 💬"})
    before = now_ms()
    settle = store.settle(due.key, question_id="$q", effects=[ping], pinged=[("@doc:x", CARDIO)])
    assert await settle is True
    assert (
        await store.settle(due.key, question_id="$q", effects=[ping], pinged=[("@doc:x", CARDIO)])
        is False
    )
    assert await store.due_state(due.key) == "done"
    assert await store.due_actions(fwd + DAY) == []
    assert await store.next_due_ts() is None
    assert [e.tx_id for e in await store.effects_for("$q")] == ["tx-fwd$q", "tx-esc-$q-0"]
    [expert] = await store.experts_in(CARDIO, now_ms())
    assert expert.pings_today == 1  # the second settle pinged nobody
    assert expert.last_ping_ts is not None and before <= expert.last_ping_ts <= now_ms()


async def test_a_skipped_deadline_keeps_its_note_and_sends_nothing(store: Store) -> None:
    fwd = await _forwarded(store, "$q")
    await store.plan_escalations({}, (3600.0,))
    assert await store.settle("escalate:$q:0", question_id="$q", note="answered")
    assert await store.due_state("escalate:$q:0") == "skipped"
    assert [e.tx_id for e in await store.effects_for("$q")] == ["tx-fwd$q"]
    assert await store.due_actions(fwd + DAY) == []


async def test_an_answer_recorded_after_the_read_stops_the_escalation(store: Store) -> None:
    """The scheduler reads the question, chooses experts, then settles: an answer recorded in
    between must win (no expert pinged for an answered question)."""
    fwd = await _forwarded(store, "$q")
    await store.plan_escalations({}, (3600.0,))
    [due] = await store.due_actions(fwd + DAY)
    assert await store.expert_join(CARDIO, "@doc:x", "Cardio")
    await _answer(store, "$q", fwd + 1000)  # arrives while the scheduler is deciding
    ping = Outgoing("tx-esc-$q-0", "escalate", CARDIO, {"body": "Toujours sans réponse"})
    assert await store.settle(
        due.key,
        question_id="$q",
        effects=[ping],
        pinged=[("@doc:x", CARDIO)],
        unless_answered=True,
    )
    assert await store.due_state(due.key) == "skipped"
    assert [e.tx_id for e in await store.effects_for("$q")] == ["tx-fwd$q"]
    [expert] = await store.experts_in(CARDIO, now_ms())
    assert expert.pings_today == 0
    # Unanswered, the same call sends and pings.
    fwd2 = await _forwarded(store, "$r")
    await store.plan_escalations({}, (3600.0,))
    [due2] = await store.due_actions(fwd2 + DAY)
    ping2 = Outgoing("tx-esc-$r-0", "escalate", CARDIO, {"body": "Toujours sans réponse"})
    assert await store.settle(
        due2.key,
        question_id="$r",
        effects=[ping2],
        pinged=[("@doc:x", CARDIO)],
        unless_answered=True,
    )
    assert await store.due_state(due2.key) == "done"
    assert "tx-esc-$r-0" in [e.tx_id for e in await store.effects_for("$r")]


async def test_solve_reminders_follow_the_last_message_until_sent(store: Store) -> None:
    fwd = await _forwarded(store, "$q")
    await _forwarded(store, "$solved")
    await _forwarded(store, "$quiet")  # no answer: no reminder
    await _answer(store, "$q", T0 + HOUR)
    await _answer(store, "$solved", T0 + HOUR)
    await store.update_question("$solved", solved=True, solved_by="$react")
    await store.plan_solve_reminders(172800.0)
    await store.plan_solve_reminders(172800.0)  # again: the same row
    due = [d for d in await store.due_actions(T0 + 30 * DAY) if d.kind == "solve"]
    assert due == [DueAction("solve:$q", "solve", "$q", INTAKE, 0, True, T0 + HOUR + 2 * DAY)]
    await _answer(store, "$q", T0 + 5 * HOUR, n=2, answer=False)  # the asker replies
    await store.plan_solve_reminders(172800.0)
    [moved] = [d for d in await store.due_actions(T0 + 30 * DAY) if d.kind == "solve"]
    assert moved.due_ts == T0 + 5 * HOUR + 2 * DAY
    assert await store.settle("solve:$q", question_id="$q", effects=[])
    await _answer(store, "$q", T0 + 9 * HOUR, n=3)
    await store.plan_solve_reminders(172800.0)  # a sent reminder stays sent
    assert await store.due_state("solve:$q") == "done"
    assert [d for d in await store.due_actions(fwd + 30 * DAY) if d.kind == "solve"] == []


async def test_reschedule_moves_only_a_pending_deadline(store: Store) -> None:
    await _forwarded(store, "$q")
    await _answer(store, "$q", T0)
    await store.plan_solve_reminders(3600.0)
    await store.reschedule("solve:$q", T0 + 7 * HOUR)
    assert await store.next_due_ts() == T0 + 7 * HOUR
    assert await store.settle("solve:$q", question_id="$q")
    await store.reschedule("solve:$q", T0 + 9 * HOUR)
    assert await store.next_due_ts() is None


async def test_one_digest_pending_per_room_and_the_last_one_remembered(store: Store) -> None:
    await store.plan_digest(CARDIO, "2025-12-02", T0)
    await store.plan_digest(CARDIO, "2025-12-03", T0 + DAY)  # one pending already
    await store.plan_digest("!neuro:x", "2025-12-02", T0 + 1)
    due = await store.due_actions(T0 + 2 * DAY)
    assert due == [
        DueAction("digest:!cardio:x:2025-12-02", "digest", None, CARDIO, 0, False, T0),
        DueAction("digest:!neuro:x:2025-12-02", "digest", None, "!neuro:x", 0, False, T0 + 1),
    ]
    digest = Outgoing("tx-digest", "digest", CARDIO, {"body": "Résumé du jour"})
    before = now_ms()
    assert await store.settle(due[0].key, effects=[digest])
    last = await store.last_digest_ts(CARDIO)
    assert last is not None and before <= last <= now_ms()
    assert await store.last_digest_ts("!neuro:x") is None  # still pending
    assert (await store.effect("tx-digest")) is not None
    await store.plan_digest(CARDIO, "2025-12-03", T0 + DAY)
    assert [d.key for d in await store.due_actions(T0 + 2 * DAY)] == [
        "digest:!neuro:x:2025-12-02",
        "digest:!cardio:x:2025-12-03",
    ]
    assert await store.settle("digest:!cardio:x:2025-12-03", note="nothing to say")
    assert await store.last_digest_ts(CARDIO) is not None


# -- experts --------------------------------------------------------------------------------


async def test_experts_join_leave_and_their_settings(store: Store) -> None:
    assert await store.expert_join(CARDIO, "@ana:x", "Cardio")
    assert not await store.expert_join(CARDIO, "@ana:x", "Cardio")
    assert await store.expert_join(CARDIO, "@bob:x", "Cardio")
    assert await store.expert_join("!neuro:x", "@ana:x", "Neuro")
    assert await store.expert_settings("@ana:x") == (None, None)
    # !expert quiet 22:00-07:00 Europe/Paris, then !expert tz, then !expert quiet off
    await store.set_expert_settings("@ana:x", timezone="Europe/Paris", quiet=(1320, 420))
    assert await store.expert_settings("@ana:x") == ("Europe/Paris", (1320, 420))
    await store.set_expert_settings("@ana:x", timezone="America/Montreal", quiet=(1320, 420))
    await store.set_expert_settings("@bob:x", timezone=None, quiet=(0, 360))
    experts = await store.experts_in(CARDIO, now_ms())
    assert [(e.user_id, e.room_id, e.timezone, e.quiet, e.pings_today) for e in experts] == [
        ("@ana:x", CARDIO, "America/Montreal", (1320, 420), 0),
        ("@bob:x", CARDIO, None, (0, 360), 0),
    ]
    assert experts[0].joined_ts > 2**31 and experts[0].last_ping_ts is None
    await store.set_expert_settings("@ana:x", timezone="America/Montreal", quiet=None)
    assert await store.expert_settings("@ana:x") == ("America/Montreal", None)
    assert await store.expert_leave(CARDIO, "@bob:x")
    assert not await store.expert_leave(CARDIO, "@bob:x")
    assert [e.user_id for e in await store.experts_in(CARDIO, now_ms())] == ["@ana:x"]
    assert await store.experts_in("!nobody:x", now_ms()) == []


async def test_pings_count_for_a_day_in_every_room(store: Store) -> None:
    await store.expert_join(CARDIO, "@ana:x", "Cardio")
    await store.expert_join("!neuro:x", "@ana:x", "Neuro")
    await store.plan_digest(CARDIO, "d1", T0)
    await store.plan_digest("!neuro:x", "d1", T0)
    assert await store.settle(f"digest:{CARDIO}:d1", pinged=[("@ana:x", CARDIO)])
    assert await store.settle("digest:!neuro:x:d1", pinged=[("@ana:x", "!neuro:x")])
    now = now_ms()
    [ana] = await store.experts_in(CARDIO, now)
    assert ana.pings_today == 2 and ana.last_ping_ts is not None
    [later] = await store.experts_in("!neuro:x", now + DAY + HOUR)
    assert later.pings_today == 0 and later.last_ping_ts == ana.last_ping_ts


# -- open questions and figures ---------------------------------------------------------------


async def test_open_questions_solved_since_and_stat_rows(store: Store) -> None:
    f1 = await _forwarded(store, "$q1")
    await _forwarded(store, "$q2")
    await _forwarded(store, "$q3", specialty=None)
    await _asked(store, "$not-forwarded")
    await _answer(store, "$q2", T0 + HOUR)
    await store.update_question("$q3", solved=True, solved_by="$react")
    rows, total = await store.open_questions(CARDIO, unanswered_only=False, limit=10)
    assert ([q.event_id for q in rows], total) == (["$q1", "$q2"], 2)
    rows, total = await store.open_questions(CARDIO, unanswered_only=True, limit=10)
    assert ([q.event_id for q in rows], total) == (["$q1"], 1)
    rows, total = await store.open_questions(CARDIO, unanswered_only=False, limit=1)
    assert ([q.event_id for q in rows], total) == (["$q1"], 2)
    assert await store.open_questions("!neuro:x", unanswered_only=False, limit=5) == ([], 0)
    [solved], solved_total = await store.solved_since(CARDIO, f1 - DAY, 10)
    assert solved_total == 1
    assert solved.event_id == "$q3" and solved.solved
    assert solved.solved_ts is not None
    assert await store.solved_since(CARDIO, solved.solved_ts, 10) == ([], 0)
    stats = sorted(await store.stat_rows(T0 - DAY), key=lambda r: (r.specialty, repr(r)))
    assert stats == [
        StatRow("", T0, None),
        StatRow("Cardio", T0, T0 + HOUR),
        StatRow("Cardio", T0, None),
    ]
    assert await store.stat_rows(T0 + 1) == []


async def test_stat_rows_fall_back_on_the_forward_time(store: Store) -> None:
    fwd = await _forwarded(store, "$q")
    await store.update_question("$q", created_ts=0)  # an imported or legacy row
    assert await store.stat_rows(fwd - HOUR) == [StatRow("Cardio", fwd, None)]


# -- vectors --------------------------------------------------------------------------------


def _blob(seed: int, model: str = MODEL) -> bytes:
    dim = 512 if model == MODEL else 384
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return encode_vector(vector, model)


async def test_a_vector_blob_comes_back_byte_for_byte(store: Store) -> None:
    await _asked(store, "$q")
    blob = _blob(1)
    blob = blob[:-3] + b"\x00\xff\x00"  # NUL and high bytes: a BLOB, not a text
    assert await store.put_vector("$q", "$q", MODEL, blob)
    assert await store.vector_of("$q") == (MODEL, "$q", blob)
    [(eid, room, body, solved, revision, stored)] = await store.indexable_with_vectors(MODEL)
    assert (eid, room, body, solved, revision, stored) == (
        "$q",
        INTAKE,
        "Douleur thoracique à l'effort ?",
        False,
        "$q",
        blob,
    )
    good = _blob(2)
    assert await store.put_vector("$q", "$q", MODEL, good)  # replaced
    assert await store.vector_count() == 1
    vec = await store.vector_of("$q")
    assert vec is not None and decode_vector(vec[2], MODEL) is not None


async def test_a_vector_of_an_old_text_or_a_gone_question_is_not_kept(store: Store) -> None:
    assert not await store.put_vector("$gone", "$gone", MODEL, _blob(1))
    await _asked(store, "$q")
    await store.update_question("$q", revision="$edit", body="Douleur thoracique au repos ?")
    assert not await store.put_vector("$q", "$q", MODEL, _blob(1))  # embedded before the edit
    assert await store.vector_count() == 0
    assert await store.unembedded(MODEL) == [("$q", "$edit", "Douleur thoracique au repos ?")]
    assert await store.put_vector("$q", "$edit", MODEL, _blob(2))
    assert await store.unembedded(MODEL) == []
    assert await store.vector_of("$q") == (MODEL, "$edit", _blob(2))


async def test_vectors_in_bulk_by_model_and_dropped(store: Store) -> None:
    for i in range(3):
        await _asked(store, f"$q{i}", body=f"Question {i} ?")
    await store.update_question("$q1", solved=True, solved_by="$r")
    rows = [("$q0", "$q0", _blob(0)), ("$q1", "$q1", _blob(1)), ("$gone", "$gone", _blob(9))]
    assert await store.put_vectors(rows, MODEL) == 2
    assert await store.put_vectors([], MODEL) == 0
    assert (await store.vector_count(), await store.vector_count(MODEL)) == (2, 2)
    assert await store.vector_count(OTHER_MODEL) == 0
    assert await store.unembedded(MODEL) == [("$q2", "$q2", "Question 2 ?")]
    got = await store.indexable_with_vectors(MODEL)
    assert [(r[0], r[3], r[5]) for r in got] == [
        ("$q0", False, _blob(0)),
        ("$q1", True, _blob(1)),
        ("$q2", False, None),
    ]
    # Another model: every question is to embed again, and its vector replaces the old one.
    assert [r[5] for r in await store.indexable_with_vectors(OTHER_MODEL)] == [None] * 3
    assert len(await store.unembedded(OTHER_MODEL)) == 3
    assert await store.put_vector("$q0", "$q0", OTHER_MODEL, _blob(0, OTHER_MODEL))
    assert await store.vector_count(OTHER_MODEL) == 1 and await store.vector_count(MODEL) == 1
    await store.drop_vector("$q1")
    await store.drop_vector("$q1")  # again: a no-op
    assert await store.vector_of("$q1") is None
    assert await store.vector_count() == 1


async def test_a_vector_goes_with_its_question(store: Store) -> None:
    await _asked(store, "$q")
    await _asked(store, "$r")
    assert await store.put_vectors([("$q", "$q", _blob(1)), ("$r", "$r", _blob(2))], MODEL) == 2
    assert await store.erase_question("$q") is not None
    assert await store.vector_of("$q") is None
    # Deleted some other way: the foreign key cascades on both backends.
    await store.execute_script(["DELETE FROM questions WHERE event_id = '$r'"])
    assert await store.vector_count() == 0


# -- the translated migrations on PostgreSQL --------------------------------------------------


async def test_postgresql_schema_of_followups_and_vectors(db_backend: str, store: Store) -> None:
    if db_backend != "postgresql":
        pytest.skip("PostgreSQL's catalogue")
    async with store._db.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name IN ('due_actions', 'experts', 'expert_settings', 'expert_pings', "
        "'question_vectors')"
    ) as cur:
        columns = {(r[0], r[1]): (r[2], r[3]) for r in await cur.fetchall()}
    for table, column in [
        ("due_actions", "due_ts"),
        ("due_actions", "step"),
        ("experts", "joined_ts"),
        ("expert_pings", "ts"),
        ("question_vectors", "updated_at"),
    ]:
        assert columns[(table, column)] == ("bigint", "NO"), (table, column)
    assert columns[("due_actions", "done_ts")] == ("bigint", "YES")
    assert columns[("expert_settings", "quiet_start")] == ("bigint", "YES")
    assert columns[("question_vectors", "vector")] == ("bytea", "NO")
    assert columns[("due_actions", "key")] == ("text", "NO")
    async with store._db.execute(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "WHERE c.conrelid = 'question_vectors'::regclass AND c.contype = 'f'"
    ) as cur:
        [fk] = [str(r[0]) for r in await cur.fetchall()]
    assert fk == "FOREIGN KEY (event_id) REFERENCES questions(event_id) ON DELETE CASCADE"
    async with store._db.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename IN ('due_actions', 'expert_pings') "
        "ORDER BY indexname"
    ) as cur:
        indexes = [str(r[0]) for r in await cur.fetchall()]
    assert indexes == [
        "due_actions_pending",
        "due_actions_pkey",
        "due_actions_question",
        "due_actions_room",
        "expert_pings_user",
    ]
