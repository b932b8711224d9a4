"""Command line: ``peerbot run | check-config | demo``. Exit 2 on a bad configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from peerbot.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from peerbot.bot.plugins import PluginSet

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("peerbot")


class SecretFilter(logging.Filter):
    """Masks the bot's password and access tokens wherever they would reach a log line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Never print this string."""
        if secret and len(secret) >= 4:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "***")
        if text != message:
            record.msg, record.args = text, None
        return True


SECRETS = SecretFilter()


def setup_logging(level: str) -> None:
    """Log to stderr; secrets masked in every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nio logs request details (and sometimes bodies) at INFO and DEBUG.
    # aiosqlite logs every statement with its parameters (the access token among them).
    for noisy in ("nio", "aiohttp", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _print_config_error(exc: ConfigError) -> None:
    print(f"{exc.source}: configuration error", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate bot.yaml without connecting."""
    from peerbot.bot.plugins import PluginLoadError

    config = _load(Path(args.config_file or args.config))
    if config is None:
        return EXIT_CONFIG
    try:
        plugins = load_plugin_set(config)
    except PluginLoadError as exc:
        print(f"{args.config_file or args.config}: plugin error", file=sys.stderr)
        print(f"  {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for plugin in plugins.plugins:
        print(f"plugin {plugin.name} ({plugin.kind}) loaded from {plugin.entry.use}")
    if not _report_keys(config):
        return EXIT_CONFIG
    rooms = len(config.configured_rooms())
    print(
        f"{args.config_file or args.config}: OK — {len(config.intake)} intake room(s), "
        f"{len(config.routing.specialties)} specialty room(s), {rooms} room(s) in all, "
        f"{len(config.communities)} communit{'y' if len(config.communities) == 1 else 'ies'}, "
        f"language {config.language}"
    )
    return EXIT_OK


def _report_keys(config: Config) -> bool:
    """Say whether the cross-signing keys can be read (encryption on); False when they cannot."""
    from peerbot.matrix.crosssign import KeysMissing, KeyStoreError, key_file_info, load_keys

    enc = config.encryption
    if not enc.enabled:
        return True
    path = enc.key_file
    try:
        info = key_file_info(path)
        load_keys(path, enc.passphrase or "")
    except KeysMissing:
        print(f"encryption: no cross-signing keys yet: {path} will be created at first start")
        return True
    except KeyStoreError as exc:
        print(f"encryption.key_file: {exc}", file=sys.stderr)
        return False
    owner = info.user_id or "?"
    if info.user_id is not None and info.user_id != config.matrix.user_id:
        print(
            f"encryption.key_file: {path} holds the keys of {owner}, not {config.matrix.user_id}",
            file=sys.stderr,
        )
        return False
    print(f"encryption: cross-signing keys readable in {path} (master key {info.master_key})")
    return True


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


def cmd_import(args: argparse.Namespace) -> int:
    """Backfill the related-threads index from room history."""
    config = _load(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    setup_logging("WARNING")
    return asyncio.run(run_import(config, list(args.room or [])))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot."""
    config = _load(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    setup_logging(args.log_level or config.log_level)
    return asyncio.run(run_bot(config, reset_identity=args.reset_identity))


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a throwaway Synapse, rooms, users and the bot; post a few questions."""
    from peerbot.dev.demo import run_demo

    setup_logging("WARNING" if not args.verbose else "INFO")
    return asyncio.run(run_demo(Path(args.dir), once=args.once, language=args.language))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="peerbot", description="PeerBot: routes peer-help questions on Matrix."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bot")
    run.add_argument("--config", "-c", default="bot.yaml", help="path to bot.yaml")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument(
        "--reset-identity",
        action="store_true",
        help="encryption: make or upload new cross-signing keys when the stored ones are lost "
        "or do not match the server (every user sees the bot's identity change)",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate bot.yaml without connecting")
    check.add_argument("config_file", nargs="?", help="path to bot.yaml")
    check.add_argument("--config", "-c", default="bot.yaml", help=argparse.SUPPRESS)
    check.set_defaults(func=cmd_check_config)

    imp = sub.add_parser(
        "import-history", help="index past questions from room history (bot stopped)"
    )
    imp.add_argument("--config", "-c", default="bot.yaml", help="path to bot.yaml")
    imp.add_argument(
        "--room", action="append", help="a room alias or ID (repeatable; default: all configured)"
    )
    imp.set_defaults(func=cmd_import)

    demo = sub.add_parser("demo", help="try PeerBot on a throwaway local Synapse")
    demo.add_argument("--once", action="store_true", help="exit after the scripted part")
    demo.add_argument("--dir", default=".demo", help="where the demo keeps its files")
    demo.add_argument("--language", choices=["fr", "en"], default="fr")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peerbot`` command."""
    args = build_parser().parse_args(argv)
    os.umask(0o077)
    status = args.func(args)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
