"""Load benchmark: PeerBot against a bare matrix-nio echo bot, each on a real Synapse on loopback.

Starts two throwaway Synapses (relaxed rate limits), one for each bot. On PeerBot's: an intake
room and two specialty rooms, PeerBot (``python -m peerbot.cli run``); on the other: an intake
room and a bare nio bot (below, in a subprocess of its own). Several clients post the same
questions, at a steady pace, to both intake rooms at the same moment. Then it reads the rooms
back (``/messages``) and prints, for both bots: questions lost, duplicated, and the p50/p95 delay
from a question to PeerBot's forward (to the bare bot's echo), from each homeserver's own
timestamps. Exit status 1 if PeerBot lost or duplicated anything.

``--shared`` is the first design: both bots on one Synapse, in the same intake room, answering
the same questions. There each question wakes both bots' long-polls, and Synapse, one Python
thread, answers them in the order of a Python set of its per-user streams: the bot woken second
gets its sync answer later and sends behind the other's echo (``--profile`` prints the ratio
for each order). That order, not the bot, moved the ratio by 10 to 20 points from one run to the
next; with a homeserver each, the ratio is what PeerBot adds over a bot that does nothing.

    .venv/bin/python bench/bench_load.py                      # 2,000 questions over 60 s
    .venv/bin/python bench/bench_load.py --questions 300 --seconds 15
    .venv/bin/python bench/bench_load.py --questions 300 --seconds 60 --profile
    .venv/bin/python bench/bench_load.py --questions 300 --seconds 60 --store postgresql

``--store postgresql`` keeps PeerBot's state in a throwaway PostgreSQL on loopback (the test
suite's ``tests/pgserver.py``: Debian's ``postgresql`` binaries, trust authentication) instead of
a SQLite file. PeerBot's CPU time is its own process; the server's (postmaster and
backends) is printed apart.

Both bots' process CPU time over the posting and answering (``/proc/PID/stat``, read before the
first question and once the answers are in) is printed per question. ``--profile`` also prints
where one question's time goes, stage by stage, from the wall-clock timestamps PeerBot keeps
when ``PEERBOT_STAGES`` names a file (:mod:`peerbot.bot.stages`) and the bare bot's own two.

long: one script on purpose (the bare bot it runs as a subprocess of itself, the set-up, the
tallies and the stage breakdown), so that a benchmark run is one file to read and to copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
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
sys.path.insert(0, str(REPO))

from botproc import BotProcess  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

from peerbot.dev.devserver import RegisteredUser, SynapseServer  # noqa: E402

HASHTAG = "#DocTocToc"
_PERMALINK_EVENT = re.compile(r"https://matrix\.to/#/[^/\s]+/([^?\s]+)")


# --- the bare baseline bot (runs in its own process) -------------------------------------


async def baseline_bot(
    homeserver: str,
    user_id: str,
    device_id: str,
    token: str,
    room: str,
    stages_path: str,
    hashtag: str = HASHTAG,
    delay_ms: str = "0",
) -> None:
    """The simplest correct nio bot: echo one notice into the thread of each question.

    It notes when it saw each question and when its echo's send returned (wall clock, as
    PeerBot's stages), written to ``stages_path`` at the end with its CPU time.
    """
    from nio import AsyncClient, AsyncClientConfig, MatrixRoom, RoomMessageText

    class Client(AsyncClient):  # type: ignore[misc]
        """Notes when each /sync answer's headers were in (as PeerBot's "http" stage)."""

        received = 0.0

        async def parse_body(self, transport_response: Any) -> dict[str, Any]:
            self.received = time.time()
            body: dict[str, Any] = await super().parse_body(transport_response)
            return body

    config = AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    client = Client(homeserver, user_id, device_id, config=config)
    client.restore_login(user_id, device_id, token)
    # A generous timeline: a bare bot does not fill gaps, so a short one would lose questions.
    sync_filter = {"room": {"timeline": {"limit": 1000}}, "presence": {"types": []}}
    await client.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 1}}})

    marks: list[tuple[str, str, float]] = []

    async def on_text(mroom: MatrixRoom, event: RoomMessageText) -> None:
        content = event.source.get("content") or {}
        if mroom.room_id != room or event.sender == user_id or hashtag not in event.body:
            return
        if content.get("msgtype") != "m.text":
            return
        marks.append((event.event_id, "http", client.received))
        marks.append((event.event_id, "seen", time.time()))
        if float(delay_ms) > 0:  # --control-delay: as if it worked before its send
            await asyncio.sleep(float(delay_ms) / 1000)
        await client.room_send(
            room,
            "m.room.message",
            {
                "msgtype": "m.notice",
                "body": "echo",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": event.event_id,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": event.event_id},
                },
                "m.mentions": {},
            },
            tx_id=f"echo-{event.event_id}",
        )
        marks.append((event.event_id, "sent", time.time()))

    client.add_event_callback(on_text, RoomMessageText)  # type: ignore[arg-type]
    print("baseline ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(client.sync_forever(timeout=30_000, sync_filter=sync_filter))
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    times = os.times()
    lines = [json.dumps({"cpu": {"user": times.user, "system": times.system}})]
    lines += [json.dumps(list(m)) for m in marks]
    Path(stages_path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- the benchmark ---------------------------------------------------------------------


@dataclass
class Poster:
    """A client that posts questions (plain HTTP, one keep-alive session)."""

    user: RegisteredUser
    base_url: str
    session: aiohttp.ClientSession
    n: int = 0

    async def post(self, room: str, body: str) -> str:
        self.n += 1
        url = (
            f"{self.base_url}/_matrix/client/v3/rooms/{quote(room, safe='')}/send/"
            f"m.room.message/bench-{secrets.token_hex(6)}-{self.n}"
        )
        headers = {"Authorization": f"Bearer {self.user.access_token}"}
        payload = {"msgtype": "m.text", "body": body}
        async with self.session.put(url, headers=headers, json=payload) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"post failed: {resp.status} {data}")
            return str(data["event_id"])


async def _api(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, headers=headers, json=body, params=params) as resp:
        data: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data


async def history(
    session: aiohttp.ClientSession, base: str, token: str, room: str
) -> list[dict[str, Any]]:
    """Every event of a room, oldest first."""
    url = f"{base}/_matrix/client/v3/rooms/{quote(room, safe='')}/messages"
    events: list[dict[str, Any]] = []
    frm: str | None = None
    while True:
        params = {"dir": "b", "limit": "500"}
        if frm:
            params["from"] = frm
        page = await _api(session, "GET", url, token, params=params)
        events += page.get("chunk", [])
        frm = page.get("end")
        if not page.get("chunk") or not frm:
            break
    events.reverse()
    return events


@dataclass
class Tally:
    """Delays of one bot's answers to the questions."""

    name: str
    delays_ms: dict[str, list[int]] = field(default_factory=dict)

    def add(self, question: str, delay: int) -> None:
        self.delays_ms.setdefault(question, []).append(delay)

    def summary(self, questions: list[str]) -> dict[str, Any]:
        lost = sum(1 for q in questions if q not in self.delays_ms)
        dup = sum(1 for q in questions if len(self.delays_ms.get(q, [])) > 1)
        firsts = sorted(min(v) for q, v in self.delays_ms.items() if q in set(questions))
        return {
            "lost": lost,
            "duplicated": dup,
            "p50": _percentile(firsts, 50),
            "p95": _percentile(firsts, 95),
            "max": firsts[-1] if firsts else None,
        }


