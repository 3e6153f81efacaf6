"""`illustfeed serve`: run the feed web server (gallery, Atom, JSON API, review page) until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot.chat.web import EXTENSIONS
from bot.config import Config
from bot.feed import serve_until_stopped


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    def announce(url: str) -> None:
        print(f"serving the feed on {url} (Ctrl-C stops)", flush=True)

    try:
        asyncio.run(serve_until_stopped(config, args.host, args.port, on_started=announce, extensions=EXTENSIONS))
    except OSError as error:  # address in use, or not one of this machine's
        print(
            f"illustfeed: error: serve: cannot listen on {args.host or config.feed.host}:"
            f"{config.feed.port if args.port is None else args.port}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve the gallery, Atom feed and JSON API over HTTP")
    serve.add_argument("--host", help="address to bind (default: [feed] host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: [feed] port, 8080; 0 picks a free one)")
    serve.set_defaults(handler=cmd_serve)
