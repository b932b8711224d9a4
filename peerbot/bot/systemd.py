"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``): a datagram to $NOTIFY_SOCKET.

A few lines of socket code rather than a dependency: the protocol is one ``KEY=VALUE`` datagram
on a Unix socket (``@name`` for the abstract namespace). Outside systemd (no NOTIFY_SOCKET)
every call is a no-op, so the bot runs the same anywhere.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; silent when not started by systemd with a notify socket."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        raw = environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self.address = raw
        self.sent = 0
        """Datagrams sent so far."""

    @property
    def enabled(self) -> bool:
        """True under systemd with Type=notify (NOTIFY_SOCKET set)."""
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one message (e.g. ``READY=1``); False when not under systemd or it failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop: a receiver that does not read (its queue holds
                # net.unix.max_dgram_qlen datagrams, 10 by default) costs a ping, not the bot.
                sock.setblocking(False)
                sock.connect(self.address)
                sock.send(message.encode())
        except OSError as exc:
            # systemd restarted or the socket went away: the bot keeps running regardless.
            log.warning("sd_notify %s failed: %s", message.split("=", 1)[0], exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd that start-up is over (the first sync is handled)."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """Tell systemd the bot is alive (keeps the watchdog from restarting it)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd an orderly stop has begun."""
        return self.notify("STOPPING=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is set.

    ``WATCHDOG_PID``, when set, must be this process (systemd's rule for forked helpers).
    """
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
