#!/usr/bin/env python3
"""`peerbot run` from a bare install forwards a question (run with the test venv's Python).

    .venv/bin/python .ci/bare_run.py /tmp/bare/bin/peerbot WORKDIR

Starts a throwaway Synapse on 127.0.0.1 (from the test venv), makes a bot account, a user and
an intake and a specialty room, writes a bot.yaml, starts the *given* peerbot executable (the
bare venv's, which has only [project].dependencies), posts one question and waits for its
forward. Prints one line; exit 1 with the reason when anything fails.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from peerbot.config import MatrixConfig
from peerbot.dev.devserver import SynapseServer
from peerbot.matrix import MatrixClient

QUESTION = "#DocTocToc ECG avec arythmie chez une patiente de 82 ans, faut-il anticoaguler ?"


async def check(peerbot: str, work: Path) -> str:
    server = await SynapseServer.start(work / "synapse")
    bot_log = work / "bot.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        bot = await server.register("peerbot")
        alice = await server.register("alice")
        client = MatrixClient(MatrixConfig(server.base_url, alice.user_id, password=alice.password))
        await client.login(None, None)
        try:
            intake = await client.create_room(
                alias_localpart="entraide", invite=[bot.user_id], public=True
            )
            cardio = await client.create_room(
                alias_localpart="cardio", invite=[bot.user_id], public=True
            )
            name = server.server_name
            config = {
                "matrix": {
                    "homeserver": server.base_url,
                    "user_id": bot.user_id,
                    "password": bot.password,
                },
                "storage": {"database": str(work / "peerbot.db")},
                "intake": [{"room": f"#entraide:{name}", "hashtags": ["#DocTocToc"]}],
                "routing": {
                    "fallback_room": f"#cardio:{name}",
                    "specialties": [
                        {"name": "Cardiologie", "room": f"#cardio:{name}", "keywords": ["ecg"]}
                    ],
                },
            }
            (work / "bot.yaml").write_text(json.dumps(config), encoding="utf-8")
            with bot_log.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    peerbot,
                    "run",
                    "--config",
                    str(work / "bot.yaml"),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 60
            while "PeerBot is running" not in bot_log.read_text(errors="replace"):
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bot did not start: " + _tail(bot_log))
                await asyncio.sleep(0.1)
            since = (await client.sync(None, full_state=True, first=True)).next_batch
            await client.send(intake, {"msgtype": "m.text", "body": QUESTION}, "bare-run-q1")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                batch = await client.sync(since, full_state=False)
                since = batch.next_batch
                for room_id, event in batch.events:
                    body = str((event.get("content") or {}).get("body", ""))
                    if room_id == cardio and "82 ans" in body and event["sender"] == bot.user_id:
                        if proc.returncode is not None:
                            raise RuntimeError(
                                f"the bot exited with {proc.returncode} on its own after the "
                                "forward: " + _tail(bot_log)
                            )
                        proc.send_signal(signal.SIGTERM)
                        try:
                            status = await asyncio.wait_for(proc.wait(), timeout=15)
                        except TimeoutError:
                            raise RuntimeError(
                                "the bot did not exit within 15 s of SIGTERM: " + _tail(bot_log)
                            ) from None
                        if status != 0:
                            raise RuntimeError(
                                f"the bot exited with {status} after SIGTERM: " + _tail(bot_log)
                            )
                        return "peerbot run (bare install) forwarded the question"
            raise RuntimeError("no forward within 60 s: " + _tail(bot_log))
        finally:
            await client.close()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop()


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-8:]) if lines else "(empty log)"


def main() -> int:
    peerbot, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(asyncio.run(check(peerbot, work)))
    except Exception as exc:
        # The type too: a bare TimeoutError or ProcessLookupError prints as nothing.
        print(f"bare install: peerbot run failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
