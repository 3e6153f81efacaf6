"""`illustfeed` command line: a thin shell over library functions; each feature registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from pathlib import Path

from bot.config import Config, ConfigError, load_config
from bot.ingest.ingest import ingest_source
from bot.sources.folder import FolderSource
from bot.status import format_status, store_status
from storage import Store, StoreError, storage_fault
from storage.errors import LOCKED, lock_holder_pid
from storage.store import DB_FILENAME

# Modules with `register(subparsers)`; each adds its subcommands. One line per feature.
COMMAND_MODULES: tuple[str, ...] = (
    "bot.cli.run",
    "bot.cli.chat",
    "bot.cli.classifier",
    "bot.cli.sources",
    "bot.cli.feed",
    "bot.cli.explain",
    "bot.cli.check",
)


class CommandError(Exception):
    """A command cannot do what was asked; the message is printed as `illustfeed: error: ...`."""


def open_store(config: Config, read_only: bool | None = False) -> Store:
    """The data dir's store; `read_only=None` for readers, which then work on a read-only data dir too."""
    return Store.open(config.data_path, read_only=read_only, busy_timeout_s=config.storage.busy_timeout_seconds)


def cmd_init(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        Path(config.sources.folder.path).mkdir(parents=True, exist_ok=True)
        print(f"store ready at {store.data_dir.resolve()} (inbox: {Path(config.sources.folder.path).resolve()})")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise CommandError(f"import: {folder} is not a directory")
    source = FolderSource(
        folder,
        default_account=args.account or folder.resolve().name,
        account=args.account,
        max_bytes=config.ingest.max_bytes,
    )
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
    with open_store(config, read_only=None) as store:
        status = store_status(store)
    print(json.dumps(status) if args.json else format_status(status))
    return 0


CONFIG_HELP = "TOML config file (default: built-in defaults)"
DEBUG_HELP = "print the traceback of an error, not only its one-line message"


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: accepts --config after the command name too, without resetting one given before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illustfeed", description="Turn followed accounts' images into a feed of illustrations."
    )
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)

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
        return EXIT_USAGE
    configure_logging(config.log_level)
    try:
        return int(args.handler(args, config) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        message, code = describe_error(error, config)
        print(f"illustfeed: {message}", file=sys.stderr)
        return code


EXIT_USAGE = 2  # bad usage or config, as argparse's own usage errors
EXIT_ERROR = 1  # the command refused (unknown media, bad input, a file that cannot be read)
EXIT_BUG = 70  # EX_SOFTWARE: an error nobody anticipated (run again with --debug for the traceback)


def describe_error(error: Exception, config: Config) -> tuple[str, int]:
    """The one line printed for an error and the exit code: storage faults first (they say what to do)."""
    fault = storage_fault(error, config.data_path / DB_FILENAME, busy_timeout_s=config.storage.busy_timeout_seconds)
    if fault is None and error.__cause__ is not None:  # a library's own error wrapping a disk fault
        fault = storage_fault(
            error.__cause__, config.data_path / DB_FILENAME, busy_timeout_s=config.storage.busy_timeout_seconds
        )
    if fault is not None:
        if fault.kind == LOCKED and fault.holder_pid is None:
            fault.holder_pid = lock_holder_pid(config.data_path)
        return str(fault), fault.exit_code
    if isinstance(error, (CommandError, StoreError, ConfigError, OSError)):
        return f"error: {error}", EXIT_ERROR
    return (
        f"unexpected error: {type(error).__name__}: {error} (run the command again with --debug for the traceback)"
    ), EXIT_BUG
