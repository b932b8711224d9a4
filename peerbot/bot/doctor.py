"""``peerbot doctor`` and the start-up self-check: gathers the facts the pure checks of
:mod:`peerbot.core.doctor` judge (the homeserver's view of each room, the database, the keys).

``peerbot doctor`` logs in with the session the bot saved (no new device; a password login it
had to make is logged out again) and never opens the store for writing, so it runs beside a
running bot. ``peerbot run`` calls :func:`gather_checks` once started.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from peerbot.config import Config
from peerbot.core.doctor import (
    Check,
    FileFacts,
    RoomFacts,
    check_database,
    check_encryption_keys,
    check_login,
    check_plugins,
    check_private_file,
    check_room,
)
from peerbot.matrix import Forbidden, MatrixClient, MatrixError, NotFound
from peerbot.store.ops import inspect_database

__all__ = ["Report", "gather_checks", "room_roles", "run_doctor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """Every check, in order."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        """The checks that found a problem."""
        return [c for c in self.checks if not c.ok]


def room_roles(config: Config) -> dict[str, tuple[str, ...]]:
    """Every room bot.yaml names that the bot must be in, with what it is for."""
    roles: dict[str, list[str]] = {}
    for room in config.intake:
        roles.setdefault(room.room, []).append("intake")
    for s in config.routing.specialties:
        roles.setdefault(s.room, []).append(f"specialty {s.name}")
    roles.setdefault(config.routing.fallback_room, []).append("fallback")
    if config.admin_room:
        roles.setdefault(config.admin_room, []).append("admin room")
    return {ref: tuple(r) for ref, r in roles.items()}


async def _joined(client: MatrixClient) -> set[str]:
    status, answer = await client.raw("GET", "/_matrix/client/v3/joined_rooms", None)
    rooms = (answer or {}).get("joined_rooms") if status == 200 else None
    if not isinstance(rooms, list):
        raise MatrixError("joined rooms", None, f"unexpected answer (HTTP {status})", status)
    return {str(r) for r in rooms}


async def room_facts(
    client: MatrixClient, ref: str, roles: tuple[str, ...], joined: set[str], invited: set[str]
) -> RoomFacts:
    """What the homeserver says about one room."""
    room_id = ref
    if ref.startswith("#"):
        try:
            room_id, _ = await client.resolve_alias(ref)
        except MatrixError as exc:
            return RoomFacts(ref, roles, resolve_error=exc.errcode or str(exc))
    if room_id not in joined:
        return RoomFacts(ref, roles, room_id=room_id, invited=room_id in invited)
    try:
        power = (await client.state_event(room_id, "m.room.power_levels")).get("content")
    except NotFound:
        power = {}  # no power levels event: everyone may send (the spec's defaults)
    try:
        await client.state_event(room_id, "m.room.encryption")
        encrypted = True
    except NotFound:
        encrypted = False
    return RoomFacts(
        ref,
        roles,
        room_id=room_id,
        joined=True,
        power_levels=power if isinstance(power, dict) else {},
        encrypted=encrypted,
    )


def _file_facts(path: Path) -> FileFacts:
    try:
        st = path.stat()
    except OSError:
        return FileFacts(str(path), False)
    return FileFacts(str(path), True, st.st_mode & 0o777, path.is_dir())


def _key_error(config: Config) -> str | None:
    from peerbot.matrix.crosssign import KeysMissing, KeyStoreError, key_file_info, load_keys

    enc = config.encryption
    try:
        info = key_file_info(enc.key_file)
        load_keys(enc.key_file, enc.passphrase or "")
    except KeysMissing:
        return None  # made at first start
    except KeyStoreError as exc:
        return str(exc)
    if info.user_id is not None and info.user_id != config.matrix.user_id:
        return f"{enc.key_file} holds the keys of {info.user_id}, not {config.matrix.user_id}"
    return None


def _store_error(config: Config, device_id: str | None) -> str | None:
    if device_id is None:
        return None  # no device yet: made at first start
    # The file name nio gives its store (MatrixClient._store_file).
    store = config.encryption.store_path / f"{config.matrix.user_id}_{device_id}.db"
    if not store.exists():
        return (
            f"no encryption store for device {device_id} in {config.encryption.store_path}: "
            "the bot will log in a new device and lose the old one's keys"
        )
    return None


async def gather_checks(
    config: Config,
    client: MatrixClient,
    *,
    invited: set[str] | None = None,
    plugins: tuple[list[str], str | None] | None = None,
) -> Report:
    """Run every check for a logged-in client (``plugins``: names loaded, or the load error)."""
    checks: list[Check] = []
    enc = config.encryption
    inspection = inspect_database(config.storage.database)
    device = client.device_id or inspection.device_id
    key_error = _key_error(config) if enc.enabled else None
    store_error = _store_error(config, device) if enc.enabled else None
    ready = enc.enabled and key_error is None and store_error is None
    try:
        joined = await _joined(client)
    except MatrixError as exc:
        checks.append(Check("rooms", False, f"cannot list joined rooms: {exc}", "see the log"))
        joined = set()
    for ref, roles in room_roles(config).items():
        try:
            facts = await room_facts(client, ref, roles, joined, invited or set())
        except MatrixError as exc:
            checks.append(Check(f"room {ref}", False, f"cannot be checked: {exc}"))
            continue
        checks += check_room(
            facts, str(client.user_id), encryption_enabled=enc.enabled, encryption_ready=ready
        )
    if plugins is not None:
        checks.append(check_plugins(*plugins))
    checks += check_database(inspection.facts)
    checks.append(check_encryption_keys(enc.enabled, key_error, store_error))
    if enc.enabled:
        checks.append(check_private_file("key file", _file_facts(enc.key_file)))
        checks.append(check_private_file("encryption store", _file_facts(enc.store_path)))
    return Report(checks)


async def run_doctor(config: Config) -> int:
    """``peerbot doctor``: print one line per check; 0 when all are ok, 1 otherwise."""
    from peerbot.bot.plugins import PluginLoadError
    from peerbot.bot.runner import load_plugin_set

    try:
        plugin_set = load_plugin_set(config)
        plugins: tuple[list[str], str | None] = ([p.name for p in plugin_set.plugins], None)
        await plugin_set.close()
    except PluginLoadError as exc:
        plugins = ([], str(exc))
    inspection = inspect_database(config.storage.database)
    client = MatrixClient(config.matrix, None)
    try:
        try:
            await client.login(inspection.device_id, inspection.access_token)
        except MatrixError as exc:
            checks = [check_login(config.matrix.user_id, str(exc))]
            checks.append(check_plugins(*plugins))
            checks += check_database(inspection.facts)
            return _print(Report(checks))
        # A device of doctor's own (no session saved yet): logged out at the end. A saved
        # device is never logged out, even if doctor had to renew its token.
        fresh = inspection.device_id is None and not config.matrix.device_id
        checks = [check_login(config.matrix.user_id, None)]
        try:
            batch = await client.sync(None, full_state=False, first=True)
            invited = {str(i.room_id) for i in batch.invites}
        except MatrixError:
            invited = set()
        report = await gather_checks(config, client, invited=invited, plugins=plugins)
        if fresh:
            # Doctor had to log in a device of its own: do not leave it behind.
            try:
                await client.raw("POST", "/_matrix/client/v3/logout", {})
            except (Forbidden, MatrixError) as exc:
                log.warning("Could not log out doctor's device: %s", exc)
        return _print(Report(checks + report.checks))
    finally:
        await client.close()


def _print(report: Report) -> int:
    for check in report.checks:
        print(check.line())
    n = len(report.problems)
    print("all checks ok" if n == 0 else f"{n} problem(s) found")
    return 0 if report.ok else 1
