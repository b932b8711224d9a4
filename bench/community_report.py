"""The community benchmark's tables: what the rooms show against what the simulation did.

:class:`Truth` is what :mod:`bench_community` records while it plays the community; :func:`report`
reads the rooms back (every event, with the homeserver's timestamps) and prints relays lost,
duplicated and their delays, escalations against their schedule, digests against the truth, and
the answered share and time to first answer PeerBot reports (``!stats`` and its store).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_load import _percentile
from bench_relays import linked, tally

from peerbot.core.followup import percentile

Event = dict[str, Any]
_DIGEST = re.compile(r"^Digest of .*?: (\d+) open question\(s\), (\d+) solved\.")
_STATS = re.compile(
    r"Cardiologie, 7 d: (\d+) question\(s\), (\S+) answered, first answer after (.+?) \(median\)"
)
_REMINDER = "still waiting for an answer"


@dataclass
class Truth:
    """What happened, as the simulation knows it (event IDs)."""

    questions: dict[str, int] = field(default_factory=dict)  # qid -> plan number
    forwards: dict[str, str] = field(default_factory=dict)  # qid -> forward event
    answers: dict[str, list[str]] = field(default_factory=dict)  # qid -> non-asker messages
    sources: dict[str, str] = field(default_factory=dict)  # relayable message -> its room key
    edited: dict[str, str] = field(default_factory=dict)  # message -> token of its new text
    redacted: set[str] = field(default_factory=set)
    solved: dict[str, str] = field(default_factory=dict)  # qid -> the !solved event
    early: set[str] = field(default_factory=set)  # details written before the forward existed


def in_thread(e: Event) -> str | None:
    rel = (e.get("content") or {}).get("m.relates_to") or {}
    return str(rel["event_id"]) if rel.get("rel_type") == "m.thread" else None


def fmt(v: float | None, unit: str = "ms") -> str:
    return "-" if v is None else f"{v:,.0f} {unit}"


def report(
    args: argparse.Namespace,
    truth: Truth,
    ev: dict[str, list[Event]],
    bot_id: str,
    steps: list[float],
    down: tuple[float, float],
    stats_text: str,
    workdir: Path,
) -> int:
    """Print the tables; 1 when a relay was lost or duplicated."""
    stamps = {str(e["event_id"]): int(e["origin_server_ts"]) for es in ev.values() for e in es}
    other = {"entraide": "cardio", "cardio": "entraide"}
    copies = {k: linked(ev[other[k]], bot_id) for k in other}
    print(
        f"\n{len(truth.questions)} questions over {args.seconds:.0f} s, "
        f"{args.answerers} answerers, "
        f"{args.askers} askers, seed {args.seed}; one SIGKILL midway, down {args.down:.0f} s\n"
    )
    print(f"{'':44} {'count':>6} {'lost':>5} {'dup':>5} {'p50':>10} {'p95':>10}")
    rows = [
        (
            "forwards (question -> forward)",
            len(truth.questions),
            tally(
                {q: stamps[q] for q in truth.questions},
                {q: [stamps[f]] for q, f in truth.forwards.items()},
            ),
        )
    ]
    for key, name in (
        ("cardio", "relays forward's thread -> asker's"),
        ("entraide", "relays asker's thread -> forward's"),
    ):
        src = {
            s: stamps[s]
            for s, k in truth.sources.items()
            if k == key and s not in truth.redacted and s not in truth.early
        }
        rows.append((name, len(src), tally(src, copies[key])))
    early = {s: stamps[s] for s in truth.early}
    rows.append(
        (
            "relays of details written before the forward",
            len(early),
            tally(early, copies["entraide"]),
        )
    )
    bad = 0
    for name, count, (lost, dup, p50, p95) in rows:
        bad += lost + dup
        print(f"{name:44} {count:>6} {lost:>5} {dup:>5} {fmt(p50):>10} {fmt(p95):>10}")

    def edits_in(room: str) -> str:
        return " ".join(
            str(((e.get("content") or {}).get("m.new_content") or {}).get("body", ""))
            for e in ev[room]
            if e.get("sender") == bot_id
        )

    followed = sum(1 for s, tok in truth.edited.items() if tok in edits_in(other[truth.sources[s]]))
    gone = sum(1 for s in truth.redacted if s not in copies[truth.sources[s]])
    print(f"edits followed on the relayed copy: {followed}/{len(truth.edited)}; ", end="")
    print(f"redactions followed (copy gone): {gone}/{len(truth.redacted)}")

    # -- escalations --------------------------------------------------------------------------
    reminders: dict[str, list[int]] = {}
    for e in ev["cardio"]:
        body = str((e.get("content") or {}).get("body", ""))
        root = in_thread(e)
        if e.get("sender") == bot_id and root and _REMINDER in body:
            reminders.setdefault(root, []).append(int(e["origin_server_ts"]))
    expected = fired = unexpected = missing = ambiguous = 0
    on_time: list[int] = []
    late: list[int] = []
    late_down: list[int] = []
    for qid, fwd in truth.forwards.items():
        first = min((stamps[a] for a in truth.answers.get(qid, []) if a in stamps), default=None)
        got = sorted(reminders.get(fwd, []))
        fired += len(got)
        for k, step in enumerate(steps):
            due = stamps[fwd] + int(step * 1000)
            if first is not None and abs(first - due) < 3000:
                ambiguous += 1
                continue
            want = first is None or first > due
            expected += want
            if k >= len(got):
                missing += want
                continue
            if not want:
                unexpected += 1
                continue
            delay = got[k] - due
            if abs(delay) <= 2000:
                on_time.append(delay)
            elif down[0] <= due <= down[1] + 2000:
                late_down.append(delay)
            else:
                late.append(delay)
    triage = sum(
        1 for e in ev["triage"] if e.get("sender") == bot_id and e.get("type") == "m.room.message"
    )
    print(
        f"\nescalation steps {steps} s: expected {expected}, fired {fired} "
        f"(unexpected {unexpected}, missing {missing}, {ambiguous} too close to call); "
        f"last steps shown in triage: {triage}"
    )
    p = [float(x) for x in sorted(on_time)]
    print(
        f"  on time (within 2 s of forward ts + step): {len(on_time)}, delay p50 "
        f"{fmt(_percentile(sorted(on_time), 50))}, max {fmt(max(p) if p else None)}; "
        f"late: {len(late)} {sorted(late)[-3:]}; due while the bot was down: {len(late_down)}"
        f" (fired {fmt(_percentile(sorted(late_down), 50))} p50 after their due time)"
    )

    # -- digests ------------------------------------------------------------------------------
    # A digest shows the rooms as they were when the bot counted (its query, recorded with the
    # digest in one transaction: ``effects.created_at``), not when the outbox got to post it,
    # which under load is seconds later: the truth is taken at the counting time. Two more
    # things move at that instant: a forward the homeserver has stamped but whose send has not
    # returned to the bot yet (in flight: the bot cannot know it is there), and a !solved the
    # bot has not read yet. Both are counted from the rooms' timestamps and the store's
    # (``forwarded_ts`` when the bot recorded the forward, ``solved_ts`` when it read the
    # !solved) and shown apart: "exact" means equal to the rooms' truth itself.
    db = sqlite3.connect(workdir / "peerbot.db")
    counted = {
        str(eid): int(ts)
        for eid, ts in db.execute(
            "SELECT event_id, created_at FROM effects "
            "WHERE kind = 'digest' AND event_id IS NOT NULL"
        )
    }
    known = {
        str(q): (fts, sts)
        for q, fts, sts in db.execute("SELECT event_id, forwarded_ts, solved_ts FROM questions")
    }
    solved_ts = {q: stamps[s] for q, s in truth.solved.items() if s in stamps}
    prev = 0
    digests = []
    for e in ev["cardio"]:
        m = _DIGEST.match(str((e.get("content") or {}).get("body", "")))
        if e.get("sender") != bot_id or m is None:
            continue
        posted = int(e["origin_server_ts"])
        d = counted.get(str(e["event_id"]), posted)
        open_truth = in_flight = unread = 0
        for q, f in truth.forwards.items():
            solved_by_d = q in solved_ts and solved_ts[q] <= d
            fts, sts = known.get(q, (None, None))
            if stamps[f] <= d and not solved_by_d:
                open_truth += 1
                in_flight += fts is None or fts > d
            elif stamps[f] <= d and (sts is None or sts > d):
                unread += 1  # solved in the room, not read by the bot yet: open to it
        at_post = sum(
            1
            for q, f in truth.forwards.items()
            if stamps[f] <= posted and not (q in solved_ts and solved_ts[q] <= posted)
        )
        solved_truth = sum(1 for t in solved_ts.values() if prev < t <= d)
        digests.append(
            (
                d,
                int(m.group(1)),
                open_truth,
                int(m.group(2)),
                solved_truth,
                posted - d,
                at_post,
                in_flight,
                unread,
            )
        )
        prev = d
    exact = sum(1 for g in digests if g[1] == g[2] and g[3] == g[4])
    explained = sum(
        1 for g in digests if g[1] == g[2] - g[7] + g[8] and g[3] == g[4] and g[1] != g[2]
    )
    print(
        f"\ndigests every {args.digest:g} s: {len(digests)} posted, {exact} exactly right, "
        f"{explained} off only by forwards in flight / !solved unread at the count"
    )
    t_first = min(stamps[q] for q in truth.questions)
    for d, o, ot, s, st, lag, at_post, fly, unread in digests:
        print(
            f"  counted at {(d - t_first) / 1000:6.0f} s: open {o:>4} (truth {ot:>4}; "
            f"{fly} forward(s) in flight, {unread} !solved unread), "
            f"solved since last {s:>3} (truth {st:>3}); posted {lag:,} ms later "
            f"(truth then: {at_post} open)"
        )

    # -- answered share and time to first answer ----------------------------------------------
    waits = []
    for qid in truth.forwards:
        firsts = [stamps[a] for a in truth.answers.get(qid, []) if a in stamps]
        if firsts:
            waits.append((min(firsts) - stamps[qid]) / 1000)
    n_fwd = len(truth.forwards)
    print(
        f"\nsimulation: {n_fwd} forwarded, {len(waits)} answered "
        f"({len(waits) / n_fwd:.0%}), first answer p50 {percentile(waits, 50):.1f} s, "
        f"p90 {percentile(waits, 90):.1f} s"
    )
    m = _STATS.search(stats_text)
    if m:
        print(f"!stats says: {m.group(1)} question(s), {m.group(2)} answered, p50 {m.group(3)}")
    else:
        print(f"!stats answer not understood: {stats_text[:300]!r}")
    rows_db = db.execute(
        "SELECT created_ts, first_answer_ts FROM questions WHERE forwarded_ts IS NOT NULL"
    ).fetchall()
    db.close()
    store_waits = [(b - a) / 1000 for a, b in rows_db if b is not None]
    print(
        f"store says: {len(rows_db)} forwarded, {len(store_waits)} answered "
        f"({len(store_waits) / max(1, len(rows_db)):.0%}), first answer p50 "
        f"{percentile(store_waits, 50) or 0:.1f} s, p90 {percentile(store_waits, 90) or 0:.1f} s"
    )
    return 1 if bad else 0
