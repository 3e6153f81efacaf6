"""Videos end to end: import, validation limits with reasons, frames sampled for classification, animated overlays."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

from bot.cli import main
from bot.config import IngestConfig, VideoConfig
from bot.ingest.ingest import ingest_source
from bot.sources.folder import FolderSource
from classifier.features import aggregate_views, image_views
from classifier.model import load_model, save_model
from classifier.preprocess import load_rgb_frames
from classifier.video import sample_frames
from storage import Store
from tests import imagegen
from tests.conftest import SHARED
from tests.test_explain_support import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.tiny_model import tiny_classifier
from tests.videogen import (
    HLS_PLAYLIST,
    animation_frames,
    dev_picture,
    encode_video,
    many_frames_mp4,
    panned_frames,
    panned_mp4,
)

needs_dev_corpus = pytest.mark.skipif(not (SHARED / "corpus/dev").is_dir(), reason="../shared/corpus/dev is absent")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A reduced-width product classifier whose head is standardised on real features, so that different
    pictures get visibly different probabilities (a fresh head on a random trunk answers alike for all)."""
    model = tiny_classifier("video-test")
    with torch.inference_mode():
        vectors = torch.stack(
            [
                aggregate_views(model.extractor(image_views(imagegen.picture(seed), model.spec)))
                for seed in range(100, 108)
            ]
        )
    model.head.set_standardisation(vectors)
    return save_model(model, tmp_path / "model.pt")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[ingest]\nprogress = false\n'
        '[classifier]\nprogress = false\nprecision = "fp32"\nmax_frames = 4\n'
    )
    return path