def _percentile(values: list[int], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1])


async def count_answers(
    session: aiohttp.ClientSession,
    base: str,
    user: RegisteredUser,
    rooms: list[str],
    since: str | None,
) -> tuple[int, bool, str]:
    """One /sync: bot notices arrived since ``since``, whether a timeline was cut, next token."""
    params = {
        "timeout": "2000" if since else "0",
        "filter": json.dumps({"room": {"timeline": {"limit": 1000}}, "presence": {"types": []}}),
    }
    if since:
        params["since"] = since
    data = await _api(
        session, "GET", f"{base}/_matrix/client/v3/sync", user.access_token, params=params
    )
    n, limited = 0, False
    for room_id, info in (data.get("rooms", {}).get("join", {}) or {}).items():
        if room_id not in rooms:
            continue
        timeline = info.get("timeline", {})
        limited = limited or (bool(timeline.get("limited")) and since is not None)
        n += sum(
            1
            for e in timeline.get("events", [])
            if (e.get("content") or {}).get("msgtype") == "m.notice"
        )
    return n, limited, str(data["next_batch"])


def cpu_seconds(pid: int | None, task: int | None = None) -> float | None:
    """CPU time so far (user + system) of a process, or of one of its threads, from
    ``/proc/PID/stat`` (``/proc/PID/task/TID/stat``); None if gone."""
    if pid is None:
        return None
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces, inside parentheses).
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pg: PostgresServer | None) -> float | None:
    """CPU time so far of a PostgreSQL server: its postmaster and the processes it runs now
    (PeerBot's connections stay open for the run, so their backends are counted)."""
    if pg is None:
        return None
    try:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rpartition(")")[2].split()[1] == str(postmaster):
                pids.append(int(stat.parent.name))
    times = [cpu_seconds(pid) for pid in pids]
    return sum(t for t in times if t is not None)


