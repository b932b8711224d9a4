"""The stage clock behind ``bench_load.py --profile``: off by default, bounded, garbage-proof."""

from __future__ import annotations

import json
from pathlib import Path

from peerbot.bot.stages import StageClock


def test_off_it_keeps_and_writes_nothing(tmp_path: Path) -> None:
    clock = StageClock(None)
    clock.mark("$q", "sync")
    clock.mark_events([("!r:x", {"event_id": "$q"})], "token")
    clock.dump()
    assert clock.marks() == []
    assert list(tmp_path.iterdir()) == []


def test_on_it_keeps_the_latest_marks_and_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "stages.jsonl"
    clock = StageClock(path, capacity=3)
    # A sync may bring garbage: it is skipped, never raised into the sync loop.
    garbage: list[tuple[str, object]] = [("!r:x", None), ("!r:x", 5), ("!r:x", {"event_id": 3})]
    clock.mark_events([*garbage, ("!r:x", {"event_id": "$a"})], "sync")
    clock.mark("$a", "recorded")
    clock.mark_all(["$b", "$c"], "sync")
    assert [(k, s) for k, s, _ in clock.marks()] == [
        ("$a", "recorded"),
        ("$b", "sync"),
        ("$c", "sync"),
    ]
    clock.dump()
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert set(lines[0]["cpu"]) == {"user", "system"}
    assert [item[:2] for item in lines[1:]] == [["$a", "recorded"], ["$b", "sync"], ["$c", "sync"]]
