"""The bot's cross-signing identity against a real Synapse, and Element's engine trusting it.

nio clients here have encryption on (vodozemac), a store folder of their own and a fixed device.
The last tests run matrix-js-sdk (Element's engine, Rust crypto) headless with Node: see
``tests/js/README.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import MakeUser, unique_name
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from peerbot.dev.devserver import RegisteredUser, SynapseServer
from peerbot.matrix import MatrixClient
from peerbot.matrix.crosssign import (
    IdentityMismatch,
    KeysLost,
    ServerError,
    bootstrap,
    device_signed_by_owner,
    load_keys,
)

JS_DIR = Path(__file__).resolve().parent.parent / "js"
PASSPHRASE = "correct horse battery staple"


# --- encrypted nio clients -----------------------------------------------------------------------


@dataclass
class E2EClient:
    """An nio client with encryption on, recording the messages it could and could not read."""

    user: RegisteredUser
    client: AsyncClient
    mx: MatrixClient
    """The same client as PeerBot's raw-call side sees it (what the bootstrap takes)."""
    texts: list[RoomMessageText] = field(default_factory=list)
    undecrypted: list[MegolmEvent] = field(default_factory=list)

    async def settle(self, timeout_ms: int = 0) -> SyncResponse:
        """One sync, then the key uploads, queries, claims and to-device sends nio wants."""
        response = await self.client.sync(timeout=timeout_ms, full_state=True)
        assert isinstance(response, SyncResponse), response
        c = self.client
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()
        return response

    async def sync_until(self, done: Callable[[], bool], what: str, within: float = 8.0) -> None:
        """Sync (long-polling briefly) until ``done()``; fail naming ``what`` after ``within`` s."""
        deadline = time.monotonic() + within
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user.user_id}: timed out waiting for {what}")
            await self.settle(timeout_ms=300)


ClientFactory = Callable[..., Awaitable[E2EClient]]


@pytest_asyncio.fixture
async def e2e_client(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """Log in encrypted nio clients (store in tmp_path, mode 0700); closed at the end."""
    clients: list[AsyncClient] = []

    async def make(user: RegisteredUser, device_id: str, store: str | None = None) -> E2EClient:
        store_dir = tmp_path / (store or f"store-{user.user_id[1:].split(':')[0]}-{device_id}")
        store_dir.mkdir(mode=0o700, exist_ok=True)
        config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,
            pickle_key=f"pickle-{device_id}",
            request_timeout=20,
        )
        client = AsyncClient(
            synapse.base_url, user.user_id, device_id, store_path=str(store_dir), config=config
        )
        clients.append(client)
        response = await client.login(password=user.password, device_name="crosssign test")
        assert isinstance(response, LoginResponse), response
        assert client.device_id == device_id
        if client.should_upload_keys:
            await client.keys_upload()
        e2e = E2EClient(user, client, MatrixClient.wrap(client))
        client.add_event_callback(_recorder(e2e.texts), RoomMessageText)
        client.add_event_callback(_recorder(e2e.undecrypted), MegolmEvent)
        return e2e

    yield make
    await asyncio.gather(*(c.close() for c in clients))


def _recorder(into: list[Any]) -> Callable[[Any, Any], Awaitable[None]]:
    async def record(_room: Any, event: Any) -> None:
        into.append(event)

    return record


async def _register(synapse: SynapseServer, name: str) -> RegisteredUser:
    return await synapse.register(unique_name(name))


# --- the bootstrap -------------------------------------------------------------------------------


async def test_first_bootstrap_then_noop(
    synapse: SynapseServer, e2e_client: ClientFactory, make_user: MakeUser, tmp_path: Path
) -> None:
    bot = await e2e_client(await _register(synapse, "bot"), "BOTDEVICE1")
    key_path = tmp_path / "keys" / "cross-signing.json"

    first = await bootstrap(bot.mx, key_path=key_path, passphrase=PASSPHRASE, password=None)
    assert first.keys_created and first.keys_uploaded and first.device_signed_now
    assert not first.identity_reset
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert load_keys(key_path, PASSPHRASE).master_public == first.master_key

    # Seen by someone else: device <- self-signing key <- master key.
    other = await make_user("observer")
    assert await device_signed_by_owner(
        MatrixClient.wrap(other.client), bot.user.user_id, "BOTDEVICE1"
    )

    again = await bootstrap(bot.mx, key_path=key_path, passphrase=PASSPHRASE, password=None)
    assert not (again.keys_created or again.keys_uploaded or again.device_signed_now)
    assert again.master_key == first.master_key


