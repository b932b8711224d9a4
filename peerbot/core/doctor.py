"""``peerbot doctor`` and the start-up self-check: pure checks over facts gathered elsewhere.

The async layer (:mod:`peerbot.bot.doctor`) logs in and gathers :class:`RoomFacts`,
:class:`DatabaseFacts` and the rest; each function here turns facts into :class:`Check` lines,
``ok`` or ``problem`` with what to do. Nothing here talks to the network or the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MIN_FREE_BYTES",
    "Check",
    "DatabaseFacts",
    "FileFacts",
    "RoomFacts",
    "all_ok",
    "check_database",
    "check_encryption_keys",
    "check_login",
    "check_plugins",
    "check_private_file",
    "check_room",
    "needed_level",
    "user_level",
]

MIN_FREE_BYTES = 100 * 1024 * 1024
"""Below this much free space next to the database, a problem (SQLite needs room to write)."""


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    """What to do (problems only)."""

    def line(self) -> str:
        """``ok      name: detail`` or ``problem name: detail -> fix``."""
        if self.ok:
            return f"ok       {self.name}: {self.detail}"
        fix = f" -> {self.fix}" if self.fix else ""
        return f"problem  {self.name}: {self.detail}{fix}"


@dataclass(frozen=True)
class RoomFacts:
    """What the homeserver says about one configured room, for the bot's account."""

    ref: str
    """As written in bot.yaml (alias or ID)."""
    roles: tuple[str, ...]
    """intake, specialty NAME, fallback, admin room."""
    room_id: str | None = None
    resolve_error: str | None = None
    """Why the alias does not resolve (None: it does, or it is an ID)."""
    joined: bool = False
    invited: bool = False
    power_levels: Mapping[str, Any] | None = None
    """The m.room.power_levels content (None: unknown, e.g. not joined)."""
    encrypted: bool | None = None
    """None: unknown (not joined)."""


@dataclass(frozen=True)
class DatabaseFacts:
    """The database file and its schema, read without taking the instance lock."""

    path: str
    exists: bool
    applied: int = 0
    latest: int = 0
    free_bytes: int | None = None
    mode: int | None = None
    folder_exists: bool = True
    error: str | None = None
    """Why it could not be read (corrupt, not a database...)."""


@dataclass(frozen=True)
class FileFacts:
    """A file or folder that must stay private to the bot's user."""

    path: str
    exists: bool
    mode: int | None = None
    is_dir: bool = False


def user_level(power_levels: Mapping[str, Any], user_id: str) -> int:
    """A user's power level in a room (``users``, else ``users_default``)."""
    users = power_levels.get("users")
    if isinstance(users, Mapping) and user_id in users:
        return _int(users[user_id], 0)
    return _int(power_levels.get("users_default"), 0)


def needed_level(power_levels: Mapping[str, Any], event_type: str) -> int:
    """The level needed to send a (non-state) event of this type."""
    events = power_levels.get("events")
    if isinstance(events, Mapping) and event_type in events:
        return _int(events[event_type], 0)
    return _int(power_levels.get("events_default"), 0)


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)  # old room versions allowed strings
    return default


def check_login(user_id: str, error: str | None) -> Check:
    """The bot can log in (or why not)."""
    if error is None:
        return Check("login", True, f"logged in as {user_id}")
    return Check(
        "login",
        False,
        error,
        "check matrix.homeserver, matrix.user_id and the password or access token",
    )


def check_room(
    room: RoomFacts, bot_user: str, *, encryption_enabled: bool, encryption_ready: bool
) -> list[Check]:
    """Joined or joinable; may post and redact its own messages; encryption readable."""
    name = f"room {room.ref} ({', '.join(room.roles)})"
    if room.resolve_error is not None:
        return [
            Check(
                name,
                False,
                f"the alias does not resolve: {room.resolve_error}",
                "create the room or fix the alias in bot.yaml",
            )
        ]
    if not room.joined:
        if room.invited:
            return [Check(name, True, "invited; the bot joins at start")]
        return [
            Check(
                name,
                False,
                "the bot is neither joined nor invited",
                f"invite {bot_user} to the room (or make it public)",
            )
        ]
    out = [Check(name, True, f"joined ({room.room_id})")]
    if room.encrypted and not encryption_enabled:
        out.append(
            Check(
                f"{name} encryption",
                False,
                "the room is encrypted and encryption is off: the bot can neither read nor "
                "post there",
                "set encryption.enabled: true in bot.yaml (with its pickle key and passphrase)",
            )
        )
    elif room.encrypted and not encryption_ready:
        out.append(
            Check(
                f"{name} encryption",
                False,
                "the room is encrypted and the bot's encryption keys are not usable",
                "see the encryption checks below",
            )
        )
    elif room.encrypted is not None:
        out.append(
            Check(
                f"{name} encryption",
                True,
                "encrypted; the bot reads it" if room.encrypted else "not encrypted",
            )
        )
    if room.power_levels is not None:
        out += _power_checks(name, room, bot_user)
    return out


