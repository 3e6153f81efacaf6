"""bot/sources/follows.py and the follow/unfollow/sources commands: hand-made follows kept in the accounts table."""

from __future__ import annotations

import json

import pytest

from bot.cli import main
from bot.config import parse_config
from bot.sources.follows import FollowError, canonical_handle, follow, list_sources, unfollow
from storage import Store


def test_handles_are_canonical_per_network():
    assert canonical_handle("x", "@Some_Artist") == "some_artist"
    assert canonical_handle("bluesky", "@Mika") == "mika.bsky.social"
    assert canonical_handle("bluesky", "ren.Example.com") == "ren.example.com"
    assert canonical_handle("mastodon", "@Artist@Mastodon.Social") == "artist@mastodon.social"
    assert canonical_handle("mastodon", "artist", mastodon_instance="mastodon.example") == "artist@mastodon.example"
    with pytest.raises(FollowError, match="unknown source 'tumblr'"):
        canonical_handle("tumblr", "someone")
    with pytest.raises(FollowError, match="1-15 letters"):
        canonical_handle("x", "this-is-not-valid")
    with pytest.raises(FollowError, match="user@instance"):
        canonical_handle("mastodon", "artist")


def test_follow_unfollow_and_list(tmp_path):
    config = parse_config({"sources": {"bluesky": {"accounts": ["mika"]}}}, environ={})
    with Store.open(tmp_path / "data") as store:
        assert follow(store, "mastodon", "@artist@mastodon.social") == {
            "source": "mastodon",
            "handle": "artist@mastodon.social",
            "was_followed": False,
        }
        assert follow(store, "mastodon", "artist@Mastodon.social")["was_followed"] is True
        assert unfollow(store, "bluesky", "mika")["was_followed"] is False
        listing = {item["source"]: item for item in list_sources(store, config)}
        assert listing["mastodon"]["followed"] == ["artist@mastodon.social"]
        assert listing["bluesky"]["configured_accounts"] == ["mika"]
        assert listing["bluesky"]["unfollowed"] == ["mika.bsky.social"]
        assert json.dumps(listing)  # plain data, ready for chat
        row = store.query_one("SELECT followed, followed_via FROM accounts WHERE handle = 'artist@mastodon.social'")
        assert (row["followed"], row["followed_via"]) == (1, "command")


def test_follow_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ILLUSTFEED_DATA_DIR", str(tmp_path / "data"))
    assert main(["follow", "bluesky", "mika"]) == 0
    assert capsys.readouterr().out.strip() == "bluesky: following mika.bsky.social"
    assert main(["unfollow", "bluesky", "mika.bsky.social"]) == 0
    assert capsys.readouterr().out.strip() == "bluesky: no longer following mika.bsky.social"
    assert main(["follow", "x", "not a handle"]) == 1
    assert "1-15 letters" in capsys.readouterr().err
    assert main(["sources", "--json"]) == 0
    listing = {item["source"]: item for item in json.loads(capsys.readouterr().out)}
    assert listing["bluesky"]["unfollowed"] == ["mika.bsky.social"]
