"""What operators watch, around a running bot: the ``/health`` and ``/metrics`` listener,
systemd's notify protocol (READY after the first sync, the watchdog, STOPPING) and the
start-up self-check posted to ``admin_room``.

``await ops.start()`` before the bot's login, ``await ops.stop()`` after its loops (see
:func:`peerbot.bot.runner.run_bot`); or ``async with Operations(config, bot):``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from types import TracebackType

from aiohttp import web

from peerbot.bot.app import PeerBot
from peerbot.bot.doctor import Report, gather_checks
from peerbot.bot.metrics import CONTENT_TYPE
from peerbot.bot.systemd import Notifier, watchdog_interval
from peerbot.config import Config
from peerbot.core.health import STALE_AFTER
from peerbot.core.ids import tx_id
from peerbot.matrix import MatrixError

__all__ = ["Operations", "OpsError"]

log = logging.getLogger(__name__)


class OpsError(RuntimeError):
    """The listener cannot start; the message names the key."""


class Operations:
    """The listener, the systemd notifications and the start-up report of one bot."""

    def __init__(
        self,
        config: Config,
        bot: PeerBot,
        *,
        env: Mapping[str, str] | None = None,
        plugins: tuple[list[str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.bot = bot
        self.notifier = Notifier(env)
        self.watchdog_every = watchdog_interval(env)
        self.plugins = plugins
        self.report: Report | None = None
        """The start-up checks, once run."""
        self.address: tuple[str, int] | None = None
        """Where the listener listens (the real port when bind asked for port 0)."""
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Operations:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (if metrics.bind is set); READY and the start-up checks after the first sync."""
        if self.config.metrics.bind is not None:
            await self._listen(*self.config.metrics.bind)
        self._tasks.append(asyncio.create_task(self._after_first_sync(), name="peerbot-ready"))
        if self.watchdog_every is not None and self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._watchdog(), name="peerbot-watchdog"))

    async def stop(self) -> None:
        """Tell systemd, stop the tasks and the listener."""
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP -------------------------------------------------------------------------------

    async def _listen(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OpsError(f"metrics.bind: cannot listen on {host}:{port}: {exc.strerror}") from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.address = sockets[0].getsockname()[:2] if sockets else (host, port)
        log.info("Health and metrics on http://%s:%d/ (/health, /metrics)", *self.address)

    async def _health(self, request: web.Request) -> web.Response:
        report = self.bot.metrics.health.report()
        return web.Response(
            status=200 if report.ok else 503,
            text=json.dumps(report.body()),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            self.bot.metrics.sampled.outbox = await self.bot.store.outbox_summary()
        except Exception:
            log.exception("Could not read the outbox for /metrics")
        body = self.bot.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # -- systemd ----------------------------------------------------------------------------

    async def _after_first_sync(self) -> None:
        await self.bot.metrics.health.first.wait()
        self.notifier.ready("syncing")
        log.info("First sync handled: ready")
        try:
            await self.startup_report()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("The start-up checks failed")

    async def _watchdog(self) -> None:
        assert self.watchdog_every is not None
        health = self.bot.metrics.health
        shown: str | None = None
        while True:
            facts = health.facts()
            # Alive = the sync loop shows some outcome lately, good or bad. A loop stuck
            # for longer stops the pings, and systemd restarts the bot after WatchdogSec.
            moments = [t for t in (facts.last_ok_at, facts.last_failure_at) if t is not None]
            started = health.first_ok_at is None
            if started or (moments and time.monotonic() - max(moments) < STALE_AFTER):
                self.notifier.watchdog()
                state = health.report().state
                if state != shown:
                    self.notifier.status(state)
                    shown = state
            else:
                log.error("The sync loop shows no sign of life: no watchdog ping")
            await asyncio.sleep(self.watchdog_every)

    # -- the start-up self-check ------------------------------------------------------------

    async def startup_report(self) -> Report:
        """Run the doctor's checks; log each problem, and post them once to admin_room."""
        report = await gather_checks(self.config, self.bot.mx, plugins=self.plugins)
        self.report = report
        for check in report.problems:
            log.warning("Start-up check: %s", check.line())
        if not report.problems:
            log.info("Start-up checks: all %d ok", len(report.checks))
        if report.problems and self.config.admin_room:
            await self._post(report)
        return report

    async def _post(self, report: Report) -> None:
        assert self.config.admin_room is not None
        store = self.bot.store
        # One message per start: the start's number is in the database, so the transaction
        # ID is new at each start and the same if this one is re-sent after a crash.
        start = int(await store.get("ops_start_count") or "0") + 1
        await store.put("ops_start_count", str(start))
        try:
            room_id = await self.bot.rooms.resolve(self.config.admin_room, why="admin_room")
        except MatrixError as exc:
            log.warning(
                "admin_room %s: cannot post the start-up checks: %s", self.config.admin_room, exc
            )
            return
        lines = [c.line().split(None, 1)[1] for c in report.problems]
        content = self.bot.texts.startup_problems(lines).content()
        await store.add_effect(
            tx_id=tx_id("startup-check", f"{self.bot.mx.user_id}#{start}"),
            kind="notice",
            room_id=room_id,
            content=content,
        )
        self.bot.outbox.wake()
