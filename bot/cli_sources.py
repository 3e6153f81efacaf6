"""`illustfeed crawl`: run every enabled source once and print what it stored (scheduling is `illustfeed run`)."""
from __future__ import annotations

import argparse
import json

from bot.config import Config
from bot.crawl import crawl_once
from storage import Store


def cmd_crawl(args: argparse.Namespace, config: Config) -> int:
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config)
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    # Non-zero when a source could not run (credentials, budget), so cron and scripts notice.
    return 1 if any(run.error for run in summary.runs) else 0


def register(subparsers) -> None:
    parents = getattr(subparsers, "common_parents", [])
    crawl = subparsers.add_parser("crawl", parents=parents,
                                  help="read new posts of every enabled source once and store their images")
    crawl.add_argument("--once", action="store_true",
                       help="one pass, then exit (the only mode here; `illustfeed run` crawls on an interval)")
    crawl.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    crawl.set_defaults(handler=cmd_crawl)
