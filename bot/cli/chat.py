"""`illustfeed review`, `illustfeed label` and `illustfeed bot`: shells over the terminal chat and the Discord bot."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from bot.app import ActiveModelExplainer
from bot.chat import commands
from bot.chat.terminal import review_loop, terminal_actor
from bot.cli import CommandError, open_store
from bot.config import Config
from storage import LABELS


def cmd_review(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        answered = review_loop(store, terminal_actor(args.by), open_overlay=args.open)
    print(f"{answered} answers recorded.")
    return 0


def cmd_label(args: argparse.Namespace, config: Config) -> int:
    with open_store(config) as store:
        reply = commands.label(store, terminal_actor(args.by), args.media, args.label)
    if not reply.ok:
        print(f"illustfeed: error: {reply.text}", file=sys.stderr)
        return 1
    print(reply.text)
    return 0


def cmd_bot(args: argparse.Namespace, config: Config) -> int:
    import aiohttp
    import discord

    from bot.chat.discord_bot import run_bot

    if not config.discord.token:
        raise CommandError(
            "no Discord bot token: set the ILLUSTFEED_DISCORD_TOKEN environment variable "
            "or [discord] token in the config file"
        )
    with open_store(config) as store:
        try:
            asyncio.run(run_bot(config.discord, store, explainer=ActiveModelExplainer(config), config=config))
        except discord.LoginFailure as error:
            raise CommandError(f"Discord refused the bot token ({error}); check ILLUSTFEED_DISCORD_TOKEN") from None
        except (discord.HTTPException, aiohttp.ClientError) as error:
            raise CommandError(f"cannot reach Discord: {error}") from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    who = {
        "default": getpass.getuser(),
        "help": "who is labelling, recorded in the label history (default: your login name)",
    }

    review = subparsers.add_parser("review", help="answer the review queue one key at a time (most uncertain first)")
    review.add_argument("--by", **who)
    review.add_argument("--open", action="store_true", help="open each overlay in the default image viewer")
    review.set_defaults(handler=cmd_review)

    label = subparsers.add_parser("label", help="record a human label for a media")
    label.add_argument("media", help="media id, or sha256 (prefix) of the stored file")
    label.add_argument("label", choices=LABELS)
    label.add_argument("--by", **who)
    label.set_defaults(handler=cmd_label)

    bot = subparsers.add_parser("bot", help="run the Discord bot alone (needs a token)")
    bot.set_defaults(handler=cmd_bot)
