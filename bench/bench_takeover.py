"""Takeover benchmark: how fast a standby PeerBot replaces a SIGKILLed leader on PostgreSQL.

Starts a throwaway Synapse (relaxed rate limits) and a throwaway PostgreSQL (tests/pgserver.py;
as the ``postgres`` user when run as root), then, for each run, on a fresh database: leader and
standby ``peerbot run`` with the same account, a burst of questions, SIGKILL of the leader once
some are forwarded. Each run checks the rooms (every question forwarded and acknowledged
exactly once) and measures, from the SIGKILL: the standby running (logged in, first sync
handled), and the first forward a reader sees after that. Prints each run and the p50 / max.

    .venv/bin/python bench/bench_takeover.py                  # 5 runs of 100 questions
    .venv/bin/python bench/bench_takeover.py --runs 3 --questions 40 --poll-ms 500
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
# Last, so first: ``conftest`` in test_faults' imports is the integration one.
sys.path.insert(0, str(REPO / "tests" / "integration"))

from botproc import BotProcess  # noqa: E402
from helpers import TestUser, unique_name  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

from peerbot.dev.devserver import SynapseServer  # noqa: E402


async def run_bench(args: argparse.Namespace) -> int:
    import test_standby

    root = Path(tempfile.mkdtemp(prefix="peerbot-takeover-"))
    pg = PostgresServer()
    pg.start()
    server = await SynapseServer.start(root / "synapse")
    users: list[TestUser] = []
    figures: list[dict[str, float]] = []
    try:

        async def make_user(
            name: str = "user", *, server: SynapseServer = server, admin: bool = False
        ) -> TestUser:
            registered = await server.register(unique_name(name), admin=admin)
            user = await TestUser.login(server, registered)
            users.append(user)
            await user.start()
            return user

        for n in range(args.runs):
            work = root / f"run{n}"
            work.mkdir()
            made: list[BotProcess] = []

            def bots(
                config: dict[str, Any],
                name: str = "bot",
                work: Path = work,
                made: list[BotProcess] = made,
            ) -> BotProcess:
                config["storage"]["standby_poll_ms"] = args.poll_ms
                bot = BotProcess(config, work, name)
                made.append(bot)
                return bot

            url = await pg.create_database()
            try:
                f = await test_standby.takeover_run(
                    server,
                    make_user,  # type: ignore[arg-type]
                    bots,
                    url,
                    work,
                    questions=args.questions,
                    kill_after=args.questions // 5,
                )
            finally:
                for bot in made:
                    await bot.stop()
            figures.append(f)
            print(
                f"run {n + 1}: standby running {f['ready']:.2f} s after the SIGKILL, a new "
                f"forward seen at {f['first_send']:.2f} s; {args.questions} questions exactly once",
                flush=True,
            )
    finally:
        await asyncio.gather(*(u.stop() for u in users))
        await server.stop()
        pg.stop()
    shutil.rmtree(root, ignore_errors=True)  # kept when a run failed: the bots' logs are there
    ready = [f["ready"] for f in figures]
    first = [f["first_send"] for f in figures]
    print(
        f"takeover over {len(figures)} runs (poll {args.poll_ms} ms): running p50 "
        f"{statistics.median(ready):.2f} s (max {max(ready):.2f}), new forward seen p50 "
        f"{statistics.median(first):.2f} s (max {max(first):.2f})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--poll-ms", type=int, default=1000, help="storage.standby_poll_ms")
    return asyncio.run(run_bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
