"""Relay benchmark: answers and clarifications between a question's two threads, with a SIGKILL.

Starts a throwaway Synapse (relaxed rate limits) with an intake room and a specialty room, runs
PeerBot (``python -m peerbot.cli run``), and lets Alice ask questions. Bob answers each one under
its forward in the specialty room and Alice adds a clarification in her own thread; halfway
through the bot is killed with SIGKILL and restarted, while messages keep coming. Then it reads
the rooms back (``/messages``) and prints: relays lost and duplicated (a relay is found by its
link to the original message), and the p50/p95 delay from a message to its relayed copy, next to
the delay from a question to its forward in the same run, from the homeserver's timestamps.
Exit status 1 if anything was lost or duplicated.

    .venv/bin/python bench/bench_relays.py                    # 100 questions
    .venv/bin/python bench/bench_relays.py --questions 30
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_load import _api, _percentile, history  # noqa: E402
from botproc import BotProcess  # noqa: E402

from peerbot.dev.devserver import RegisteredUser, SynapseServer  # noqa: E402

_LINK = re.compile(r"https://matrix\.to/#/[^/\s]+/([^?\s]+)")


async def send(
    http: aiohttp.ClientSession,
    base: str,
    user: RegisteredUser,
    room: str,
    body: str,
    thread_root: str | None = None,
) -> str:
    """Post a text (in a thread when ``thread_root``); its event ID."""
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if thread_root is not None:
        content["m.relates_to"] = {
            "rel_type": "m.thread",
            "event_id": thread_root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": thread_root},
        }
    url = (
        f"{base}/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/"
        f"bench-{secrets.token_hex(8)}"
    )
    data = await _api(http, "PUT", url, user.access_token, content)
    return str(data["event_id"])


def linked(events: list[dict[str, Any]], bot_id: str) -> dict[str, list[int]]:
    """For each event a bot message links to: the timestamps of those bot messages."""
    out: dict[str, list[int]] = {}
    for e in events:
        if e.get("sender") != bot_id or e.get("type") != "m.room.message":
            continue
        body = str((e.get("content") or {}).get("body", ""))
        if (e.get("content") or {}).get("m.relates_to", {}).get("rel_type") == "m.replace":
            continue  # the forward's state edits, not relays
        for match in set(_LINK.findall(body)):
            out.setdefault(unquote(match), []).append(int(e["origin_server_ts"]))
    return out


def tally(
    sources: dict[str, int], copies: dict[str, list[int]]
) -> tuple[int, int, float | None, float | None]:
    """Lost, duplicated, p50 and p95 delay (ms) of the copies of ``sources`` (event -> ts)."""
    lost = sum(1 for s in sources if s not in copies)
    dup = sum(1 for s in sources if len(copies.get(s, [])) > 1)
    delays = sorted(min(copies[s]) - ts for s, ts in sources.items() if s in copies)
    return lost, dup, _percentile(delays, 50), _percentile(delays, 95)


async def create_rooms(
    http: aiohttp.ClientSession,
    base: str,
    admin: RegisteredUser,
    bot_user: RegisteredUser,
    keys: Sequence[str],
    joins: Iterable[tuple[RegisteredUser, str]],
) -> dict[str, str]:
    """Public rooms ``#KEY-bench`` made by ``admin`` (the bot invited), and who joins which;
    the room IDs by key."""
    rooms: dict[str, str] = {}
    for key in keys:
        created = await _api(
            http,
            "POST",
            f"{base}/_matrix/client/v3/createRoom",
            admin.access_token,
            {
                "preset": "public_chat",
                "room_alias_name": f"{key}-bench",
                "invite": [bot_user.user_id],
            },
        )
        rooms[key] = str(created["room_id"])
    for user, key in joins:
        join = f"{base}/_matrix/client/v3/join/{quote(rooms[key], safe='')}"
        await _api(http, "POST", join, user.access_token, {})
    return rooms


def bench_config(
    server: SynapseServer, bot_user: RegisteredUser, workdir: Path, **extra: Any
) -> dict[str, Any]:
    """bot.yaml for the bench rooms: intake #entraide-bench (#DocTocToc), Cardiologie
    (keyword ``ecg``) in #cardio-bench, triage #triage-bench; ``extra`` top-level keys added."""
    return {
        "matrix": {
            "homeserver": server.base_url,
            "user_id": bot_user.user_id,
            "password": bot_user.password,
        },
        "storage": {"database": str(workdir / "peerbot.db")},
        "invites": {"allowed_servers": [server.server_name]},
        "intake": [
            {"room": "#entraide-bench:localhost", "trigger": "hashtag", "hashtags": ["#DocTocToc"]}
        ],
        "routing": {
            "fallback_room": "#triage-bench:localhost",
            "specialties": [
                {"name": "Cardiologie", "room": "#cardio-bench:localhost", "keywords": ["ecg"]}
            ],
        },
        **extra,
    }


