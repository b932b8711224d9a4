"""Operator pieces without a homeserver: the health verdict, doctor's checks, sd_notify on a
real datagram socket, JSON log lines, and the /metrics exposition."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from peerbot.bot.metrics import Metrics
from peerbot.bot.systemd import Notifier, watchdog_interval
from peerbot.core.doctor import (
    MIN_FREE_BYTES,
    DatabaseFacts,
    FileFacts,
    RoomFacts,
    check_database,
    check_private_file,
    check_room,
    needed_level,
    user_level,
)
from peerbot.core.health import SyncFacts, judge
from peerbot.logs import SECRETS, JsonFormatter, TextFormatter

BOT = "@peerbot:example.org"

# -- health ---------------------------------------------------------------------------------


def test_health_starting_then_syncing_then_failing_then_stalled() -> None:
    assert judge(SyncFacts(None, None, None), 10).state == "starting"
    assert not judge(SyncFacts(None, None, 5.0, "x"), 10).ok
    ok = judge(SyncFacts(1.0, 9.0, None), 10.0)
    assert ok.ok and ok.state == "syncing" and ok.last_sync_age == pytest.approx(1.0)
    failing = judge(SyncFacts(1.0, 9.0, 9.5, "Transient"), 10.0)
    assert not failing.ok and failing.state == "sync failing"
    assert failing.body() == {
        "state": "sync failing",
        "last_sync_age_seconds": 1.0,
        "reason": "Transient",
    }
    # A failure before the last success is over.
    assert judge(SyncFacts(1.0, 9.0, 8.0, "old"), 10.0).ok
    stalled = judge(SyncFacts(1.0, 9.0, None), 9.0 + 91)
    assert not stalled.ok and stalled.state == "sync stalled"


def test_sync_health_sees_the_clients_connection_failures() -> None:
    now = [100.0]
    m = Metrics(clock=lambda: now[0])
    m.sync_ok()
    assert m.health.report().ok
    failure: list[float | None] = [None]
    m.health.connection_failure_at = lambda: failure[0]
    now[0] = 101.0
    failure[0] = 100.5
    report = m.health.report()
    assert report.state == "sync failing" and report.reason == "the homeserver cannot be reached"
    now[0] = 102.0
    m.sync_ok()
    assert m.health.report().ok


# -- doctor's checks --------------------------------------------------------------------------


def test_power_levels_helpers() -> None:
    pl = {"users": {BOT: 10}, "users_default": 0, "events": {"m.reaction": 20}}
    assert user_level(pl, BOT) == 10 and user_level(pl, "@x:y") == 0
    assert needed_level(pl, "m.reaction") == 20
    assert needed_level(pl, "m.room.message") == 0
    assert needed_level({"events_default": 50}, "m.room.message") == 50
    assert user_level({"users": {BOT: "75"}}, BOT) == 75


def room(**kw: object) -> RoomFacts:
    base: dict[str, object] = {
        "ref": "#r:example.org",
        "roles": ("intake",),
        "room_id": "!r:example.org",
        "joined": True,
        "power_levels": {},
        "encrypted": False,
    }
    base.update(kw)
    return RoomFacts(**base)  # type: ignore[arg-type]


def problems_of(facts: RoomFacts, enabled: bool = False, ready: bool = False) -> list[str]:
    checks = check_room(facts, BOT, encryption_enabled=enabled, encryption_ready=ready)
    return [c.line() for c in checks if not c.ok]


def test_room_checks() -> None:
    assert problems_of(room()) == []
    got = problems_of(room(power_levels={"events_default": 50, "users": {BOT: 0}}))
    assert len(got) == 3  # post, react, redact its own
    assert got[0].startswith("problem  room #r:example.org (intake) power: cannot post")
    assert f"give {BOT} power level 50" in got[0]
    got = problems_of(room(power_levels={"events": {"m.room.redaction": 100}}))
    assert len(got) == 1 and "cannot redact its own messages" in got[0]
    assert problems_of(room(joined=False, invited=True, power_levels=None)) == []
    got = problems_of(room(joined=False, power_levels=None))
    assert got and "neither joined nor invited" in got[0]
    got = problems_of(room(resolve_error="M_NOT_FOUND"))
    assert got and "the alias does not resolve" in got[0]
    got = problems_of(room(encrypted=True))
    assert got and "set encryption.enabled: true" in got[0]
    assert problems_of(room(encrypted=True), enabled=True, ready=True) == []
    assert problems_of(room(encrypted=True), enabled=True, ready=False)
    # Encrypted rooms need m.room.encrypted, not m.room.message.
    pl = {"events": {"m.room.encrypted": 50}}
    assert problems_of(room(encrypted=True, power_levels=pl), enabled=True, ready=True)
    assert problems_of(room(encrypted=False, power_levels=pl)) == []


def test_database_checks() -> None:
    good = DatabaseFacts(
        "/x/p.db", True, applied=4, latest=4, free_bytes=MIN_FREE_BYTES, mode=0o600
    )
    assert all(c.ok for c in check_database(good))
    lines = [c.line() for c in check_database(good)]
    assert "ok       database /x/p.db: schema 4, up to date" in lines
    pending = DatabaseFacts("/x/p.db", True, applied=2, latest=4, mode=0o600)
    assert "2 migration(s) pending" in check_database(pending)[0].detail
    newer = DatabaseFacts("/x/p.db", True, applied=5, latest=4, mode=0o600)
    assert not check_database(newer)[0].ok
    low = DatabaseFacts("/x/p.db", True, applied=4, latest=4, free_bytes=10, mode=0o644)
    bad = [c.line() for c in check_database(low) if not c.ok]
    assert len(bad) == 2
    assert "only 0 MiB free" in bad[0] and "chmod 600 /x/p.db" in bad[1]
    assert not check_database(DatabaseFacts("/x/p.db", False, folder_exists=False))[0].ok
    assert check_database(DatabaseFacts("/x/p.db", False, latest=4, free_bytes=1 << 30))[0].ok


def test_private_file_checks() -> None:
    assert check_private_file("key file", FileFacts("/k", True, 0o600)).ok
    opened = check_private_file("encryption store", FileFacts("/s", True, 0o755, is_dir=True))
    assert not opened.ok and opened.fix == "chmod 700 /s"
    assert check_private_file("key file", FileFacts("/k", False)).ok
    assert not check_private_file("key file", FileFacts("/k", False), required=True).ok


# -- systemd --------------------------------------------------------------------------------


def test_sd_notify_ready_and_watchdog_on_a_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2.0)
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        assert notifier.ready("syncing")
        assert notifier.watchdog()
        got = [server.recv(4096).decode() for _ in range(2)]
    assert got == ["READY=1\nSTATUS=syncing", "WATCHDOG=1"]


def test_sd_notify_abstract_socket_and_absent() -> None:
    name = f"peerbot-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2.0)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert server.recv(100) == b"STOPPING=1"
    off = Notifier({})
    assert not off.enabled and not off.ready()


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0


# -- logs -----------------------------------------------------------------------------------


def _log_through(formatter: logging.Formatter) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(SECRETS)
    logger = logging.getLogger("peerbot.test_ops")
    logger.addHandler(handler)
    logger.propagate = False
    SECRETS.add("hunter2-secret")
    try:
        logger.warning("two\nlines with hunter2-secret")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed: %s", "x")
    finally:
        logger.removeHandler(handler)
        SECRETS.secrets.discard("hunter2-secret")
    return stream.getvalue().splitlines()


def test_json_logs_parse_line_by_line() -> None:
    lines = _log_through(JsonFormatter())
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert events[0]["msg"] == "two\nlines with ***" and events[0]["level"] == "WARNING"
    assert events[0]["logger"] == "peerbot.test_ops" and events[0]["ts"].endswith("+00:00")
    assert events[1]["msg"] == "failed: x" and "ValueError: boom" in events[1]["exc"]


def test_text_logs_keep_one_event_per_unindented_line() -> None:
    lines = _log_through(TextFormatter())
    starts = [line for line in lines if not line.startswith("    ")]
    assert len(starts) == 2 and "hunter2" not in "\n".join(lines)


# -- metrics --------------------------------------------------------------------------------


def test_metrics_exposition_names_and_values() -> None:
    m = Metrics()
    m.question_seen()
    m.question_seen()
    m.question_forwarded()
    m.sync_failed("Transient")
    m.sampled.handler_errors = lambda: 3
    m.sampled.plugin_failures = lambda: [("guard", 2, 1)]
    m.sampled.homeserver_errors = lambda: [("M_LIMIT_EXCEEDED", 4)]
    m.sampled.rate_limited = lambda: 4
    m.sampled.outbox = (5, 12.5)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}

    def value(name: str, **labels: str) -> float:
        for family in families.values():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        raise AssertionError(f"{name} {labels} not exposed")

    assert value("peerbot_questions_seen_total") == 2
    assert value("peerbot_questions_forwarded_total") == 1
    assert value("peerbot_questions_held_total") == 0
    assert value("peerbot_sync_failures_total") == 1
    assert value("peerbot_handler_errors_total") == 3
    assert value("peerbot_plugin_errors_total", plugin="guard") == 2
    assert value("peerbot_plugin_timeouts_total", plugin="guard") == 1
    assert value("peerbot_homeserver_errors_total", errcode="M_LIMIT_EXCEEDED") == 4
    assert value("peerbot_homeserver_rate_limited_total") == 4
    assert value("peerbot_outbox_pending") == 5
    assert value("peerbot_outbox_oldest_pending_age_seconds") == 12.5
    assert value("peerbot_up") == 0  # no sync handled yet
    for family in families.values():
        assert family.name.startswith("peerbot_"), family.name
    # A second bot in the same process has figures of its own.
    assert b"peerbot_questions_seen_total 0.0" in Metrics().render()


def test_sd_notify_never_blocks_when_nobody_reads(tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        results: list[bool] = []
        # Far over the queue's length; in a thread, so that a blocking send fails the test.
        worker = threading.Thread(
            target=lambda: results.extend(notifier.watchdog() for _ in range(200)), daemon=True
        )
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "sd_notify blocked on a full socket"
    assert len(results) == 200 and results[0] and not all(results)  # some dropped


def test_grafana_dashboard_names_only_exposed_metrics() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "contrib" / "grafana-dashboard.json").read_text("utf-8"))
    families = list(text_string_to_metric_families(Metrics().render().decode()))
    # A labelled family without samples yet (no plugin) still has its name.
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {name for e in exprs for name in re.findall(r"\bpeerbot_\w+", e)}
    assert used <= exposed, used - exposed
    # Every figure the bot exposes is on the dashboard.
    assert exposed <= used, exposed - used
