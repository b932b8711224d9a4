"""``Backoff``: what the README promises for failed syncs and sends, 1 s doubling to 60 s.

The jitter (±20 %) is taken out by pinning ``random.uniform`` to one end of its range, so the
nominal sequence is checked exactly; then the real jitter is checked to stay inside its band.
"""

from __future__ import annotations

import itertools

import pytest

from peerbot.bot import outbox
from peerbot.bot.outbox import MAX_BACKOFF, Backoff

NOMINAL = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]


def _delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


@pytest.mark.parametrize("jitter", [0.8, 1.0, 1.2])
def test_one_second_doubling_to_sixty(monkeypatch: pytest.MonkeyPatch, jitter: float) -> None:
    monkeypatch.setattr(outbox.random, "uniform", lambda low, high: jitter)
    got = _delays(Backoff(), len(NOMINAL))
    assert got == pytest.approx([d * jitter for d in NOMINAL]), got


def test_cap_is_sixty_seconds() -> None:
    assert MAX_BACKOFF == 60.0
    backoff = Backoff()
    late = _delays(backoff, 40)[-10:]
    # Jitter spreads the cap by ±20 % so that many waiting retries do not wake together.
    assert all(0.8 * 60 <= d <= 1.2 * 60 for d in late), late


def test_jitter_stays_within_twenty_percent_and_varies() -> None:
    draws = [(n, Backoff()) for n in range(1, 7)]
    for n, backoff in draws:
        nominal = NOMINAL[n - 1]
        seen = set()
        for _ in range(200):
            backoff.failures = n - 1
            delay = backoff.next_delay()
            assert 0.8 * nominal <= delay <= 1.2 * nominal, (n, delay)
            seen.add(round(delay, 6))
        assert len(seen) > 100, f"no jitter at step {n}: {sorted(seen)[:5]}"


def test_reset_goes_back_to_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox.random, "uniform", lambda low, high: 1.0)
    backoff = Backoff()
    _delays(backoff, 5)
    backoff.reset()
    assert _delays(backoff, 3) == [1.0, 2.0, 4.0]


def test_twenty_seconds_of_failures_make_five_tries_not_twenty() -> None:
    """What the fault tests bound: a retry every second would make 20 tries in 20 s."""
    for _ in range(50):
        backoff = Backoff()
        elapsed = itertools.accumulate(_delays(backoff, 30))
        tries = 1 + sum(1 for t in elapsed if t <= 20.0)
        assert tries <= 5, tries