async def test_store_lost_keys_kept_signs_new_device(
    synapse: SynapseServer, e2e_client: ClientFactory, make_user: MakeUser, tmp_path: Path
) -> None:
    user = await _register(synapse, "bot")
    key_path = tmp_path / "cross-signing.json"
    old = await e2e_client(user, "OLDDEVICE")
    first = await bootstrap(old.mx, key_path=key_path, passphrase=PASSPHRASE, password=None)

    # A new device with an empty store, the key file kept.
    new = await e2e_client(user, "NEWDEVICE", store="fresh-store")
    report = await bootstrap(new.mx, key_path=key_path, passphrase=PASSPHRASE, password=None)
    assert report.device_signed_now
    assert not (report.keys_created or report.keys_uploaded or report.identity_reset)
    assert report.master_key == first.master_key

    other = await make_user("observer")
    assert await device_signed_by_owner(MatrixClient.wrap(other.client), user.user_id, "NEWDEVICE")
    assert await device_signed_by_owner(MatrixClient.wrap(other.client), user.user_id, "OLDDEVICE")


async def test_keys_lost_needs_reset(
    synapse: SynapseServer, e2e_client: ClientFactory, make_user: MakeUser, tmp_path: Path
) -> None:
    user = await _register(synapse, "bot")
    bot = await e2e_client(user, "BOTDEVICE")
    kept = tmp_path / "kept.json"
    first = await bootstrap(bot.mx, key_path=kept, passphrase=PASSPHRASE, password=None)

    lost = tmp_path / "elsewhere" / "cross-signing.json"
    with pytest.raises(KeysLost, match="--reset-identity"):
        await bootstrap(bot.mx, key_path=lost, passphrase=PASSPHRASE, password=None)
    assert not lost.exists()

    # Replacing the master key needs the password (user-interactive auth): without it, the
    # reset stops after saving the new keys, and the next reset uploads those.
    with pytest.raises(ServerError, match="password"):
        await bootstrap(bot.mx, key_path=lost, passphrase=PASSPHRASE, password=None, reset=True)
    new_master = load_keys(lost, PASSPHRASE).master_public
    reset = await bootstrap(
        bot.mx, key_path=lost, passphrase=PASSPHRASE, password=user.password, reset=True
    )
    assert reset.keys_uploaded and reset.identity_reset and not reset.keys_created
    assert reset.device_signed_now and reset.master_key == new_master != first.master_key
    other = await make_user("observer")
    assert await device_signed_by_owner(MatrixClient.wrap(other.client), user.user_id, "BOTDEVICE")

    # The old key file no longer matches the server.
    with pytest.raises(IdentityMismatch, match="another cross-signing master key"):
        await bootstrap(bot.mx, key_path=kept, passphrase=PASSPHRASE, password=None)

    # Nor is a key file used for another account.
    stranger = await e2e_client(await _register(synapse, "stranger"), "STRANGER")
    with pytest.raises(IdentityMismatch, match="holds the cross-signing keys of @bot-"):
        await bootstrap(stranger.mx, key_path=lost, passphrase=PASSPHRASE, password=None)


# --- nio to nio in an encrypted room -------------------------------------------------------------