def read_marks(path: Path) -> dict[str, dict[str, float]]:
    """Stage marks written by a bot: event ID -> stage -> first time (s) it was reached."""
    out: dict[str, dict[str, float]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if isinstance(item, list):
            key, stage, ts = item
            out.setdefault(key, {}).setdefault(stage, float(ts))
    return out


# The question's homeserver time, the bot's stages, the forward's homeserver time: the rows of
# the breakdown are the steps between consecutive points a question passed.
PEERBOT_POINTS = (
    "q_ts",
    "http",
    "sync",
    "handler",
    "recorded",
    "picked",
    "guarded",
    "routed",
    "route_applied",
    "lane",
    "effect_recorded",
    "fwd_ts",
    "sent",
    "done_marked",
    "ack_recorded",
)
# Beside the path: the worker is woken once the question is recorded, while the sync handler
# goes on to the batch's other events and then saves the sync token.
SIDE_STEPS = (("recorded", "token"),)
BARE_POINTS = ("q_ts", "http", "seen", "fwd_ts", "sent")
# PeerBot's own work before the forward's send: from the sync handing it the question to the
# forward recorded in the outbox, less the time it waited behind earlier forwards to its room.
OWN_WORK = ("sync", "effect_recorded", "route_applied", "lane")


# Synapse's access log line for each request: who, its CPU (user, system), its database time and
# transactions, and what it was.
_ACCESS = re.compile(
    r"\{(?P<user>@[^}]+)\} Processed request: [\d.]+sec/[\d.]+sec "
    r"ru=\((?P<ru>[\d.]+)sec, (?P<rs>[\d.]+)sec\) db=\([\d.]+sec/(?P<db>[\d.]+)sec/(?P<txns>\d+)\) "
    r'\d+B \d+ "(?P<method>[A-Z]+) (?P<path>[^? ]+)'
)


def print_synapse_work(log_path: Path, since: float, users: dict[str, str]) -> None:
    """What Synapse spent on each bot's syncs and sends during the run, from its access log
    (lines written after ``since``, wall clock): requests, CPU, database transactions."""
    rows: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        m = _ACCESS.search(line)
        if m is None or m["user"] not in users:
            continue
        try:
            # Synapse stamps its log in local time, as time.mktime reads it.
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if stamp < since:
            continue
        kind = "sync" if m["path"].endswith("/sync") else "send" if "/send/" in m["path"] else ""
        if kind:
            cpu = (float(m["ru"]) + float(m["rs"])) * 1000
            rows.setdefault((users[m["user"]], kind), []).append(
                (cpu, float(m["db"]) * 1000, int(m["txns"]))
            )
    if not rows:
        return
    print("\nSynapse's work per bot (its access log, posting to last answer)")
    print(f"  {'bot, requests':<24}{'n':>6}{'CPU s':>8}{'DB s':>8}{'txns p50':>10}")
    for (name, kind), values in sorted(rows.items()):
        print(
            f"  {name + ', ' + kind:<24}{len(values):>6}"
            f"{sum(v[0] for v in values) / 1000:>8.2f}{sum(v[1] for v in values) / 1000:>8.2f}"
            f"{statistics.median(v[2] for v in values):>10.0f}"
        )


def print_sync_order(
    pb_marks: dict[str, dict[str, float]],
    bare_marks: dict[str, dict[str, float]],
    pb_delays: dict[str, list[int]],
    bare_delays: dict[str, list[int]],
) -> None:
    """Which bot's sync answer brought each question first, and the p50 ratio on each group.

    Synapse wakes the long-polls of a room's members in the order of a Python set of its
    per-user streams (fixed while a stream lives, so for a whole run as a rule): the bot
    woken second gets its answer after the first one's sync is computed, and sends second."""
    first: list[str] = []
    second: list[str] = []
    leads: list[float] = []
    for q, pts in pb_marks.items():
        other = bare_marks.get(q, {})
        if "http" not in pts or "http" not in other or q not in pb_delays or q not in bare_delays:
            continue
        lead = (other["http"] - pts["http"]) * 1000
        leads.append(lead)
        (first if lead >= 0 else second).append(q)
    if not leads:
        return
    print(
        f"\nsync answer order: PeerBot's came first for {len(first)} of {len(leads)} questions "
        f"(PeerBot's lead p50 {statistics.median(leads):+.1f} ms)"
    )
    for name, group in (("PeerBot first", first), ("bare bot first", second)):
        if len(group) >= 10:
            p_fwd = statistics.median(min(pb_delays[q]) for q in group)
            p_bare = statistics.median(min(bare_delays[q]) for q in group)
            print(
                f"  {name}: {len(group)} questions, p50 PeerBot {p_fwd:.0f} ms, "
                f"bare {p_bare:.0f} ms, ratio {p_fwd / max(p_bare, 1e-9):.2f}"
            )


def print_breakdown(
    title: str,
    points: tuple[str, ...],
    marks: dict[str, dict[str, float]],
    qts: dict[str, int],
    fwd_ts: dict[str, int],
    until: str,
) -> None:
    """p50 / p95 of each step between consecutive points, over the questions that passed all."""
    rows: dict[str, list[float]] = {}
    total: list[float] = []
    own: list[float] = []
    complete = 0
    for q, q_ms in qts.items():
        pts = dict(marks.get(q, {}))
        pts["q_ts"] = q_ms / 1000
        if q in fwd_ts:
            pts["fwd_ts"] = fwd_ts[q] / 1000
        present = [p for p in points if p in pts]
        if not all(p in pts for p in ("q_ts", until)):
            continue
        complete += 1
        for a, b in itertools.pairwise(present):
            rows.setdefault(f"{a} -> {b}", []).append((pts[b] - pts[a]) * 1000)
        for a, b in SIDE_STEPS:
            if a in pts and b in pts and a in points:
                rows.setdefault(f"  (beside: {a} -> {b})", []).append((pts[b] - pts[a]) * 1000)
        total.append((pts[until] - pts["q_ts"]) * 1000)
        if all(p in pts for p in OWN_WORK):
            first, last, q_in, q_out = OWN_WORK
            own.append((pts[last] - pts[first] - (pts[q_out] - pts[q_in])) * 1000)
    print(f"\n{title}: {complete} questions ({until} reached); ms")
    print(f"  {'step':<34}{'n':>5}{'p50':>9}{'p95':>9}{'mean':>9}")
    for name, values in rows.items():
        values.sort()
        print(
            f"  {name:<34}{len(values):>5}{_percentile_f(values, 50):>9.1f}"
            f"{_percentile_f(values, 95):>9.1f}{statistics.fmean(values):>9.1f}"
        )
    if total:
        total.sort()
        print(
            f"  {'q_ts -> ' + until + ' (whole)':<34}{len(total):>5}"
            f"{_percentile_f(total, 50):>9.1f}{_percentile_f(total, 95):>9.1f}"
            f"{statistics.fmean(total):>9.1f}"
        )
    if own:
        own.sort()
        print(
            f"  {'own work before the send (*)':<34}{len(own):>5}"
            f"{_percentile_f(own, 50):>9.1f}{_percentile_f(own, 95):>9.1f}"
            f"{statistics.fmean(own):>9.1f}\n"
            "  (*) sync -> effect_recorded, less the wait behind earlier forwards to its room"
        )


def _per(pb_qs: list[str], bare_qs: list[str]) -> tuple[int, ...]:
    """The question counts the six CPU figures are divided by under --alternate: PeerBot's,
    the bare bot's, PeerBot's again (its event loop), then all of them (PostgreSQL, Synapse,
    the bare bot's homeserver: none under --alternate)."""
    n = len(set(pb_qs) | set(bare_qs))
    return (len(pb_qs), len(bare_qs), len(pb_qs), n, n, n)


def _percentile_f(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1])


