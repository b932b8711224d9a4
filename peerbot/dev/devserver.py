"""A throwaway Synapse homeserver on loopback, for the integration tests and ``peerbot demo``.

Synapse runs as a subprocess (``python -m synapse.app.homeserver``) in its own session, with a
config written here: SQLite database, no registration but shared-secret registration, optional
relaxed rate limits, optional TLS federation listener. Everything lives in one directory, so a
second :meth:`SynapseServer.start` on the same directory brings back the same server (config,
signing key, database, ports and server name).

This module does not import matrix-nio: it speaks plain HTTP with aiohttp. matrix-synapse is an
optional extra (``pip install 'peerbot[demo]'``).

long: a whole throwaway homeserver (config, keys, start, readiness, registration, stop) for
the tests and the demo; no production code imports it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import datetime
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

__all__ = [
    "DevServerError",
    "RegisteredUser",
    "SynapseServer",
    "start_federation_pair",
]

log = logging.getLogger(__name__)

#: Name of the file, inside a server's directory, holding the pid of the running Synapse.
#: A CI trap can find these files and kill leftover servers.
PID_FILE_NAME = "devserver.pid"
_STATE_FILE_NAME = "devserver.json"
_CONFIG_FILE_NAME = "homeserver.yaml"
_LOG_FILE_NAME = "homeserver.log"
_STDERR_FILE_NAME = "synapse.stderr"
_POLL_INTERVAL = 0.05
_STOP_GRACE = 10.0

_RELAXED = {"per_second": 10000, "burst_count": 100000}
_FLAT_RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_admin_redaction",
    "rc_joins_per_room",
    "rc_third_party_invite",
    "rc_3pid_validation",
    "rc_media_create",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
    "rc_key_requests",
)
_NESTED_RATE_LIMITS = {
    "rc_login": ("address", "account", "failed_attempts"),
    "rc_joins": ("local", "remote"),
    "rc_invites": ("per_room", "per_user", "per_issuer"),
    "rc_presence": ("per_user",),
}


class DevServerError(RuntimeError):
    """The development Synapse could not be started, stopped or asked something."""


@dataclass(frozen=True)
class RegisteredUser:
    """A user made by shared-secret registration, with a ready access token."""

    user_id: str
    password: str
    access_token: str
    device_id: str


@dataclass(frozen=True)
class _State:
    """What must stay the same across restarts of one server directory."""

    port: int
    federation_port: int | None
    server_name: str
    registration_secret: str


def _require_synapse() -> None:
    """Raise a clear error when the optional matrix-synapse dependency is missing."""
    if importlib.util.find_spec("synapse") is None:
        raise DevServerError("matrix-synapse is not installed: pip install 'peerbot[demo]'")


_HANDED_OUT: set[int] = set()


def _free_ports(count: int) -> list[int]:
    """Pick ``count`` distinct free TCP ports on 127.0.0.1, never one handed out before."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            # Servers started together pick ports before any binds them: keep them distinct.
            if port not in _HANDED_OUT:
                ports.append(port)
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def _signing_key_line() -> str:
    """A fresh ed25519 signing key in Synapse's one-line file format."""
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