async def _encrypted_room(human: E2EClient, bot: E2EClient) -> str:
    """The human makes an encrypted room and invites the bot; both see each other joined."""
    created = await human.client.room_create(
        invite=[bot.user.user_id],
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    assert isinstance(created, RoomCreateResponse), created
    room_id: str = created.room_id
    await bot.sync_until(lambda: room_id in bot.client.invited_rooms, "the invite")
    joined = await bot.client.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await bot.sync_until(lambda: room_id in bot.client.rooms, "its own join")

    def bot_joined() -> bool:
        room = human.client.rooms.get(room_id)
        return room is not None and bot.user.user_id in room.users

    await human.sync_until(bot_joined, "the bot's join")
    return room_id


async def _send_text(sender: E2EClient, room_id: str, body: str, **extra: Any) -> str:
    response = await sender.client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body, **extra},
        ignore_unverified_devices=True,
    )
    assert isinstance(response, RoomSendResponse), response
    event_id: str = response.event_id
    return event_id


def _read(receiver: E2EClient, event_id: str) -> Callable[[], bool]:
    return lambda: any(t.event_id == event_id for t in receiver.texts)


async def test_nio_human_and_bot_talk_in_encrypted_room(
    synapse: SynapseServer, e2e_client: ClientFactory, tmp_path: Path
) -> None:
    started = time.monotonic()
    bot = await e2e_client(await _register(synapse, "bot"), "BOTDEVICE")
    human = await e2e_client(await _register(synapse, "human"), "HUMANDEVICE")
    await bootstrap(bot.mx, key_path=tmp_path / "keys.json", passphrase=PASSPHRASE, password=None)
    await asyncio.gather(bot.settle(), human.settle())

    room_id = await _encrypted_room(human, bot)
    question = await _send_text(human, room_id, "Patient question, encrypted")
    await bot.sync_until(_read(bot, question), "the human's message, decrypted")

    answer = await _send_text(
        bot,
        room_id,
        "Bot reply, encrypted",
        **{"m.relates_to": {"rel_type": "m.thread", "event_id": question}},
    )
    await human.sync_until(_read(human, answer), "the bot's reply, decrypted")
    reply = next(t for t in human.texts if t.event_id == answer)
    assert reply.body == "Bot reply, encrypted"
    assert reply.source["content"]["m.relates_to"]["event_id"] == question
    assert not bot.undecrypted and not human.undecrypted
    assert time.monotonic() - started < 10


# --- Element's engine: matrix-js-sdk with Rust crypto --------------------------------------------


