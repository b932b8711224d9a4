"""Running the bot and the history import in-process, with their exit statuses.

``peerbot.cli`` and ``peerbot.demo`` both call these; neither imports the other for it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

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


def load_plugin_set(config: Config) -> PluginSet:
    """Load the plugins named in bot.yaml (before any login); PluginLoadError on a problem."""
    from peerbot.bot.plugins import PluginSet, load_plugins

    data_root = config.storage.database.parent / "plugins"
    return PluginSet(load_plugins(config.plugins, language=config.language, data_root=data_root))


async def open_store(config: Config) -> Store:
    """The configured database, opened and migrated; StoreError on a problem."""
    from peerbot.store import Store, StoreError

    try:
        password = config.storage.password()
    except OSError as exc:
        raise StoreError(f"storage.password_file: cannot read it: {exc}") from exc
    SECRETS.add(password)
    return await Store.open(config.storage.target, password=password)


async def run_bot(
    config: Config, *, ready: asyncio.Event | None = None, reset_identity: bool = False
) -> int:
    """Run until SIGINT/SIGTERM; return an exit status."""
    from peerbot.bot.app import PeerBot, StartupError
    from peerbot.bot.ops import Operations, OpsError
    from peerbot.bot.plugins import PluginLoadError, ensure_data_dirs
    from peerbot.matrix import MatrixClient, MatrixError
    from peerbot.matrix.crosssign import CrossSigningError, IdentityMismatch, KeysLost
    from peerbot.store import StoreError
    from peerbot.store.leader import Leadership

    SECRETS.add(config.matrix.password)
    SECRETS.add(config.matrix.access_token)
    try:
        plugins = load_plugin_set(config)
    except PluginLoadError as exc:
        log.error("Plugin error: %s", exc)
        return EXIT_CONFIG
    try:
        store = await open_store(config)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    leadership = Leadership(
        store, password=config.storage.password(), poll_ms=config.storage.standby_poll_ms
    )
    if not await _wait_for_lead(leadership):
        await leadership.release()
        await store.close()
        await plugins.close()
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
        log.info("PeerBot is running; Ctrl-C to stop")
        if ready is not None:
            ready.set()
        await bot.run()
        if lost:
            return EXIT_FAILURE
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
        await store.close()
        await plugins.close()
        # Last: a standby must not start while this instance may still send.
        await leadership.release()


async def _wait_for_lead(leadership: Leadership) -> bool:
    """Wait (on standby) until this instance leads; False when SIGINT/SIGTERM came first."""
    if not leadership.shared:
        return True
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(leadership.acquire(), name="standby")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, waiting.cancel)
    try:
        await waiting
        return True
    except asyncio.CancelledError:
        if waiting.cancelled() and not _current_cancelling():
            return False
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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
