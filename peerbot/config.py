"""bot.yaml -> frozen dataclasses. Every problem names the key path and the line.

long: one checker walks every section of bot.yaml, so every problem names its key and line
the same way; the sections could become modules of a config/ package.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peerbot.core.intake import Trigger

__all__ = [
    "AdminConfig",
    "Community",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "EncryptionConfig",
    "IntakeRoom",
    "InvitesConfig",
    "MatrixConfig",
    "MetricsConfig",
    "PluginEntry",
    "RelatedConfig",
    "RoutingConfig",
    "Specialty",
    "StorageConfig",
    "Trigger",
    "is_room_ref",
    "load_config",
    "parse_config",
]

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
    """Where the bot keeps its state."""

    database: Path


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


@dataclass(frozen=True)
class RelatedConfig:
    """How related past threads are listed."""

    max_results: int = 3
    min_score: float | None = None
    """None: the engine's calibrated default."""


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

    def configured_rooms(self) -> list[str]:
        """Every room reference named in the config (intake, specialties, fallback)."""
        rooms = [i.room for i in self.intake]
        rooms += [s.room for s in self.routing.specialties]
        rooms.append(self.routing.fallback_room)
        return list(dict.fromkeys(rooms))


# --- reading YAML with line numbers -------------------------------------------------------------

_Path = tuple[str | int, ...]