def _node_ready() -> str:
    """The node executable, with tests/js's packages installed (installs them if missing)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("PEERBOT_REQUIRE_NODE") == "1":  # CI: a skip must not pass for a test
            pytest.fail("node is not installed, and .ci/run requires the Element-engine check")
        pytest.skip("node is not installed: the Element-engine check needs Node 20 (tests/js)")
    if not (JS_DIR / "node_modules" / "matrix-js-sdk").is_dir():
        npm = shutil.which("npm")
        command = ["npm", "ci" if (JS_DIR / "package-lock.json").exists() else "install"]
        if npm is None:
            pytest.fail(f"tests/js needs its packages: cd tests/js && {' '.join(command)}")
        done = subprocess.run(
            [npm, *command[1:], "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`cd tests/js && {' '.join(command)}` failed:\n{done.stdout}\n{done.stderr}"
            )
    return node


class JsClient:
    """check_trust.mjs in interactive mode: one JSON command per line in, JSON steps out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.steps: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, node: str, config: dict[str, Any]) -> JsClient:
        """Start the script and hand it its configuration."""
        process = await asyncio.create_subprocess_exec(
            node,
            str(JS_DIR / "check_trust.mjs"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        js = cls(process)
        await js.command({**config, "interactive": True})
        return js

    async def command(self, obj: dict[str, Any]) -> None:
        """Write one JSON line to the script."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.process.stdin.drain()

    async def step(self, name: str, within: float = 30) -> dict[str, Any]:
        """Wait for the next step line called ``name``; fail on an error step or an exit."""
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
            if not line:
                raise AssertionError(
                    f"check_trust.mjs ended before {name!r}: {await self.stderr()}"
                )
            if not line.startswith(b"{"):
                continue
            entry: dict[str, Any] = json.loads(line)
            self.steps.append(entry)
            if entry.get("step") == name:
                return entry
            if entry.get("step") == "error" or "ok" in entry:
                raise AssertionError(
                    f"check_trust.mjs, waiting for {name!r}: {json.dumps(entry, indent=2)}\n"
                    f"{await self.stderr()}"
                )

    async def stderr(self) -> str:
        """What the script logged (read once it has exited or within a second)."""
        assert self.process.stderr is not None
        try:
            data = await asyncio.wait_for(self.process.stderr.read(), 1)
        except TimeoutError:
            return "(stderr still open)"
        return data.decode(errors="replace")[-4000:]

    async def quit(self) -> dict[str, Any]:
        """Ask the script to stop; its final result line."""
        await self.command({"cmd": "quit"})
        assert self.process.stdout is not None
        out = await asyncio.wait_for(self.process.stdout.read(), 15)
        await self.process.wait()
        results = [json.loads(x) for x in out.splitlines() if x.startswith(b"{")]
        final: dict[str, Any] = next((r for r in reversed(results) if "ok" in r), {})
        return final

    async def kill(self) -> None:
        """Make sure the script is gone."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class ElementRoom:
    """An encrypted room between a headless Element-engine user and an nio bot."""

    js: JsClient
    bot: E2EClient
    room_id: str
    device: dict[str, Any]


async def _element_room(
    synapse: SynapseServer, e2e_client: ClientFactory, tmp_path: Path, *, cross_sign: bool
) -> ElementRoom:
    """The JS user (cross-signing on, exclude insecure devices) makes a room; the bot joins."""
    node = _node_ready()
    bot = await e2e_client(await _register(synapse, "bot"), "PEERBOTDEV")
    if cross_sign:
        await bootstrap(
            bot.mx, key_path=tmp_path / "keys.json", passphrase=PASSPHRASE, password=None
        )
    await bot.settle()
    human = await _register(synapse, "element")
    js = await JsClient.start(
        node,
        {
            "homeserver": synapse.base_url,
            "user_id": human.user_id,
            "password": human.password,
            "bot_user_id": bot.user.user_id,
            "bot_device_id": "PEERBOTDEV",
            "timeout_ms": 15000,
        },
    )
    try:
        await js.step("ready", within=60)
        await js.command({"cmd": "create_room", "invite": [bot.user.user_id]})
        room_id = (await js.step("room"))["room_id"]
        await bot.sync_until(lambda: room_id in bot.client.invited_rooms, "the invite")
        assert isinstance(await bot.client.join(room_id), JoinResponse)
        await bot.sync_until(lambda: room_id in bot.client.rooms, "its own join")
        # Sharing a room, Element's engine tracks the bot's devices.
        await js.command({"cmd": "check_device"})
        device = await js.step("device")
    except BaseException:
        await js.kill()
        raise
    return ElementRoom(js, bot, room_id, device)


async def test_element_engine_trusts_bot_and_reads_threaded_reply(
    synapse: SynapseServer, e2e_client: ClientFactory, tmp_path: Path
) -> None:
    """matrix-js-sdk (Rust crypto, exclude insecure devices) <-> the bootstrapped nio bot."""
    world = await _element_room(synapse, e2e_client, tmp_path, cross_sign=True)
    js, bot, room_id = world.js, world.bot, world.room_id
    try:
        assert world.device["known"] and world.device["signed_by_owner"], world.device
        assert not world.device["identity_needs_approval"], world.device

        # The human's message reaches the bot: the room key was shared with its device.
        await js.command(
            {
                "cmd": "send",
                "room_id": room_id,
                "body": "Question from Element",
                "wait_member": bot.user.user_id,
            }
        )
        question = (await js.step("sent"))["event_id"]
        await bot.sync_until(_read(bot, question), "the Element user's message, decrypted")
        assert not bot.undecrypted, [e.source for e in bot.undecrypted]

        # The bot answers in the thread; Element's engine decrypts it, no shield, in the thread.
        reply = await _send_text(
            bot,
            room_id,
            "Reply from the bot",
            **{
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": question,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": question},
                }
            },
        )
        await js.command(
            {"cmd": "expect", "room_id": room_id, "event_id": reply, "thread_root": question}
        )
        seen = await js.step("seen")
        assert seen["decrypted"] and seen["body"] == "Reply from the bot", seen
        assert seen["shield_colour"] == "NONE" and seen["shield_reason"] is None, seen
        assert seen["thread_root_id"] == question and seen["in_thread"], seen
        final = await js.quit()
        assert final.get("ok"), final
        print("check_trust.mjs steps (ms):", {e["step"]: e["ms"] for e in js.steps})
    finally:
        await js.kill()


