"""The whole check of a bot.yaml: every section, every problem with its key and line."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from peerbot.config.connection import _ConnectionSections
from peerbot.config.model import (
    LANGUAGES,
    Config,
    ConfigError,
    ConfigProblem,
    EscalationConfig,
)
from peerbot.config.reader import _Reader
from peerbot.config.rooms import _RoomSections


class _Checker(_ConnectionSections, _RoomSections):
    """Turns the raw YAML data into dataclasses, collecting every problem."""

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
                "escalation",
                "experts",
                "reminders",
                "digest",
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
        escalation = EscalationConfig(
            after=self.durations(
                self.section(top, "escalation", ("after",)), "after", ("escalation",)
            )
            or EscalationConfig().after
        )
        experts = self.experts(top)
        reminders = self.reminders(top)
        digest = self.digest(top, "digest", ()) if "digest" in top else None
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
            escalation=escalation,
            experts=experts,
            reminders=reminders,
            digest=digest,
        )


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
