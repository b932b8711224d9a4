"""Command line: ``peerbot run | check-config | doctor | import-history | demo``.

Exit 2 on a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from peerbot.bot.runner import EXIT_CONFIG, EXIT_OK, load_plugin_set, run_bot, run_import
from peerbot.config import Config, ConfigError, load_config
from peerbot.logs import setup_logging

__all__ = ["main"]


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


def cmd_import(args: argparse.Namespace) -> int:
    """Backfill the related-threads index from room history."""
    config = _load(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    setup_logging("WARNING", config.log_format)
    return asyncio.run(run_import(config, list(args.room or [])))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot."""
    config = _load(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    setup_logging(args.log_level or config.log_level, config.log_format)
    return asyncio.run(run_bot(config, reset_identity=args.reset_identity))


def cmd_doctor(args: argparse.Namespace) -> int:
    """Log in and check rooms, power levels, encryption, plugins, database and keys."""
    from peerbot.bot.doctor import run_doctor

    config = _load(Path(args.config_file or args.config))
    if config is None:
        return EXIT_CONFIG
    setup_logging("WARNING", config.log_format)
    return asyncio.run(run_doctor(config))


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

    doctor = sub.add_parser(
        "doctor",
        help="log in and check rooms, power levels, encryption, plugins, database and keys "
        "(exit 0 all ok, 1 problems, 2 bad config)",
    )
    doctor.add_argument("config_file", nargs="?", help="path to bot.yaml")
    doctor.add_argument("--config", "-c", default="bot.yaml", help="path to bot.yaml")
    doctor.set_defaults(func=cmd_doctor)

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
