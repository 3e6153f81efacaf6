"""`illustfeed review` driven through a pseudo-terminal: single keys (no Enter), undo, skip, empty queue, quit."""

from __future__ import annotations

import sys

import pexpect
import pytest

from storage import Store
from tests.chat_store import ingest_images, predict
from tests.conftest import cli_env, run_cli

pytestmark = pytest.mark.slow  # a subprocess that imports the app on a shared 2-core machine


def test_terminal_review_session(tmp_path):
    with Store.open(tmp_path / "data") as store:
        first, second, third = ingest_images(store, [1, 2, 3])
        predict(store, first, (0.6, 0.3, 0.1))
        predict(store, second, (0.3, 0.4, 0.3))
        predict(store, third, (0.25, 0.25, 0.5))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "bot.cli", "review", "--by", "tester"],
        cwd=str(tmp_path),
        env=cli_env(),
        encoding="utf-8",
        timeout=90,
    )
    try:
        child.expect_exact(f"Media {second} (3 waiting for review)")
        child.expect_exact("illustration 30%  screenshot 40%  photo 30%")
        child.expect_exact("Grad-CAM overlay of media")
        child.expect_exact("[q]uit > ")
        child.send("x")
        child.expect_exact("unknown key 'x'")
        child.send("i")  # a single key, no Enter: the terminal is in cbreak mode
        child.expect_exact(f"Media {second} labelled illustration.")
        child.expect_exact(f"Media {third} (2 waiting for review)")
        child.send("k")
        child.expect_exact(f"Media {third} skipped.")
        child.expect_exact(f"Media {first} (2 waiting for review)")  # the skipped one still waits, behind
        child.send("u")
        child.expect_exact(
            f"Undid your illustration on media {second}. It has no label now and is back in the review queue."
        )
        child.expect_exact(f"Media {second} (3 waiting for review)")
        child.send("P")
        child.expect_exact(f"Media {second} labelled photo.")
        child.send("s")
        child.expect_exact(f"Media {third} (1 waiting for review)")  # skipped items come back after the rest
        child.send("p")
        child.expect_exact("The review queue is empty.")
        child.expect_exact("[u]ndo [q]uit > ")
        child.send("i")
        child.expect_exact("unknown key 'i'")
        child.send("q")
        child.expect_exact("5 answers recorded.")  # i, k, p, s, p (the undo does not count back)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    with Store.open(tmp_path / "data") as store:
        rows = store.query(
            'SELECT media_id, label, "by", via, revoked_at IS NOT NULL AS revoked FROM labels ORDER BY id'
        )
        assert rows == [
            {"media_id": second, "label": "illustration", "by": "tester", "via": "cli", "revoked": 1},
            {"media_id": second, "label": "photo", "by": "tester", "via": "cli", "revoked": 0},
            {"media_id": first, "label": "screenshot", "by": "tester", "via": "cli", "revoked": 0},
            {"media_id": third, "label": "photo", "by": "tester", "via": "cli", "revoked": 0},
        ]
        assert store.scalar("SELECT state FROM review_queue WHERE media_id = ?", (third,)) == "done"


def test_label_command_uses_the_layer(tmp_path):
    with Store.open(tmp_path / "data") as store:
        (media_id,) = ingest_images(store, [4])
    result = run_cli("label", str(media_id), "photo", "--by", "ann", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"Media {media_id} labelled photo."
    result = run_cli("label", str(media_id), "illustration", "--by", "bob", cwd=tmp_path)
    assert "was already labelled photo by ann via cli" in result.stdout
    result = run_cli("label", str(media_id), "drawing", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'drawing'" in result.stderr
    with Store.open(tmp_path / "data") as store:
        assert [r["by"] for r in store.query('SELECT "by" FROM labels ORDER BY id')] == ["ann", "bob"]


def test_bot_without_token_exits_with_a_clear_message(tmp_path):
    result = run_cli("bot", cwd=tmp_path)
    assert result.returncode == 1
    assert "no Discord bot token: set the ILLUSTFEED_DISCORD_TOKEN environment variable" in result.stderr
