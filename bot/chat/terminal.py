"""The terminal chat client: the review queue one key at a time, over the same commands as Discord."""

from __future__ import annotations

import sys
import webbrowser
from contextlib import contextmanager
from typing import Iterator, TextIO

from bot.chat import commands
from bot.chat.commands import Actor, Reply
from storage import Store

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
