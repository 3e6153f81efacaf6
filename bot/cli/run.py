"""CLI commands `illustfeed run` (the whole bot in one process) and `illustfeed retrain` (retrain now)."""

from __future__ import annotations

import argparse
import json
import sys

from bot.cli import open_store
from bot.cli.classifier import _classifier_errors_as_command_errors
from bot.config import Config
from bot.run.lock import DataDirLocked


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from bot.run.runner import run

    try:
        return run(config, announce=lambda text: print(f"illustfeed: {text}", flush=True))
    except DataDirLocked as error:
        print(f"illustfeed: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # typically the feed port is taken
        print(f"illustfeed: error: cannot start: {error}", file=sys.stderr)
        return 1


@_classifier_errors_as_command_errors
def cmd_retrain(args: argparse.Namespace, config: Config) -> int:
    from bot.retrain import run_retrain

    with open_store(config) as store:
        outcome = run_retrain(store, config, force=args.force)
    print(json.dumps(outcome.as_dict()) if args.json else outcome.report_text())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the bot: crawl, classify, retrain nightly, serve the feed, chat")
    run.set_defaults(handler=cmd_run)

    retrain = subparsers.add_parser("retrain", help="retrain the classifier on the human labels now")
    retrain.add_argument(
        "--force", action="store_true", help="train even with fewer new labels than [retrain] min_new_labels"
    )
    retrain.add_argument("--json", action="store_true", help="print the outcome as JSON")
    retrain.set_defaults(handler=cmd_retrain)
