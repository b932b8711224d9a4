"""What bot.yaml becomes: frozen dataclasses, and the problems found on the way."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerbot.core.intake import Trigger

LANGUAGES = ("fr", "en")

_ROOM_ALIAS = re.compile(r"^#[^:\s]+:[A-Za-z0-9.\-]+(:\d{1,5})?$")

_ROOM_ID = re.compile(r"^![^:\s]+(:[A-Za-z0-9.\-]+(:\d{1,5})?)?$")

_USER_ID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:\d{1,5})?$")

_SERVER = re.compile(r"^(\*|[A-Za-z0-9.\-]+(:\d{1,5})?)$")

_HASHTAG = re.compile(r"^#\w[\w\-]*$")

_PLUGIN_USE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")


def is_room_ref(value: str) -> bool:
    """True for a room alias (``#a:b``) or a room ID (``!x:b``, or ``!x`` in room v12)."""
    return bool(_ROOM_ALIAS.match(value) or _ROOM_ID.match(value))


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in bot.yaml."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}: {self.message}{where}" if self.path else f"{self.message}{where}"


class ConfigError(Exception):
    """bot.yaml cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[ConfigProblem], source: str = "bot.yaml") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class MatrixConfig:
    """How to reach and log in to the homeserver."""

    homeserver: str
    user_id: str
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    device_id: str | None = None
    device_name: str = "PeerBot"

    @property
    def server_name(self) -> str:
        """The bot's own server name, from its user ID."""
        return self.user_id.split(":", 1)[1]


@dataclass(frozen=True)
class MetricsConfig:
    """The HTTP listener for ``/health`` and ``/metrics`` (off when ``bind`` is None)."""

    bind: tuple[str, int] | None = None
    """Host and port, loopback unless the operator says otherwise."""


@dataclass(frozen=True)
class StorageConfig:
    """Where the bot keeps its state: a SQLite file, or a PostgreSQL database."""

    # The SQLite file; with PostgreSQL, ``peerbot.db`` beside bot.yaml, of which only the
    # folder is used (the plugins' data folders live there).
    database: Path
    postgresql: str | None = None  # a libpq-style URL, postgresql://user@host:port/db
    password_file: Path | None = None  # the PostgreSQL password, alone in a file
    standby_poll_ms: int = 1000  # PostgreSQL: how often a standby tries to take the lead

    @property
    def target(self) -> Path | str:
        """What :meth:`peerbot.store.Store.open` takes: the URL, or the SQLite file."""
        return self.postgresql if self.postgresql is not None else self.database

    def password(self) -> str | None:
        """The PostgreSQL password from ``password_file`` (or ``$CREDENTIALS_DIRECTORY``)."""
        path = self.password_file
        if path is None:
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            candidate = Path(creds) / "peerbot-db-password" if creds else None
            if candidate is None or not candidate.is_file():
                return None
            path = candidate
        return path.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class InvitesConfig:
    """Whose invites the bot accepts."""

    allowed_servers: tuple[str, ...]

    def allows(self, user_id: str) -> bool:
        """True when an invite from this user may be accepted."""
        if "*" in self.allowed_servers:
            return True
        server = user_id.split(":", 1)[1] if ":" in user_id else ""
        return server.lower() in {s.lower() for s in self.allowed_servers}


@dataclass(frozen=True)
class IntakeRoom:
    """A room where the bot looks for questions."""

    room: str
    trigger: Trigger = Trigger.HASHTAG
    hashtags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Specialty:
    """A specialty room and the keywords that send a question there."""

    name: str
    room: str
    keywords: tuple[str, ...] = ()
    allow_from_encrypted: bool = False
    """Questions from encrypted rooms may be forwarded here even if this room is not encrypted."""
    escalation_after: tuple[float, ...] | None = None
    """This specialty's escalation steps in seconds (None: ``escalation.after``)."""
    digest: DigestConfig | None = None
    """This specialty's digest time (None: the top-level ``digest``)."""


@dataclass(frozen=True)
class DigestConfig:
    """When a specialty room gets its digest: daily at a local hour (or every N, for tests)."""

    at: str = "08:00"
    timezone: str = "Europe/Paris"
    every_s: float | None = None
    """A period instead of a daily hour (tests and demos)."""


@dataclass(frozen=True)
class EscalationConfig:
    """When an unanswered question is brought up again (seconds after its forward)."""

    after: tuple[float, ...] = (7200.0, 86400.0)


@dataclass(frozen=True)
class ExpertsConfig:
    """How volunteer experts are pinged."""

    pings_per_step: int = 3
    daily_cap: int = 5
    """Pings per expert in 24 hours, every room together."""
    timezone: str = "Europe/Paris"
    """Experts' time zone until they set theirs (``!expert tz``)."""


@dataclass(frozen=True)
class RemindersConfig:
    """The asker's reminder to mark the answer that helped with ✅."""

    solve_after: float | None = 3 * 86400.0
    """Quiet seconds after the last message before asking (None: never)."""


@dataclass(frozen=True)
class RoutingConfig:
    """Specialty rooms and the fallback (triage) room."""

    fallback_room: str
    specialties: tuple[Specialty, ...] = ()
    fallback_allow_from_encrypted: bool = False
    """``allow_from_encrypted`` for the fallback room."""

    def allows_from_encrypted(self, room: str) -> bool:
        """True when bot.yaml lets questions from encrypted rooms go to this (configured) room."""
        allowed = {s.room for s in self.specialties if s.allow_from_encrypted}
        if self.fallback_allow_from_encrypted:
            allowed.add(self.fallback_room)
        return room in allowed


ENGINES = ("auto", "lexical", "hybrid")


@dataclass(frozen=True)
class RelatedConfig:
    """How related past threads are listed."""

    max_results: int = 3
    min_score: float | None = None
    """None: the engine's calibrated default."""
    engine: str = "auto"
    """auto (hybrid when the semantic extra loads, else lexical), lexical, or hybrid."""
    model: str = "use-m3-q6"
    """The embedding model of the hybrid engine (peerbot.core.semantic.MODELS)."""


@dataclass(frozen=True)
class EncryptionConfig:
    """End-to-end encryption: nio's store and the bot's own cross-signing keys."""

    enabled: bool = False
    store_path: Path = Path("peerbot-store")
    """nio's encryption store (created mode 0700)."""
    key_file: Path = Path("peerbot-store/cross-signing.keys")
    """The sealed cross-signing seeds (mode 0600): back it up."""
    pickle_key: str | None = field(default=None, repr=False)
    """Encrypts nio's store at rest (``PEERBOT_PICKLE_KEY`` overrides bot.yaml)."""
    passphrase: str | None = field(default=None, repr=False)
    """Seals the key file; only from ``PEERBOT_KEY_PASSPHRASE``."""


@dataclass(frozen=True)
class AdminConfig:
    """Who may use admin commands."""

    power_level: int = 50


@dataclass(frozen=True)
class Community:
    """Rooms the operator declares readable by the same people: their threads may be shown in
    one another (related threads, digests, relays)."""

    name: str
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class PluginEntry:
    """A plugin named in bot.yaml."""

    use: str
    rooms: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""
    line: int | None = None


@dataclass(frozen=True)
class Config:
    """The whole of bot.yaml, checked."""

    matrix: MatrixConfig
    storage: StorageConfig
    invites: InvitesConfig
    intake: tuple[IntakeRoom, ...]
    routing: RoutingConfig
    language: str = "fr"
    related: RelatedConfig = RelatedConfig()
    admin: AdminConfig = AdminConfig()
    plugins: tuple[PluginEntry, ...] = ()
    log_level: str = "INFO"
    encryption: EncryptionConfig = EncryptionConfig()
    communities: tuple[Community, ...] = ()
    admin_room: str | None = None
    """Where start-up problems are posted (once per start); None: only the log."""
    metrics: MetricsConfig = MetricsConfig()
    log_format: str = "text"
    """text (one readable line per event) or json (one JSON object per line)."""
    escalation: EscalationConfig = EscalationConfig()
    experts: ExpertsConfig = ExpertsConfig()
    reminders: RemindersConfig = RemindersConfig()
    digest: DigestConfig | None = None
    """None: no digests, unless a specialty sets its own."""

    def configured_rooms(self) -> list[str]:
        """Every room reference named in the config (intake, specialties, fallback)."""
        rooms = [i.room for i in self.intake]
        rooms += [s.room for s in self.routing.specialties]
        rooms.append(self.routing.fallback_room)
        return list(dict.fromkeys(rooms))
