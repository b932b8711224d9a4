"""Issue 14: operators run PeerBot like Synapse.

A real ``peerbot run`` process on a Synapse of the test's own: ``/health`` over HTTP (503 while
starting, 200 after the first sync, 503 while Synapse is down, 200 again), ``/metrics`` counting
a forwarded question, sd_notify READY / WATCHDOG / STOPPING on a datagram socket set as
NOTIFY_SOCKET, the start-up check posted to ``admin_room``, JSON logs parsed line by line. And
``peerbot doctor`` against a real Synapse, with a room the bot cannot post in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import World  # type: ignore[import-not-found]
from helpers import MakeUser, StartSynapse, TestUser, unique_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from botproc import REPO, run_cli

Event = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def lock_room(admin: TestUser, room_id: str, events_default: int = 50) -> None:
    """Messages in this room need power ``events_default`` (the bot has 0)."""
    current = await admin.client.room_get_state_event(room_id, "m.room.power_levels")
    content = dict(current.content)
    content["events_default"] = events_default
    await admin.client.room_put_state(room_id, "m.room.power_levels", content)


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def poll(self) -> None:
        while True:
            try:
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return

    def messages(self) -> list[str]:
        self.poll()
        return [m for _, m in self.received]

    async def wait_for(self, prefix: str, timeout: float = 60.0) -> float:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for at, message in self.received:
                if message.startswith(prefix):
                    return at
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {prefix!r} notification within {timeout} s: {self.messages()}")

    def close(self) -> None:
        self.sock.close()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def wait_status(
    http: aiohttp.ClientSession,
    url: str,
    want: int,
    timeout: float = 60.0,  # noqa: ASYNC109
    alive: Callable[[], None] = lambda: None,
) -> str:
    """Poll until ``url`` answers ``want``; its body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        alive()
        try:
            status, body = await get(http, url)
            if status == want:
                return body
            last = (status, body)
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered {want} within {timeout} s; last: {last!r}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


@contextlib.asynccontextmanager
async def bot_process(
    config_path: Path, env: dict[str, str], log_path: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the test polls it
            [sys.executable, "-m", "peerbot.cli", "run", "--config", str(config_path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.xdist_group("ops-own-synapse")
async def test_health_metrics_systemd_and_admin_room(
    start_synapse: StartSynapse, make_user: MakeUser, tmp_path: Path
) -> None:
    server = await start_synapse()
    admin = await make_user("admin", server=server)
    alice = await make_user("alice", server=server)
    bot_user = await server.register(unique_name("peerbot"))
    rooms: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for key in ("entraide", "triage", "locked", "ops"):
        local = unique_name(key)
        rooms[key] = await admin.create_room(
            alias_localpart=local, public=True, invite=[bot_user.user_id], name=key
        )
        aliases[key] = f"#{local}:{server.server_name}"
    await alice.join(rooms["entraide"])
    await lock_room(admin, rooms["locked"])
    port = free_port()
    config = {
        "matrix": {
            "homeserver": server.base_url,
            "user_id": bot_user.user_id,
            "password_file": "bot-password",
        },
        "storage": {"database": str(tmp_path / "peerbot.db")},
        "language": "en",
        "log_format": "json",
        "admin_room": aliases["ops"],
        "metrics": {"bind": f"127.0.0.1:{port}"},
        "intake": [{"room": aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]}],
        "routing": {
            "fallback_room": aliases["triage"],
            "specialties": [
                {"name": "Cardiologie", "room": aliases["locked"], "keywords": ["ecg"]}
            ],
        },
    }
    secret = tmp_path / "bot-password"
    secret.write_text(bot_user.password + "\n", encoding="utf-8")
    secret.chmod(0o600)
    config_path = tmp_path / "bot.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    notify = Notifications(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERBOT_")}
    env.update(
        {"PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    )
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "bot.log"
    # Synapse frozen: the bot cannot log in, and /health must say so from the start.
    await server.pause()
    paused = True
    try:
        async with (
            bot_process(config_path, env, log_path) as proc,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):

            def alive() -> None:
                notify.poll()  # read as systemd does (the bot never blocks on it anyway)
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]

            body = await wait_status(http, f"{base}/health", 503, alive=alive)
            assert json.loads(body)["state"] == "starting"
            assert not any(m.startswith("READY=1") for m in notify.messages())
            await server.resume()
            paused = False
            started = time.monotonic()
            ready_at = await notify.wait_for("READY=1")
            body = await wait_status(http, f"{base}/health", 200, alive=alive)
            print(f"READY {ready_at - started:.2f} s after Synapse resumed")
            health = json.loads(body)
            assert health["state"] == "syncing" and health["last_sync_age_seconds"] < 30

            # The start-up checks found the room the bot cannot post in: one message.
            def startup_notice(e: Event) -> bool:
                body = str(e["content"].get("body", ""))
                return e["sender"] == bot_user.user_id and body.startswith("PeerBot started")

            notice = await admin.wait_for_event(rooms["ops"], startup_notice, timeout=30)
            text = notice["content"]["body"]
            assert aliases["locked"] in text and "cannot post" in text, text
            assert aliases["triage"] not in text  # that one is fine

            # A question that goes to triage: seen and forwarded, counted by /metrics.
            _, before = await get(http, f"{base}/metrics")
            assert metric(before, "peerbot_questions_forwarded_total") == 0
            await alice.send_text(rooms["entraide"], "#DocTocToc une question sans spécialité ?")
            await admin.wait_for_event(
                rooms["triage"], lambda e: e["sender"] == bot_user.user_id, timeout=30
            )
            deadline = time.monotonic() + 15
            while True:
                _, text = await get(http, f"{base}/metrics")
                if metric(text, "peerbot_questions_forwarded_total") == 1:
                    break
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.1)
            assert metric(text, "peerbot_questions_seen_total") == 1
            assert metric(text, "peerbot_questions_held_total") == 0
            assert metric(text, "peerbot_handler_errors_total") == 0
            assert metric(text, "peerbot_up") == 1
            for name in ("peerbot_outbox_pending", "peerbot_sync_lag_seconds"):
                metric(text, name)

            # Watchdog pings every WATCHDOG_USEC / 2.
            watchdogs = [m for m in notify.messages() if m == "WATCHDOG=1"]
            assert len(watchdogs) >= 2, notify.messages()

            # Synapse down: 503 with the reason; back up: 200 again.
            await server.stop()
            stopped = time.monotonic()
            body = await wait_status(http, f"{base}/health", 503, timeout=45, alive=alive)
            print(f"/health 503 {time.monotonic() - stopped:.2f} s after Synapse stopped")
            down = json.loads(body)
            assert down["state"] in ("sync failing", "sync stalled"), down
            await server._launch()  # the second half of restart()
            relaunched = time.monotonic()
            await wait_status(http, f"{base}/health", 200, timeout=60, alive=alive)
            print(f"/health 200 {time.monotonic() - relaunched:.2f} s after Synapse answered")

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            assert "STOPPING=1" in notify.messages()
    finally:
        if paused:
            await server.resume()
        notify.close()
    # log_format: json: every line the bot wrote is one JSON event.
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line]
    events = [json.loads(line) for line in lines]
    assert any(e["msg"].startswith("PeerBot is running") for e in events)
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in events)
    assert bot_user.password not in log_path.read_text(encoding="utf-8")


