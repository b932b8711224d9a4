"""The sections about the bot's own connections: matrix, storage, invites, encryption,
metrics, admin."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peerbot.config.fields import _Fields, _postgres_url_problem, parse_bind
from peerbot.config.model import (
    _SERVER,
    _USER_ID,
    AdminConfig,
    EncryptionConfig,
    InvitesConfig,
    MatrixConfig,
    MetricsConfig,
    StorageConfig,
)
from peerbot.config.reader import _Path


class _ConnectionSections(_Fields):
    """matrix, storage, invites, encryption, metrics, admin."""

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
        s = self.section(top, "storage", ("database", "password_file", "standby_poll_ms"))
        poll = self.integer(s, "standby_poll_ms", ("storage",), 1000, 50, 60_000)
        raw = self.string(s, "database", ("storage",), required=False, default="./peerbot.db")
        password_file = None
        if s.get("password_file") is not None:
            password_file = self.path(s, "password_file", ("storage",), Path())
            if not password_file.is_file():
                self.bad(("storage", "password_file"), f"no such file: {password_file}")
        if raw and raw.startswith(("postgresql://", "postgres://")):
            problem = _postgres_url_problem(raw)
            if problem:
                self.bad(("storage", "database"), problem)
            return StorageConfig(
                database=self.base_dir / "peerbot.db",
                postgresql=raw,
                password_file=password_file,
                standby_poll_ms=poll,
            )
        if "://" in (raw or ""):
            self.bad(
                ("storage", "database"),
                "only postgresql:// URLs are supported (or a SQLite file path)",
            )
        elif password_file is not None:
            self.bad(("storage", "password_file"), "is only used with a postgresql:// database")
        elif "standby_poll_ms" in s:
            self.bad(("storage", "standby_poll_ms"), "is only used with a postgresql:// database")
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

    def metrics(self, top: Mapping[str, Any]) -> MetricsConfig:
        d = self.section(top, "metrics", ("bind",))
        raw = self.string(d, "bind", ("metrics",), required=False)
        if raw is None:
            return MetricsConfig()
        bind = parse_bind(raw)
        if bind is None:
            self.bad(("metrics", "bind"), 'must be host:port, like "127.0.0.1:9109"')
        return MetricsConfig(bind=bind)

    def admin(self, top: Mapping[str, Any]) -> AdminConfig:
        d = self.section(top, "admin", ("power_level",))
        return AdminConfig(power_level=self.integer(d, "power_level", ("admin",), 50, 0, 1_000_000))