def cli_json(capsys, *arguments: str) -> dict:
    capsys.readouterr()
    assert main(list(arguments)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@needs_dev_corpus
def test_import_stores_the_mp4_rejects_the_broken_three_and_classify_decides(tmp_path, config_file, model_file, capsys):
    clip = panned_mp4(dev_picture("illustration", 3), frames=24)  # as X serves a GIF: a panned still
    inbox = tmp_path / "inbox" / "artist"
    write(inbox / "loop.mp4", clip)
    write(inbox / "truncated.mp4", clip[: len(clip) // 2])
    write(inbox / "empty.mp4", b"")
    write(inbox / "stream.mp4", HLS_PLAYLIST)
    config = ["--config", str(config_file)]

    capsys.readouterr()
    assert main(["import", str(inbox.parent), *config]) == 0
    printed = capsys.readouterr().out
    assert "media new 1" in printed and "rejected 3" in printed
    with Store.open(tmp_path / "data") as store:
        [video] = store.query("SELECT * FROM media WHERE status = 'ok'")
        assert (video["mime"], video["ext"], video["frames"], video["duration_s"]) == ("video/mp4", "mp4", 24, 2.0)
        assert store.blobs.path(video["sha256"], "mp4").read_bytes() == clip  # the blob is the mp4 itself
        reasons = {
            Path(row["source_url"]).name: row["reject_reason"]
            for row in store.query("SELECT source_url, reject_reason FROM media WHERE status = 'rejected'")
        }
    assert reasons.keys() == {"truncated.mp4", "empty.mp4", "stream.mp4"}
    assert "truncated" in reasons["truncated.mp4"] and "MP4" in reasons["truncated.mp4"]
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert "HLS playlist" in reasons["stream.mp4"]
    for name in reasons:
        assert f"{inbox / name}: " in printed  # every reject is reported with its reason

    summary = cli_json(capsys, "classify", "--model", str(model_file), "--json", *config)
    assert summary["classified"] == 1 and summary["failed"] == 0
    with Store.open(tmp_path / "data") as store:
        prediction = store.query_one("SELECT * FROM predictions WHERE media_id = ?", (video["id"],))
        queued = store.scalar("SELECT COUNT(*) FROM review_queue WHERE media_id = ?", (video["id"],))
        assert (store.final_label(video["id"]) is not None) != bool(queued)  # a label, or a review entry
        assert prediction["borderline"] == bool(queued)

    assert cli_json(capsys, "import", str(inbox.parent), "--json", *config)["media_new"] == 0
    with Store.open(tmp_path / "data") as store:
        assert store.scalar("SELECT COUNT(*) FROM media") == 4 and store.scalar("SELECT COUNT(*) FROM posts") == 4


def test_classification_averages_frames_spread_over_the_clip(tmp_path, config_file, model_file, capsys):
    # Four distinct pictures in turn: the sampled frames (first, ~1/3, ~2/3, last) each show another one.
    frames = [np.asarray(imagegen.picture(seed)) for seed in range(4) for _ in range(6)]
    write(tmp_path / "inbox" / "artist" / "slides.mp4", encode_video(frames, fps=6))
    config = ["--config", str(config_file)]
    assert cli_json(capsys, "import", str(tmp_path / "inbox"), "--json", *config)["media_new"] == 1
    assert cli_json(capsys, "classify", "--model", str(model_file), "--json", *config)["classified"] == 1

    model = load_model(model_file, None)
    with Store.open(tmp_path / "data") as store:
        media_id = store.scalar("SELECT id FROM media")
        stored = store.query_one("SELECT prob_illustration, prob_screenshot, prob_photo FROM predictions")
        sampled = load_rgb_frames(store.media_path(media_id), max_frames=4)
    assert len(sampled) == 4
    per_frame = model.frame_probabilities([image_views(frame, model.spec) for frame in sampled])
    # classify runs a frozen channels-last trunk: the same numbers up to float rounding.
    assert torch.allclose(torch.tensor(list(stored.values())), per_frame.mean(0), atol=2e-3)
    # Each sampled frame shows its own picture, so no single frame's call is the clip's.
    assert all((per_frame[index] - per_frame.mean(0)).abs().max() > 0.02 for index in range(4))
    originals = [imagegen.picture(seed) for seed in range(4)]
    for frame, original in zip(sampled, originals):
        assert np.abs(np.asarray(frame, np.float32) - np.asarray(original, np.float32)).mean() < 12


def test_explain_a_video_writes_an_animation_with_one_grad_cam_per_sampled_frame(
    tmp_path, config_file, model_file, capsys
):
    source = write(tmp_path / "clip.mp4", panned_mp4(imagegen.picture(7), frames=30))
    out = tmp_path / "why.png"
    assert (
        main(["explain", str(source), "--out", str(out), "--config", str(config_file), "--model", str(model_file)]) == 0
    )
    [written] = [path for path in (out.with_suffix(".gif"), out.with_suffix(".mp4")) if path.exists()]
    kind, shown = animation_frames(written)
    assert kind == written.suffix[1:].upper() and len(shown) == 4  # max_frames = 4
    assert not np.array_equal(np.asarray(shown[0]), np.asarray(shown[-1]))


@pytest.fixture
def video_inbox(tmp_path: Path):
    """A folder of one good picture, one good clip and every kind of bad video, under one account."""
    inbox = tmp_path / "inbox" / "artist"
    good = {"still.png": imagegen.png(1), "clip.mp4": panned_mp4(imagegen.picture(2), frames=12)}
    for name, data in good.items():
        write(inbox / name, data)
    clip = good["clip.mp4"]
    # Index first (as services stream them): a cut file still opens, its missing frames fail to decode.
    streamable = encode_video(panned_frames(imagegen.picture(6), (320, 240), 24), path=tmp_path / "streamable.mp4")
    bad = {
        "corrupt.mp4": clip[:32] + bytes(range(256)) * 40,  # a real header, then noise
        "cut_streamable.mp4": streamable[: len(streamable) * 2 // 3],
        "empty.mp4": b"",
        "stream.mp4": HLS_PLAYLIST,
        "long.mp4": panned_mp4(imagegen.picture(3), size=(64, 48), frames=240, fps=60),  # 4 s
        "many_frames.webm": encode_video(
            panned_frames(imagegen.picture(4), (64, 48), 130), fps=60, container="webm", codec="libvpx-vp9"
        ),  # WebM declares no frame count
        "huge_frame.mp4": encode_video([np.zeros((2048, 2048, 3), np.uint8)], fps=1),
    }
    for name, data in bad.items():
        write(inbox / name, data)
    return inbox, good, bad


# Small limits keep the bad files small: 3 s, 100 frames, 1920x1080 per frame.
TEST_LIMITS = IngestConfig(
    progress=False, video=VideoConfig(max_seconds=3.0, max_frames=100, max_frame_pixels=1920 * 1080)
)


def test_every_bad_video_is_rejected_with_its_reason_and_nothing_else_is_lost(store, video_inbox):
    inbox, good, bad = video_inbox
    summary = ingest_source(store, FolderSource(inbox.parent), TEST_LIMITS)
    assert (summary.media_new, summary.rejected) == (2, len(bad))
    stored = {row["mime"] for row in store.query("SELECT mime FROM media WHERE status = 'ok'")}
    assert stored == {"image/png", "video/mp4"}
    reasons = {
        Path(row["source_url"]).name: row["reject_reason"]
        for row in store.query("SELECT source_url, reject_reason FROM media WHERE status = 'rejected'")
    }
    assert reasons.keys() == bad.keys()
    assert "corrupt or truncated MP4" in reasons["corrupt.mp4"]
    # FFmpeg reads up to the cut without an error here: the frame count the file declares tells.
    assert reasons["cut_streamable.mp4"] == "truncated MP4 data: decoded 13 of the 24 frames the file declares"
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert "HLS playlist" in reasons["stream.mp4"]
    assert reasons["long.mp4"] == "video is 4.0 s long, over the limit of 3 s"
    assert reasons["many_frames.webm"] == "video has more than 100 frames (the limit)"
    assert reasons["huge_frame.mp4"] == (
        "decompression bomb: video frame 2048x2048 = 4194304 pixels, over the limit of 2073600"
    )
    # A second import finds every file stored or rejected already.
    again = ingest_source(store, FolderSource(inbox.parent), TEST_LIMITS)
    assert again.media_new == 0 and again.known_posts == len(good) + len(bad)


def test_total_decoded_pixels_are_bounded_frame_by_frame(store, tmp_path):
    # 60 frames of 64x48 = 184,320 pixels: over a 100,000-pixel budget after 33 frames.
    clip = encode_video(panned_frames(imagegen.picture(5), (64, 48), 60), fps=30, container="webm", codec="libvpx-vp9")
    write(tmp_path / "inbox" / "a" / "clip.webm", clip)
    limits = IngestConfig(progress=False, video=VideoConfig(max_total_pixels=100_000))
    summary = ingest_source(store, FolderSource(tmp_path / "inbox"), limits)
    assert summary.rejected == 1
    assert (
        store.scalar("SELECT reject_reason FROM media")
        == "decompression bomb: more than 100000 decoded pixels after 33 frames"
    )


@pytest.mark.slow
def test_an_mp4_of_100k_frames_and_an_8k_frame_are_rejected_at_the_default_limits(store, tmp_path):
    inbox = tmp_path / "inbox" / "a"
    write(inbox / "frames.mp4", many_frames_mp4(100_000))
    write(inbox / "8k.mp4", encode_video([np.zeros((8192, 8192, 3), np.uint8)], fps=1))
    write(inbox / "fine.jpg", imagegen.jpeg(3))
    summary = ingest_source(store, FolderSource(inbox.parent), IngestConfig(progress=False))
    assert (summary.media_new, summary.rejected) == (1, 2)
    reasons = {
        Path(row["source_url"]).name: row["reject_reason"]
        for row in store.query("SELECT source_url, reject_reason FROM media WHERE status = 'rejected'")
    }
    assert reasons == {
        "frames.mp4": "video has 100000 frames, over the limit of 36000",
        "8k.mp4": "decompression bomb: video frame 8192x8192 = 67108864 pixels, over the limit of 8294400",
    }


def test_frames_are_sampled_evenly_first_and_last_included():
    colours = [np.full((48, 64, 3), value, np.uint8) for value in range(0, 250, 25)]  # 10 flat frames
    clip = encode_video(colours, fps=10)
    sampled = [int(np.asarray(frame).mean().round()) for frame in load_rgb_frames(clip, max_frames=4)]
    # Frames 0, 3, 6, 9 (as evenly_spaced picks GIF frames); H.264 and YUV shift flat greys by a level or two.
    assert np.allclose(sampled, [0, 75, 150, 225], atol=3)
    assert len(load_rgb_frames(clip, max_frames=1)) == 1 and len(load_rgb_frames(clip, max_frames=50)) == 10
    # Any positions, in order: frame 8 then 1 come back as 1 then 8.
    assert np.allclose(
        [np.asarray(frame).mean() for frame in sample_frames(clip, lambda total: [8, 1])], [25, 200], atol=3
    )


@pytest.mark.slow
def test_a_crawl_of_x_mastodon_and_bluesky_over_http_stores_classifies_and_explains_videos(tmp_path, model_file):
    from bot.ingest.crawl import crawl_once
    from bot.app import overlay_renderer
    from bot.classify import classify_pending
    from bot.config import ClassifierConfig
    from tests.sources_support import FakeClock, LocalNetwork, crawl_config, http_for
    from tests.test_sources_bluesky import PDS, build_world as build_bluesky
    from tests.test_sources_mastodon import HOME, build_world as build_mastodon
    from tests.test_sources_x import build_world as build_x

    clock = FakeClock()
    x, bluesky, mastodon = (build(clock)[0] for build in (build_x, build_bluesky, build_mastodon))
    bluesky_clip = panned_mp4(imagegen.picture(50), frames=20)
    bluesky.post("mika.bsky.social", "wip loop", bluesky.video("mika.bsky.social", bluesky_clip, imagegen.jpeg(51)))
    network = LocalNetwork()
    try:
        for fake in (x, bluesky, mastodon):
            fake.install(network)
        config = crawl_config(
            tmp_path,
            {
                "x": {"bearer_token": "test-bearer", "accounts": ["alice", "bob"], "page_size": 5},
                "bluesky": {"accounts": ["mika"], "page_size": 2},
                "mastodon": {"instance": HOME, "page_size": 2, "accounts": ["artist"]},
            },
            ingest={"max_bytes": 300_000},
        )
        with Store.open(config.data_path) as store:
            summary = crawl_once(store, config, http=network.route(http_for(clock)))
            assert [run.error for run in summary.runs] == [None, None, None]
            videos = store.query("SELECT id, source_url, frames FROM media WHERE mime = 'video/mp4' ORDER BY id")
            hosts = sorted(urlsplit(row["source_url"]).hostname for row in videos)
            # X: the GIF and the video; Mastodon: the gifv and the video; Bluesky: the blob from the PDS.
            assert hosts == sorted(["video.twimg.com"] * 2 + [f"files.{HOME}"] * 2 + [urlsplit(PDS).hostname])

            model = load_model(model_file, None)
            result = classify_pending(
                store,
                model,
                borderline_confidence=0.99,
                max_frames=4,
                overlay=overlay_renderer(ClassifierConfig(max_frames=4)),
            )
            assert result.failed == 0 and result.classified == store.scalar(
                "SELECT COUNT(*) FROM media WHERE status = 'ok'"
            )
            for video in videos:
                stored = store.query_one(
                    "SELECT prob_illustration, prob_screenshot, prob_photo, borderline, "
                    "overlay_sha256 FROM predictions WHERE media_id = ?",
                    (video["id"],),
                )
                frames = load_rgb_frames(store.media_path(video["id"]), max_frames=4)
                assert len(frames) == 4 < video["frames"]  # several frames of each clip, spread over it
                per_frame = model.frame_probabilities([image_views(frame, model.spec) for frame in frames])
                probabilities = torch.tensor(
                    [stored["prob_illustration"], stored["prob_screenshot"], stored["prob_photo"]]
                )
                assert torch.allclose(probabilities, per_frame.mean(0), atol=2e-3)
                assert stored["borderline"] == 1  # nothing reaches a confidence of 0.99
                overlay = next(
                    path
                    for ext in ("mp4", "gif")
                    if (path := store.derived.path(stored["overlay_sha256"], ext)).exists()
                )
                kind, shown = animation_frames(overlay)
                assert (
                    len(shown) == 4
                    and store.scalar("SELECT COUNT(*) FROM review_queue WHERE media_id = ?", (video["id"],)) == 1
                )
    finally:
        network.close()


def test_the_feed_shows_a_video_as_a_looping_muted_clip_with_its_first_frame_as_poster(store, tmp_path):
    import io

    from PIL import Image

    from tests.test_feed_fixtures import add_post, predict, with_client

    clip = panned_mp4(imagegen.picture(60), frames=12)
    media_id = add_post(store, 1, image=clip, alt="a <looping> fox")
    predict(store, media_id, "illustration")
    sha = store.media(media_id)["sha256"]

    async def scenario(client):
        page = await client.get("/")
        assert "media-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        thumb = await client.get(f"/thumb/{sha}")
        thumb_body = await thumb.read()
        ranged = await client.get(f"/media/{sha}", headers={"Range": "bytes=0-99"})
        ranged_body = await ranged.read()
        atom = await (await client.get("/feed.atom")).text()
        return html, thumb.status, thumb_body, ranged.status, ranged.headers["Content-Type"], ranged_body, atom

    html, thumb_status, thumb_body, ranged_status, ranged_type, ranged_body, atom = with_client(
        tmp_path / "data", scenario
    )
    assert (
        f'<video src="/media/{sha}" poster="/thumb/{sha}" width="320" height="240" autoplay loop muted '
        'playsinline preload="none" aria-label="a &lt;looping&gt; fox"></video>'
    ) in html
    assert "<script" not in html
    first_frame = load_rgb_frames(clip, max_frames=1)[0]
    with Image.open(io.BytesIO(thumb_body)) as poster:
        assert thumb_status == 200 and poster.size == (320, 240)
        difference = np.abs(np.asarray(poster.convert("RGB"), np.float32) - np.asarray(first_frame, np.float32))
        assert difference.mean() < 6
    assert (ranged_status, ranged_type, ranged_body) == (206, "video/mp4", clip[:100])
    assert "&lt;video src=" in atom and 'type="video/mp4"' in atom
