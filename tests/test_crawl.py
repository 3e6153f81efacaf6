"""crawl_once over the folder source and the `illustfeed crawl --once` command."""

from __future__ import annotations

import json

from bot.cli import main
from storage import Store
from tests.sources_support import make_jpeg


def write_config(tmp_path, extra: str = "") -> str:
    path = tmp_path / "illustfeed.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[ingest]\nprogress = false\n'
        f'[sources.folder]\npath = "{tmp_path / "inbox"}"\n{extra}'
    )
    return str(path)


def test_crawl_once_command_imports_the_inbox_and_reports(tmp_path, capsys):
    (tmp_path / "inbox" / "mika").mkdir(parents=True)
    (tmp_path / "inbox" / "mika" / "a.jpg").write_bytes(make_jpeg(1))
    (tmp_path / "inbox" / "mika" / "b.jpg").write_bytes(make_jpeg(2))
    (tmp_path / "inbox" / "mika" / "notes.txt").write_text("not an image")
    config = write_config(tmp_path)
    assert main(["crawl", "--once", "--json", "--config", config]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["media_new"], summary["rejected"], summary["accounts"]) == (2, 1, 1)
    assert [run["source"] for run in summary["sources"]] == ["folder"]  # X has nothing to follow: silent
    assert main(["crawl", "--once", "--config", config]) == 0
    text = capsys.readouterr().out
    assert text.startswith("folder: 1 accounts (0 deferred), 0 new posts, 0 new media")
    with Store.open(tmp_path / "data") as store:
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == 2


def test_crawl_names_missing_x_credentials_and_not_the_unused_default_inbox(tmp_path, capsys):
    config = write_config(tmp_path, '[sources.x]\naccounts = ["alice"]\n')
    assert main(["crawl", "--once", "--config", config]) == 1  # a source could not run
    text = capsys.readouterr().out
    # Someone following network accounts never created the inbox: no warning about it on every crawl.
    assert "ILLUSTFEED_X_BEARER_TOKEN" in text and "does not exist" not in text


def test_a_missing_inbox_is_named_when_nothing_else_is_followed(tmp_path, capsys):
    assert main(["crawl", "--once", "--config", write_config(tmp_path)]) == 0
    assert f"folder {tmp_path / 'inbox'} does not exist" in capsys.readouterr().out
