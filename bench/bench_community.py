"""Community benchmark: a simulated help community on a real Synapse, follow-ups included.

Starts a throwaway Synapse (relaxed rate limits) with an intake room, a specialty room and a
triage room, runs PeerBot (``python -m peerbot.cli run``) with short escalation steps and a digest
period, and plays a community from a seeded RNG: askers post questions at a steady pace, answerers
reply after random delays (under the forward, or in the asker's own thread), askers clarify and get
a reply back, a few answers are edited or deleted, some askers type ``!solved``, a few questions are
never answered (so they escalate), and three answerers volunteer (``!expert join``). Midway the
bot is killed with SIGKILL and restarted while the community goes on. Then it reads the rooms back
(``/messages``, the homeserver's timestamps) and prints:

- relays lost / duplicated, and their delay p50/p95 next to the forward delay of the same run;
- escalations fired against the truth, and on time (within 2 s of the forward's server timestamp
  plus the step), the late ones counted (those due while the bot was down apart);
- each digest's open / solved-since-last counts against what the simulation knows;
- the answered share and time to first answer that PeerBot reports (``!stats``, and its store)
  against the simulation's own.

Exit status 1 if a relay was lost or duplicated.

    .venv/bin/python bench/bench_community.py                      # 200 questions over 120 s
    .venv/bin/python bench/bench_community.py --questions 40 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_load import _api, _percentile, history  # noqa: E402
from bench_relays import _LINK, bench_config, create_rooms, linked, send, tally  # noqa: E402
from botproc import BotProcess  # noqa: E402

from peerbot.core.followup import percentile  # noqa: E402
from peerbot.dev.devserver import RegisteredUser, SynapseServer  # noqa: E402

Event = dict[str, Any]
_DIGEST = re.compile(r"^Digest of .*?: (\d+) open question\(s\), (\d+) solved\.")
_STATS = re.compile(
    r"Cardiologie, 7 d: (\d+) question\(s\), (\S+) answered, first answer after (.+?) \(median\)"
)
_REMINDER = "still waiting for an answer"


@dataclass
class Plan:
    """What the simulation decided for one question (all delays in seconds)."""

    n: int
    asker: int
    at: float
    kind: str  # "never", "late" or "normal"
    first_delay: float
    first_in_forward: bool
    answerer: int
    second: tuple[float, int, bool] | None  # delay after the first, who, under the forward
    clarify: bool
    edit: bool
    redact_second: bool
    solve: bool


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


def make_plans(args: argparse.Namespace) -> list[Plan]:
    rng = random.Random(args.seed)
    never = set(rng.sample(range(args.questions), max(3, args.questions * 4 // 100)))
    plans = []
    for n in range(args.questions):
        kind = "never" if n in never else ("late" if rng.random() < 0.06 else "normal")
        first = rng.uniform(24, 31) if kind == "late" else rng.uniform(2, 14)
        answerer = rng.randrange(args.answerers)
        second = None
        if rng.random() < 0.3:
            other = (answerer + 1 + rng.randrange(args.answerers - 1)) % args.answerers
            second = (rng.uniform(2, 10), other, rng.random() < 0.6)
        plans.append(
            Plan(
                n=n,
                asker=rng.randrange(args.askers),
                at=n * args.seconds / args.questions,
                kind=kind,
                first_delay=first,
                first_in_forward=rng.random() < 0.6,
                answerer=answerer,
                second=second,
                clarify=rng.random() < 0.3,
                edit=rng.random() < 0.06,
                redact_second=second is not None and rng.random() < 0.15,
                solve=rng.random() < 0.2,
            )
        )
    return plans


class Watcher:
    """A /sync loop of one member of every room: every event by ID, as it arrives."""

    def __init__(self, http: aiohttp.ClientSession, base: str, user: RegisteredUser) -> None:
        self.http, self.base, self.user = http, base, user
        self.events: dict[str, Event] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        since: str | None = None
        flt = '{"room":{"timeline":{"limit":1000}},"presence":{"types":[]}}'
        while True:
            params = {"timeout": "5000", "filter": flt}
            if since:
                params["since"] = since
            try:
                data = await _api(
                    self.http,
                    "GET",
                    f"{self.base}/_matrix/client/v3/sync",
                    self.user.access_token,
                    params=params,
                )
            except (aiohttp.ClientError, TimeoutError, RuntimeError):
                await asyncio.sleep(0.5)
                continue
            since = data.get("next_batch", since)
            for room_id, room in data.get("rooms", {}).get("join", {}).items():
                for e in room.get("timeline", {}).get("events", []):
                    self.events[str(e["event_id"])] = {**e, "room_id": room_id}
            self.changed.set()

    async def forward_of(self, qid: str, bot_id: str, cardio: str, timeout: float) -> str | None:  # noqa: ASYNC109
        """The bot's forward of ``qid`` in the specialty room, once seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events.values()):
                if e.get("sender") != bot_id or e.get("room_id") != cardio:
                    continue
                content = e.get("content") or {}
                if (content.get("m.relates_to") or {}).get("rel_type"):
                    continue  # forwards are thread roots
                if qid in {unquote(m) for m in _LINK.findall(str(content.get("body", "")))}:
                    return str(e["event_id"])
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 2.0)
        return None


