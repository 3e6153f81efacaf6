"""`illustfeed check`: finds a deleted, a truncated and an orphan blob and a lost overlay by name; `--repair` plus
a re-import of the originals heals all of them. Also: classify remakes a lost overlay, and the feed server never
answers 200 with bytes of the wrong size."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.feed.server import server_url, start_feed_server
from classifier.versions import register_model
from storage import Store
from storage.errors import EXIT_DAMAGED, EXIT_DISK_FULL
from tests.storage_faults import fail_nth, inject_sqlite_fault, integrity
from tests.test_storage_cli import assert_one_blob_per_row, make_inbox, run
from tests.tiny_model import tiny_classifier


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    # Every call borderline: each classified media is queued for review with a Grad-CAM overlay.
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[ingest]\nprogress = false\n'
        "[classifier]\nprogress = false\nborderline_confidence = 1.01\n"
    )
    return path


def register_tiny_model(data_dir: Path) -> str:
    """A reduced-width classifier (untrained head: its calls do not matter here, its overlays do)."""
    model = tiny_classifier("check-test")
    with Store.open(data_dir) as store:
        register_model(store, model)
    return model.version


def blob_of(data_dir: Path, media_id: int) -> tuple[Path, str]:
    with Store.open(data_dir, read_only=True) as store:
        row = store.media(media_id)
        return store.blobs.path(row["sha256"], row["ext"]), row["sha256"]


def overlay_of(data_dir: Path, media_id: int) -> Path:
    with Store.open(data_dir, read_only=True) as store:
        digest = store.scalar("SELECT overlay_sha256 FROM predictions WHERE media_id = ?", (media_id,))
        return store.derived.path(digest, "png")


@pytest.mark.slow
def test_check_names_four_kinds_of_damage_and_repair_plus_reimport_heals_them(tmp_path, capsys):
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    inbox = make_inbox(tmp_path, 6)
    assert run(capsys, config, "import", str(inbox))[0] == 0
    version = register_tiny_model(data_dir)
    lost_before_classify, lost_sha = blob_of(data_dir, 6)
    lost_before_classify.unlink()
    code, out, err = run(capsys, config, "classify", "--model", version, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classified"] == 5 and summary["overlays"] == 5 and summary["failed"] == 1
    with Store.open(data_dir, read_only=True) as store:  # what classify does to a media whose file is gone
        assert store.media(6)["status"] == "rejected"

    deleted, deleted_sha = blob_of(data_dir, 1)
    deleted.unlink()
    truncated, truncated_sha = blob_of(data_dir, 2)
    truncated.write_bytes(truncated.read_bytes()[:10])
    orphan = data_dir / "media" / "ab" / "cd" / ("abcd" + "e" * 60 + ".png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left behind by something")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))  # old enough not to be a write in progress
    lost_overlay = overlay_of(data_dir, 3)
    lost_overlay.unlink()
    _, overlay_media_sha = blob_of(data_dir, 3)

    code, out, err = run(capsys, config, "check")
    assert code == EXIT_DAMAGED, err
    assert f"problem: missing file: media 1 ({deleted_sha[:12]}), its file is gone, {deleted}" in out
    assert f"problem: wrong size: media 2 ({truncated_sha[:12]}), 10 bytes, the row says" in out
    assert f"problem: orphan file: no media row refers to it, {orphan}" in out
    assert f"problem: missing overlay: media 3 ({overlay_media_sha[:12]}), queued for review without" in out
    assert f"problem: missing file: media 6 ({lost_sha[:12]})" in out
    assert "5 problems remain" in out

    code, out, err = run(capsys, config, "check", "--repair", "--json")
    report = json.loads(out)
    assert code == EXIT_DAMAGED  # the originals are not back yet
    assert sorted((p["kind"], p["media_id"]) for p in report["problems"]) == [
        ("missing file", 1),
        ("missing file", 2),
        ("missing file", 6),
    ]
    assert not orphan.exists() and lost_overlay.exists()
    assert "made the overlay of media 3 again" in report["repaired"]
    with Store.open(data_dir, read_only=True) as store:
        assert store.media(6)["status"] == "ok"  # rejected only because its file was missing
        assert store.damaged_count() == 3
    code, out, _err = run(capsys, config, "status")
    assert "damaged: 3 media" in out

    code, out, err = run(capsys, config, "import", str(inbox))
    assert code == 0, err
    assert "restored 3" in out
    code, out, err = run(capsys, config, "check", "--read-data")
    assert code == 0, out
    assert "no problems" in out
    assert_one_blob_per_row(data_dir, 6)
    code, out, _err = run(capsys, config, "status")
    assert "damaged" not in out
    code, out, err = run(capsys, config, "classify", "--model", version, "--json")
    assert code == 0 and json.loads(out)["classified"] == 1  # the un-rejected media is scored now


@pytest.mark.slow
def test_classify_remakes_an_overlay_lost_after_it_was_stored(tmp_path, capsys):
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 2)))[0] == 0
    version = register_tiny_model(data_dir)
    assert run(capsys, config, "classify", "--model", version)[0] == 0
    lost = overlay_of(data_dir, 2)
    lost.unlink()
    code, out, err = run(capsys, config, "classify", "--model", version, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classified"] == 0 and summary["overlays_restored"] == 1
    assert overlay_of(data_dir, 2).is_file()


def test_server_never_serves_bytes_of_the_wrong_size_and_healthz_says_what_is_wrong(tmp_path, capsys):
    import asyncio

    import aiohttp

    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 3)))[0] == 0
    truncated, truncated_sha = blob_of(data_dir, 1)
    truncated.write_bytes(truncated.read_bytes()[:10])
    deleted, deleted_sha = blob_of(data_dir, 2)
    deleted.unlink()
    _, intact_sha = blob_of(data_dir, 3)

    async def scenario() -> dict:
        runner = await start_feed_server(load_config(config), host="127.0.0.1", port=0)
        answers = {}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(server_url(runner) + "/healthz") as response:
                    answers["health before"] = await response.json()
                for name, path in (
                    ("truncated", f"/media/{truncated_sha}"),
                    ("deleted", f"/media/{deleted_sha}"),
                    ("truncated thumb", f"/thumb/{truncated_sha}"),
                    ("intact", f"/media/{intact_sha}"),
                    ("intact thumb", f"/thumb/{intact_sha}"),
                ):
                    async with session.get(server_url(runner) + path) as response:
                        answers[name] = (
                            response.status,
                            response.headers.get("Cache-Control"),
                            await response.text(errors="replace"),
                        )
                async with session.get(server_url(runner) + "/healthz") as response:
                    answers["health after"] = (response.status, await response.json())
        finally:
            await runner.cleanup()
        return answers

    answers = asyncio.run(scenario())
    assert answers["health before"]["storage"] == "ok"
    status, cache, text = answers["truncated"]
    assert (status, cache) == (410, "no-store") and "the stored file is damaged (10 bytes of" in text
    status, cache, text = answers["deleted"]
    assert (status, cache) == (404, "no-store") and "the stored file is missing" in text
    assert answers["truncated thumb"][:2] == (410, "no-store")
    assert answers["intact"][0] == 200 and answers["intact thumb"][0] == 200
    status, health = answers["health after"]
    assert status == 200 and health["ok"] and health["storage"] == "damaged 2"  # what the server met, recorded


@pytest.mark.slow
def test_classify_cut_by_a_full_disk_says_so_and_the_same_command_completes(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 3)))[0] == 0
    version = register_tiny_model(data_dir)
    inject_sqlite_fault(monkeypatch, fail_nth(1, lambda sql: sql == "COMMIT"))  # the first batch of results
    code, _out, err = run(capsys, config, "classify", "--model", version)
    assert code == EXIT_DISK_FULL
    assert err == (
        f"illustfeed: disk full writing {data_dir / 'illustfeed.db'}; free space and run the same "
        "command again (nothing is lost)\n"
    )
    monkeypatch.undo()
    with Store.open(data_dir, read_only=True) as store:
        assert store.scalar("SELECT COUNT(*) FROM predictions") == 0
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == 3
    assert integrity(data_dir / "illustfeed.db") == "ok"
    code, out, err = run(capsys, config, "classify", "--model", version, "--json")
    assert code == 0, err
    assert json.loads(out)["classified"] == 3 and json.loads(out)["overlays"] == 3
    assert run(capsys, config, "check")[0] == 0  # the overlays rendered before the failed commit are referenced now


def test_thumbnails_fall_back_to_the_original_when_the_derived_folder_cannot_be_written(tmp_path, capsys):
    import asyncio

    import aiohttp

    from tests.storage_faults import read_only_view

    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 1)))[0] == 0
    blob, sha = blob_of(data_dir, 1)
    (data_dir / "derived").mkdir()
    with read_only_view(data_dir / "derived", data_dir / "derived"):

        async def scenario():
            runner = await start_feed_server(load_config(config), host="127.0.0.1", port=0)
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{server_url(runner)}/thumb/{sha}") as response:
                        thumb = (response.status, response.headers.get("Cache-Control"), await response.read())
                    async with session.get(server_url(runner) + "/healthz") as response:
                        return thumb, await response.json()
            finally:
                await runner.cleanup()

        (status, cache, body), health = asyncio.run(scenario())
    assert status == 200 and body == blob.read_bytes() and cache == "no-cache"
    assert health["storage"] == "read-only" and health["ok"]


def test_repair_waits_for_a_running_bot_and_touches_nothing_while_it_runs(tmp_path, capsys):
    from bot.run.lock import DataDirLock
    from storage.errors import EXIT_LOCKED

    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 1)))[0] == 0
    orphan = data_dir / "media" / "ab" / "cd" / ("abcd" + "e" * 60 + ".png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"an import of the running bot, not committed yet")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    with DataDirLock(data_dir):  # what `illustfeed run` holds
        code, out, err = run(capsys, config, "check", "--repair")
        assert code == EXIT_LOCKED, (out, err)
        assert f"(PID {os.getpid()})" in err and "--repair" in err and "illustfeed.lock" in err
        assert orphan.exists()
        code, out, err = run(capsys, config, "check")  # looking is always allowed
        assert code == EXIT_DAMAGED and "orphan file" in out
    code, out, err = run(capsys, config, "check", "--repair")
    assert code == 0, (out, err)
    assert not orphan.exists()


def test_repair_on_a_read_only_data_dir_says_so_and_check_still_reads_it(tmp_path, capsys):
    from storage.errors import EXIT_READ_ONLY
    from tests.storage_faults import read_only_view

    config = write_config(tmp_path)
    assert run(capsys, config, "import", str(make_inbox(tmp_path, 2)))[0] == 0
    with read_only_view(tmp_path / "data", tmp_path / "ro") as view:
        view_config = tmp_path / "ro.toml"
        view_config.write_text(config.read_text().replace(str(tmp_path / "data"), str(view)))
        code, out, err = run(capsys, view_config, "check", "--repair")
        assert code == EXIT_READ_ONLY, (out, err)
        assert "the data dir is read-only" in err and "Traceback" not in err
        code, out, err = run(capsys, view_config, "check")
        assert code == 0 and "no problems" in out, (out, err)
