"""The illustration feed: web gallery, Atom feed and JSON API served from the store (issue 7)."""

from bot.feed.server import create_app, serve_until_stopped, server_url, start_feed_server

__all__ = ["create_app", "serve_until_stopped", "server_url", "start_feed_server"]
