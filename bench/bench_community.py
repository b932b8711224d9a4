"""Community benchmark: a simulated help community on a real Synapse, follow-ups included.

Starts a throwaway Synapse (relaxed rate limits) with an intake room, a specialty room and a
triage room, runs PeerBot (``python -m peerbot.cli run``) with short escalation steps and a digest
period, and plays a community from a seeded RNG: askers post questions at a steady pace, answerers
reply after random delays (under the forward, or in the asker's own thread), askers clarify and get
a reply back, one asker in five adds a detail right after asking (before the forward exists),
a few answers are edited or deleted, some askers type ``!solved``, a few questions are
never answered (so they escalate), and three answerers volunteer (``!expert join``). Midway the
bot is killed with SIGKILL and restarted while the community goes on. Then it reads the rooms back
(``/messages``, the homeserver's timestamps) and prints:

- relays lost / duplicated, and their delay p50/p95 next to the forward delay of the same run
  (the details written before the forward apart: their delay includes the forward's);
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
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_load import _api, history  # noqa: E402
from bench_relays import _LINK, bench_config, create_rooms, send  # noqa: E402
from botproc import BotProcess  # noqa: E402
from community_report import Event, Truth, in_thread, report  # noqa: E402

from peerbot.dev.devserver import RegisteredUser, SynapseServer  # noqa: E402


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
        if p.n % 5 == 2:
            # A detail added at once, while the forward is still on its lane: relayed once the
            # forward exists.
            early = await self.say(asker, "entraide", f"Détail {p.n} : 72 kg", qid, qid, False)
            self.truth.early.add(early)
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
