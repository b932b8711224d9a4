"""The test harness itself works: Synapse, test users, threads, restarts, pauses, federation."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from helpers import (
    MakeUser,
    NetworkAccessDenied,
    StartSynapse,
    TestUser,
    body_is,
    in_thread,
    unique_name,
)

from peerbot.dev.devserver import DevServerError, SynapseServer, start_federation_pair


async def test_invite_join_and_threaded_reply(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(invite=[bob.user_id])

    await bob.wait_for_invite(room)
    assert await bob.join(room) == room
    await alice.wait_joined(room, bob.user_id)

    root = await alice.send_text(room, "How do you dose X in renal failure?")
    await bob.wait_for_event(room, body_is("How do you dose X in renal failure?"))
    reply = await bob.send_text(room, "Halve it.", thread_root=root)

    seen = await alice.wait_for_event(room, in_thread(root))
    assert seen["event_id"] == reply
    assert seen["sender"] == bob.user_id
    assert seen["content"]["body"] == "Halve it."
    assert [e["event_id"] for e in alice.events(room)].count(reply) == 1


async def test_edit_react_redact_and_power_level(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    alias = unique_name("room")
    room = await alice.create_room(alias_localpart=alias, public=True)
    assert await bob.join(f"#{alias}:{alice.server.server_name}") == room

    message = await bob.send_text(room, "first")
    edit = await bob.edit(room, message, "second")
    reaction = await alice.react(room, message, "👍")
    redaction = await bob.redact(room, message)
    await alice.set_power_level(room, bob.user_id, 50)

    await alice.wait_for_event(room, lambda e: e["event_id"] == edit)
    await alice.wait_for_event(room, lambda e: e["event_id"] == reaction)
    await alice.wait_for_event(room, lambda e: e["event_id"] == redaction)
    power = await alice.wait_for_event(
        room, lambda e: e["type"] == "m.room.power_levels" and bob.user_id in e["content"]["users"]
    )
    assert power["content"]["users"][bob.user_id] == 50


async def test_wait_for_event_timeout_lists_the_room(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    await alice.send_text(room, "something else")
    with pytest.raises(AssertionError, match="something else"):
        await alice.wait_for_event(room, body_is("never sent"), timeout=0.5)


async def test_restart_keeps_users_and_rooms(
    start_synapse: StartSynapse, make_user: MakeUser
) -> None:
    server = await start_synapse()
    alice = await make_user("alice", server=server)
    bob = await make_user("bob", server=server)
    room = await alice.create_room(invite=[bob.user_id])
    await bob.join(room)

    started = time.monotonic()
    await server.restart()
    restart_seconds = time.monotonic() - started

    # Same tokens, same room, and the clients' syncs recover on their own.
    await bob.send_text(room, "after restart")
    await alice.wait_for_event(room, body_is("after restart"))

    # Starting again on the directory reuses config, keys, database, port and name.
    port, name = server.port, server.server_name
    await server.stop()
    again = await SynapseServer.start(server.directory)
    try:
        assert (again.port, again.server_name) == (port, name)
        await alice.send_text(room, "after a fresh start")
        await bob.wait_for_event(room, body_is("after a fresh start"))
    finally:
        await again.stop()
    assert restart_seconds < 15


async def test_pause_holds_requests_until_resume(
    start_synapse: StartSynapse, make_user: MakeUser
) -> None:
    server = await start_synapse()
    alice = await make_user("alice", server=server)
    room = await alice.create_room()

    await server.pause()
    sending = asyncio.create_task(alice.send_text(room, "while paused"))
    done, _ = await asyncio.wait([sending], timeout=0.5)
    assert not done, "a paused server should not answer"
    await server.resume()
    event_id = await asyncio.wait_for(sending, 15)
    seen = await alice.wait_for_event(room, body_is("while paused"))
    assert seen["event_id"] == event_id

    # Stopping a paused server must not wait for the SIGKILL fallback.
    await server.pause()
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 5
    assert not server.running


async def test_kill_then_stop_is_safe(start_synapse: StartSynapse) -> None:
    server = await start_synapse()
    pid_file = server.directory / "devserver.pid"
    assert pid_file.read_text().strip() == str(server.pid)
    await server.kill()
    assert not server.running
    assert not pid_file.exists()
    await server.stop()  # idempotent


async def test_register_admin_and_errors(synapse: SynapseServer) -> None:
    name = unique_name("admin")
    admin = await synapse.register(name, "secret-pw", admin=True)
    assert admin.user_id == f"@{name}:{synapse.server_name}"
    # What the server says: the password logs in, and the account is an admin.
    async with aiohttp.ClientSession() as http:
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name},
            "password": "secret-pw",
        }
        async with http.post(f"{synapse.base_url}/_matrix/client/v3/login", json=login) as resp:
            assert resp.status == 200, await resp.text()
            logged_in = await resp.json()
        assert logged_in["user_id"] == admin.user_id
        url = f"{synapse.base_url}/_synapse/admin/v2/users/{quote(admin.user_id, safe='')}"
        headers = {"Authorization": f"Bearer {logged_in['access_token']}"}
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["admin"] is True
    with pytest.raises(DevServerError, match="M_USER_IN_USE"):
        await synapse.register(name)


async def test_start_fails_fast_with_log_tail(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DevServerError, match="exited with code"):
        await SynapseServer.start(tmp_path, extra_config={"database": {"name": "nonsense"}})
    assert time.monotonic() - started < 15
    assert not (tmp_path / "devserver.pid").exists()


async def test_missing_synapse_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "synapse" else real(name, *a)
    )
    with pytest.raises(DevServerError, match=r"pip install 'peerbot\[demo\]'"):
        await SynapseServer.start(tmp_path)


def test_network_guard_refuses_non_loopback(network_violations: list[str]) -> None:
    with socket.socket() as sock, pytest.raises(NetworkAccessDenied):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed
    with pytest.raises(NetworkAccessDenied):
        socket.getaddrinfo("example.org", 443)
    assert len(network_violations) >= 2
    del network_violations[-2:]


@pytest.mark.slow
async def test_federation_pair(tmp_path: Path) -> None:
    a, b = await start_federation_pair(tmp_path)
    users: list[TestUser] = []
    try:
        assert a.server_name == f"localhost:{a.federation_port}"
        alice = await TestUser.login(a, await a.register(unique_name("alice")))
        bob = await TestUser.login(b, await b.register(unique_name("bob")))
        users += [alice, bob]
        await alice.start()
        await bob.start()

        alias = unique_name("lobby")
        room = await alice.create_room(alias_localpart=alias, public=True)
        assert await bob.join(f"#{alias}:{a.server_name}") == room
        await alice.wait_joined(room, bob.user_id, timeout=30)

        await alice.send_text(room, "hello over federation")
        seen = await bob.wait_for_event(room, body_is("hello over federation"), timeout=30)
        assert seen["sender"] == alice.user_id
    finally:
        await asyncio.gather(*(u.stop() for u in users))
        await asyncio.gather(a.stop(), b.stop())
