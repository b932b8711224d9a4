"""The bot's figures for Prometheus (``/metrics``) and the sync's health (``/health``).

:class:`Metrics` is the one place figures are added: a method per thing that happens (a
question seen, forwarded, held...), called by the part that does it. Figures that other parts
already keep (handler errors, plugin failures, the homeserver's refusals, the outbox in the
database) are read when Prometheus scrapes, so nothing is counted twice. Relays and answers
add their counters here the same way (see :meth:`Metrics.counter`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from peerbot.core.health import HealthReport, SyncFacts, judge

__all__ = ["CONTENT_TYPE", "Metrics", "Sampled", "SyncHealth"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No ``*_created`` series beside each counter: they double a scrape for nothing here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class SyncHealth:
    """The sync loop's outcomes, kept for :func:`peerbot.core.health.judge`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.first_ok_at: float | None = None
        self.last_ok_at: float | None = None
        self.last_failure_at: float | None = None
        self.failure: str | None = None
        self.first = asyncio.Event()
        """Set once the first sync is handled."""
        self.connection_failure_at: Callable[[], float | None] = lambda: None
        """Set by the wiring: when the client last failed to reach the homeserver (its own
        retries happen inside one sync call, which then never returns an error)."""

    def ok(self) -> None:
        """A sync was handled."""
        now = self.clock()
        if self.first_ok_at is None:
            self.first_ok_at = now
            self.first.set()
        self.last_ok_at = now

    def failed(self, reason: str) -> None:
        """A sync failed (the loop retries)."""
        self.last_failure_at = self.clock()
        self.failure = reason

    def facts(self) -> SyncFacts:
        """The facts as of now."""
        failure_at, failure = self.last_failure_at, self.failure
        conn = self.connection_failure_at()
        if conn is not None and (failure_at is None or conn > failure_at):
            failure_at, failure = conn, "the homeserver cannot be reached"
        return SyncFacts(self.first_ok_at, self.last_ok_at, failure_at, failure)

    def report(self) -> HealthReport:
        """The verdict now."""
        return judge(self.facts(), self.clock())


@dataclass
class Sampled:
    """Figures read from the other parts when Prometheus scrapes (set by the wiring)."""

    handler_errors: Callable[[], int] = lambda: 0
    plugin_failures: Callable[[], Iterable[tuple[str, int, int]]] = lambda: ()
    """(plugin name, errors, timeouts) per plugin."""
    homeserver_errors: Callable[[], Iterable[tuple[str, int]]] = lambda: ()
    """(errcode or HTTP status, count) of the homeserver's error answers, 429s included."""
    rate_limited: Callable[[], int] = lambda: 0
    connection_failures: Callable[[], int] = lambda: 0
    outbox: tuple[int, float | None] = (0, None)
    """Pending effects and the oldest one's age in seconds; refreshed before each scrape."""
    extra: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)


class _SampledCollector(Collector):
    def __init__(self, sampled: Sampled, health: SyncHealth) -> None:
        self.sampled = sampled
        self.health = health

    def collect(self) -> Iterator[Metric]:
        s = self.sampled
        yield CounterMetricFamily(
            "peerbot_handler_errors",
            "Event handler failures (each logged with its traceback).",
            value=s.handler_errors(),
        )
        errors = CounterMetricFamily(
            "peerbot_plugin_errors", "Plugin calls that failed or timed out.", labels=["plugin"]
        )
        timeouts = CounterMetricFamily(
            "peerbot_plugin_timeouts", "Plugin calls over their time budget.", labels=["plugin"]
        )
        for name, failed, late in s.plugin_failures():
            errors.add_metric([name], failed)
            timeouts.add_metric([name], late)
        yield errors
        yield timeouts
        hs = CounterMetricFamily(
            "peerbot_homeserver_errors",
            "Error answers from the homeserver, by errcode (or HTTP status).",
            labels=["errcode"],
        )
        for code, count in s.homeserver_errors():
            hs.add_metric([code], count)
        yield hs
        yield CounterMetricFamily(
            "peerbot_homeserver_rate_limited",
            "429 (M_LIMIT_EXCEEDED) answers from the homeserver.",
            value=s.rate_limited(),
        )
        yield CounterMetricFamily(
            "peerbot_homeserver_unreachable",
            "Requests that could not reach the homeserver (connection refused, time-out).",
            value=s.connection_failures(),
        )
        depth, oldest = s.outbox
        yield GaugeMetricFamily(
            "peerbot_outbox_pending", "Messages recorded and not sent yet.", value=depth
        )
        yield GaugeMetricFamily(
            "peerbot_outbox_oldest_pending_age_seconds",
            "Age of the oldest message waiting in the outbox (0 when empty).",
            value=oldest or 0.0,
        )
        facts = self.health.facts()
        now = self.health.clock()
        lag = now - facts.last_ok_at if facts.last_ok_at is not None else float("nan")
        yield GaugeMetricFamily(
            "peerbot_sync_lag_seconds", "Seconds since the last sync was handled.", value=lag
        )
        yield GaugeMetricFamily(
            "peerbot_up",
            "1 when /health says healthy (first sync handled, sync not failing), else 0.",
            value=1.0 if self.health.report().ok else 0.0,
        )
        for extra in s.extra:
            yield from extra()


class Metrics:
    """The figures of one running bot, in a registry of its own (several bots per test)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = SyncHealth(clock)
        self.sampled = Sampled()
        self.registry.register(_SampledCollector(self.sampled, self.health))
        self._questions_seen = self.counter(
            "peerbot_questions_seen_total", "Questions noticed in intake rooms."
        )
        self._questions_forwarded = self.counter(
            "peerbot_questions_forwarded_total", "Questions forwarded to a specialty room."
        )
        self._questions_held = self.counter(
            "peerbot_questions_held_total", "Questions held (patient data, encryption consent)."
        )
        self._sync_failures = self.counter(
            "peerbot_sync_failures_total", "Syncs that failed and were retried."
        )

    def counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        """A new counter in this bot's registry (name ending in ``_total``)."""
        return Counter(name, documentation, labelnames=tuple(labels), registry=self.registry)

    # -- what happens -------------------------------------------------------------------------

    def question_seen(self) -> None:
        """A new question was recorded."""
        self._questions_seen.inc()

    def question_forwarded(self) -> None:
        """A question's forward was sent."""
        self._questions_forwarded.inc()

    def question_held(self) -> None:
        """A question was held instead of forwarded."""
        self._questions_held.inc()

    def sync_ok(self) -> None:
        """A sync was handled."""
        self.health.ok()

    def sync_failed(self, reason: str) -> None:
        """A sync failed."""
        self._sync_failures.inc()
        self.health.failed(reason)

    def read_from(self, events: Any, plugins: Any, client: Any) -> None:
        """Let a scrape read what the parts count themselves: the handlers' ``errors``, each
        plugin's ``errors`` / ``timeouts``, the client's ``error_counts`` and connection
        failures (getattr: stand-ins for MatrixClient in tests may lack them)."""
        s = self.sampled
        s.handler_errors = lambda: int(events.errors)
        s.plugin_failures = lambda: [(p.name, p.errors, p.timeouts) for p in plugins.plugins]
        s.homeserver_errors = lambda: dict(getattr(client, "error_counts", {})).items()
        s.rate_limited = lambda: int(getattr(client, "error_counts", {}).get("M_LIMIT_EXCEEDED", 0))
        s.connection_failures = lambda: int(getattr(client, "connection_failures", 0))
        self.health.connection_failure_at = lambda: getattr(client, "last_connection_failure", None)

    # -- reading ------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure."""
        return generate_latest(self.registry)
