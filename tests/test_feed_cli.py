"""`illustfeed serve` as a real process, the [feed] config section, and the feed's schema migration."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import ConfigError, parse_config
from storage import Store
from storage.schema import FEED_V3, MIGRATIONS
from tests.test_feed_fixtures import illustrations, predict

REPO_ROOT = Path(__file__).resolve().parents[1]


def serve_process(config_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--config", str(config_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        illustrations(store, 2)
    config_path = tmp_path / "config.toml"
    config_path.write_text(f'data_dir = "{data_dir}"\n[feed]\nport = 8080\n', encoding="utf-8")
    process = serve_process(config_path, "--port", "0")
    try:
        announced = process.stdout.readline()
        assert "serving the feed on http://127.0.0.1:" in announced, process.stderr.read()
        url = announced.split(" on ")[1].split()[0]
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert health["ok"] is True and health["feed"] == 2


def test_serve_on_a_busy_port_fails_with_a_clear_error(tmp_path, capsys):
    config_path = tmp_path / "config.toml"
    config_path.write_text(f'data_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        exit_code = main(["serve", "--config", str(config_path), "--port", str(port)])
    assert exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_feed_config_defaults_and_bad_values_name_the_key():
    feed = parse_config({}, environ={}).feed
    assert (feed.host, feed.port, feed.rule) == ("127.0.0.1", 8080, "human_then_confident")
    assert parse_config({}, environ={"ILLUSTFEED_FEED_HOST": "0.0.0.0"}).feed.host == "0.0.0.0"
    for table, key in [
        ({"rule": "everything"}, "feed.rule"),
        ({"port": "80"}, "feed.port"),
        ({"port": 70000}, "feed.port"),
        ({"thumbnail_format": "gif"}, "feed.thumbnail_format"),
        ({"public_url": "javascript:alert(1)"}, "feed.public_url"),
        ({"page_size": 0}, "feed.page_size"),
        ({"colour": "red"}, "feed.colour"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"feed": table}, environ={})


def test_migration_fills_media_verdict_from_a_database_made_before_it(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "illustfeed.db")
    earlier = MIGRATIONS[: MIGRATIONS.index(FEED_V3)]
    conn.executescript("BEGIN;\n" + "\n".join(earlier) + f"\nPRAGMA user_version = {len(earlier)};\nCOMMIT;")
    conn.executescript(
        "INSERT INTO media (id, sha256, status, first_seen_at) VALUES (1, 'a', 'ok', 't'), (2, 'b', 'ok', 't'),"
        " (3, 'c', 'ok', 't');"
        "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo, label,"
        " confidence, margin, borderline, created_at) VALUES"
        " (1, 'v1', .8, .1, .1, 'illustration', .8, .7, 0, 't'), (1, 'v2', .1, .8, .1, 'screenshot', .8, .7, 0, 't'),"
        " (2, 'v1', .5, .4, .1, 'illustration', .5, .1, 1, 't');"
        "INSERT INTO labels (media_id, label, \"by\", via, at) VALUES (2, 'photo', 'owner', 'cli', 't');"
    )
    conn.close()
    with Store.open(data_dir) as store:
        verdicts = store.query(
            "SELECT media_id, human_label, model_label, final_label, any_label FROM media_verdict ORDER BY media_id"
        )
        # The triggers keep it current after the migration too.
        predict(store, 3, "photo", borderline=True)
        store.execute("UPDATE labels SET revoked_at = 't2' WHERE media_id = 2")
        after = store.query("SELECT media_id, final_label, any_label FROM media_verdict ORDER BY media_id")
    assert verdicts == [
        {
            "media_id": 1,
            "human_label": None,
            "model_label": "screenshot",
            "final_label": "screenshot",
            "any_label": "screenshot",
        },
        {
            "media_id": 2,
            "human_label": "photo",
            "model_label": "illustration",
            "final_label": "photo",
            "any_label": "photo",
        },
    ]
    assert after == [
        {"media_id": 1, "final_label": "screenshot", "any_label": "screenshot"},
        {"media_id": 2, "final_label": None, "any_label": "illustration"},
        {"media_id": 3, "final_label": None, "any_label": "photo"},
    ]
