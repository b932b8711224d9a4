"""Running the bot and the history import in-process, with their exit statuses.

``peerbot.cli`` and ``peerbot.demo`` both call these; neither imports the other for it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from peerbot.config import Config
from peerbot.logs import SECRETS

if TYPE_CHECKING:
    from peerbot.bot.plugins import PluginSet

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "load_plugin_set", "run_bot", "run_import"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("peerbot")


def load_plugin_set(config: Config) -> PluginSet:
    """Load the plugins named in bot.yaml (before any login); PluginLoadError on a problem."""
    from peerbot.bot.plugins import PluginSet, load_plugins

    data_root = config.storage.database.parent / "plugins"
    return PluginSet(load_plugins(config.plugins, language=config.language, data_root=data_root))


async def run_bot(
    config: Config, *, ready: asyncio.Event | None = None, reset_identity: bool = False
) -> int:
    """Run until SIGINT/SIGTERM; return an exit status."""
    from peerbot.bot.app import PeerBot, StartupError
    from peerbot.bot.plugins import PluginLoadError, ensure_data_dirs
    from peerbot.matrix import MatrixClient, MatrixError
    from peerbot.matrix.crosssign import CrossSigningError, IdentityMismatch, KeysLost
    from peerbot.store import Store, StoreError

    SECRETS.add(config.matrix.password)
    SECRETS.add(config.matrix.access_token)
    try:
        plugins = load_plugin_set(config)
    except PluginLoadError as exc:
        log.error("Plugin error: %s", exc)
        return EXIT_CONFIG
    try:
        store = await Store.open(config.storage.database)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    ensure_data_dirs(plugins.plugins)
    SECRETS.add(config.encryption.pickle_key)
    SECRETS.add(config.encryption.passphrase)
    client = MatrixClient(config.matrix, config.encryption, reset_identity=reset_identity)
    try:
        bot = PeerBot(config, store, client, plugins)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bot.stop)
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
        log.info("PeerBot stopped")
        return EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(sig)
        from peerbot.bot import stages

        stages.dump()  # only when PEERBOT_STAGES names a file (bench_load.py --profile)
        await client.close()
        await store.close()
        await plugins.close()


async def run_import(config: Config, rooms: list[str]) -> int:
    """Backfill the index from room history; return an exit status."""
    from peerbot.bot.app import PeerBot
    from peerbot.bot.history import import_history
    from peerbot.matrix import MatrixClient, MatrixError
    from peerbot.store import Store, StoreError

    SECRETS.add(config.matrix.password)
    SECRETS.add(config.matrix.access_token)
    try:
        store = await Store.open(config.storage.database)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    client = MatrixClient(config.matrix, config.encryption)
    try:
        await PeerBot(config, store, client).login()
        summary = await import_history(config, store, client, rooms)
    except (MatrixError, ValueError) as exc:
        log.error("Import failed: %s", exc)
        return EXIT_FAILURE
    finally:
        await client.close()
        await store.close()
    print("\n".join(summary.lines()))
    return EXIT_OK
