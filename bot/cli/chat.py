"""`illustfeed review`, `illustfeed label` and `illustfeed bot`: the chat command layer behind the terminal."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import webbrowser
from contextlib import contextmanager
from typing import Iterator, TextIO

from bot.chat import commands
from bot.chat.commands import ActiveModelExplainer, Actor, Reply
from bot.cli import CommandError, open_store
from bot.config import Config
from storage import LABELS, Store

QUIT, UNDO = "q", "u"
REVIEW_PROMPT = "[i]llustration [s]creenshot [p]hoto s[k]ip [u]ndo [q]uit > "
EMPTY_PROMPT = "[u]ndo [q]uit > "


def terminal_actor(by: str) -> Actor:
    # Whoever runs the terminal owns the data dir: the Discord allow-lists do not apply here.
    return Actor(by=by, via="cli", name=by, authorised=True)


def print_reply(reply: Reply, out: TextIO = sys.stdout) -> None:
    print(reply.text, file=out if reply.ok else sys.stderr)
    for attachment in reply.attachments:
        print(f"  {attachment.description}: {attachment.path}", file=out)


@contextmanager
def single_keys(stream: TextIO) -> Iterator[None]:
    """Unbuffered key presses on a terminal (no Enter needed); a pipe is read as it is."""
    if not stream.isatty():
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(stream.fileno())
    try:
        tty.setcbreak(stream.fileno())
        yield
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)


def read_key(prompt: str, stream: TextIO = sys.stdin) -> str:
    """One key, lower-cased; end of input counts as quit."""
    print(prompt, end="", flush=True)
    if stream.isatty():
        key = stream.read(1)
    else:
        line = stream.readline()
        key = line.strip()[:1] if line else ""
    print(key if key.strip() else "")
    return key.lower() or QUIT


def review_loop(store: Store, actor: Actor, open_overlay: bool = False) -> int:
    """Show the next item, take a key, repeat. Returns how many answers were recorded."""
    keys = {choice_key: answer for choice_key, _text, answer in commands.REVIEW_CHOICES}
    answered = 0
    reply = commands.next_review(store)
    with single_keys(sys.stdin):
        while True:
            print_reply(reply)
            if open_overlay and reply.attachments:
                webbrowser.open(reply.attachments[-1].path.as_uri())
            item = reply.item
            prompt, valid = (REVIEW_PROMPT, {*keys, UNDO, QUIT}) if item is not None else (EMPTY_PROMPT, {UNDO, QUIT})
            key = read_key(prompt)
            while key not in valid:
                key = read_key(f"unknown key {key!r}; {prompt}")
            if key == QUIT:
                return answered
            if key == UNDO:
                print_reply(commands.undo(store, actor))
                print()
                reply = commands.next_review(store)
                continue
            reply = commands.review_answer(store, actor, item.media_id, keys[key])
            answered += reply.ok
            if not reply.ok:
                print_reply(reply)
                reply = commands.next_review(store)
            print()


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
        raise CommandError("no Discord bot token: set the ILLUSTFEED_DISCORD_TOKEN environment variable "
                           "or [discord] token in the config file")
    with open_store(config) as store:
        try:
            asyncio.run(run_bot(config.discord, store, explainer=ActiveModelExplainer(config), config=config))
        except discord.LoginFailure as error:
            raise CommandError(f"Discord refused the bot token ({error}); check ILLUSTFEED_DISCORD_TOKEN") from None
        except (discord.HTTPException, aiohttp.ClientError) as error:
            raise CommandError(f"cannot reach Discord: {error}") from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    who = {"default": getpass.getuser(), "help": "who is labelling, recorded in the label history "
                                                "(default: your login name)"}

    review = subparsers.add_parser("review",
                                   help="answer the review queue one key at a time (most uncertain first)")
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
