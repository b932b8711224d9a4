"""The database: the only package that imports aiosqlite (migrations/ beside it)."""

from peerbot.store.db import (
    Effect,
    IntakeOverride,
    QuestionRow,
    QuestionState,
    RouteOverride,
    Store,
    StoreError,
    UndecryptableRow,
)

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