def _write_tls_pair(cert_path: Path, key_path: Path) -> None:
    """Write a self-signed certificate for localhost/127.0.0.1 and its private key."""
    import ipaddress

    # cryptography is a dependency of matrix-synapse, so it is there whenever Synapse is.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _log_config(log_path: Path) -> dict[str, Any]:
    """A logging dictConfig sending Synapse's log to a file, so failures can be shown."""
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "filters": {
            "context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "filters": ["context"],
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def _homeserver_config(
    directory: Path,
    state: _State,
    *,
    relaxed_rate_limits: bool,
    extra_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The homeserver.yaml content (as a dict) for a server living in ``directory``."""
    config: dict[str, Any] = {
        "server_name": state.server_name,
        "public_baseurl": f"http://127.0.0.1:{state.port}/",
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [
            {
                "port": state.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "log_config": str(directory / "log.yaml"),
        "media_store_path": str(directory / "media_store"),
        "signing_key_path": str(directory / "signing.key"),
        "registration_shared_secret": state.registration_secret,
        "enable_registration": False,
        "report_stats": False,
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "presence": {"enabled": False},
        "enable_metrics": False,
        "bcrypt_rounds": 4,
        # Synapse's default refuses to publish any room to the directory; tests need "public".
        "room_list_publication_rules": [{"action": "allow"}],
    }
    if relaxed_rate_limits:
        for key in _FLAT_RATE_LIMITS:
            config[key] = dict(_RELAXED)
        for key, subkeys in _NESTED_RATE_LIMITS.items():
            config[key] = {sub: dict(_RELAXED) for sub in subkeys}
    if state.federation_port is not None:
        config["listeners"].append(
            {
                "port": state.federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            }
        )
        config["tls_certificate_path"] = str(directory / "tls.crt")
        config["tls_private_key_path"] = str(directory / "tls.key")
        # Self-signed certificates on both sides: nothing to verify them against.
        config["federation_verify_certificates"] = False
        # Loopback is in Synapse's default outbound blocklist.
        config["ip_range_whitelist"] = ["127.0.0.0/8", "::1/128"]
        config["rc_federation"] = {
            "window_size": 1000,
            "sleep_limit": 100000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000,
        }
    if extra_config:
        config.update(extra_config)
    return config


def _init_directory(
    directory: Path,
    *,
    relaxed_rate_limits: bool,
    federation: bool,
    port: int | None,
    extra_config: Mapping[str, Any] | None,
) -> _State:
    """Write config, log config, signing key (and TLS pair) into a fresh directory."""
    ports = _free_ports(2 if federation else 1)
    client_port = port if port is not None else ports[0]
    federation_port = ports[1] if federation else None
    if federation_port == client_port:
        federation_port = ports[0]
    state = _State(
        port=client_port,
        federation_port=federation_port,
        server_name=f"localhost:{federation_port}" if federation_port else "localhost",
        registration_secret=secrets.token_urlsafe(32),
    )
    (directory / "signing.key").write_text(_signing_key_line(), encoding="utf8")
    (directory / "signing.key").chmod(0o600)
    if federation:
        _write_tls_pair(directory / "tls.crt", directory / "tls.key")
    (directory / "log.yaml").write_text(
        json.dumps(_log_config(directory / _LOG_FILE_NAME), indent=2), encoding="utf8"
    )
    config = _homeserver_config(
        directory, state, relaxed_rate_limits=relaxed_rate_limits, extra_config=extra_config
    )
    config_path = directory / _CONFIG_FILE_NAME
    config_path.write_text(json.dumps(config, indent=2), encoding="utf8")
    config_path.chmod(0o600)
    # Written last: its presence means the directory is complete.
    (directory / _STATE_FILE_NAME).write_text(
        json.dumps(
            {
                "port": state.port,
                "federation_port": state.federation_port,
                "server_name": state.server_name,
                "registration_secret": state.registration_secret,
            }
        ),
        encoding="utf8",
    )
    return state


def _load_state(directory: Path) -> _State | None:
    """The saved state of a directory already set up, or None for a fresh one."""
    path = directory / _STATE_FILE_NAME
    if not path.exists() or not (directory / _CONFIG_FILE_NAME).exists():
        return None
    raw = json.loads(path.read_text(encoding="utf8"))
    return _State(
        port=int(raw["port"]),
        federation_port=None if raw["federation_port"] is None else int(raw["federation_port"]),
        server_name=str(raw["server_name"]),
        registration_secret=str(raw["registration_secret"]),
    )


def _prepare_directory(
    directory: Path,
    *,
    relaxed_rate_limits: bool,
    federation: bool,
    port: int | None,
    extra_config: Mapping[str, Any] | None,
) -> tuple[Path, _State]:
    """Resolve and create ``directory``; set it up unless it already holds a server."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state = _load_state(directory)
    if state is None:
        state = _init_directory(
            directory,
            relaxed_rate_limits=relaxed_rate_limits,
            federation=federation,
            port=port,
            extra_config=extra_config,
        )
    return directory, state


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file, or "" if it does not exist."""
    try:
        text = path.read_text(encoding="utf8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    """Kill any Synapse still running when the interpreter exits, so none outlives us."""
    for pid, process in list(_RUNNING.items()):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        _RUNNING.pop(pid, None)


class SynapseServer:
    """A Synapse homeserver running as a subprocess on 127.0.0.1; build it with :meth:`start`."""

    directory: Path
    port: int
    base_url: str
    server_name: str
    registration_secret: str
    federation_port: int | None

    def __init__(self, directory: Path, state: _State, ready_timeout: float) -> None:
        """Use :meth:`start` instead: this only records where the server lives."""
        self.directory = directory
        self.port = state.port
        self.base_url = f"http://127.0.0.1:{state.port}"
        self.server_name = state.server_name
        self.registration_secret = state.registration_secret
        self.federation_port = state.federation_port
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    def __repr__(self) -> str:
        """Show the server name and address, never the secret."""
        return f"SynapseServer({self.server_name!r}, {self.base_url!r}, {str(self.directory)!r})"

    @classmethod
    async def start(
        cls,
        directory: Path,
        *,
        relaxed_rate_limits: bool = True,
        federation: bool = False,
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
        ready_timeout: float = 30.0,
    ) -> SynapseServer:
        """Set up ``directory`` if fresh (else reuse it as is), start Synapse, wait till ready.

        ``extra_config`` is merged over the generated homeserver config (top-level keys
        replace). On an existing directory the other arguments are ignored: the saved config,
        keys, database, ports and server name are used.
        """
        _require_synapse()
        directory, state = _prepare_directory(
            directory,
            relaxed_rate_limits=relaxed_rate_limits,
            federation=federation,
            port=port,
            extra_config=extra_config,
        )
        server = cls(directory, state, ready_timeout)
        await server._launch()
        return server

    @property
    def pid(self) -> int | None:
        """The Synapse process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the Synapse process is alive (possibly paused)."""
        return self.pid is not None

    async def _launch(self) -> None:
        """Start the Synapse process and wait until its client API answers."""
        if self.running:
            raise DevServerError(f"{self!r} is already running")
        started = time.monotonic()
        self._spawn()
        try:
            await self._wait_ready()
        except BaseException:
            await self.kill()
            raise
        log.debug("%r ready in %.2f s", self, time.monotonic() - started)

    def _spawn(self) -> None:
        """Start the Synapse process in its own session and write its pid file."""
        with (self.directory / _STDERR_FILE_NAME).open("ab") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "-c",
                    str(self.directory / _CONFIG_FILE_NAME),
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        self._process = process
        self._paused = False
        _RUNNING[process.pid] = process
        (self.directory / PID_FILE_NAME).write_text(f"{process.pid}\n", encoding="ascii")

    async def _wait_ready(self) -> None:
        """Poll the client (and federation) listeners every 50 ms until both answer."""
        deadline = time.monotonic() + self._ready_timeout
        urls = [f"{self.base_url}/_matrix/client/versions"]
        if self.federation_port is not None:
            urls.append(f"https://127.0.0.1:{self.federation_port}/_matrix/key/v2/server")
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in urls:
                while True:
                    process = self._process
                    if process is None or process.poll() is not None:
                        code = None if process is None else process.returncode
                        raise DevServerError(
                            f"Synapse in {self.directory} exited with code {code} while starting"
                            f"\n{self._failure_details()}"
                        )
                    try:
                        async with session.get(url, ssl=False) as response:
                            if response.status == 200:
                                break
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        pass
                    if time.monotonic() > deadline:
                        raise DevServerError(
                            f"Synapse in {self.directory} was not ready after "
                            f"{self._ready_timeout:.0f} s ({url})\n{self._failure_details()}"
                        )
                    await asyncio.sleep(_POLL_INTERVAL)

    def _failure_details(self) -> str:
        """The tails of Synapse's stderr and log, for error messages."""
        parts = []
        stderr = _tail(self.directory / _STDERR_FILE_NAME, 20)
        if stderr:
            parts.append(f"--- {_STDERR_FILE_NAME} (tail) ---\n{stderr}")
        parts.append(f"--- {_LOG_FILE_NAME} (tail) ---\n{self.log_tail()}")
        return "\n".join(parts)

    def _signal(self, signum: int) -> None:
        """Send a signal to Synapse's process group (it runs in its own session)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    async def _reap(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the process to exit; True if it did."""
        process = self._process
        if process is None:
            return True
        deadline = time.monotonic() + within
        while process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(_POLL_INTERVAL)
        return True

    def _forget(self) -> None:
        """Drop the process handle and the pid file once the process is gone."""
        process = self._process
        if process is not None:
            _RUNNING.pop(process.pid, None)
        self._process = None
        self._paused = False
        with contextlib.suppress(FileNotFoundError):
            (self.directory / PID_FILE_NAME).unlink()

    async def stop(self) -> None:
        """Stop Synapse with SIGTERM, then SIGKILL after 10 s; does nothing if stopped."""
        if self._process is None:
            return
        self._signal(signal.SIGTERM)
        # A paused process only acts on SIGTERM once continued.
        self._signal(signal.SIGCONT)
        if not await self._reap(_STOP_GRACE):
            log.warning("%r ignored SIGTERM for %.0f s; killing it", self, _STOP_GRACE)
            self._signal(signal.SIGKILL)
            await self._reap(_STOP_GRACE)
        self._forget()

    async def kill(self) -> None:
        """Kill Synapse at once with SIGKILL (a crash, for outage tests)."""
        if self._process is None:
            return
        self._signal(signal.SIGKILL)
        await self._reap(_STOP_GRACE)
        self._forget()

    async def restart(self) -> None:
        """Stop and start again on the same directory and port (users and rooms survive)."""
        await self.stop()
        await self._launch()

    async def pause(self) -> None:
        """Freeze Synapse with SIGSTOP: connections stay open but nothing answers."""
        if not self.running:
            raise DevServerError(f"{self!r} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True

    async def resume(self) -> None:
        """Continue a server frozen by :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._paused = False

    async def register(
        self, localpart: str, password: str | None = None, *, admin: bool = False
    ) -> RegisteredUser:
        """Create a user by shared-secret registration (a random password if none is given)."""
        if password is None:
            password = secrets.token_urlsafe(16)
        url = f"{self.base_url}/_synapse/admin/v1/register"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or "nonce" not in body:
                    raise DevServerError(f"registration nonce: HTTP {response.status}: {body}")
                nonce = str(body["nonce"])
            mac = hmac.new(self.registration_secret.encode(), digestmod=hashlib.sha1)
            for part in (nonce, localpart, password):
                mac.update(part.encode())
                mac.update(b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            payload = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(url, json=payload) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise DevServerError(
                        f"registering {localpart!r}: HTTP {response.status}: "
                        f"{body.get('errcode')} {body.get('error')}"
                    )
        return RegisteredUser(
            user_id=str(body["user_id"]),
            password=password,
            access_token=str(body["access_token"]),
            device_id=str(body["device_id"]),
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of this server's homeserver.log."""
        return _tail(self.directory / _LOG_FILE_NAME, lines)

    async def __aenter__(self) -> SynapseServer:
        """Use the running server in an ``async with`` block; it is stopped at the end."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.stop()


async def start_federation_pair(
    base_dir: Path, *, relaxed_rate_limits: bool = True
) -> tuple[SynapseServer, SynapseServer]:
    """Start two servers (in ``base_dir/a`` and ``base_dir/b``) that federate with each other."""
    base_dir = Path(base_dir)
    results = await asyncio.gather(
        SynapseServer.start(
            base_dir / "a", federation=True, relaxed_rate_limits=relaxed_rate_limits
        ),
        SynapseServer.start(
            base_dir / "b", federation=True, relaxed_rate_limits=relaxed_rate_limits
        ),
        return_exceptions=True,
    )
    servers = [r for r in results if isinstance(r, SynapseServer)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for server in servers:
            await server.stop()
        raise errors[0]
    return servers[0], servers[1]
