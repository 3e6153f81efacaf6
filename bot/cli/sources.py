"""`illustfeed crawl|follow|unfollow|sources`: thin shells over bot.ingest.crawl and bot.sources.follows."""

from __future__ import annotations

import argparse
import json

from bot.cli import CommandError, open_store
from bot.config import Config
from bot.ingest.crawl import crawl_once
from bot.sources import HANDLE_HELP, NETWORK_NAMES
from bot.sources.follows import FollowError, follow, list_sources, unfollow


def cmd_crawl(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        summary = crawl_once(store, config)
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    # Non-zero when a source could not run (credentials, budget), so cron and scripts notice.
    return 1 if any(run.error for run in summary.runs) else 0


def cmd_follow(args: argparse.Namespace, config: Config) -> int:
    change = follow if args.command == "follow" else unfollow
    with open_store(config) as store:
        try:
            result = change(store, args.source, args.handle, config.sources.mastodon.instance)
        except FollowError as error:
            raise CommandError(str(error)) from None
    verb = "following" if args.command == "follow" else "no longer following"
    note = "" if result["was_followed"] == (args.command == "unfollow") else " (unchanged)"
    print(f"{args.source}: {verb} {result['handle']}{note}")
    return 0


def cmd_sources(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        listing = list_sources(store, config)
    if args.json:
        print(json.dumps(listing))
        return 0
    for item in listing:
        state = "enabled" if item["enabled"] else "disabled"
        if item["source"] == "folder":
            print(f"folder ({state}): {item['path']}, {item['accounts']} accounts")
            continue
        print(
            f"{item['source']} ({state}): config {', '.join(item['configured_accounts']) or '-'}; "
            f"following_of {item['following_of'] or '-'}; followed {', '.join(item['followed']) or '-'}; "
            f"unfollowed {', '.join(item['unfollowed']) or '-'}; reads today {item['reads_today']}"
        )
    return 0


def register(subparsers) -> None:
    crawl = subparsers.add_parser("crawl", help="read new posts of every enabled source once and store their images")
    crawl.add_argument(
        "--once",
        action="store_true",
        help="one pass, then exit (the only mode here; `illustfeed run` crawls on an interval)",
    )
    crawl.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    crawl.set_defaults(handler=cmd_crawl)
    for name, help_text in (
        ("follow", "crawl this account from now on (in addition to the config lists)"),
        ("unfollow", "stop crawling this account, even if a config list names it"),
    ):
        command = subparsers.add_parser(name, help=help_text)
        command.add_argument("source", choices=NETWORK_NAMES)
        command.add_argument("handle", help=HANDLE_HELP)
        command.set_defaults(handler=cmd_follow)
    sources = subparsers.add_parser("sources", help="what each source crawls")
    sources.add_argument("--json", action="store_true", help="one JSON array")
    sources.set_defaults(handler=cmd_sources)
