"""Running the bot and the history import in-process, with their exit statuses.

``peerbot.cli`` and ``peerbot.demo`` both call these; neither imports the other for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from peerbot.config import Config
from peerbot.logs import SECRETS

if TYPE_CHECKING:
    from peerbot.bot.app import PeerBot
    from peerbot.bot.plugins import PluginSet
    from peerbot.store import Store
    from peerbot.store.leader import Leadership

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "load_plugin_set",
    "open_store",
    "run_bot",
    "run_import",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("peerbot")

T = TypeVar("T")

_RETRY_MAX_SECONDS = 30.0
"""The longest wait between two tries to reach an unreachable PostgreSQL."""


def load_plugin_set(config: Config) -> PluginSet:
    """Load the plugins named in bot.yaml (before any login); PluginLoadError on a problem."""
    from peerbot.bot.plugins import PluginSet, load_plugins

    data_root = config.storage.database.parent / "plugins"
    return PluginSet(load_plugins(config.plugins, language=config.language, data_root=data_root))


async def open_store(config: Config, *, wait: bool = False) -> Store:
    """The configured database, opened and migrated; StoreError on a problem.

    With ``wait``, a PostgreSQL server that cannot be reached yet (down, restarting, starting
    up) is tried again and again, 1 s, 2 s, 4 s... up to 30 s apart, each failure logged;
    what needs the operator (bad password, no such database) still fails at once.
    """
    from peerbot.store import Store, StoreError

    try:
        password = config.storage.password()
    except OSError as exc:
        raise StoreError(f"storage.password_file: cannot read it: {exc}") from exc
    SECRETS.add(password)
    delay = 1.0
    while True:
        try:
            return await Store.open(config.storage.target, password=password)
        except StoreError as exc:
            if not (wait and exc.transient):
                raise
            log.warning("%s; trying again in %.0f s", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_SECONDS)


async def run_bot(
    config: Config, *, ready: asyncio.Event | None = None, reset_identity: bool = False
) -> int:
    """Run until SIGINT/SIGTERM; return an exit status.

    On PostgreSQL a lost lead (the server restarted, the network broke, the lock was cut) is
    not the end: this instance stops everything it was doing, then waits for the database
    again and for the lead (as the standby when another instance took it), and carries on from
    the saved sync token and outbox.
    """
    from peerbot.bot.plugins import PluginLoadError

    SECRETS.add(config.matrix.password)
    SECRETS.add(config.matrix.access_token)
    try:
        plugins = load_plugin_set(config)
    except PluginLoadError as exc:
        log.error("Plugin error: %s", exc)
        return EXIT_CONFIG
    try:
        while True:
            status = await _lead_and_run(config, plugins, ready, reset_identity)
            if status != _LEAD_LOST:
                return status
            reset_identity = False  # a new identity once, never again on a reconnect
            log.warning("Waiting for the database and the lead again")
    finally:
        await plugins.close()


_LEAD_LOST = -1
""":func:`_lead_and_run`'s status when the lead was lost (never an exit status)."""


