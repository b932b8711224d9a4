"""The checker's primitives: a string, a number, a list, a room, a duration, a secret file;
each problem is recorded with its key path and line."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from peerbot.config.model import (
    ConfigProblem,
    is_room_ref,
)
from peerbot.config.reader import _fmt, _kind, _Path, _Reader
from peerbot.core.followup import parse_duration, zone


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


def _postgres_url_problem(url: str) -> str | None:
    """What is wrong with a postgresql:// URL, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid postgresql:// URL ({exc})"
    if not parts.hostname and "host=" not in parts.query:
        return "the postgresql:// URL names no host (postgresql://user@host:5432/peerbot)"
    if not parts.path.strip("/"):
        return "the postgresql:// URL names no database (postgresql://user@host:5432/peerbot)"
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range"
    if parts.password:
        return "put the password in storage.password_file, not in the URL"
    return None


class _Fields:
    """Reads typed values out of the raw YAML data, collecting every problem."""

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

    def section(self, top: Mapping[str, Any], key: str, known: tuple[str, ...]) -> dict[str, Any]:
        if key not in top:
            return {}
        return self.mapping(top[key], (key,), known)

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

    def duration(self, d: Mapping[str, Any], key: str, path: _Path) -> float | None:
        if d.get(key) is None:
            return None
        try:
            return parse_duration(d[key])
        except ValueError as exc:
            self.bad((*path, key), str(exc))
            return None

    def durations(self, d: Mapping[str, Any], key: str, path: _Path) -> tuple[float, ...] | None:
        """A list of increasing durations (``[2h, 24h]``); None when absent or wrong."""
        raw = d.get(key)
        if raw is None:
            return None
        if not isinstance(raw, list) or not raw:
            self.bad((*path, key), "must be a list of durations like [2h, 24h]")
            return None
        out: list[float] = []
        for i, item in enumerate(raw):
            try:
                out.append(parse_duration(item))
            except ValueError as exc:
                self.bad((*path, key, i), str(exc))
                return None
            if len(out) > 1 and out[-1] <= out[-2]:
                self.bad((*path, key, i), "each step must come after the one before")
                return None
        return tuple(out)

    def timezone(self, d: Mapping[str, Any], key: str, path: _Path, default: str) -> str:
        name = self.string(d, key, path, required=False)
        if name is None:
            return default
        try:
            zone(name)
        except ValueError as exc:
            self.bad((*path, key), str(exc))
            return default
        return name
