"""bot.yaml -> frozen dataclasses. Every problem names the key path and the line.

``model`` holds the dataclasses, ``reader`` the YAML with lines, ``fields`` the typed
primitives, ``connection`` and ``rooms`` the sections, ``checker`` the whole check.
"""

from __future__ import annotations

from peerbot.config.checker import iter_problems, load_config, parse_config
from peerbot.config.fields import parse_bind, secret_file_problem
from peerbot.config.model import (
    AdminConfig,
    Community,
    Config,
    ConfigError,
    ConfigProblem,
    DigestConfig,
    EncryptionConfig,
    EscalationConfig,
    ExpertsConfig,
    IntakeRoom,
    InvitesConfig,
    MatrixConfig,
    MetricsConfig,
    PluginEntry,
    RelatedConfig,
    RemindersConfig,
    RoutingConfig,
    Specialty,
    StorageConfig,
    is_room_ref,
)
from peerbot.core.intake import Trigger

__all__ = [
    "AdminConfig",
    "Community",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DigestConfig",
    "EncryptionConfig",
    "EscalationConfig",
    "ExpertsConfig",
    "IntakeRoom",
    "InvitesConfig",
    "MatrixConfig",
    "MetricsConfig",
    "PluginEntry",
    "RelatedConfig",
    "RemindersConfig",
    "RoutingConfig",
    "Specialty",
    "StorageConfig",
    "Trigger",
    "is_room_ref",
    "iter_problems",
    "load_config",
    "parse_bind",
    "parse_config",
    "secret_file_problem",
]