async def _lead_and_run(
    config: Config, plugins: PluginSet, ready: asyncio.Event | None, reset_identity: bool
) -> int:
    """Open the store, wait for the lead, run the bot; an exit status or ``_LEAD_LOST``."""
    from peerbot.bot.app import PeerBot, StartupError
    from peerbot.bot.ops import Operations, OpsError
    from peerbot.bot.plugins import ensure_data_dirs
    from peerbot.matrix import MatrixClient, MatrixError
    from peerbot.matrix.crosssign import CrossSigningError, IdentityMismatch, KeysLost
    from peerbot.store import StoreError
    from peerbot.store.leader import Leadership

    try:
        opened = await _until_signal(open_store(config, wait=True))
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    if opened is None:
        log.info("PeerBot stopped (it was waiting for the database)")
        return EXIT_OK
    store = opened
    leadership = Leadership(
        store, password=config.storage.password(), poll_ms=config.storage.standby_poll_ms
    )
    if not await _wait_for_lead(leadership):
        await leadership.release()
        await store.close()
        log.info("PeerBot stopped (it was on standby)")
        return EXIT_OK
    ensure_data_dirs(plugins.plugins)
    SECRETS.add(config.encryption.pickle_key)
    SECRETS.add(config.encryption.passphrase)
    client = MatrixClient(config.matrix, config.encryption, reset_identity=reset_identity)
    ops: Operations | None = None
    lost: list[str] = []
    watcher: asyncio.Task[str] | None = None
    try:
        bot = PeerBot(config, store, client, plugins)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bot.stop)
        # Before the login: /health answers 503 (starting) from the first moment.
        ops = Operations(config, bot, plugins=([p.name for p in plugins.plugins], None))
        try:
            await ops.start()
        except OpsError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        if leadership.shared:
            watcher = asyncio.create_task(leadership.lost(), name="lead watch")
            watcher.add_done_callback(lambda t: _on_lead_lost(t, bot, lost))
        try:
            await bot.start()
            SECRETS.add(client.access_token)
        except StartupError as exc:
            for line in str(exc).splitlines():
                log.error("%s", line)
            return EXIT_CONFIG
        except MatrixError as exc:
            log.error("Cannot start: %s", exc)
            return EXIT_FAILURE
        except (KeysLost, IdentityMismatch) as exc:
            log.critical("=" * 72)
            log.critical("REFUSING TO START: the bot's cross-signing identity is in question.")
            log.critical("%s", exc)
            log.critical(
                "Restore the key file (%s) from a backup, or run `peerbot run --reset-identity`.",
                config.encryption.key_file,
            )
            log.critical("=" * 72)
            return EXIT_FAILURE
        except CrossSigningError as exc:
            log.error("Cannot start: encryption set-up failed: %s", exc)
            return EXIT_FAILURE
        except Exception:
            if lost:  # the database went away during the start: try again, as after a loss
                log.exception("Start interrupted by the lost lead")
                return _LEAD_LOST
            raise
        log.info("PeerBot is running; Ctrl-C to stop")
        if ready is not None:
            ready.set()
        try:
            await bot.run()
        except Exception:
            if not lost:
                raise
            log.exception("The bot failed while the lead was being lost")
        if lost:
            return _LEAD_LOST
        log.info("PeerBot stopped")
        return EXIT_OK
    finally:
        if ops is not None:
            await ops.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
        from peerbot.bot import stages

        stages.dump()  # only when PEERBOT_STAGES names a file (bench_load.py --profile)
        await client.close()
        with contextlib.suppress(Exception):  # a broken PostgreSQL connection cannot close
            await asyncio.wait_for(store.close(), 10)
        # Last: a standby must not start while this instance may still send.
        await leadership.release()


async def _until_signal(work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when SIGINT/SIGTERM came first (then ``work`` is cancelled)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_cancelling():
            return None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _wait_for_lead(leadership: Leadership) -> bool:
    """Wait (on standby) until this instance leads; False when SIGINT/SIGTERM came first."""
    if not leadership.shared:
        return True

    async def acquired() -> bool:
        await leadership.acquire()
        return True

    return await _until_signal(acquired()) is True


def _current_cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _on_lead_lost(task: asyncio.Task[str], bot: PeerBot, lost: list[str]) -> None:
    """The lead's connection broke: stop now (another instance may be leading already)."""
    if task.cancelled():
        return
    exc = task.exception()
    reason = task.result() if exc is None else repr(exc)
    lost.append(reason)
    log.critical("Lost the lead on the database (%s): stopping", reason)
    bot.stop()


async def run_import(config: Config, rooms: list[str]) -> int:
    """Backfill the index from room history; return an exit status."""
    from peerbot.bot.app import PeerBot
    from peerbot.bot.history import import_history
    from peerbot.matrix import MatrixClient, MatrixError
    from peerbot.store import StoreError

    SECRETS.add(config.matrix.password)
    SECRETS.add(config.matrix.access_token)
    try:
        store = await open_store(config)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    from peerbot.bot.related import HybridUnavailable, choose_embedder, warm

    client = MatrixClient(config.matrix, config.encryption)
    try:
        embedder, sentence = choose_embedder(config.related)
        if embedder is not None:
            embedder, sentence = await warm(embedder, sentence, config.related.engine)
        print(sentence, file=sys.stderr)
        await PeerBot(config, store, client).login()
        summary = await import_history(config, store, client, rooms, embedder=embedder)
    except HybridUnavailable as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except (MatrixError, ValueError) as exc:
        log.error("Import failed: %s", exc)
        return EXIT_FAILURE
    finally:
        await client.close()
        await store.close()
    print("\n".join(summary.lines()))
    return EXIT_OK
