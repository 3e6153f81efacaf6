"""Folder import: validation, rejects with reasons, exact and near duplicates, idempotent re-import."""

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.config import IngestConfig
from bot.ingest.ingest import ingest_source
from bot.sources.folder import FolderSource
from bot.ingest.validate import InvalidImage, validate_image
from tests import imagegen
from tests.conftest import SHARED


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def mixed_inbox(tmp_path):
    inbox = tmp_path / "inbox"
    good = {
        "alice/drawing.png": imagegen.png(1),
        "alice/photo.jpg": imagegen.jpeg(2),
        "alice/anim.gif": imagegen.animated_gif(3, frames=5),
        "alice/alpha.png": imagegen.rgba_png(4),
        "bob/palette.png": imagegen.palette_png(5),
        "bob/cmyk.jpg": imagegen.cmyk_jpeg(6),
        "bob/rotated.jpg": imagegen.exif_rotated_jpeg(7),
    }
    for name, data in good.items():
        write(inbox / name, data)
    write(inbox / "bob/copy_of_drawing.png", good["alice/drawing.png"])  # exact duplicate
    write(inbox / "carol/repost.jpg", imagegen.resized_reencode(imagegen.jpeg(2, size=(640, 480))))
    bad = {
        "carol/empty.jpg": b"",
        "carol/truncated.jpg": imagegen.jpeg(8)[:1500],
        "carol/corrupt.png": imagegen.png(9)[:60] + b"\x00garbage" * 50,
        "carol/page.jpg": b"<!DOCTYPE html><html><body>not an image</body></html>",
        "carol/bomb.png": imagegen.bomb_png(),
    }
    for name, data in bad.items():
        write(inbox / name, data)
    return inbox, good, bad


SMALL_LIMITS = IngestConfig(max_pixels=20_000_000, progress=False)


def test_import_mixed_folder_stores_good_rejects_bad_and_dedupes(store, mixed_inbox):
    inbox, good, bad = mixed_inbox
    # The repost source is the 640x480 rendering of seed 2; store that original first so the resized
    # re-encode in carol/ is a near duplicate of a stored image.
    write(inbox / "alice/photo_large.jpg", imagegen.jpeg(2, size=(640, 480)))
    summary = ingest_source(store, FolderSource(inbox), SMALL_LIMITS)

    assert summary.media_new == len(good) + 1
    assert summary.duplicates == 1
    assert summary.near_duplicates == 1
    assert summary.rejected == len(bad)
    assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == len(good) + 1
    assert store.scalar("SELECT COUNT(*) FROM posts") == len(good) + 1 + 2 + len(bad)
    assert store.scalar("SELECT COUNT(*) FROM accounts") == 3

    reasons = {
        Path(row["source_url"]).name: row["reject_reason"]
        for row in store.query("SELECT source_url, reject_reason FROM media WHERE status = 'rejected'")
    }
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("truncated or corrupt JPEG")
    assert "PNG" in reasons["corrupt.png"] or "not an image" in reasons["corrupt.png"]
    assert reasons["page.jpg"] == "not an image: the bytes look like text or HTML"
    assert reasons["bomb.png"].startswith("decompression bomb: 12000x12000")

    rows = {Path(r["source_url"]).name: r for r in store.query("SELECT * FROM media WHERE status = 'ok'")}
    assert rows["anim.gif"]["frames"] == 5 and rows["anim.gif"]["mime"] == "image/gif"
    assert rows["cmyk.jpg"]["mime"] == "image/jpeg"
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (240, 320)  # EXIF applied
    for row in rows.values():  # original bytes kept, content-addressed
        assert store.blobs.path(row["sha256"], row["ext"]).is_file()
    stored_rotated = store.blobs.read(rows["rotated.jpg"]["sha256"], "jpg")
    assert stored_rotated == good["bob/rotated.jpg"]

    # The duplicate and the repost are linked to the existing rows, not stored again.
    drawing = rows["drawing.png"]["id"]
    assert store.scalar("SELECT COUNT(*) FROM post_media WHERE media_id = ?", (drawing,)) == 2
    large = rows["photo_large.jpg"]["id"]
    assert store.scalar("SELECT COUNT(*) FROM post_media WHERE media_id = ?", (large,)) == 2


def test_second_import_adds_nothing(store, mixed_inbox):
    inbox, _good, _bad = mixed_inbox
    ingest_source(store, FolderSource(inbox), SMALL_LIMITS)
    counts = {t: store.scalar(f"SELECT COUNT(*) FROM {t}") for t in ("media", "posts", "post_media", "accounts")}
    again = ingest_source(store, FolderSource(inbox), SMALL_LIMITS)
    assert again.media_new == 0 and again.new_posts == 0 and again.known_posts == again.posts + again.known_posts
    assert {t: store.scalar(f"SELECT COUNT(*) FROM {t}") for t in counts} == counts


def test_same_image_under_a_new_name_links_to_the_stored_media(store, tmp_path):
    write(tmp_path / "a/x/one.png", imagegen.png(11))
    ingest_source(store, FolderSource(tmp_path / "a"), SMALL_LIMITS)
    write(tmp_path / "b/y/two.png", imagegen.png(11))
    summary = ingest_source(store, FolderSource(tmp_path / "b"), SMALL_LIMITS)
    assert summary.duplicates == 1 and summary.media_new == 0
    assert store.scalar("SELECT COUNT(*) FROM media") == 1
    assert store.scalar("SELECT COUNT(*) FROM post_media") == 2


