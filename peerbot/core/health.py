"""Is the bot healthy? A pure decision over the sync loop's last outcomes (``/health``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STALE_AFTER", "HealthReport", "SyncFacts", "judge"]

STALE_AFTER = 90.0
"""Seconds without a completed sync after which the sync counts as failing: a long-poll
returns within 30 s, and a request is given up after 60 s."""


@dataclass(frozen=True)
class SyncFacts:
    """What the sync loop last did, in monotonic seconds (None: never)."""

    first_ok_at: float | None
    """The first sync handled by the loop (start-up is over)."""
    last_ok_at: float | None
    last_failure_at: float | None
    """The last failed sync, or the last time the homeserver could not be reached."""
    failure: str | None = None
    """A short reason for the last failure (no secrets, no bodies)."""


@dataclass(frozen=True)
class HealthReport:
    """The verdict: ``ok`` gives HTTP 200, else 503."""

    ok: bool
    state: str
    """starting | syncing | sync failing | sync stalled"""
    last_sync_age: float | None
    reason: str | None = None

    def body(self) -> dict[str, object]:
        """The short JSON body of ``/health``."""
        out: dict[str, object] = {
            "state": self.state,
            "last_sync_age_seconds": (
                round(self.last_sync_age, 3) if self.last_sync_age is not None else None
            ),
        }
        if self.reason:
            out["reason"] = self.reason
        return out


def judge(facts: SyncFacts, now: float, stale_after: float = STALE_AFTER) -> HealthReport:
    """Healthy once the first sync is handled, while the latest sync succeeded and is recent."""
    age = now - facts.last_ok_at if facts.last_ok_at is not None else None
    if facts.first_ok_at is None or facts.last_ok_at is None:
        return HealthReport(False, "starting", age)
    if facts.last_failure_at is not None and facts.last_failure_at >= facts.last_ok_at:
        return HealthReport(False, "sync failing", age, facts.failure)
    if age is not None and age > stale_after:
        return HealthReport(False, "sync stalled", age, f"no sync completed for {age:.0f} s")
    return HealthReport(True, "syncing", age)
