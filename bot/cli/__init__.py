"""`illustfeed` command line: a thin shell over library functions; each feature registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from bot.config import Config, ConfigError, load_config
from bot.ingest.ingest import ingest_source
from bot.sources.folder import FolderSource
from bot.status import format_status, store_status
from storage import Store, StoreError

# Modules with `register(subparsers)`; each adds its subcommands. One line per feature.
COMMAND_MODULES: tuple[str, ...] = (
    "bot.cli.run",
    "bot.cli.chat",
    "bot.cli.classifier",
    "bot.cli.sources",
    "bot.cli.feed",
    "bot.cli.explain",
)


class CommandError(Exception):
    """A command cannot do what was asked; the message is printed as `illustfeed: error: ...`."""


def open_store(config: Config) -> Store:
    return Store.open(config.data_path)


def cmd_init(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        Path(config.sources.folder.path).mkdir(parents=True, exist_ok=True)
        print(f"store ready at {store.data_dir.resolve()} (inbox: {Path(config.sources.folder.path).resolve()})")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise CommandError(f"import: {folder} is not a directory")
    source = FolderSource(folder, default_account=args.account or folder.resolve().name, account=args.account,
                          max_bytes=config.ingest.max_bytes)
    with open_store(config) as store:
        summary = ingest_source(store, source, config.ingest, progress=config.ingest.progress and not args.json)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(", ".join(f"{key.replace('_', ' ')} {value}" for key, value in summary.as_dict().items()))
        for problem in summary.problems:
            print(f"  skipped {problem}")
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        status = store_status(store)
    print(json.dumps(status) if args.json else format_status(status))
    return 0


CONFIG_HELP = "TOML config file (default: built-in defaults)"


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: accepts --config after the command name too, without resetting one given before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="illustfeed",
                                     description="Turn followed accounts' images into a feed of illustrations.")
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=CommandParser)

    init = subparsers.add_parser("init", help="create the data dir, database and inbox")
    init.set_defaults(handler=cmd_init)

    imp = subparsers.add_parser("import", help="import every image under a folder")
    imp.add_argument("dir", help="folder; each subfolder is an account unless --account is given")
    imp.add_argument("--account", help="attribute every file to this account")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(handler=cmd_import)

    status = subparsers.add_parser("status", help="counts by label, queue, active model")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=cmd_status)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# Libraries that log request headers (credentials included) at DEBUG; they stay at INFO or above.
CHATTY_LOGGERS = ("tweepy", "urllib3", "requests_oauthlib", "oauthlib", "discord.http")


def configure_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name.upper())
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"illustfeed: config error: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        return int(args.handler(args, config) or 0)
    except (CommandError, StoreError, ConfigError, OSError) as error:
        print(f"illustfeed: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

