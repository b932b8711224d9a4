"""A PeerBot running in-process against the session's Synapse, and a world of rooms for it.

Every in-process bot a test starts is checked when the test ends: a loop that died with an
exception fails the test, and so does any handler error (``PeerBot.handler_errors``) unless the
test announces how many it provokes with ``@pytest.mark.handler_errors(n)``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import MakeUser, TestUser, unique_name

from peerbot.bot.app import PeerBot
from peerbot.bot.runner import load_plugin_set
from peerbot.config import Config, parse_config
from peerbot.dev.devserver import RegisteredUser, SynapseServer
from peerbot.matrix import MatrixClient
from peerbot.store import Store

# Every runner started during the current test, checked by ``_bots_checked`` when it ends.
_started: list[BotRunner] = []


class BotRunner:
    """Starts and stops one PeerBot on a config, in this event loop."""

    def __init__(self, config: Config, *, reset_identity: bool = False) -> None:
        self.config = config
        self.reset_identity = reset_identity
        self.bot: PeerBot | None = None
        self._task: asyncio.Task[None] | None = None
        self._store: Store | None = None
        self._client: MatrixClient | None = None
        self.crash: BaseException | None = None
        """The exception the bot's loop ended with (kept even if a caller swallowed it)."""

    async def start(self) -> PeerBot:
        """Open the store, log in, resolve rooms and start syncing."""
        plugins = load_plugin_set(self.config)
        self._store = await Store.open(self.config.storage.database)
        self._client = MatrixClient(
            self.config.matrix, self.config.encryption, reset_identity=self.reset_identity
        )
        self.bot = PeerBot(self.config, self._store, self._client, plugins)
        _started.append(self)
        try:
            await self.bot.start()
        except BaseException:
            await self._close()
            raise
        self._task = asyncio.create_task(self.bot.run(), name="test-peerbot")
        return self.bot

    async def stop(self) -> None:
        """Stop as SIGTERM would, and close everything."""
        try:
            if self.bot is not None and self._task is not None:
                self.bot.stop()
                try:
                    await asyncio.wait_for(self._task, timeout=10)
                except Exception as exc:
                    self.crash = self.crash or exc
                    raise
                finally:
                    self._task = None
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.bot is not None:
            await self.bot.plugins.close()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    def check_alive(self) -> None:
        """Raise the bot's own exception if its loop died."""
        if self._task is not None and self._task.done():
            self._task.result()

    @property
    def running(self) -> bool:
        """Started and not stopped yet."""
        return self._task is not None


async def stop_runners(runners: list[BotRunner]) -> None:
    """Stop every runner, then raise the first exception a bot's loop ended with."""
    errors: list[BaseException] = []
    for runner in runners:
        try:
            await runner.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest_asyncio.fixture(autouse=True)
async def _bots_checked(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail the test if a bot's loop crashed or a handler failed (unless announced by a marker).

    Autouse, so it is set up before the test's other fixtures and checks after their teardown.
    """
    _started.clear()
    yield
    still = [r for r in _started if r.running]
    stop_error: BaseException | None = None
    try:
        await stop_runners(still)
    except Exception as exc:
        stop_error = exc
    crashes = [r.crash for r in _started if r.crash is not None]
    marker = request.node.get_closest_marker("handler_errors")
    expected = int(marker.args[0]) if marker is not None else 0
    counted = sum(r.bot.handler_errors for r in _started if r.bot is not None)
    _started.clear()
    if crashes or stop_error is not None:
        crash = crashes[0] if crashes else stop_error
        pytest.fail(f"a bot's loop ended with an exception: {crash!r}", pytrace=False)
    if counted != expected:
        pytest.fail(
            f"{counted} handler error(s) in the bot (PeerBot.handler_errors), {expected} expected"
            " (a test that provokes some says so with @pytest.mark.handler_errors(n));"
            " see the captured log for the tracebacks",
            pytrace=False,
        )


@dataclass
class World:
    """Users, rooms and a bot configuration for one test."""

    synapse: SynapseServer
    admin: TestUser
    alice: TestUser
    bob: TestUser
    bot_user: RegisteredUser
    rooms: dict[str, str]
    aliases: dict[str, str]
    db: Path
    runners: list[BotRunner] = field(default_factory=list)

    def config(self, **overrides: Any) -> Config:
        """A bot.yaml for this world, with top-level keys overridden."""
        data: dict[str, Any] = {
            "matrix": {
                "homeserver": self.synapse.base_url,
                "user_id": self.bot_user.user_id,
                "password": self.bot_user.password,
            },
            "storage": {"database": str(self.db)},
            "language": "fr",
            "invites": {"allowed_servers": [self.synapse.server_name]},
            "intake": [
                {"room": self.aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]}
            ],
            "routing": {
                "fallback_room": self.aliases["triage"],
                "specialties": [
                    {
                        "name": "Cardiologie",
                        "room": self.aliases["cardio"],
                        "keywords": ["ecg", "arythmie", "fibrillation auriculaire", "infarctus"],
                    },
                    {
                        "name": "Pédiatrie",
                        "room": self.rooms["pedia"],
                        "keywords": ["nourrisson", "enfant", "bronchiolite"],
                    },
                ],
            },
        }
        data.update(overrides)
        return parse_config(json.dumps(data), env={})

    async def start_bot(self, config: Config | None = None) -> PeerBot:
        """Start a bot (stopped at the end of the test)."""
        runner = BotRunner(config or self.config())
        self.runners.append(runner)
        return await runner.start()

    async def stop_bots(self) -> None:
        """Stop every bot started in this world; a bot's crash is raised, not swallowed."""
        runners, self.runners = self.runners, []
        await stop_runners(runners)


WorldFactory = Callable[[], Awaitable[World]]


@pytest_asyncio.fixture
async def world(
    synapse: SynapseServer, make_user: MakeUser, tmp_path: Path
) -> AsyncIterator[World]:
    """Rooms #entraide (intake), #cardio, #pedia, #triage; Alice and Bob; the bot invited."""
    admin, alice, bob = await asyncio.gather(
        make_user("admin"), make_user("alice"), make_user("bob")
    )
    await alice.client.set_displayname("Alice Martin")
    bot_user = await synapse.register(unique_name("peerbot"))
    rooms: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for key in ("entraide", "cardio", "pedia", "triage"):
        local = unique_name(key)
        rooms[key] = await admin.create_room(
            alias_localpart=local, public=True, invite=[bot_user.user_id], name=key
        )
        aliases[key] = f"#{local}:{synapse.server_name}"
    await asyncio.gather(
        alice.join(rooms["entraide"]), bob.join(rooms["entraide"]), bob.join(rooms["cardio"])
    )
    w = World(synapse, admin, alice, bob, bot_user, rooms, aliases, tmp_path / "peerbot.db")
    try:
        yield w
    finally:
        await w.stop_bots()
