"""storage.check on a real store: temp files, stray and orphan files, lost thumbnails, damaged derived files,
stale damage marks; young files are left to the write that is making them."""

from __future__ import annotations

import os
import time

from bot.feed.thumbnails import ThumbnailSpec, record_thumbnail, render_thumbnail, stored_thumbnail
from storage.check import (
    MISSING_THUMBNAIL,
    ORPHAN,
    STALE_MARK,
    STRAY,
    TEMP,
    WRONG_HASH,
    check_and_repair,
    check_store,
    mark_damaged,
)
from storage import sha256_hex
from tests import imagegen

HOUR_AGO = time.time() - 3600


def aged(path):
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def stored_picture(store, seed: int) -> int:
    data = imagegen.png(seed, size=(200, 150))
    digest = store.blobs.put(data, "png")
    with store.transaction():
        return store.insert_media(sha256=digest, ext="png", mime="image/png", bytes=len(data), status="ok")


def make_thumbnail(store, media_id: int, spec_key: str) -> None:
    spec = ThumbnailSpec(480, "webp")
    assert spec.key == spec_key
    data, width, height = render_thumbnail(store.media_path(media_id), spec)
    record_thumbnail(store, media_id, spec, data, width, height)


def test_temp_stray_and_derived_problems_are_found_and_repaired(store):
    first, second = stored_picture(store, 1), stored_picture(store, 2)
    make_thumbnail(store, first, "webp-480")
    make_thumbnail(store, second, "webp-480")
    assert check_store(store, read_data=True).ok
    store.blobs.temp_dir.mkdir(parents=True, exist_ok=True)
    temp = store.blobs.temp_dir / "tmp-abc123"
    temp.write_bytes(b"half a blob")
    aged(temp)
    fresh_temp = store.derived.temp_dir / "tmp-fresh"
    fresh_temp.parent.mkdir(parents=True, exist_ok=True)
    fresh_temp.write_bytes(b"being written right now")
    stray = store.blobs.root / "notes.txt"
    stray.write_text("the user's own file")
    aged(stray)
    lost_thumb = stored_thumbnail(store, first, ThumbnailSpec())
    store.derived.path(lost_thumb.sha256, lost_thumb.ext).unlink()
    bad_thumb = stored_thumbnail(store, second, ThumbnailSpec())
    bad_path = store.derived.path(bad_thumb.sha256, bad_thumb.ext)
    bad_path.write_bytes(b"x" * bad_path.stat().st_size)  # same size, other bytes: only --read-data sees it
    mark_damaged(store, second, "wrong size: earlier")  # since then restored by hand

    sizes_only = check_store(store)
    assert sorted(p.kind for p in sizes_only.problems) == sorted([TEMP, STRAY, MISSING_THUMBNAIL, STALE_MARK])
    assert sizes_only.damaged_marked == 1
    thorough = check_store(store, read_data=True)
    assert WRONG_HASH in {p.kind for p in thorough.problems}
    assert any(str(p).startswith(f"missing thumbnail: media {first} (") for p in thorough.problems)

    report = check_and_repair(store, read_data=True, make_thumbnail=make_thumbnail)
    assert [str(p) for p in report.problems] == [f"{STRAY}: not a blob name, {stray}"]  # never removed
    assert not temp.exists() and fresh_temp.exists() and stray.exists()
    for media_id in (first, second):  # made again, and their bytes are what their names say
        thumbnail = stored_thumbnail(store, media_id, ThumbnailSpec())
        assert sha256_hex(store.derived.read(thumbnail.sha256, thumbnail.ext)) == thumbnail.sha256
    assert store.damaged_count() == 0


def test_an_unreferenced_derived_file_is_an_orphan_once_old(store):
    stored_picture(store, 3)
    orphan = store.derived.root / "ff" / "ee" / ("ffee" + "0" * 60 + ".png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"an overlay nobody refers to")
    assert check_store(store).ok  # young: perhaps classify is about to record it
    aged(orphan)
    report = check_store(store)
    assert [p.kind for p in report.problems] == [ORPHAN] and report.problems[0].path == str(orphan)
    assert check_and_repair(store).ok and not orphan.exists()
