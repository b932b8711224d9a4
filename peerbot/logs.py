"""Logging set-up: records to stderr, one event per line, the bot's secrets masked in every one.

``log_format: json`` writes each record as one JSON object per line (for log shippers);
a traceback goes inside the object (``exc``), never onto lines of its own.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["SECRETS", "JsonFormatter", "SecretFilter", "TextFormatter", "setup_logging"]


class SecretFilter(logging.Filter):
    """Masks the bot's password and access tokens wherever they would reach a log line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Never print this string."""
        if secret and len(secret) >= 4:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "***")
        if text != message:
            record.msg, record.args = text, None
        return True


SECRETS = SecretFilter()


class TextFormatter(logging.Formatter):
    """``time level logger: message``; a traceback's lines are indented under it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # A message with a newline (a peer's text at DEBUG, a multi-line error) stays one
        # event: continuation lines are indented, so a reader or grep sees where it ends.
        return super().format(record).replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr as text or JSON lines; secrets masked in every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nio logs request details (and sometimes bodies) at INFO and DEBUG.
    # aiosqlite logs every statement with its parameters (the access token among them).
    for noisy in ("nio", "aiohttp", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