async def edit(
    http: aiohttp.ClientSession, base: str, user: RegisteredUser, room: str, target: str, body: str
) -> str:
    content = {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": target},
    }
    url = (
        f"{base}/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/"
        f"bench-{secrets.token_hex(8)}"
    )
    return str((await _api(http, "PUT", url, user.access_token, content))["event_id"])


async def redact(
    http: aiohttp.ClientSession, base: str, user: RegisteredUser, room: str, target: str
) -> None:
    url = (
        f"{base}/_matrix/client/v3/rooms/{quote(room, safe='')}/redact/"
        f"{quote(target, safe='')}/bench-{secrets.token_hex(8)}"
    )
    await _api(http, "PUT", url, user.access_token, {"reason": "bench"})


def fmt(v: float | None, unit: str = "ms") -> str:
    return "-" if v is None else f"{v:,.0f} {unit}"


class Community:
    """The simulated people, their rooms, and the truth of what they did."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        rooms: dict[str, str],
        askers: list[RegisteredUser],
        answerers: list[RegisteredUser],
        watcher: Watcher,
        bot_id: str,
    ) -> None:
        self.http, self.base, self.rooms = http, base, rooms
        self.askers, self.answerers, self.watcher, self.bot_id = askers, answerers, watcher, bot_id
        self.truth = Truth()
        self.t0 = time.monotonic()

    async def say(
        self, user: RegisteredUser, key: str, body: str, root: str, qid: str, answer: bool
    ) -> str:
        eid = await send(self.http, self.base, user, self.rooms[key], body, root)
        self.truth.sources[eid] = key
        if answer:
            self.truth.answers.setdefault(qid, []).append(eid)
        return eid

    async def life(self, p: Plan) -> None:
        """One question, from its asking to its last message."""
        await asyncio.sleep(max(0.0, self.t0 + p.at - time.monotonic()))
        asker = self.askers[p.asker]
        intake = self.rooms["entraide"]
        qid = await send(self.http, self.base, asker, intake, f"#DocTocToc ECG n°{p.n} : QT long ?")
        self.truth.questions[qid] = p.n
        fwd = await self.watcher.forward_of(qid, self.bot_id, self.rooms["cardio"], 180)
        if fwd is None:
            return
        self.truth.forwards[qid] = fwd
        if p.kind == "never":
            return
        await asyncio.sleep(p.first_delay)

        def where(under_forward: bool) -> tuple[str, str]:
            return ("cardio", fwd) if under_forward else ("entraide", qid)

        who = self.answerers[p.answerer]
        key, root = where(p.first_in_forward)
        first = await self.say(who, key, f"Réponse {p.n} : ECG à refaire", root, qid, True)
        if p.edit:
            await asyncio.sleep(random.Random(p.n).uniform(2, 5))
            token = f"edited-{p.n}"
            await edit(
                self.http, self.base, who, self.rooms[key], first, f"Réponse {p.n} ({token})"
            )
            self.truth.edited[first] = token
        if p.clarify:
            await asyncio.sleep(random.Random(p.n).uniform(1, 5))
            await self.say(asker, "entraide", f"Précision {p.n} : sous amiodarone", qid, qid, False)
            await asyncio.sleep(random.Random(p.n + 1).uniform(2, 6))
            await self.say(who, key, f"Alors {p.n} : arrêter l'amiodarone", root, qid, True)
        if p.second is not None:
            delay, other, under = p.second
            await asyncio.sleep(delay)
            key2, root2 = where(under)
            second = await self.say(
                self.answerers[other], key2, f"Autre avis {p.n}", root2, qid, True
            )
            if p.redact_second:
                await asyncio.sleep(random.Random(p.n).uniform(2, 5))
                await redact(self.http, self.base, self.answerers[other], self.rooms[key2], second)
                self.truth.redacted.add(second)
        if p.solve:
            await asyncio.sleep(random.Random(p.n).uniform(2, 6))
            solved = await send(self.http, self.base, asker, intake, "!solved", qid)
            self.truth.solved[qid] = solved


def in_thread(e: Event) -> str | None:
    rel = (e.get("content") or {}).get("m.relates_to") or {}
    return str(rel["event_id"]) if rel.get("rel_type") == "m.thread" else None


async def run_bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="peerbot-community-"))
    print(f"working in {workdir}", flush=True)
    server = await SynapseServer.start(workdir / "synapse")
    bot: BotProcess | None = None
    steps = [float(s) for s in args.escalation]
    try:
        base = server.base_url
        admin = await server.register("admin")
        bot_user = await server.register("peerbot")
        askers = [await server.register(f"asker{i}") for i in range(args.askers)]
        answerers = [await server.register(f"doc{i}") for i in range(args.answerers)]
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            joins = [(a, "entraide") for a in askers]
            joins += [(d, k) for d in answerers for k in ("cardio", "entraide")]
            rooms = await create_rooms(
                http, base, admin, bot_user, ("entraide", "cardio", "triage"), joins
            )
            config = bench_config(
                server,
                bot_user,
                workdir,
                language="en",
                escalation={"after": [f"{s:g}s" for s in steps]},
                reminders={"solve_after": "off"},
                digest={"every": f"{args.digest:g}s"},
            )
            bot = BotProcess(config, workdir, "peerbot")
            await bot.start_ready(log_level="INFO")
            watcher = Watcher(http, base, admin)
            watch = asyncio.create_task(watcher.run())
            for d in answerers[:3]:
                await send(http, base, d, rooms["cardio"], "!expert join")

            plans = make_plans(args)
            sim = Community(http, base, rooms, askers, answerers, watcher, bot_user.user_id)
            lives = [asyncio.create_task(sim.life(p)) for p in plans]
            await asyncio.sleep(args.seconds / 2)
            await bot.kill9()
            down = (time.time() * 1000, 0.0)
            await asyncio.sleep(args.down)
            bot.start()
            await bot.wait_ready()
            down = (down[0], time.time() * 1000)
            print(f"SIGKILLed at {args.seconds / 2:.0f} s, down {args.down:.0f} s", flush=True)
            await asyncio.gather(*lives)
            truth = sim.truth
            print(f"community done after {time.monotonic() - sim.t0:.0f} s", flush=True)

            # Let the last escalations and a digest after them come, and the relays settle.
            last_fwd = max(
                int(watcher.events[f]["origin_server_ts"]) for f in truth.forwards.values()
            )
            wait_until = last_fwd / 1000 + max(steps) + args.digest + 5
            await asyncio.sleep(max(0.0, wait_until - time.time()))
            stats_cmd = await send(http, base, admin, rooms["cardio"], "!stats")
            stats_text = ""
            deadline = time.monotonic() + 60
            while not stats_text and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                for e in list(watcher.events.values()):
                    if e.get("sender") == bot_user.user_id and in_thread(e) == stats_cmd:
                        stats_text = str((e.get("content") or {}).get("body", ""))
            await asyncio.sleep(2.0)  # a duplicate would come now
            watch.cancel()
            ev = {k: await history(http, base, admin.access_token, r) for k, r in rooms.items()}
            await bot.terminate()
            return report(args, truth, ev, bot_user.user_id, steps, down, stats_text, workdir)
    finally:
        if bot is not None:
            await bot.stop()
        await server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


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
            s: stamps[s] for s, k in truth.sources.items() if k == key and s not in truth.redacted
        }
        rows.append((name, len(src), tally(src, copies[key])))
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
    solved_ts = {q: stamps[s] for q, s in truth.solved.items() if s in stamps}
    prev = 0
    digests = []
    for e in ev["cardio"]:
        m = _DIGEST.match(str((e.get("content") or {}).get("body", "")))
        if e.get("sender") != bot_id or m is None:
            continue
        d = int(e["origin_server_ts"])
        open_truth = sum(
            1
            for q, f in truth.forwards.items()
            if stamps[f] <= d and not (q in solved_ts and solved_ts[q] <= d)
        )
        solved_truth = sum(1 for t in solved_ts.values() if prev < t <= d)
        digests.append((d, int(m.group(1)), open_truth, int(m.group(2)), solved_truth))
        prev = d
    exact = sum(1 for _, a, b, c, d in digests if a == b and c == d)
    print(f"\ndigests every {args.digest:g} s: {len(digests)} posted, {exact} exactly right")
    t_first = min(stamps[q] for q in truth.questions)
    for d, o, ot, s, st in digests:
        print(
            f"  at {(d - t_first) / 1000:6.0f} s: open {o:>4} (truth {ot:>4}), "
            f"solved since last {s:>3} (truth {st:>3})"
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
    db = sqlite3.connect(workdir / "peerbot.db")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long questions come")
    parser.add_argument("--answerers", type=int, default=20)
    parser.add_argument("--askers", type=int, default=8)
    parser.add_argument("--escalation", nargs="+", default=["20", "40"], help="steps, seconds")
    parser.add_argument("--digest", type=float, default=45.0, help="digest period, seconds")
    parser.add_argument("--down", type=float, default=6.0, help="seconds the bot stays down")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    return asyncio.run(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