def test_distinct_generated_images_never_merge(store, tmp_path):
    for seed in range(40):
        write(tmp_path / "in/acc" / f"{seed}.png", imagegen.png(1000 + seed))
    summary = ingest_source(store, FolderSource(tmp_path / "in"), SMALL_LIMITS)
    assert summary.media_new == 40 and summary.near_duplicates == 0


def test_sixteen_bit_greyscale_is_accepted_and_the_byte_limit_applies():
    buffer = io.BytesIO()
    Image.new("I;16", (64, 64)).save(buffer, "TIFF")
    info = validate_image(buffer.getvalue(), max_pixels=10**6)  # 16-bit greyscale converts fine
    assert (info.width, info.height) == (64, 64)
    with pytest.raises(InvalidImage, match="over the limit of 100 bytes"):
        validate_image(buffer.getvalue(), max_pixels=10**6, max_bytes=100)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "corpus/dev").is_dir(), reason="../shared/corpus/dev is not present")
def test_no_two_distinct_dev_corpus_images_merge(store):
    corpus = SHARED / "corpus/dev"
    files = sorted(corpus.glob("*/*.jpg"))
    summary = ingest_source(store, FolderSource(corpus), IngestConfig(progress=False))
    distinct = {f.read_bytes() for f in files}
    assert summary.near_duplicates == 0
    assert [p.split(":")[0] for p in summary.problems] == [str(corpus / "manifest.csv")]
    assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == len(distinct)


def _mutations(data: bytes, count: int, rng):
    for index in range(count):
        mutated = bytearray(data)
        if index % 2:
            mutated = mutated[: rng.randrange(1, len(mutated))]
        else:
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        yield bytes(mutated)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "animated GIF"])
def test_cut_or_mangled_files_are_rejected_with_a_reason_never_a_crash(fmt):
    import random
    import warnings

    rng = random.Random(fmt)
    if fmt == "animated GIF":
        data = imagegen.animated_gif(2, frames=3)
    else:
        data = imagegen.encode(imagegen.picture(3, (96, 64)), fmt)
    outcomes = {"accepted": 0, "rejected": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mutated in _mutations(data, 60, rng):
            try:
                validate_image(mutated, max_pixels=10**8)
                outcomes["accepted"] += 1
            except InvalidImage as error:
                assert str(error)  # a readable reason, e.g. "truncated or corrupt PNG data: ..."
                outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0


def test_header_cut_short_is_rejected_and_the_import_goes_on(store, tmp_path):
    write(tmp_path / "in/acc/a_cut.jpg", imagegen.jpeg(1)[:200])
    write(tmp_path / "in/acc/b_cut.webp", imagegen.encode(imagegen.picture(2), "WEBP")[:100])
    write(tmp_path / "in/acc/c_good.png", imagegen.png(3))
    summary = ingest_source(store, FolderSource(tmp_path / "in"), SMALL_LIMITS)
    assert (summary.media_new, summary.rejected) == (1, 2)
    reasons = [row["reject_reason"] for row in store.query("SELECT reject_reason FROM media WHERE status = 'rejected'")]
    assert all(r.startswith(("corrupt image header", "truncated or corrupt", "not an image")) for r in reasons)


def test_a_mode_pillow_cannot_convert_is_an_image_mode_error():
    from classifier.preprocess import ImageModeError, to_rgb

    with pytest.raises(ImageModeError, match="pixel mode 'La' cannot be converted to RGB"):
        to_rgb(Image.new("La", (4, 4)))


def test_file_over_the_byte_limit_is_a_rejected_row_and_not_imported_twice(store, tmp_path):
    write(tmp_path / "in/acc/big.png", imagegen.png(1, size=(400, 300)))
    source = FolderSource(tmp_path / "in", max_bytes=1000)
    settings = IngestConfig(max_bytes=1000, progress=False)
    summary = ingest_source(store, source, settings)
    assert summary.rejected == 1
    row = store.query_one("SELECT * FROM media")
    assert row["status"] == "rejected" and row["reject_reason"].endswith("over the limit of 1000 bytes")
    again = ingest_source(store, source, settings)
    assert again.known_posts == 1 and store.scalar("SELECT COUNT(*) FROM media") == 1


def test_a_media_that_failed_to_fetch_is_tried_again_on_the_next_import(store, tmp_path):
    from bot.sources.base import FetchError

    class FlakySource(FolderSource):
        calls = 0

        def fetch(self, ref):
            FlakySource.calls += 1
            if FlakySource.calls == 1:
                raise FetchError("disk hiccup")
            return super().fetch(ref)

    write(tmp_path / "in/acc/later.png", imagegen.png(5))
    first = ingest_source(store, FlakySource(tmp_path / "in"), SMALL_LIMITS)
    assert first.failed == 1 and store.scalar("SELECT COUNT(*) FROM media") == 0
    assert store.scalar("SELECT COUNT(*) FROM posts") == 1
    retried = ingest_source(store, FlakySource(tmp_path / "in"), SMALL_LIMITS)
    assert retried.media_new == 1 and retried.known_posts == 0
    assert store.scalar("SELECT COUNT(*) FROM post_media") == 1
