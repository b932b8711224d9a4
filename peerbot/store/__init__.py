"""The only package that talks to the database (aiosqlite or asyncpg, versioned migrations).

:class:`Store` is the connection core (:mod:`.db`) with the query groups mixed in; every group
uses the one connection and write lock the core holds.
"""

from __future__ import annotations

from peerbot.core.records import (
    Effect,
    IntakeOverride,
    QuestionRow,
    QuestionState,
    RouteOverride,
    UndecryptableRow,
)
from peerbot.store.answers import AnswerQueries
from peerbot.store.db import Database, StoreError, unavailable
from peerbot.store.effects import EffectQueries
from peerbot.store.followup import FollowupQueries
from peerbot.store.ops import OpsQueries
from peerbot.store.overrides import OverrideQueries
from peerbot.store.questions import QuestionQueries
from peerbot.store.relays import RelayQueries
from peerbot.store.threads import ThreadQueries
from peerbot.store.undecryptable import UndecryptableQueries
from peerbot.store.vectors import VectorQueries

__all__ = [
    "Effect",
    "IntakeOverride",
    "QuestionRow",
    "QuestionState",
    "RouteOverride",
    "Store",
    "StoreError",
    "UndecryptableRow",
    "unavailable",
]


class Store(
    FollowupQueries,
    RelayQueries,
    QuestionQueries,
    EffectQueries,
    ThreadQueries,
    OverrideQueries,
    UndecryptableQueries,
    AnswerQueries,
    OpsQueries,
    VectorQueries,
    Database,
):
    """PeerBot's database (a SQLite file or a PostgreSQL URL): ``await Store.open(target)``."""
