"""PeerBot as a real subprocess (``python -m peerbot.cli run --config X``), for fault tests.

:class:`BotProcess` writes the bot.yaml, starts the bot with its log captured to a file, waits
until it says it is running, and can kill it with SIGKILL (a crash), stop it with SIGTERM (and
measure how long it took), or restart it on the same database. :func:`run_cli` runs any other
``peerbot`` subcommand and returns its exit status and output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REPO", "BotProcess", "CliResult", "run_cli"]

REPO = Path(__file__).resolve().parent.parent
READY_LINE = "PeerBot is running"
# What PeerBot logs each time a handler fails inside its guard (``PeerBot.handler_errors``).
HANDLER_ERROR_LINE = "handler failed; the bot goes on"


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The bot must read its secrets from bot.yaml only, never from the test's environment.
    env.pop("PEERBOT_PASSWORD", None)
    env.pop("PEERBOT_ACCESS_TOKEN", None)
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class CliResult:
    """What a ``peerbot`` command did."""

    status: int
    stdout: str
    stderr: str
    seconds: float


async def run_cli(
    args: Sequence[str],
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 - a deadline for the child, not for us
    env: Mapping[str, str] | None = None,
    preexec_uid: int | None = None,
) -> CliResult:
    """Run ``python -m peerbot.cli ARGS`` to the end (killed after ``timeout`` seconds)."""
    started = time.monotonic()
    kwargs: dict[str, Any] = {}
    if preexec_uid is not None:
        uid = preexec_uid
        kwargs["preexec_fn"] = lambda: (os.setgid(uid), os.setuid(uid))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peerbot.cli",
        *args,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(env),
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"peerbot {' '.join(args)} did not finish within {timeout:.0f} s\n"
            f"{err.decode(errors='replace')[-3000:]}"
        ) from None
    assert proc.returncode is not None
    return CliResult(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )


class BotProcess:
    """One PeerBot subprocess on a config; restartable on the same database."""

    def __init__(self, config: Mapping[str, Any], workdir: Path, name: str = "bot") -> None:
        """Write ``config`` (a bot.yaml as a dict) into ``workdir``; nothing is started yet."""
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        # JSON is YAML: no quoting surprises.
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0
        self.exit_seen = True
        """False while a run that ended by itself has not been waited for by the test."""

    def __repr__(self) -> str:
        """Name the bot and its pid."""
        return f"BotProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The bot's pid while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run, once it ended."""
        return None if self.process is None else self.process.poll()

    def start(self, log_level: str | None = "INFO") -> None:
        """Start the bot (its output appended to the log file)."""
        if self.pid is not None:
            raise RuntimeError(f"{self!r} is already running")
        self.starts += 1
        self.exit_seen = False
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self._log_offset = log.tell()
            args = [sys.executable, "-m", "peerbot.cli", "run", "--config", str(self.config_path)]
            if log_level:
                args += ["--log-level", log_level]
            self.process = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )

    def log_text(self, *, this_run: bool = False) -> str:
        """The captured log (of every run, or of the current run only)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if this_run else 0 :].decode(errors="replace")

    def handler_errors(self) -> int:
        """Handler failures the bot logged, over every run (its ``handler_errors``)."""
        return self.log_text().count(HANDLER_ERROR_LINE)

    def crashed(self) -> bool:
        """The last run ended by itself with a failure, and no test waited for that exit."""
        return not self.exit_seen and self.returncode not in (None, 0)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until the bot logged that it runs; fail at once if it exits."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_text(this_run=True):
            if self.returncode is not None:
                raise AssertionError(
                    f"{self!r} exited with {self.returncode} while starting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self!r} not ready after {timeout:.0f} s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def start_ready(self, log_level: str | None = "INFO", timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Start and wait until running."""
        self.start(log_level)
        await self.wait_ready(timeout)

    async def wait_exit(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """Wait for the process to end; its exit status."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self!r} still running after {timeout:.0f} s")
            await asyncio.sleep(0.01)
        self.exit_seen = True
        return int(self.process.returncode)

    async def kill9(self) -> None:
        """Crash the bot: SIGKILL, no chance to clean up."""
        if self.pid is None:
            return
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        await self.wait_exit(10)

    async def terminate(self, timeout: float = 30.0) -> tuple[int, float]:  # noqa: ASYNC109
        """SIGTERM; the exit status and the seconds from the signal to the exit."""
        assert self.process is not None and self.pid is not None, "the bot is not running"
        started = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        status = await self.wait_exit(timeout)
        return status, time.monotonic() - started

    async def stop(self) -> None:
        """Make sure the bot is gone (SIGTERM, then SIGKILL after 10 s)."""
        if self.pid is None:
            return
        with contextlib.suppress(AssertionError, ProcessLookupError):
            await self.terminate(10)
            return
        await self.kill9()
