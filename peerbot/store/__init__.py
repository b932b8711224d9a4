"""The only package that talks to the database (aiosqlite, WAL, versioned migrations).

:class:`Store` is the connection core (:mod:`.db`) with the query groups mixed in; every group
uses the one connection and write lock the core holds.
"""

from __future__ import annotations

from ..records import (
    Effect,
    IntakeOverride,
    QuestionRow,
    QuestionState,
    RouteOverride,
    UndecryptableRow,
)
from .db import Database, StoreError
from .effects import EffectQueries
from .overrides import OverrideQueries
from .questions import QuestionQueries
from .threads import ThreadQueries
from .undecryptable import UndecryptableQueries

__all__ = [
    "Effect",
    "IntakeOverride",
    "QuestionRow",
    "QuestionState",
    "RouteOverride",
    "Store",
    "StoreError",
    "UndecryptableRow",
]


class Store(
    QuestionQueries,
    EffectQueries,
    ThreadQueries,
    OverrideQueries,
    UndecryptableQueries,
    Database,
):
    """PeerBot's SQLite database: open with ``async with Store.open(path) as store``."""
