"""Logging set-up: records to stderr, the bot's secrets masked in every one."""

from __future__ import annotations

import logging

__all__ = ["SECRETS", "SecretFilter", "setup_logging"]


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


def setup_logging(level: str) -> None:
    """Log to stderr; secrets masked in every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nio logs request details (and sometimes bodies) at INFO and DEBUG.
    # aiosqlite logs every statement with its parameters (the access token among them).
    for noisy in ("nio", "aiohttp", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
