"""Stage timestamps of each question on its way to the forward, for ``bench_load.py --profile``.

Off unless ``PEERBOT_STAGES`` names a file: then :func:`mark` keeps ``(event ID, stage, wall
clock)`` in a ring buffer (a bounded deque: a long run keeps the latest stages only) and
:func:`dump` writes it there, one JSON line per mark, when the bot stops. Wall-clock time
(``time.time()``), not monotonic, so the benchmark can set the stages against the homeserver's
``origin_server_ts`` of the question and of the forward (same machine, same clock). Switched off,
a mark costs one attribute test; no body or sender is ever kept, only event IDs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "StageClock", "dump", "mark", "mark_all", "mark_events"]

log = logging.getLogger(__name__)

STAGES = (
    "http",  # the sync answer that brought the question reached the bot (headers in)
    "sync",  # the sync batch that brought the question reaches the handlers
    "handler",  # its handler starts (after the batch's earlier events)
    "recorded",  # the question row and its handled mark are committed
    "token",  # the batch's sync token is saved
    "picked",  # the worker starts preparing it
    "guarded",  # the guard plugins have answered
    "routed",  # routing decided (and the asker's name known)
    "route_applied",  # the routing step (state, decision, effects) is committed
    "lane",  # its room's lane starts forwarding it
    "effect_recorded",  # the forward is recorded in the outbox
    "sent",  # the homeserver answered the forward's send
    "done_marked",  # the forward's effect is marked done
    "ack_recorded",  # the acknowledgement step is committed (the outbox sends it)
)
"""The stages, in the order a question passes them."""


class StageClock:
    """A bounded record of stage timestamps; :meth:`mark` is a no-op while disabled."""

    def __init__(self, path: Path | None, capacity: int = 50_000) -> None:
        self.path = path
        self.enabled = path is not None
        self._marks: deque[tuple[str, str, float]] = deque(maxlen=capacity)

    def mark(self, key: str, stage: str) -> None:
        """Note that ``key`` (an event ID) reached ``stage`` now."""
        if self.enabled:
            self._marks.append((key, stage, time.time()))

    def mark_all(self, keys: Iterable[str], stage: str, when: float | None = None) -> None:
        """The same stage for several keys at once (one clock read, or ``when``)."""
        if self.enabled:
            now = time.time() if when is None else when
            self._marks.extend((k, stage, now) for k in keys)

    def mark_events(
        self, events: Iterable[tuple[Any, Any]], stage: str, when: float | None = None
    ) -> None:
        """The same stage for each event of a sync batch (``(room, event)`` pairs); events
        that are not mappings with a string ``event_id`` (garbage a sync may bring) are skipped."""
        if self.enabled:
            self.mark_all(
                (
                    e["event_id"]
                    for _, e in events
                    if isinstance(e, Mapping) and isinstance(e.get("event_id"), str)
                ),
                stage,
                when,
            )

    def marks(self) -> list[tuple[str, str, float]]:
        """What is recorded, oldest first."""
        return list(self._marks)

    def dump(self) -> None:
        """Write the marks and this process's CPU time to the file (when enabled)."""
        if self.path is None:
            return
        times = os.times()
        try:
            with self.path.open("w", encoding="utf-8") as out:
                out.write(json.dumps({"cpu": {"user": times.user, "system": times.system}}) + "\n")
                for key, stage, ts in self._marks:
                    out.write(json.dumps([key, stage, ts]) + "\n")
        except OSError as exc:
            log.warning("Could not write the stage timestamps to %s: %s", self.path, exc)


_env = os.environ.get("PEERBOT_STAGES")
_CLOCK = StageClock(Path(_env) if _env else None)

mark = _CLOCK.mark
mark_all = _CLOCK.mark_all
mark_events = _CLOCK.mark_events
dump = _CLOCK.dump
