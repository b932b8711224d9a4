"""The boundary with matrix-nio: the only package that imports nio."""

from peerbot.matrix.client import (
    EventID,
    Forbidden,
    Invite,
    MatrixClient,
    MatrixError,
    NotFound,
    RoomID,
    SyncBatch,
    Transient,
    Undecryptable,
    UserID,
)

__all__ = [
    "EventID",
    "Forbidden",
    "Invite",
    "MatrixClient",
    "MatrixError",
    "NotFound",
    "RoomID",
    "SyncBatch",
    "Transient",
    "Undecryptable",
    "UserID",
]