def _fmt(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Reader:
    """Walks a composed YAML tree, remembering the line of every key and item."""

    def __init__(self, text: str) -> None:
        self.lines: dict[_Path, int] = {}
        self.problems: list[ConfigProblem] = []
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if "quoted scalar" in str(getattr(exc, "context", "")):
                # An unclosed quote fails at the end of the file: point at where it opened.
                mark = getattr(exc, "context_mark", None) or mark
            line = mark.line + 1 if mark is not None else None
            what = getattr(exc, "problem", None) or str(exc)
            self.problems.append(ConfigProblem("", f"not valid YAML: {what}", line))
            self.data: Any = None
            return
        if node is None:
            self.data = None
            return
        self._index(node, ())
        loader = yaml.SafeLoader("")
        try:
            self.data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            self.problems.append(ConfigProblem("", f"not valid YAML: {exc}", line))
            self.data = None
        finally:
            loader.dispose()

    def _index(self, node: yaml.Node, path: _Path) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.problems.append(
                        ConfigProblem(
                            _fmt((*path, key)), "duplicate key", key_node.start_mark.line + 1
                        )
                    )
                seen.add(key)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self._index(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self._index(item, (*path, i))

    def line(self, path: _Path) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


class _Checker:
    """Turns the raw YAML data into dataclasses, collecting every problem."""

    def __init__(self, reader: _Reader, base_dir: Path, env: Mapping[str, str]) -> None:
        self.r = reader
        self.base_dir = base_dir
        self.env = env
        self.problems = reader.problems

    def bad(self, path: _Path, message: str) -> None:
        self.problems.append(ConfigProblem(_fmt(path), message, self.r.line(path)))

    def mapping(self, value: Any, path: _Path, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping of keys, not {_kind(value)}")
            return {}
        for key in value:
            if str(key) not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                extra = (
                    f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
                )
                self.bad((*path, str(key)), "unknown key" + extra)
        return {str(k): v for k, v in value.items()}

    def string(
        self,
        d: Mapping[str, Any],
        key: str,
        path: _Path,
        *,
        required: bool = True,
        default: str | None = None,
        check: Callable[[str], bool] | None = None,
        what: str = "",
    ) -> str | None:
        p = (*path, key)
        if key not in d or d[key] is None:
            if required:
                self.bad(p, "is required")
            return default
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.bad(p, f"must be a string, not {_kind(value)}")
            return default
        text = str(value).strip()
        if not text:
            self.bad(p, "must not be empty")
            return default
        if check is not None and not check(text):
            self.bad(p, what or "is not valid")
            return default
        return text

    def integer(
        self, d: Mapping[str, Any], key: str, path: _Path, default: int, lo: int, hi: int
    ) -> int:
        p = (*path, key)
        if key not in d or d[key] is None:
            return default
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(p, f"must be a whole number, not {_kind(value)}")
            return default
        if not lo <= value <= hi:
            self.bad(p, f"must be between {lo} and {hi}")
            return default
        return value

    def string_list(
        self,
        d: Mapping[str, Any],
        key: str,
        path: _Path,
        *,
        required: bool = False,
        check: Callable[[str], bool] | None = None,
        what: str = "",
    ) -> tuple[str, ...] | None:
        p = (*path, key)
        if key not in d or d[key] is None:
            if required:
                self.bad(p, "is required")
            return None
        value = d[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.bad(p, f"must be a list of strings, not {_kind(value)}")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.bad((*p, i), f"must be a string, not {_kind(item)}")
                continue
            text = str(item).strip()
            if not text:
                self.bad((*p, i), "must not be empty")
            elif check is not None and not check(text):
                self.bad((*p, i), what or "is not valid")
            else:
                out.append(text)
        return tuple(out)

    def boolean(self, d: Mapping[str, Any], key: str, path: _Path, default: bool = False) -> bool:
        p = (*path, key)
        if key not in d or d[key] is None:
            return default
        value = d[key]
        if not isinstance(value, bool):
            self.bad(p, f"must be true or false, not {_kind(value)}")
            return default
        return value

    def path(self, d: Mapping[str, Any], key: str, path: _Path, default: Path) -> Path:
        raw = self.string(d, key, path, required=False)
        value = Path(os.path.expanduser(raw)) if raw else default
        return value if value.is_absolute() else self.base_dir / value

    def room(self, d: Mapping[str, Any], key: str, path: _Path) -> str:
        return (
            self.string(
                d,
                key,
                path,
                check=is_room_ref,
                what="not a room alias or ID (like #name:server or !id:server)",
            )
            or ""
        )

    # -- sections ---------------------------------------------------------------------------

    def check(self) -> Config | None:
        if self.r.data is None and not self.problems:
            self.bad((), "the file is empty")
        if self.problems:
            return None
        top = self.mapping(
            self.r.data,
            (),
            (
                "matrix",
                "storage",
                "language",
                "invites",
                "intake",
                "routing",
                "related",
                "admin",
                "plugins",
                "log_level",
                "encryption",
                "communities",
                "admin_room",
                "metrics",
                "log_format",
            ),
        )
        if not isinstance(self.r.data, dict):
            return None
        matrix = self.matrix(top)
        storage = self.storage(top)
        language = self.string(top, "language", (), required=False, default="fr") or "fr"
        if language not in LANGUAGES:
            self.bad(("language",), f"must be one of {', '.join(LANGUAGES)}")
        log_level = (
            self.string(top, "log_level", (), required=False, default="INFO") or "INFO"
        ).upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            self.bad(("log_level",), "must be one of DEBUG, INFO, WARNING, ERROR")
        invites = self.invites(top)
        intake = self.intake(top)
        routing = self.routing(top)
        related = self.related(top)
        admin = self.admin(top)
        plugins = self.plugins(top)
        encryption = self.encryption(top)
        communities = self.communities(top)
        admin_room = self.room(top, "admin_room", ()) if top.get("admin_room") is not None else None
        metrics = self.metrics(top)
        log_format = self.string(top, "log_format", (), required=False, default="text") or "text"
        if log_format not in ("text", "json"):
            self.bad(("log_format",), "must be text or json")
        if self.problems or matrix is None or routing is None:
            return None
        return Config(
            matrix=matrix,
            storage=storage,
            invites=invites,
            intake=intake,
            routing=routing,
            language=language,
            related=related,
            admin=admin,
            plugins=plugins,
            log_level=log_level,
            encryption=encryption,
            communities=communities,
            admin_room=admin_room or None,
            metrics=metrics,
            log_format=log_format,
        )

    def section(self, top: Mapping[str, Any], key: str, known: tuple[str, ...]) -> dict[str, Any]:
        if key not in top:
            return {}
        return self.mapping(top[key], (key,), known)

    def matrix(self, top: Mapping[str, Any]) -> MatrixConfig | None:
        if "matrix" not in top:
            self.bad(("matrix",), "is required")
            return None
        p: _Path = ("matrix",)
        if not isinstance(top["matrix"], Mapping):
            self.section(top, "matrix", ())  # one message: "must be a mapping of keys"
            return None
        m = self.section(
            top,
            "matrix",
            (
                "homeserver",
                "user_id",
                "password",
                "password_file",
                "access_token",
                "access_token_file",
                "device_id",
                "device_name",
            ),
        )
        homeserver = self.string(
            m,
            "homeserver",
            p,
            check=lambda s: s.startswith(("http://", "https://")),
            what="must be an http:// or https:// URL",
        )
        user_id = self.string(
            m,
            "user_id",
            p,
            check=lambda s: bool(_USER_ID.match(s)),
            what="not a Matrix user ID (like @peerbot:example.org)",
        )
        password = self.env.get("PEERBOT_PASSWORD") or self.secret(m, "password", p)
        token = self.env.get("PEERBOT_ACCESS_TOKEN") or self.secret(m, "access_token", p)
        device_id = self.string(m, "device_id", p, required=False)
        device_name = self.string(m, "device_name", p, required=False, default="PeerBot")
        wrong_type = any(k in m and not isinstance(m[k], str) for k in ("password", "access_token"))
        file_problem = any(pr.path.startswith("matrix.") for pr in self.problems)
        if not password and not token and not wrong_type and not file_problem:
            self.bad(
                p,
                "needs a password or an access_token (or password_file / access_token_file, "
                "PEERBOT_PASSWORD / PEERBOT_ACCESS_TOKEN in the environment, or a 'password' "
                "or 'access_token' file in $CREDENTIALS_DIRECTORY)",
            )
        if token and not device_id and not password:
            self.bad((*p, "device_id"), "is required with access_token")
        if homeserver is None or user_id is None:
            return None
        return MatrixConfig(
            homeserver=homeserver.rstrip("/"),
            user_id=user_id,
            password=password,
            access_token=token,
            device_id=device_id,
            device_name=device_name or "PeerBot",
        )

    def storage(self, top: Mapping[str, Any]) -> StorageConfig:
        s = self.section(top, "storage", ("database",))
        raw = self.string(s, "database", ("storage",), required=False, default="./peerbot.db")
        path = Path(os.path.expanduser(raw or "./peerbot.db"))
        if not path.is_absolute():
            path = self.base_dir / path
        return StorageConfig(database=path)

    def invites(self, top: Mapping[str, Any]) -> InvitesConfig:
        d = self.section(top, "invites", ("allowed_servers",))
        servers = self.string_list(
            d,
            "allowed_servers",
            ("invites",),
            check=lambda s: bool(_SERVER.match(s)),
            what="not a server name (like example.org) or *",
        )
        if servers is None:
            # Safe default: only the bot's own server.
            user = (
                top.get("matrix", {}).get("user_id")
                if isinstance(top.get("matrix"), dict)
                else None
            )
            own = str(user).split(":", 1)[1] if isinstance(user, str) and ":" in user else ""
            servers = (own,) if own else ()
        return InvitesConfig(allowed_servers=servers)

    def intake(self, top: Mapping[str, Any]) -> tuple[IntakeRoom, ...]:
        raw = top.get("intake")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("intake",), f"must be a list of rooms, not {_kind(raw)}")
            return ()
        rooms: list[IntakeRoom] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            p: _Path = ("intake", i)
            d = self.mapping(item, p, ("room", "trigger", "hashtags"))
            if not isinstance(item, dict):
                continue
            room = self.room(d, "room", p)
            trig_raw = self.string(d, "trigger", p, required=False, default="hashtag") or "hashtag"
            try:
                trigger = Trigger(trig_raw.lower())
            except ValueError:
                self.bad((*p, "trigger"), "must be one of hashtag, question, all")
                trigger = Trigger.HASHTAG
            hashtags = self.string_list(
                d,
                "hashtags",
                p,
                check=lambda s: bool(_HASHTAG.match(s)),
                what="not a hashtag (like #DocTocToc)",
            )
            if trigger is Trigger.HASHTAG and not hashtags and "hashtags" not in d:
                self.bad((*p, "hashtags"), "is required when trigger is hashtag")
            if room and room in seen:
                self.bad((*p, "room"), f"is already intake[{seen[room]}]")
            seen.setdefault(room, i)
            rooms.append(IntakeRoom(room=room, trigger=trigger, hashtags=hashtags or ()))
        return tuple(rooms)

    def routing(self, top: Mapping[str, Any]) -> RoutingConfig | None:
        if "routing" not in top:
            self.bad(("routing",), "is required (at least routing.fallback_room)")
            return None
        d = self.section(top, "routing", ("fallback_room", "specialties"))
        fallback_allow = False
        if isinstance(d.get("fallback_room"), dict):
            # The long form: {room: ..., allow_from_encrypted: true}.
            fp: _Path = ("routing", "fallback_room")
            f = self.mapping(d["fallback_room"], fp, ("room", "allow_from_encrypted"))
            fallback = self.room(f, "room", fp)
            fallback_allow = self.boolean(f, "allow_from_encrypted", fp)
        else:
            fallback = self.room(d, "fallback_room", ("routing",))
        raw = d.get("specialties") or []
        specialties: list[Specialty] = []
        if not isinstance(raw, list):
            self.bad(("routing", "specialties"), f"must be a list, not {_kind(raw)}")
            raw = []
        names: dict[str, int] = {}
        for i, item in enumerate(raw):
            p: _Path = ("routing", "specialties", i)
            s = self.mapping(item, p, ("name", "room", "keywords", "allow_from_encrypted"))
            if not isinstance(item, dict):
                continue
            name = self.string(s, "name", p) or ""
            room = self.room(s, "room", p)
            keywords = self.string_list(s, "keywords", p) or ()
            allow = self.boolean(s, "allow_from_encrypted", p)
            key = name.casefold()
            if name and key in names:
                self.bad(
                    (*p, "name"),
                    f"duplicate specialty name, already routing.specialties[{names[key]}]",
                )
            names.setdefault(key, i)
            specialties.append(
                Specialty(name=name, room=room, keywords=keywords, allow_from_encrypted=allow)
            )
        return RoutingConfig(
            fallback_room=fallback,
            specialties=tuple(specialties),
            fallback_allow_from_encrypted=fallback_allow,
        )

    def encryption(self, top: Mapping[str, Any]) -> EncryptionConfig:
        p: _Path = ("encryption",)
        d = self.section(
            top,
            "encryption",
            (
                "enabled",
                "store_path",
                "key_file",
                "pickle_key",
                "pickle_key_file",
                "passphrase",
                "passphrase_file",
            ),
        )
        enabled = self.boolean(d, "enabled", p)
        store_path = self.path(d, "store_path", p, Path("peerbot-store"))
        key_file = self.path(d, "key_file", p, store_path / "cross-signing.keys")
        if "passphrase" in d:
            self.bad(
                (*p, "passphrase"),
                "is never read from bot.yaml: set PEERBOT_KEY_PASSPHRASE in the environment",
            )
        pickle_key = self.env.get("PEERBOT_PICKLE_KEY") or self.secret(d, "pickle_key", p)
        passphrase = self.env.get("PEERBOT_KEY_PASSPHRASE") or self.secret(
            d, "passphrase", p, inline=False, credential="key_passphrase"
        )
        if enabled:
            if not pickle_key:
                self.bad(
                    (*p, "pickle_key"),
                    "is required when encryption is enabled "
                    "(or PEERBOT_PICKLE_KEY in the environment)",
                )
            if not passphrase and not any(
                pr.path == "encryption.passphrase_file" for pr in self.problems
            ):
                self.bad(
                    p,
                    "PEERBOT_KEY_PASSPHRASE must be set (or encryption.passphrase_file, or a "
                    "'key_passphrase' file in $CREDENTIALS_DIRECTORY)",
                )
        return EncryptionConfig(
            enabled=enabled,
            store_path=store_path,
            key_file=key_file,
            pickle_key=pickle_key,
            passphrase=passphrase,
        )

    def secret(
        self,
        d: Mapping[str, Any],
        key: str,
        path: _Path,
        *,
        inline: bool = True,
        credential: str | None = None,
    ) -> str | None:
        """A secret from ``KEY_file``, else bot.yaml's ``KEY`` (when ``inline``), else a file
        named ``credential`` (default: KEY) in ``$CREDENTIALS_DIRECTORY`` (systemd's
        LoadCredential)."""
        file_key = f"{key}_file"
        if file_key in d and d[file_key] is not None:
            if inline and d.get(key) is not None:
                self.bad((*path, file_key), f"set {key} or {file_key}, not both")
                return None
            raw = self.string(d, file_key, path, required=False)
            if raw is None:
                return None
            return self.read_secret((*path, file_key), self.secret_path((*path, file_key), raw))
        if inline:
            value = self.string(d, key, path, required=False)
            if value:
                return value
        creds = self.env.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidate = Path(creds) / (credential or key)
            if candidate.is_file():
                return self.read_secret(
                    (*path, file_key), candidate, origin="$CREDENTIALS_DIRECTORY"
                )
        return None

    def secret_path(self, p: _Path, raw: str) -> Path | None:
        creds = self.env.get("CREDENTIALS_DIRECTORY")
        for var in ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"):
            if var in raw:
                if not creds:
                    self.bad(p, f"names {var}, but CREDENTIALS_DIRECTORY is not set")
                    return None
                raw = raw.replace(var, creds)
        value = Path(os.path.expanduser(raw))
        return value if value.is_absolute() else self.base_dir / value

    def read_secret(self, p: _Path, file: Path | None, origin: str = "") -> str | None:
        """The first line of a secret file, refused when others may read it."""
        if file is None:
            return None
        where = f"{file} (from {origin})" if origin else str(file)
        problem = secret_file_problem(file)
        if problem is not None:
            self.bad(p, f"{where}: {problem}")
            return None
        text = file.read_text(encoding="utf-8").strip()
        if not text:
            self.bad(p, f"{where} is empty")
            return None
        return text.splitlines()[0].strip()

    def metrics(self, top: Mapping[str, Any]) -> MetricsConfig:
        d = self.section(top, "metrics", ("bind",))
        raw = self.string(d, "bind", ("metrics",), required=False)
        if raw is None:
            return MetricsConfig()
        bind = parse_bind(raw)
        if bind is None:
            self.bad(("metrics", "bind"), 'must be host:port, like "127.0.0.1:9109"')
        return MetricsConfig(bind=bind)

    def related(self, top: Mapping[str, Any]) -> RelatedConfig:
        d = self.section(top, "related", ("max_results", "min_score"))
        max_results = self.integer(d, "max_results", ("related",), 3, 0, 10)
        min_score: float | None = None
        if d.get("min_score") is not None:
            value = d["min_score"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.bad(("related", "min_score"), f"must be a number, not {_kind(value)}")
            elif not 0.0 <= float(value) <= 1.0:
                self.bad(("related", "min_score"), "must be between 0 and 1")
            else:
                min_score = float(value)
        return RelatedConfig(max_results=max_results, min_score=min_score)

    def admin(self, top: Mapping[str, Any]) -> AdminConfig:
        d = self.section(top, "admin", ("power_level",))
        return AdminConfig(power_level=self.integer(d, "power_level", ("admin",), 50, 0, 1_000_000))

    def communities(self, top: Mapping[str, Any]) -> tuple[Community, ...]:
        raw = top.get("communities")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("communities",), f"must be a list of communities, not {_kind(raw)}")
            return ()
        out: list[Community] = []
        for i, item in enumerate(raw):
            p: _Path = ("communities", i)
            d = self.mapping(item, p, ("name", "rooms"))
            if not isinstance(item, dict):
                continue
            name = self.string(d, "name", p, required=False, default=f"communities[{i}]")
            rooms = self.string_list(
                d,
                "rooms",
                p,
                required=True,
                check=is_room_ref,
                what="not a room alias or ID (like #name:server or !id:server)",
            )
            if rooms is None:
                continue
            if len(set(rooms)) < 2:
                self.bad((*p, "rooms"), "needs at least two different rooms")
                continue
            out.append(Community(name=name or f"communities[{i}]", rooms=rooms))
        return tuple(out)

    def plugins(self, top: Mapping[str, Any]) -> tuple[PluginEntry, ...]:
        raw = top.get("plugins")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("plugins",), f"must be a list, not {_kind(raw)}")
            return ()
        out: list[PluginEntry] = []
        for i, item in enumerate(raw):
            p: _Path = ("plugins", i)
            d = self.mapping(item, p, ("use", "rooms", "options"))
            if not isinstance(item, dict):
                continue
            use = self.string(
                d,
                "use",
                p,
                check=lambda s: bool(_PLUGIN_USE.match(s)),
                what="must be module.path:ClassName or an entry-point name",
            )
            rooms = self.string_list(
                d, "rooms", p, check=is_room_ref, what="not a room alias or ID"
            )
            options = d.get("options") or {}
            if not isinstance(options, dict):
                self.bad((*p, "options"), f"must be a mapping, not {_kind(options)}")
                options = {}
            if use:
                out.append(
                    PluginEntry(
                        use=use,
                        rooms=rooms,
                        options={str(k): v for k, v in options.items()},
                        path=_fmt(p),
                        line=self.r.line(p),
                    )
                )
        return tuple(out)


def parse_bind(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:port`` for IPv6) as a pair; None when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or any(c.isspace() for c in host):
        return None
    return host, int(port)


def secret_file_problem(file: Path) -> str | None:
    """Why a secret file cannot be used (missing, unreadable, readable by others), or None."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not os.path.isfile(file):
        return "is not a file"
    # Group read stays allowed (root:peerbot 0640 is a common way to hand a secret over).
    if mode & 0o027:
        return f"other users may read or change it (mode {mode & 0o777:o}); chmod 600 {file}"
    try:
        with open(file, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def parse_config(
    text: str, *, base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Check the text of a bot.yaml; raise ConfigError listing every problem."""
    reader = _Reader(text)
    checker = _Checker(reader, base_dir or Path.cwd(), os.environ if env is None else env)
    config = checker.check()
    if config is None:
        problems = sorted(checker.problems, key=lambda p: (p.line or 0, p.path))
        raise ConfigError(problems or [ConfigProblem("", "invalid configuration")])
    return config


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and check a bot.yaml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem("", f"{path}: no such file")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigProblem("", f"{path}: cannot be read: {exc}")], str(path)
        ) from None
    try:
        return parse_config(text, base_dir=path.resolve().parent, env=env)
    except ConfigError as exc:
        exc.source = str(path)
        raise


def iter_problems(exc: ConfigError) -> Iterator[str]:
    """The problems of a ConfigError as printable lines."""
    for problem in exc.problems:
        yield str(problem)
