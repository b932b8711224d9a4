"""Parsing the bot's chat commands (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COMMAND_NAMES", "Command", "parse_command", "split_keywords"]

COMMAND_NAMES = (
    "peerbot",
    "route",
    "intake",
    "plugins",
    "related",
    "solved",
    "unsolved",
    "confirm",
    "forward",
    "expert",
    "unanswered",
    "stats",
)
"""Every command the bot knows (``!search`` is another name for ``!related``)."""
_ALIASES = {"search": "related"}
_PREFIXES = tuple(f"!{n}" for n in (*COMMAND_NAMES, *_ALIASES))


@dataclass(frozen=True)
class Command:
    """A command: its name (``route``, ``related``...), its first word after it, and the rest."""

    name: str
    sub: str
    rest: str

    @property
    def words(self) -> list[str]:
        """The rest, split on white space."""
        return self.rest.split()


def parse_command(body: str) -> Command | None:
    """A Command for a message starting with one of the bot's commands, else None."""
    text = body.strip()
    if not text.startswith("!"):
        return None
    head, _, tail = text.partition(" ")
    head = head.lower()
    if head not in _PREFIXES:
        return None
    name = _ALIASES.get(head[1:], head[1:])
    tail = tail.strip()
    if name in ("related", "solved", "unsolved", "confirm", "forward", "plugins"):
        return Command(name, "", tail)
    sub, _, rest = tail.partition(" ")
    return Command(name, sub.lower(), rest.strip())


def split_keywords(text: str) -> list[str]:
    """Keywords separated by commas (or by spaces when there is no comma)."""
    parts = text.split(",") if "," in text else text.split()
    out = [re.sub(r"\s+", " ", p).strip().strip('"').strip() for p in parts]
    return [p for p in out if p]