async def test_element_engine_excludes_bot_without_cross_signing(
    synapse: SynapseServer, e2e_client: ClientFactory, tmp_path: Path
) -> None:
    """The control: the same nio bot without the bootstrap is deaf and mute in that mode."""
    world = await _element_room(synapse, e2e_client, tmp_path, cross_sign=False)
    js, bot, room_id = world.js, world.bot, world.room_id
    try:
        assert world.device["known"] and not world.device["signed_by_owner"], world.device

        await js.command(
            {"cmd": "send", "room_id": room_id, "body": "Question", "wait_member": bot.user.user_id}
        )
        question = (await js.step("sent"))["event_id"]
        await bot.sync_until(
            lambda: any(e.event_id == question for e in bot.undecrypted), "the undecryptable event"
        )
        assert not any(t.event_id == question for t in bot.texts)

        reply = await _send_text(bot, room_id, "Reply from an unsigned device")
        await js.command(
            {"cmd": "expect", "room_id": room_id, "event_id": reply, "decrypt_timeout_ms": 1500}
        )
        seen = await js.step("seen")
        assert not seen["decrypted"], seen
        assert seen["decryption_failure"] == "UNSIGNED_SENDER_DEVICE", seen
        await js.quit()
        print("check_trust.mjs steps (ms):", {e["step"]: e["ms"] for e in js.steps})
    finally:
        await js.kill()


async def test_element_engine_after_identity_reset(
    synapse: SynapseServer, e2e_client: ClientFactory, tmp_path: Path
) -> None:
    """Keys lost and reset: Element's engine flags the identity change, messages still pass."""
    world = await _element_room(synapse, e2e_client, tmp_path, cross_sign=True)
    js, bot, room_id = world.js, world.bot, world.room_id
    try:
        assert world.device["signed_by_owner"] and not world.device["identity_needs_approval"]
        await js.command(
            {"cmd": "send", "room_id": room_id, "body": "before", "wait_member": bot.user.user_id}
        )
        before = (await js.step("sent"))["event_id"]
        await bot.sync_until(_read(bot, before), "the first message")

        report = await bootstrap(
            bot.mx,
            key_path=tmp_path / "new-keys.json",
            passphrase=PASSPHRASE,
            password=bot.user.password,
            reset=True,
        )
        assert report.identity_reset and report.device_signed_now

        # Element's engine learns of the change at its next sync: "identity was reset".
        deadline = time.monotonic() + 8
        while True:
            await js.command({"cmd": "check_device"})
            device = await js.step("device")
            if device["identity_needs_approval"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert device["identity_needs_approval"] and device["signed_by_owner"], device

        # Not blocking: both directions still work, without a shield on the bot's messages.
        await js.command({"cmd": "send", "room_id": room_id, "body": "after"})
        after = (await js.step("sent"))["event_id"]
        await bot.sync_until(_read(bot, after), "a message after the reset")
        reply = await _send_text(bot, room_id, "Reply after the reset")
        await js.command({"cmd": "expect", "room_id": room_id, "event_id": reply})
        seen = await js.step("seen")
        assert seen["decrypted"] and seen["shield_colour"] == "NONE", seen

        # The user's "OK" on the warning pins the new identity.
        await js.command({"cmd": "pin_identity"})
        assert not (await js.step("pinned"))["identity_needs_approval"]
        assert (await js.quit()).get("ok")
    finally:
        await js.kill()
