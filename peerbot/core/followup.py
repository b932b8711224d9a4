"""Follow-ups of a forwarded question, decided purely: durations, escalation steps, which
volunteer experts to ping, when a digest is due, and the answer figures of ``!stats``.

The scheduler (:mod:`peerbot.bot.followup`) reads the due rows and the questions, asks these
functions what to do at ``now`` (milliseconds since the epoch), and records the answer in one
transaction. Nothing here awaits or reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from peerbot.core.records import QuestionRow, QuestionState

__all__ = [
    "DAY_MS",
    "DigestTime",
    "DueAction",
    "Expert",
    "SpecialtyStats",
    "StatRow",
    "escalation_skip",
    "escalation_times",
    "in_quiet_hours",
    "next_digest",
    "parse_clock",
    "parse_duration",
    "parse_quiet",
    "percentile",
    "pick_experts",
    "solve_reminder_due",
    "specialty_stats",
    "zone",
]

DAY_MS = 86_400_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1d`` as seconds (ValueError saying what is wrong)."""
    m = _DURATION.match(str(text))
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h or 1d")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def parse_clock(text: str) -> time:
    """``08:00`` as a time of day (ValueError otherwise)."""
    m = _CLOCK.match(str(text).strip())
    if m is None:
        raise ValueError(f"{text!r} is not a time of day like 08:00")
    return time(int(m.group(1)), int(m.group(2)))


def zone(name: str) -> ZoneInfo:
    """A time zone by its IANA name (ValueError when unknown)."""
    try:
        return ZoneInfo(str(name).strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a known time zone (like Europe/Paris)") from None


def parse_quiet(text: str) -> tuple[int, int]:
    """``22:00-07:00`` as (start, end) minutes of the day; the span may cross midnight."""
    start, sep, end = str(text).partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a span like 22:00-07:00")
    a, b = parse_clock(start), parse_clock(end)
    first, last = a.hour * 60 + a.minute, b.hour * 60 + b.minute
    if first == last:
        raise ValueError(f"{text!r} starts and ends at the same time")
    return first, last


@dataclass(frozen=True)
class DueAction:
    """A deadline kept in the database (``due_actions``)."""

    key: str
    kind: str
    """``escalate``, ``solve`` or ``digest``."""
    question_id: str | None
    room_id: str
    step: int
    last_step: bool
    due_ts: int


# -- escalation --------------------------------------------------------------------------------


def escalation_times(forwarded_ts: int, after: Sequence[float]) -> list[tuple[int, int]]:
    """(step, due ms) of each escalation step, counted from the forward."""
    return [(i, forwarded_ts + int(s * 1000)) for i, s in enumerate(after)]


def escalation_skip(q: QuestionRow | None) -> str | None:
    """Why an escalation step must not fire (None: it fires)."""
    if q is None:
        return "redacted"
    if q.state != QuestionState.DONE or q.forward_event_id is None or q.target_room is None:
        return "not forwarded"
    if q.solved:
        return "solved"
    if q.answers > 0:
        return "answered"
    return None


def solve_reminder_due(q: QuestionRow | None, solve_after_s: float, now: int) -> int | None:
    """When the ✅ reminder is due (``<= now``: send it); None when it never will be."""
    if q is None or q.solved or q.answers <= 0 or q.state != QuestionState.DONE:
        return None
    last = q.last_activity_ts or q.first_answer_ts
    if last is None:
        return None
    return last + int(solve_after_s * 1000)


# -- volunteer experts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expert:
    """A volunteer expert of a room, with what choosing them needs."""

    user_id: str
    room_id: str
    timezone: str | None = None
    quiet: tuple[int, int] | None = None
    """Quiet hours as (start, end) minutes of the day in their zone; may cross midnight."""
    last_ping_ts: int | None = None
    """Their last ping by the bot, any room (ms)."""
    pings_today: int = 0
    """Pings in the last 24 hours, any room."""
    joined_ts: int = 0


def in_quiet_hours(expert: Expert, now: int, default_tz: str) -> bool:
    """True when ``now`` falls in the expert's quiet hours, in their time zone."""
    if expert.quiet is None:
        return False
    try:
        tz = zone(expert.timezone or default_tz)
    except ValueError:
        tz = ZoneInfo("UTC")
    local = datetime.fromtimestamp(now / 1000, tz)
    minute = local.hour * 60 + local.minute
    start, end = expert.quiet
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def pick_experts(
    experts: Iterable[Expert], now: int, *, limit: int, daily_cap: int, default_tz: str
) -> list[str]:
    """At most ``limit`` experts to ping: least recently pinged first (never pinged before
    all), skipping those in quiet hours and those who reached the daily cap."""
    able = [
        e for e in experts if e.pings_today < daily_cap and not in_quiet_hours(e, now, default_tz)
    ]
    able.sort(key=lambda e: (e.last_ping_ts is not None, e.last_ping_ts or 0, e.joined_ts))
    return list(dict.fromkeys(e.user_id for e in able))[: max(0, limit)]


# -- digests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestTime:
    """When a room's digest is posted: daily at a local hour, or every ``every_s`` (tests)."""

    at: time
    timezone: str
    every_s: float | None = None


def next_digest(when: DigestTime, after: int) -> tuple[str, int]:
    """The first digest strictly after ``after`` (ms): its key (the local date, or the slot
    number with ``every_s``) and its due time in ms. DST-safe: the local hour is kept."""
    if when.every_s:
        period = int(when.every_s * 1000)
        slot = after // period + 1
        return f"slot-{slot}", slot * period
    tz = zone(when.timezone)
    local_day: date = datetime.fromtimestamp(after / 1000, tz).date()
    for offset in (0, 1, 2):
        day = local_day + timedelta(days=offset)
        due = datetime.combine(day, when.at, tzinfo=tz)
        due_ms = int(due.astimezone(UTC).timestamp() * 1000)
        if due_ms > after:
            return day.isoformat(), due_ms
    raise AssertionError("unreachable: a local hour comes within two days")


# -- !stats ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatRow:
    """One forwarded question as !stats sees it."""

    specialty: str
    asked_ts: int
    first_answer_ts: int | None


@dataclass(frozen=True)
class SpecialtyStats:
    """A specialty's figures over a window of days."""

    specialty: str
    days: int
    questions: int
    answered: int
    p50_s: float | None
    p90_s: float | None

    @property
    def answered_share(self) -> float | None:
        """Answered questions over all (None without questions)."""
        return self.answered / self.questions if self.questions else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (``p`` in 0..100) of the values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def specialty_stats(
    rows: Iterable[StatRow], now: int, windows: Sequence[int] = (7, 30)
) -> list[SpecialtyStats]:
    """Per specialty (by name) and window: questions asked in the window, how many were
    answered, and the time to the first answer (p50, p90, seconds) of the answered ones."""
    rows = list(rows)
    out: list[SpecialtyStats] = []
    for name in sorted({r.specialty for r in rows}, key=str.casefold):
        for days in windows:
            since = now - days * DAY_MS
            mine = [r for r in rows if r.specialty == name and r.asked_ts >= since]
            waits = [
                max(0.0, (r.first_answer_ts - r.asked_ts) / 1000)
                for r in mine
                if r.first_answer_ts is not None
            ]
            out.append(
                SpecialtyStats(
                    specialty=name,
                    days=days,
                    questions=len(mine),
                    answered=len(waits),
                    p50_s=percentile(waits, 50),
                    p90_s=percentile(waits, 90),
                )
            )
    return out