async def test_doctor_finds_the_room_the_bot_cannot_post_in(world: World, tmp_path: Path) -> None:
    await world.start_bot()  # joins the rooms and saves its session, then stops
    await world.stop_bots()
    config = {
        "matrix": {
            "homeserver": world.synapse.base_url,
            "user_id": world.bot_user.user_id,
            "password": world.bot_user.password,
        },
        "storage": {"database": str(world.db)},
        "intake": [
            {"room": world.aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]}
        ],
        "routing": {
            "fallback_room": world.aliases["triage"],
            "specialties": [
                {"name": "Cardiologie", "room": world.aliases["cardio"], "keywords": ["ecg"]}
            ],
        },
    }
    path = tmp_path / "doctor.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = await run_cli(["doctor", "--config", str(path)])
    assert result.status == 0, result.stdout + result.stderr
    assert "all checks ok" in result.stdout
    assert f"ok       room {world.aliases['cardio']} (specialty Cardiologie) power" in result.stdout

    await lock_room(world.admin, world.rooms["cardio"])
    result = await run_cli(["doctor", "--config", str(path)])
    assert result.status == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem")]
    assert len(problems) == 3, result.stdout  # post, react, redact its own (events_default)
    assert problems[0].startswith(
        f"problem  room {world.aliases['cardio']} (specialty Cardiologie) power: cannot post: "
        "the bot has level 0, m.room.message needs 50"
    ), result.stdout
    assert f"give {world.bot_user.user_id} power level 50" in problems[0]
    for line in result.stdout.splitlines()[:-1]:
        assert line.startswith(("ok       ", "problem  ")), line
    assert result.stdout.splitlines()[-1] == "3 problem(s) found"

    # An unknown alias: a problem too; a broken bot.yaml: exit 2.
    config["routing"]["fallback_room"] = f"#{unique_name('nope')}:{world.synapse.server_name}"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = await run_cli(["doctor", "--config", str(path)])
    assert result.status == 1 and "the alias does not resolve" in result.stdout
    path.write_text("matrix: [", encoding="utf-8")
    assert (await run_cli(["doctor", "--config", str(path)])).status == 2
