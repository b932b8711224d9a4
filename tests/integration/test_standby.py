"""Active/standby on PostgreSQL: two ``peerbot run`` on one database with one bot account.

The leader is SIGKILLed in the middle of a burst of 100 questions; the standby takes over with
the leader's saved token and device, resumes from the saved sync token and the outbox, and every
question ends up forwarded and acknowledged exactly once, counted in the rooms. The takeover
time is printed. Also: a standby stops cleanly on SIGTERM; a leader whose lock connection is cut
stops at once, so that two never lead together, then leads again when nobody else does (the
same when its other connection, the one storing the work, is cut); and a PostgreSQL restart
under a running bot loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from botproc import READY_LINE, BotProcess
from helpers import MakeUser
from pgserver import PostgresServer
from test_faults import (
    assert_exactly_once,
    bots,
    history,
    live_count,
    make_site,
    post_burst,
    wait_all_acked,
    wait_until,
)

from peerbot.dev.devserver import SynapseServer
from peerbot.store.leader import LEADER_LOCK

__all__ = ["bots", "takeover_run"]

STANDBY_LINE = "Standby: another PeerBot leads"


def _device(bot: BotProcess) -> str:
    found = re.findall(r"Logged in as \S+, device (\S+)", bot.log_text())
    assert found, bot.log_tail()
    return found[-1]


async def _wait_log(bot: BotProcess, text: str, timeout: float) -> None:  # noqa: ASYNC109
    await wait_until(
        lambda: text in bot.log_text(this_run=True),
        timeout,
        lambda: f"{bot!r} never logged {text!r}:\n{bot.log_tail()}",
    )


async def takeover_run(
    server: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],
    url: str,
    tmp_path: Path,
    *,
    questions: int = 100,
    kill_after: int = 20,
    check: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, float]:
    """One run: leader A, standby B, a burst, SIGKILL A; the figures (seconds) of the takeover."""
    site = await make_site(server, make_user)
    config = site.config(tmp_path / "unused.db")
    config["storage"] = {"database": url, "standby_poll_ms": 200}
    a, b = bots(config, "a"), bots(config, "b")
    await a.start_ready()
    b.start()
    await _wait_log(b, STANDBY_LINE, 60)
    entraide = site.rooms["entraide"]
    targets = [site.rooms["cardio"], site.rooms["triage"]]
    bot_id = site.bot_user.user_id
    posting = post_burst(site, questions)
    await wait_until(
        lambda: live_count(site.bob, targets, bot_id) >= kill_after,
        120,
        lambda: f"fewer forwards than expected before the kill\n{a.log_tail()}",
    )
    killed_at = time.monotonic()
    await a.kill9()
    at_kill = live_count(site.bob, targets, bot_id)
    await b.wait_ready(60)
    ready_at = time.monotonic()
    # Forwards the leader sent just before dying may still be arriving: count from here on.
    at_ready = live_count(site.bob, targets, bot_id)
    await wait_until(
        lambda: live_count(site.bob, targets, bot_id) > at_ready,
        60,
        lambda: f"the standby forwarded nothing after taking over\n{b.log_tail()}",
    )
    first_send_at = time.monotonic()
    ids = list(await posting)
    await wait_all_acked(site, ids, 180, b)
    if check is not None:
        await check(_device(a))
    assert _device(b) == _device(a), "the standby must send as the leader's device"
    status, _ = await b.terminate()
    assert status == 0, b.log_tail()
    fwd_events = [e for r in targets for e in await history(site.bob, r)]
    ack_events = await history(site.alice, entraide)
    assert_exactly_once(ids, fwd_events, ack_events, bot_id)
    assert at_kill < len(ids), "the kill came after all the work"
    return {
        "ready": ready_at - killed_at,
        "first_send": first_send_at - killed_at,
        "forwarded_at_kill": float(at_kill),
    }


@pytest.mark.slow
async def test_standby_takes_over_after_sigkill_of_the_leader_exactly_once(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    url = await postgres.create_database()
    figures = await takeover_run(synapse, make_user, bots, url, tmp_path)
    print(
        f"\ntakeover after SIGKILL: standby running in {figures['ready']:.2f} s, a new forward "
        f"seen {figures['first_send']:.2f} s after the kill "
        f"({figures['forwarded_at_kill']:.0f} of 100 forwarded when the leader died)"
    )
    assert figures["ready"] < 10, figures


async def test_a_standby_stops_on_sigterm_and_a_leader_stops_when_its_lock_is_cut(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    import asyncpg

    site = await make_site(synapse, make_user)
    url = await postgres.create_database()
    config: dict[str, Any] = site.config(tmp_path / "unused.db")
    config["storage"] = {"database": url, "standby_poll_ms": 100}
    # Someone else holds the lead: the bot waits, logs in nowhere, and SIGTERM ends it cleanly.
    holder = await asyncpg.connect(url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
        waiting = bots(config, "waiting")
        waiting.start()
        await _wait_log(waiting, STANDBY_LINE, 60)
        status, seconds = await waiting.terminate()
        assert status == 0 and seconds < 5, waiting.log_tail()
        assert "Logged in" not in waiting.log_text()
    finally:
        await holder.close()
    # The lead is free now: the bot leads; cutting its lock connection stops it (exit 1).
    leader = bots(config, "leader")
    await leader.start_ready()
    admin = await asyncpg.connect(url)
    try:
        cut = await admin.fetch(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' "
            "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
            LEADER_LOCK,
        )
    finally:
        await admin.close()
    assert len(cut) == 1
    # It stops at once, then (nobody else leads) takes the lead again and runs on.
    await _wait_log(leader, "Lost the lead on the database", 30)
    await wait_until(
        lambda: leader.log_text().count(READY_LINE) >= 2,
        60,
        lambda: f"the leader did not come back after losing the lead\n{leader.log_tail()}",
    )
    assert leader.returncode is None, leader.log_tail()
    # Its other connection, the one that stores the work, is cut: same recovery.
    admin = await asyncpg.connect(url)
    try:
        cut = await admin.fetch(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
            "AND a.pid NOT IN (SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory')"
        )
    finally:
        await admin.close()
    assert len(cut) == 1
    await _wait_log(leader, "the database connection broke", 30)
    await wait_until(
        lambda: leader.log_text().count(READY_LINE) >= 3,
        60,
        lambda: f"the leader did not come back after losing its store\n{leader.log_tail()}",
    )
    ids = list(await post_burst(site, 3))
    await wait_all_acked(site, ids, 60, leader)
    status, _ = await leader.terminate()
    assert status == 0, leader.log_tail()


@pytest.mark.slow
async def test_the_bot_rides_out_a_postgresql_restart_exactly_once(
    synapse: SynapseServer,
    make_user: MakeUser,
    bots: Callable[..., BotProcess],
    tmp_path: Path,
) -> None:
    """PostgreSQL stops (every session cut) and comes back 5 s later, questions arriving all
    along: the bot waits for it, leads again in the same process, and every question is
    forwarded and acknowledged exactly once."""
    server = PostgresServer()  # its own: halting the session's server would hit other tests
    server.start()
    try:
        site = await make_site(synapse, make_user)
        url = await server.create_database()
        config: dict[str, Any] = site.config(tmp_path / "unused.db")
        config["storage"] = {"database": url, "standby_poll_ms": 200}
        bot = bots(config, "bot")
        await bot.start_ready()
        targets = [site.rooms["cardio"], site.rooms["triage"]]
        bot_id = site.bot_user.user_id
        before = list(await post_burst(site, 5))
        await wait_all_acked(site, before, 60, bot)
        server.halt()
        during = list(await post_burst(site, 5))  # Synapse takes them; the bot cannot store them
        await _wait_log(bot, "Lost the lead on the database", 30)
        await asyncio.sleep(5)  # a real outage: the bot keeps trying meanwhile
        server.resume()
        await wait_until(
            lambda: bot.log_text().count(READY_LINE) >= 2,
            90,
            lambda: f"the bot did not lead again after the restart\n{bot.log_tail()}",
        )
        after = list(await post_burst(site, 5))
        ids = before + during + after
        await wait_all_acked(site, ids, 120, bot)
        assert bot.returncode is None, bot.log_tail()
        status, _ = await bot.terminate()
        assert status == 0, bot.log_tail()
        fwd_events = [e for r in targets for e in await history(site.bob, r)]
        ack_events = await history(site.alice, site.rooms["entraide"])
        assert_exactly_once(ids, fwd_events, ack_events, bot_id)
    finally:
        server.stop()
