"""Shared fixtures: a real Synapse on loopback, test users, and a guard against real networking.

* ``synapse``: one Synapse (relaxed rate limits) for the whole session.
* ``start_synapse``: a factory for a test's own Synapse (default rate limits, restarts, outages).
* ``postgres``: one PostgreSQL server (tests/pgserver.py) for the session, started on first use.
* ``db_target``: a fresh database, once as a SQLite file and once on that PostgreSQL server
  (parametrized: every test using it runs on both backends).
* ``make_user``: ``await make_user("alice")`` registers a unique user, logs in a
  :class:`helpers.TestUser` and starts its sync; it is stopped when the test ends.

Every test under ``tests/integration`` is marked ``integration``. Any attempt to reach an
address other than loopback (or a Unix socket) fails the test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import MakeUser, NetworkAccessDenied, StartSynapse, TestUser, unique_name
from pgserver import PostgresServer

from peerbot.dev.devserver import SynapseServer

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_SERVERS_KEY = pytest.StashKey[list[SynapseServer]]()


# --- markers and failure reports -------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers the fixtures read."""
    config.addinivalue_line(
        "markers",
        "handler_errors(n): the test provokes n handler errors in the bot on purpose"
        " (PeerBot.handler_errors); any other count fails it",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``; grouped tests go first.

    A test in an ``xdist_group`` is long and mostly waiting (the rate-limit burst): started first
    on one worker under ``-n 2 --dist loadgroup``, it runs while the other worker does the rest.
    """
    for item in items:
        if item.path.is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, add the tail of each Synapse log the test used to the report."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        # funcargs holds every fixture of the test, so "synapse" is there via make_user too.
        servers = [v for v in funcargs.values() if isinstance(v, SynapseServer)]
        own: list[SynapseServer] = item.stash.get(_SERVERS_KEY, [])
        servers.extend(own)
        seen: set[int] = set()
        for server in servers:
            if id(server) not in seen:
                seen.add(id(server))
                report.sections.append(
                    (
                        f"Synapse log tail ({server.server_name}, {server.directory})",
                        server.log_tail(),
                    )
                )
    return report


# --- no network beyond loopback ----------------------------------------------------------------


_violations: list[str] = []


def _loopback_host(host: object) -> bool:
    """Whether ``host`` (an address or name) is on this machine."""
    if not isinstance(host, str):
        return False
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> None:
    """Record and raise a denied network access."""
    message = f"non-loopback network access attempted in a test: {what}"
    _violations.append(message)
    raise NetworkAccessDenied(message)


@pytest.fixture(scope="session", autouse=True)
def _loopback_only() -> Iterator[None]:
    """Patch sockets so that connecting or resolving anything off this machine raises."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback_host(address[0]):
            _refuse(f"connect to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _loopback_host(name):
            try:
                ipaddress.ip_address(name)  # a literal needs no lookup; connect() checks it
            except ValueError:
                _refuse(f"name lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture
def network_violations() -> list[str]:
    """The denied network accesses so far; a test that provokes one on purpose removes it."""
    return _violations


@pytest.fixture(autouse=True)
def _no_network_violation() -> Iterator[None]:
    """Fail the test if it tried the network, even if the error was swallowed on the way."""
    before = len(_violations)
    yield
    if len(_violations) > before:
        pytest.fail("\n".join(_violations[before:]), pytrace=False)


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server on loopback for the session (as the postgres user under root)."""
    server = PostgresServer()
    try:
        server.start()
    except FileNotFoundError as exc:
        server.stop()
        pytest.fail(f"{exc} (.ci/run installs it)", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """The store backend a test runs on."""
    return str(request.param)


@pytest_asyncio.fixture
async def db_target(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """What Store.open takes: a SQLite file, or the URL of a fresh PostgreSQL database."""
    if db_backend == "sqlite":
        return tmp_path / "bot.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return await server.create_database()


# --- Synapse and users ---------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    """One Synapse for the whole session, with relaxed rate limits."""
    server = await SynapseServer.start(tmp_path_factory.mktemp("synapse"))
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def start_synapse(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StartSynapse]:
    """A factory for a Synapse of the test's own (e.g. default rate limits); stopped at the end."""
    servers: list[SynapseServer] = []
    request.node.stash[_SERVERS_KEY] = servers

    async def start(**options: Any) -> SynapseServer:
        server = await SynapseServer.start(tmp_path / f"synapse{len(servers)}", **options)
        servers.append(server)
        return server

    yield start
    await asyncio.gather(*(server.stop() for server in servers))


@pytest_asyncio.fixture
async def make_user(synapse: SynapseServer) -> AsyncIterator[MakeUser]:
    """Register, log in and start syncing test users; they are stopped when the test ends."""
    users: list[TestUser] = []

    async def make(
        name: str = "user", *, server: SynapseServer | None = None, admin: bool = False
    ) -> TestUser:
        home = server or synapse
        registered = await home.register(unique_name(name), admin=admin)
        user = await TestUser.login(home, registered)
        users.append(user)
        await user.start()
        return user

    yield make
    await asyncio.gather(*(user.stop() for user in users))
