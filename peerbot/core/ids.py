"""Matrix identifiers and the transaction IDs derived from them (pure)."""

from __future__ import annotations

import hashlib
from typing import NewType

__all__ = ["EventID", "RoomID", "UserID", "server_of", "tx_id"]

RoomID = NewType("RoomID", str)
"""A room ID such as ``!abc:example.org``."""
EventID = NewType("EventID", str)
"""An event ID such as ``$abc``."""
UserID = NewType("UserID", str)
"""A user ID such as ``@alice:example.org``."""


def tx_id(kind: str, event_id: str) -> str:
    """A transaction ID derived from the source event: a re-send is deduplicated by the server."""
    digest = hashlib.sha256(f"{kind}\0{event_id}".encode()).hexdigest()[:32]
    return f"peerbot.{kind}.{digest}"


def server_of(mxid: str) -> str:
    """The server part of a user, room or alias ID ("" when there is none)."""
    return mxid.split(":", 1)[1] if ":" in mxid else ""
