"""Where posts come from: the local folder and the social networks, each one module yielding `Post` records.

`NETWORKS` is the registry of network sources. The crawl, `illustfeed follow`, `/follow` in chat, the CLI
and Discord help all read it, so a new network is its module (a `NetworkSource` class and a
`canonical_handle(handle, default_instance)` function) plus one entry here and its `[sources.<name>]`
section in `bot/config.py`. Entries name their module as a string: importing this package must stay cheap
(the X module loads tweepy).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Network:
    name: str  # also the `[sources.<name>]` config section and `accounts.source`
    module: str  # defines `SOURCE_CLASS` and `canonical_handle`
    handle_help: str  # how a user writes an account of this network
    paid_reads: bool = False  # API reads are paid: counted against the section's `daily_read_budget`

    def source_class(self) -> type:
        return importlib.import_module(self.module).SOURCE_CLASS

    def canonical_handle(self) -> Callable[[str, str], str]:
        """`(handle, default_instance) -> handle as stored`; raises ValueError naming what is wrong."""
        return importlib.import_module(self.module).canonical_handle

    def settings(self, sources_config: Any) -> Any:
        return getattr(sources_config, self.name)


NETWORKS: dict[str, Network] = {
    "x": Network("x", "bot.sources.x", "name (without @)", paid_reads=True),
    "bluesky": Network("bluesky", "bot.sources.bluesky", "name.bsky.social or did:plc:..."),
    "mastodon": Network("mastodon", "bot.sources.mastodon", "@user@instance"),
}
NETWORK_NAMES: tuple[str, ...] = tuple(NETWORKS)
HANDLE_HELP = "; ".join(f"{network.name}: {network.handle_help}" for network in NETWORKS.values())
