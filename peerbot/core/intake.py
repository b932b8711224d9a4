"""Is this event a question, and which message is the question (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from peerbot.core.textnorm import deaccent

__all__ = [
    "Message",
    "Trigger",
    "detect_question",
    "has_hashtag",
    "parse_message",
]


class Trigger(StrEnum):
    """What makes a message in an intake room a question."""

    HASHTAG = "hashtag"
    QUESTION = "question"
    ALL = "all"


_TEXT_TYPES = ("m.text",)


@dataclass(frozen=True)
class Message:
    """The parts of an ``m.room.message`` event that PeerBot uses."""

    event_id: str
    sender: str
    body: str
    msgtype: str
    ts: int
    thread_root: str | None = None
    """The thread's root event when this message is in a thread."""
    reply_to: str | None = None
    """The event this message replies to (outside a thread's fallback)."""
    replaces: str | None = None
    """For an edit: the event it edits; ``body`` is then the new text."""

    @property
    def is_top_level(self) -> bool:
        """Neither in a thread, nor a reply, nor an edit."""
        return self.thread_root is None and self.reply_to is None and self.replaces is None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _unencodable(*values: str | None) -> bool:
    """Some value holds a lone surrogate: no valid Matrix ID does, and neither SQLite nor the
    homeserver takes it (UTF-8 cannot encode it)."""
    for value in values:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def parse_message(event: Mapping[str, Any]) -> Message | None:
    """A Message for a well-formed ``m.room.message`` event, or None for anything else."""
    if not isinstance(event, Mapping) or event.get("type") != "m.room.message":
        return None
    event_id = _str(event.get("event_id"))
    sender = _str(event.get("sender"))
    content = event.get("content")
    if event_id is None or sender is None or not isinstance(content, Mapping):
        return None
    ts = event.get("origin_server_ts")
    ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    rel = content.get("m.relates_to")
    rel = rel if isinstance(rel, Mapping) else {}
    rel_type = rel.get("rel_type")
    in_reply = rel.get("m.in_reply_to")
    reply_to = _str(in_reply.get("event_id")) if isinstance(in_reply, Mapping) else None
    thread_root = _str(rel.get("event_id")) if rel_type == "m.thread" else None
    if thread_root is not None and rel.get("is_falling_back") is True:
        # The reply part of a thread message is only a fallback for old clients.
        reply_to = None
    replaces = _str(rel.get("event_id")) if rel_type == "m.replace" else None
    if _unencodable(event_id, sender, reply_to, thread_root, replaces):
        return None  # a malformed event, never a question nor a reply
    body_source: Mapping[str, Any] = content
    if replaces is not None:
        new = content.get("m.new_content")
        if not isinstance(new, Mapping):
            return None
        body_source = new
    body = body_source.get("body")
    msgtype = body_source.get("msgtype")
    if not isinstance(body, str) or not isinstance(msgtype, str):
        return None
    # Lone surrogates (from a broken client's JSON escapes) cannot be stored or sent as UTF-8.
    body = body.encode("utf-8", "replace").decode("utf-8")
    return Message(
        event_id=event_id,
        sender=sender,
        body=body,
        msgtype=msgtype,
        ts=ts,
        thread_root=thread_root,
        reply_to=reply_to,
        replaces=replaces,
    )


def _hashtag_pattern(hashtags: Iterable[str]) -> re.Pattern[str] | None:
    tags = sorted(
        {deaccent(t).lstrip("#") for t in hashtags if t.strip("#")}, key=len, reverse=True
    )
    if not tags:
        return None
    return re.compile(r"(?<![\w#])#(?:" + "|".join(re.escape(t) for t in tags) + r")(?![\w])")


def has_hashtag(body: str, hashtags: Iterable[str]) -> bool:
    """True when one of the hashtags stands in the text, ignoring case and accents."""
    pattern = _hashtag_pattern(hashtags)
    return bool(pattern and pattern.search(deaccent(body)))


def detect_question(msg: Message, trigger: Trigger, hashtags: Iterable[str]) -> str | None:
    """The event ID of the question this message raises, or None.

    ``hashtag``: a configured hashtag in a top-level message makes it the question; in a thread
    reply (or a reply) the thread's root (or the replied-to message) is the question — the
    #DocTocToc rule. ``question``: a top-level message with a "?". ``all``: every top-level
    message. Edits, notices, commands and non-text messages are never questions.
    """
    if msg.replaces is not None or msg.msgtype not in _TEXT_TYPES:
        return None
    text = msg.body.strip()
    if not text or text.startswith("!"):
        return None
    if trigger is Trigger.HASHTAG:
        if not has_hashtag(text, hashtags):
            return None
        return msg.thread_root or msg.reply_to or msg.event_id
    if not msg.is_top_level:
        return None
    if trigger is Trigger.QUESTION:
        return msg.event_id if "?" in text or "？" in text else None
    return msg.event_id