async def run_bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="peerbot-relays-"))
    print(f"working in {workdir}", flush=True)
    server = await SynapseServer.start(workdir / "synapse")
    bot: BotProcess | None = None
    try:
        base = server.base_url
        admin = await server.register("admin")
        alice = await server.register("alice")
        bob = await server.register("bob")
        bot_user = await server.register("peerbot")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            rooms = await create_rooms(
                http,
                base,
                admin,
                bot_user,
                ("entraide", "cardio", "triage"),
                [(alice, "entraide"), (bob, "cardio"), (bob, "entraide")],
            )
            config = bench_config(server, bot_user, workdir)
            bot = BotProcess(config, workdir, "peerbot")
            await bot.start_ready(log_level="INFO")

            asked: dict[str, int] = {}
            for i in range(args.questions):
                qid = await send(http, base, alice, rooms["entraide"], f"#DocTocToc ECG n°{i} ?")
                asked[qid] = 0
            forwards: dict[str, str] = {}
            deadline = time.monotonic() + 120
            while len(forwards) < len(asked) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                for e in await history(http, base, bob.access_token, rooms["cardio"]):
                    for qid in _LINK.findall(str((e.get("content") or {}).get("body", ""))):
                        if unquote(qid) in asked and e.get("sender") == bot_user.user_id:
                            forwards.setdefault(unquote(qid), str(e["event_id"]))
            if len(forwards) < len(asked):
                print(f"only {len(forwards)} of {len(asked)} questions forwarded", file=sys.stderr)
                return 1

            answers: dict[str, int] = {}
            clarifs: dict[str, int] = {}
            half = len(asked) // 2
            for n, (qid, fwd) in enumerate(forwards.items()):
                if n == half:
                    await bot.kill9()  # messages keep coming while the bot is down
                if n == half + max(1, half // 4):
                    await bot.start_ready(log_level="INFO")
                answers[await send(http, base, bob, rooms["cardio"], f"Réponse {n}", fwd)] = 0
                clarifs[await send(http, base, alice, rooms["entraide"], f"Précision {n}", qid)] = 0

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                back = linked(
                    await history(http, base, alice.access_token, rooms["entraide"]),
                    bot_user.user_id,
                )
                out = linked(
                    await history(http, base, bob.access_token, rooms["cardio"]), bot_user.user_id
                )
                if all(a in back for a in answers) and all(c in out for c in clarifs):
                    break
            await asyncio.sleep(2.0)  # a duplicate would come now
            intake_events = await history(http, base, alice.access_token, rooms["entraide"])
            cardio_events = await history(http, base, bob.access_token, rooms["cardio"])
            stamps = {
                str(e["event_id"]): int(e["origin_server_ts"])
                for e in intake_events + cardio_events
            }
            back = linked(intake_events, bot_user.user_id)
            out = linked(cardio_events, bot_user.user_id)
            fwd_copies = {q: [stamps[f]] for q, f in forwards.items()}
            rows = [
                (
                    "forwards (question -> forward)",
                    tally({q: stamps[q] for q in asked}, fwd_copies),
                ),
                (
                    "answers (forward's thread -> asker's)",
                    tally({a: stamps[a] for a in answers}, back),
                ),
                (
                    "clarifications (asker's -> forward's)",
                    tally({c: stamps[c] for c in clarifs}, out),
                ),
            ]
            print(f"\n{args.questions} questions, one SIGKILL halfway (messages sent while down)\n")
            print(f"{'':40} {'lost':>5} {'dup':>5} {'p50 ms':>8} {'p95 ms':>8}")
            bad = 0
            for name, (lost, dup, p50, p95) in rows:
                bad += lost + dup
                fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
                print(f"{name:40} {lost:>5} {dup:>5} {fmt(p50):>8} {fmt(p95):>8}")
            print(
                "\n(relay delays include the messages sent while the bot was down, so p95 shows "
                "the restart; p50 is the steady state)"
            )
            await bot.terminate()
            return 1 if bad else 0
    finally:
        if bot is not None:
            await bot.stop()
        await server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    return asyncio.run(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