async def run_bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="peerbot-bench-"))
    print(f"working in {workdir}", flush=True)
    if not args.shared:  # one homeserver per bot, started side by side
        server, bare_server = await asyncio.gather(
            SynapseServer.start(workdir / "synapse"), SynapseServer.start(workdir / "synapse2")
        )
    else:
        server = bare_server = await SynapseServer.start(workdir / "synapse")
    peerbot: BotProcess | None = None
    baseline: asyncio.subprocess.Process | None = None
    control: asyncio.subprocess.Process | None = None
    pg: PostgresServer | None = None
    try:
        database = str(workdir / "peerbot.db")
        if args.store == "postgresql":
            pg = PostgresServer()
            pg.start()
            database = await pg.create_database("bench")
        print(f"PeerBot's store: {args.store}", flush=True)
        base = server.base_url
        admin = await server.register("admin")
        observer = await server.register("observer")
        bot_user = await server.register("peerbot")
        bare_user = await bare_server.register("barebot")
        control_user = await server.register("barebot2") if args.control else None
        posters_reg = [await server.register(f"poster{i}") for i in range(args.clients)]
        # Separate homeservers: the bare bot's has its own admin, observer and posters.
        separate = bare_server is not server
        admin2 = await bare_server.register("admin") if separate else admin
        observer2 = await bare_server.register("observer") if separate else observer
        posters2_reg = (
            [await bare_server.register(f"poster{i}") for i in range(args.clients)]
            if separate
            else []
        )
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            rooms: dict[str, str] = {}
            for key in ("entraide", "cardio", "triage"):
                created = await _api(
                    http,
                    "POST",
                    f"{base}/_matrix/client/v3/createRoom",
                    admin.access_token,
                    {
                        "preset": "public_chat",
                        "room_alias_name": f"{key}-bench",
                        "name": key,
                        "invite": [bot_user.user_id, observer.user_id],
                    },
                )
                rooms[key] = str(created["room_id"])
            bare_room = rooms["entraide"]
            if separate:
                created = await _api(
                    http,
                    "POST",
                    f"{bare_server.base_url}/_matrix/client/v3/createRoom",
                    admin2.access_token,
                    {"preset": "public_chat", "room_alias_name": "entraide-bench"},
                )
                bare_room = str(created["room_id"])
                for user in [observer2, *posters2_reg, bare_user]:
                    await _api(
                        http,
                        "POST",
                        f"{bare_server.base_url}/_matrix/client/v3/join/"
                        f"{quote(bare_room, safe='')}",
                        user.access_token,
                        {},
                    )
            for user in [
                observer,
                *posters_reg,
                *([] if separate else [bare_user]),
                *([control_user] if control_user else []),
            ]:
                for key in ("entraide", "cardio", "triage") if user is observer else ("entraide",):
                    await _api(
                        http,
                        "POST",
                        f"{base}/_matrix/client/v3/join/{quote(rooms[key], safe='')}",
                        user.access_token,
                        {},
                    )

            config = {
                "matrix": {
                    "homeserver": base,
                    "user_id": bot_user.user_id,
                    "password": bot_user.password,
                },
                "storage": {"database": database},
                "log_level": "WARNING",
                "invites": {"allowed_servers": [server.server_name]},
                "intake": [
                    {
                        "room": "#entraide-bench:localhost",
                        "trigger": "hashtag",
                        "hashtags": [HASHTAG],
                    }
                ],
                "routing": {
                    "fallback_room": "#triage-bench:localhost",
                    "specialties": [
                        {
                            "name": "Cardiologie",
                            "room": "#cardio-bench:localhost",
                            "keywords": ["ecg", "arythmie"],
                        }
                    ],
                },
            }
            peerbot = BotProcess(config, workdir, "peerbot")
            pb_stages, bare_stages = workdir / "peerbot-stages.jsonl", workdir / "bare-stages.jsonl"

            async def start_peerbot() -> None:
                assert peerbot is not None
                if args.profile:
                    os.environ["PEERBOT_STAGES"] = str(pb_stages)
                await peerbot.start_ready(log_level=args.log_level)
                os.environ.pop("PEERBOT_STAGES", None)

            if not args.bare_first:
                await start_peerbot()

            # --alternate: the bare bot answers its own hashtag, and the questions alternate.
            bare_tag = "#EchoBench" if args.alternate else HASHTAG

            async def start_bare(user: RegisteredUser, name: str) -> asyncio.subprocess.Process:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--baseline-bot",
                    bare_server.base_url if user is bare_user else base,
                    user.user_id,
                    user.device_id,
                    user.access_token,
                    bare_room if user is bare_user else rooms["entraide"],
                    str(workdir / f"{name}-stages.jsonl"),
                    bare_tag,
                    str(args.control_delay if name == "control" else 0),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=(workdir / f"{name}.log").open("wb"),
                )
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert b"ready" in line, line
                return proc

            baseline = await start_bare(bare_user, "bare")
            if control_user is not None:
                control = await start_bare(control_user, "control")
            if args.bare_first:
                await start_peerbot()

            _, _, since = await count_answers(http, base, observer, [], None)
            since2 = ""
            if separate:
                _, _, since2 = await count_answers(http, bare_server.base_url, observer2, [], None)
            posters = [Poster(u, base, http) for u in posters_reg]
            posters2 = [Poster(u, bare_server.base_url, http) for u in posters2_reg]
            n, seconds = args.questions, args.seconds
            print(
                f"posting {n} questions over {seconds:.0f} s from {len(posters)} clients...",
                flush=True,
            )
            # PeerBot's main thread (the event loop) apart: the rest is aiosqlite's thread.
            # With PostgreSQL, the server's processes too (the store's work moves there).
            cpu_before = (
                cpu_seconds(peerbot.pid),
                cpu_seconds(baseline.pid),
                cpu_seconds(peerbot.pid, peerbot.pid),
                server_cpu_seconds(pg),
                cpu_seconds(server.pid),
                cpu_seconds(bare_server.pid) if separate else None,
            )
            started = time.monotonic()
            started_wall = time.time()

            async def one(i: int) -> tuple[str, str]:
                await asyncio.sleep(max(0.0, started + i * seconds / n - time.monotonic()))
                topic = "renouvellement d'ordonnance" if i % 4 == 0 else "ECG avec arythmie"
                tag = bare_tag if args.alternate and i % 2 else HASHTAG
                body = f"{tag} B{i:05d} {topic}, que faire ?"
                poster = posters[i % len(posters)]
                if not separate:
                    q = await poster.post(rooms["entraide"], body)
                    return q, q
                # The same question at the same moment on both homeservers.
                q1, q2 = await asyncio.gather(
                    poster.post(rooms["entraide"], body),
                    posters2[i % len(posters2)].post(bare_room, body),
                )
                return q1, q2

            posted = list(await asyncio.gather(*(one(i) for i in range(n))))
            questions = [q for q, _ in posted]
            # Each bot's own questions (all of them, unless --alternate).
            pb_qs = questions[0::2] if args.alternate else questions
            bare_qs = questions[1::2] if args.alternate else [q for _, q in posted]
            posted_in = time.monotonic() - started
            print(f"posted in {posted_in:.1f} s; waiting for the bots...", flush=True)

            # Progress: 2 notices per question (PeerBot's ack, the bare echo) in #entraide,
            # one forward per question in the specialty rooms.
            expected = 2 * len(pb_qs) + len(bare_qs) * (2 if control is not None else 1)
            watched = list(rooms.values())
            seen, cut = 0, False
            deadline = time.monotonic() + args.settle
            # A bot that lost a question never answers it: stop once nothing new came for a while.
            last_change = time.monotonic()

            def waiting() -> bool:
                now = time.monotonic()
                return now < deadline and now - last_change < args.quiet and seen < expected

            while waiting() and not cut:
                if separate:
                    (got, cut, since), (got2, cut2, since2) = await asyncio.gather(
                        count_answers(http, base, observer, watched, since),
                        count_answers(http, bare_server.base_url, observer2, [bare_room], since2),
                    )
                    got, cut = got + got2, cut or cut2
                else:
                    got, cut, since = await count_answers(http, base, observer, watched, since)
                if got:
                    seen += got
                    last_change = time.monotonic()
            if cut:  # a sync was too long to count: count in the rooms' history instead
                while waiting():
                    count = 0
                    for key in rooms:
                        for e in await history(http, base, observer.access_token, rooms[key]):
                            count += (e.get("content") or {}).get("msgtype") == "m.notice"
                    if separate:
                        for e in await history(
                            http, bare_server.base_url, observer2.access_token, bare_room
                        ):
                            count += (e.get("content") or {}).get("msgtype") == "m.notice"
                    if count != seen:
                        seen, last_change = count, time.monotonic()
                    await asyncio.sleep(5)
            print(f"answers seen: {seen}/{expected}", flush=True)
            cpu_after = (
                cpu_seconds(peerbot.pid),
                cpu_seconds(baseline.pid),
                cpu_seconds(peerbot.pid, peerbot.pid),
                server_cpu_seconds(pg),
                cpu_seconds(server.pid),
                cpu_seconds(bare_server.pid) if separate else None,
            )

            # Stop both bots: the counts below are final.
            await peerbot.terminate()
            for proc in (baseline, control):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 15)

            ent = await history(http, base, observer.access_token, rooms["entraide"])
            if separate:  # the bare bot's room, on its own homeserver (event IDs differ)
                ent += await history(http, bare_server.base_url, observer2.access_token, bare_room)
            spec = [
                e
                for r in ("cardio", "triage")
                for e in await history(http, base, observer.access_token, rooms[r])
            ]
        asked = set(questions) | set(bare_qs)
        qts = {e["event_id"]: int(e["origin_server_ts"]) for e in ent if e["event_id"] in asked}
        pb_fwd, pb_ack, bare, bare2 = (
            Tally("PeerBot forward"),
            Tally("PeerBot ack"),
            Tally("bare nio echo"),
            Tally("2nd bare echo"),
        )
        for e in spec:
            if e.get("sender") != bot_user.user_id or e.get("type") != "m.room.message":
                continue
            m = _PERMALINK_EVENT.search(str(e["content"].get("body", "")))
            q = unquote(m.group(1)) if m else None
            if q in qts:
                pb_fwd.add(q, int(e["origin_server_ts"]) - qts[q])
        for e in ent:
            rel = (e.get("content") or {}).get("m.relates_to") or {}
            q = rel.get("event_id")
            if rel.get("rel_type") != "m.thread" or q not in qts:
                continue
            delay = int(e["origin_server_ts"]) - qts[q]
            if e.get("sender") == bot_user.user_id:
                pb_ack.add(q, delay)
            elif e.get("sender") == bare_user.user_id:
                bare.add(q, delay)
            elif control_user is not None and e.get("sender") == control_user.user_id:
                bare2.add(q, delay)

        rows = [(pb_fwd, pb_fwd.summary(pb_qs)), (pb_ack, pb_ack.summary(pb_qs))]
        rows.append((bare, bare.summary(bare_qs)))
        if control is not None:
            rows.append((bare2, bare2.summary(bare_qs)))
        print()
        print(
            f"{n} questions posted over {posted_in:.1f} s by {len(posters)} clients "
            f"({n / max(posted_in, 0.001):.1f}/s); Synapse on loopback, relaxed rate limits"
        )
        if args.alternate:
            print(f"alternately: {len(pb_qs)} for PeerBot, {len(bare_qs)} for the bare bot")
        print(f"{'':<18}{'lost':>6}{'dup':>6}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
        for t, s in rows:
            p50 = "-" if s["p50"] is None else f"{s['p50']:.0f}"
            p95 = "-" if s["p95"] is None else f"{s['p95']:.0f}"
            mx = "-" if s["max"] is None else f"{s['max']}"
            print(f"{t.name:<18}{s['lost']:>6}{s['duplicated']:>6}{p50:>10}{p95:>10}{mx:>10}")
        fwd, bare_s = rows[0][1], rows[2][1]
        if fwd["p50"] and bare_s["p50"]:
            ratio = fwd["p50"] / bare_s["p50"]
            verdict = "OK" if ratio <= 1.1 else "OVER GOAL"
            print(f"p50 ratio PeerBot forward / bare echo: {ratio:.2f} (goal <= 1.1: {verdict})")
        if control is not None and bare_s["p50"] and rows[3][1]["p50"]:
            print(f"p50 ratio 2nd bare echo / bare echo: {rows[3][1]['p50'] / bare_s['p50']:.2f}")
        # When the bare bot misses questions, its p50 covers only those it answered: compare the
        # two bots on the same questions too.
        # The same question on both sides (the i-th on each homeserver unless --shared).
        pairs = [] if args.alternate else list(zip(pb_qs, bare_qs, strict=True))
        both = [(p, b) for p, b in pairs if p in pb_fwd.delays_ms and b in bare.delays_ms]
        if 0 < len(both) < len(questions):
            p_fwd = statistics.median(min(pb_fwd.delays_ms[p]) for p, _ in both)
            p_bare = statistics.median(min(bare.delays_ms[b]) for _, b in both)
            if p_fwd and p_bare:
                print(
                    f"on the {len(both)} questions both bots answered: p50 PeerBot forward "
                    f"{p_fwd:.0f} ms, bare echo {p_bare:.0f} ms, ratio {p_fwd / p_bare:.2f}"
                )
        cpu = [
            None if a is None or b is None else (b - a) / n
            for a, b in zip(cpu_before, cpu_after, strict=True)
        ]
        if args.alternate:  # per question each bot answered
            cpu = [
                None if c is None else c * n / max(1, k)
                for c, k in zip(cpu, _per(pb_qs, bare_qs), strict=True)
            ]
        if cpu[0] is not None and cpu[1] is not None:
            ratio_cpu = f", ratio {cpu[0] / cpu[1]:.2f}" if cpu[1] else ""
            main = "" if cpu[2] is None else f" ({cpu[2] * 1000:.1f} in its event loop's thread)"
            print(
                f"process CPU per question (user+system, posting to last answer): PeerBot "
                f"{cpu[0] * 1000:.1f} ms{main}, bare echo {cpu[1] * 1000:.1f} ms{ratio_cpu}"
            )
        if cpu[3] is not None:
            print(f"PostgreSQL server CPU per question (PeerBot's store): {cpu[3] * 1000:.1f} ms")
        if cpu[4] is not None and cpu[5] is not None:
            print(
                f"Synapse CPU per question: PeerBot's homeserver {cpu[4] * 1000:.1f} ms, the "
                f"bare bot's {cpu[5] * 1000:.1f} ms (each: its bot, the posters, the observer)"
            )
        elif cpu[4] is not None:
            print(
                f"Synapse CPU per question (both bots, the posters and the observer): "
                f"{cpu[4] * 1000:.1f} ms"
            )
        if args.profile:
            if separate:
                print_synapse_work(
                    server.directory / "homeserver.log", started_wall, {bot_user.user_id: "PeerBot"}
                )
                print_synapse_work(
                    bare_server.directory / "homeserver.log",
                    started_wall,
                    {bare_user.user_id: "bare bot"},
                )
            else:
                print_synapse_work(
                    server.directory / "homeserver.log",
                    started_wall,
                    {bot_user.user_id: "PeerBot", bare_user.user_id: "bare bot"},
                )
            fwd_ts = {q: qts[q] + min(v) for q, v in pb_fwd.delays_ms.items()}
            echo_ts = {q: qts[q] + min(v) for q, v in bare.delays_ms.items()}
            if not separate:  # on two homeservers no event wakes both bots
                print_sync_order(
                    read_marks(pb_stages),
                    read_marks(bare_stages),
                    pb_fwd.delays_ms,
                    bare.delays_ms,
                )
            print_breakdown(
                "PeerBot, question -> forward, stage by stage",
                PEERBOT_POINTS,
                read_marks(pb_stages),
                qts,
                fwd_ts,
                "fwd_ts",
            )
            print_breakdown(
                "bare nio echo, question -> echo",
                BARE_POINTS,
                read_marks(bare_stages),
                qts,
                echo_ts,
                "fwd_ts",
            )
            if control is not None:
                print_breakdown(
                    "2nd bare nio echo, question -> echo",
                    BARE_POINTS,
                    read_marks(workdir / "control-stages.jsonl"),
                    qts,
                    {q: qts[q] + min(v) for q, v in bare2.delays_ms.items()},
                    "fwd_ts",
                )
        ok = fwd["lost"] == 0 and fwd["duplicated"] == 0
        ok = ok and rows[1][1]["lost"] == 0 and rows[1][1]["duplicated"] == 0
        return 0 if ok else 1
    finally:
        if peerbot is not None:
            await peerbot.stop()
        for proc in (baseline, control):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        await server.stop()
        if bare_server is not server:
            await bare_server.stop()
        if pg is not None:
            pg.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--settle", type=float, default=300.0, help="how long to wait for the bots to catch up"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=30.0,
        help="stop waiting when no answer came for this long (a lost question never comes)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="PeerBot's database: a SQLite file, or a throwaway PostgreSQL on loopback",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print where each question's time goes, stage by stage (PEERBOT_STAGES)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="PeerBot's log level during the run (INFO)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="run a second bare bot beside the first: how far two identical bots differ",
    )
    parser.add_argument(
        "--bare-first",
        action="store_true",
        help="start the bare bot before PeerBot (by default PeerBot starts first)",
    )
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="questions alternate between PeerBot's hashtag and the bare bot's own, so that "
        "the two bots never answer the same question at the same time",
    )
    parser.add_argument(
        "--control-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --control: the second bare bot waits this long before each echo",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="both bots on one homeserver, answering the same questions (the first design: "
        "whichever bot Synapse wakes first is served first; by default each bot has its own "
        "homeserver and the same questions are posted to both at the same moment)",
    )
    parser.add_argument("--baseline-bot", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.shared and (args.alternate or args.control or args.bare_first):
        parser.error("--alternate, --control and --bare-first go with --shared")
    if args.baseline_bot:
        asyncio.run(baseline_bot(*args.baseline_bot))
        return 0
    os.umask(0o077)
    return asyncio.run(run_bench(args))


if __name__ == "__main__":
    sys.exit(main())