def _power_checks(name: str, room: RoomFacts, bot_user: str) -> list[Check]:
    pl = room.power_levels or {}
    have = user_level(pl, bot_user)
    message_type = "m.room.encrypted" if room.encrypted else "m.room.message"
    checks = []
    for what, event_type in (
        ("post", message_type),
        ("react", "m.reaction"),
        ("redact its own messages", "m.room.redaction"),
    ):
        need = needed_level(pl, event_type)
        if have < need:
            checks.append(
                Check(
                    f"{name} power",
                    False,
                    f"cannot {what}: the bot has level {have}, {event_type} needs {need}",
                    f"give {bot_user} power level {need} in the room (or lower {event_type})",
                )
            )
    if not checks:
        checks.append(
            Check(f"{name} power", True, f"may post, react and redact its own (level {have})")
        )
    return checks


def check_plugins(names: Sequence[str], error: str | None) -> Check:
    """The configured plugins load."""
    if error is not None:
        return Check("plugins", False, error, "fix the plugin entry in bot.yaml or install it")
    if not names:
        return Check("plugins", True, "none configured")
    return Check("plugins", True, f"{len(names)} loaded ({', '.join(names)})")


def check_database(db: DatabaseFacts) -> list[Check]:
    """Migrations, free space and permissions of the database file."""
    name = f"database {db.path}"
    if not db.folder_exists:
        return [Check(name, False, "its folder does not exist", "create it, owned by the bot")]
    if db.error is not None:
        return [Check(name, False, db.error, "restore a backup, or point storage.database at it")]
    out: list[Check] = []
    if not db.exists:
        out.append(Check(name, True, "not created yet; made at first start"))
    elif db.applied > db.latest:
        out.append(
            Check(
                name,
                False,
                f"schema {db.applied} is newer than this PeerBot ({db.latest})",
                "upgrade PeerBot",
            )
        )
    elif db.applied < db.latest:
        pending = db.latest - db.applied
        out.append(
            Check(
                name,
                True,
                f"schema {db.applied}; {pending} migration(s) pending, applied at next start "
                f"(back up the file first)",
            )
        )
    else:
        out.append(Check(name, True, f"schema {db.applied}, up to date"))
    if db.free_bytes is not None:
        mib = db.free_bytes // (1024 * 1024)
        if db.free_bytes < MIN_FREE_BYTES:
            out.append(
                Check(f"{name} space", False, f"only {mib} MiB free", "free some disk space")
            )
        else:
            out.append(Check(f"{name} space", True, f"{mib} MiB free"))
    if db.mode is not None:
        out.append(_mode_check(f"{name} permissions", db.path, db.mode, is_dir=False))
    return out


def check_private_file(what: str, facts: FileFacts, *, required: bool = False) -> Check:
    """A key file or store folder readable by the bot's user alone."""
    name = f"{what} {facts.path}"
    if not facts.exists or facts.mode is None:
        if required:
            return Check(name, False, "missing", "restore it from a backup")
        return Check(name, True, "not created yet; made at first start")
    return _mode_check(name, facts.path, facts.mode, is_dir=facts.is_dir)


def _mode_check(name: str, path: str, mode: int, *, is_dir: bool) -> Check:
    mode &= 0o777
    if mode & 0o077:
        private = "700" if is_dir else "600"
        return Check(
            name,
            False,
            f"mode {mode:o}: other users may read it (health data, keys)",
            f"chmod {private} {path}",
        )
    return Check(name, True, f"mode {mode:o}, private to the bot's user")


def check_encryption_keys(enabled: bool, key_error: str | None, store_error: str | None) -> Check:
    """With encryption on: the cross-signing key file opens and nio's store is there."""
    if not enabled:
        return Check("encryption", True, "off (encrypted rooms are neither read nor written)")
    if key_error is not None:
        return Check(
            "encryption keys",
            False,
            key_error,
            "restore the key file and PEERBOT_KEY_PASSPHRASE, or `peerbot run --reset-identity`",
        )
    if store_error is not None:
        return Check("encryption keys", False, store_error, "check encryption.store_path")
    return Check("encryption keys", True, "cross-signing keys readable, device store present")


def all_ok(checks: Iterable[Check]) -> bool:
    """True when no check found a problem."""
    return all(c.ok for c in checks)
