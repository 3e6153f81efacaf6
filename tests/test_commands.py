"""The transport-free command layer on a real store: queue order, labels, undo, concurrency, refusals."""

from __future__ import annotations

import json
import threading

import pytest

from bot import retrain, review
from bot.chat import commands
from bot.feed import channel as feed_channel
from bot.chat.commands import Actor, Permissions
from storage import Store
from tests.chat_store import REVIEWER, SECOND_REVIEWER, STRANGER, ingest_images, predict


@pytest.fixture
def queued(store):
    """Three borderline media with top-2 margins 0.3, 0.1, 0.25 (queue order: 2nd, 3rd, 1st) and one confident."""
    media_ids = ingest_images(store, [1, 2, 3, 4])
    predict(store, media_ids[0], (0.6, 0.3, 0.1))
    predict(store, media_ids[1], (0.3, 0.4, 0.3))
    predict(store, media_ids[2], (0.25, 0.25, 0.5))
    predict(store, media_ids[3], (0.97, 0.02, 0.01), borderline=False)
    return media_ids


def labels_rows(store: Store, media_id: int) -> list[dict]:
    return store.query('SELECT label, "by", via, revoked_at FROM labels WHERE media_id = ? ORDER BY id', (media_id,))


def queue_state(store: Store, media_id: int) -> str:
    return store.scalar("SELECT state FROM review_queue WHERE media_id = ?", (media_id,))


def test_review_shows_most_uncertain_first_with_image_overlay_probabilities_and_origin(store, queued):
    reply = commands.next_review(store)
    assert reply.ok and reply.item.media_id == queued[1]
    assert reply.item.pending == 3
    assert "illustration 30%  screenshot 40%  photo 30%" in reply.text
    assert "https://x.example/alice/status/2" in reply.text and "Alice (@alice on x)" in reply.text
    image, overlay = reply.attachments
    assert image.path == store.media_path(queued[1]) and image.path.is_file()
    assert overlay.path.suffix == ".png" and overlay.path.parent.is_relative_to(store.data_dir / "derived")
    assert [(c.key, c.answer, c.media_id) for c in reply.choices] == [
        ("i", "illustration", queued[1]),
        ("s", "screenshot", queued[1]),
        ("p", "photo", queued[1]),
        ("k", "skip", queued[1]),
    ]


def test_answers_walk_the_queue_in_priority_order_until_empty(store, queued):
    seen = []
    reply = commands.next_review(store)
    while reply.item is not None:
        seen.append(reply.item.media_id)
        reply = commands.review_answer(store, REVIEWER, reply.item.media_id, "photo")
    assert seen == [queued[1], queued[2], queued[0]]
    assert "The review queue is empty." in reply.text and reply.choices == ()
    assert "labelled photo" in reply.text
    assert [queue_state(store, m) for m in seen] == ["done"] * 3
    assert store.final_label(queued[0]) == "photo"


def test_empty_queue(store):
    reply = commands.next_review(store)
    assert reply.ok and reply.text == "The review queue is empty." and reply.item is None


def test_skip_leaves_no_label_and_sets_the_item_behind_the_others(store, queued):
    reply = commands.review_answer(store, REVIEWER, queued[1], "skip")
    assert reply.text.startswith(f"Media {queued[1]} skipped.") and reply.item.media_id == queued[2]
    assert reply.item.pending == 3  # still waiting
    assert queue_state(store, queued[1]) == "skipped" and labels_rows(store, queued[1]) == []
    reply = commands.review_answer(store, REVIEWER, queued[2], "photo")
    reply = commands.review_answer(store, REVIEWER, reply.item.media_id, "photo")
    assert reply.item.media_id == queued[1]  # back once the rest is answered
    assert commands.stats_data(store)["review_pending"] == 1


def test_label_records_who_when_and_via_and_a_correction_adds_history(store, queued):
    assert commands.label(store, REVIEWER, str(queued[3]), "screenshot").ok
    reply = commands.label(store, REVIEWER, str(queued[3]), "illustration")
    assert "was already labelled screenshot by discord:101" in reply.text
    rows = store.query('SELECT label, "by", via, at FROM labels WHERE media_id = ? ORDER BY id', (queued[3],))
    assert [(r["label"], r["by"], r["via"]) for r in rows] == [
        ("screenshot", "discord:101", "discord"),
        ("illustration", "discord:101", "discord"),
    ]
    assert all(r["at"] for r in rows)
    assert store.final_label(queued[3]) == "illustration"


def test_label_accepts_a_sha256_prefix(store, queued):
    sha = store.media(queued[0])["sha256"]
    assert commands.label(store, REVIEWER, sha[:10], "photo").ok
    assert store.current_label(queued[0])["label"] == "photo"


@pytest.mark.parametrize("reference", ["999", "abcdef99", "not-a-media", "\u00b2", "9" * 25])
def test_unknown_media_is_refused_and_nothing_is_stored(store, queued, reference):
    reply = commands.label(store, REVIEWER, reference, "photo")
    assert not reply.ok and reply.private and "media" in reply.text
    assert store.scalar("SELECT COUNT(*) FROM labels") == 0
    assert not commands.review_answer(store, REVIEWER, 999, "photo").ok
    assert not commands.why(store, reference).ok


def test_invalid_label_is_refused_and_nothing_is_stored(store, queued):
    reply = commands.label(store, REVIEWER, str(queued[0]), "painting")
    assert not reply.ok and "painting" in reply.text and "illustration, screenshot, photo" in reply.text
    assert not commands.review_answer(store, REVIEWER, queued[0], "painting").ok
    assert store.scalar("SELECT COUNT(*) FROM labels") == 0 and queue_state(store, queued[0]) == "pending"


def test_unauthorised_actor_is_refused_every_write(store, queued):
    replies = [
        commands.label(store, STRANGER, str(queued[0]), "photo"),
        commands.review_answer(store, STRANGER, queued[1], "photo"),
        commands.review_answer(store, STRANGER, queued[1], "skip"),
        commands.undo(store, STRANGER),
        commands.request_retrain(store, STRANGER),
        commands.follow(store, STRANGER, "x", "bob"),
        commands.follow(store, STRANGER, "x", "alice", followed=False),
    ]
    assert all(not r.ok and r.private and "not allowed" in r.text for r in replies)
    assert store.scalar("SELECT COUNT(*) FROM labels") == 0
    assert store.scalar("SELECT COUNT(*) FROM retrain_requests") == 0
    assert store.query("SELECT handle, followed FROM accounts") == [{"handle": "alice", "followed": 1}]
    assert queue_state(store, queued[1]) == "pending"
    # Looking is open to everyone.
    assert commands.next_review(store).ok and commands.stats(store).ok and commands.sources(store).ok


def test_permissions_by_user_id_or_role():
    permissions = Permissions(frozenset({101}), frozenset({7}))
    assert permissions.allows(101)
    assert permissions.allows(555, [3, 7])
    assert not permissions.allows(555, [3])
    assert not Permissions().allows(101, [7])


def test_second_presser_is_told_who_labelled_first_and_both_labels_are_kept(store, queued):
    first = commands.review_answer(store, REVIEWER, queued[1], "illustration")
    second = commands.review_answer(store, SECOND_REVIEWER, queued[1], "screenshot")
    assert first.text.startswith(f"Media {queued[1]} labelled illustration.")
    assert f"Media {queued[1]} was already labelled illustration by discord:101 via discord" in second.text
    assert first.notice is None and second.notice.startswith(f"Media {queued[1]} was already labelled")
    assert [(r["label"], r["by"]) for r in labels_rows(store, queued[1])] == [
        ("illustration", "discord:101"),
        ("screenshot", "discord:202"),
    ]
    assert store.final_label(queued[1]) == "screenshot"
    # A late skip changes nothing and says why.
    late_skip = commands.review_answer(store, REVIEWER, queued[1], "skip")
    assert "already labelled screenshot by discord:202" in late_skip.text
    assert queue_state(store, queued[1]) == "done"


def test_concurrent_presses_from_two_connections_are_ordered(tmp_path):
    """Two processes' worth of connections pressing at once: exactly one of them sees the other's label."""
    with Store.open(tmp_path / "data") as store:
        media_id = ingest_images(store, [5])[0]
        predict(store, media_id, (0.4, 0.35, 0.25))
    barrier = threading.Barrier(2)
    replies = {}

    def press(actor: Actor, answer: str) -> None:
        with Store.open(tmp_path / "data") as own_store:
            barrier.wait()
            replies[actor.by] = commands.review_answer(own_store, actor, media_id, answer)

    threads = [
        threading.Thread(target=press, args=args) for args in ((REVIEWER, "illustration"), (SECOND_REVIEWER, "photo"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    told = [by for by, reply in replies.items() if "was already labelled" in reply.text]
    assert len(told) == 1
    with Store.open(tmp_path / "data") as store:
        rows = labels_rows(store, media_id)
        assert len(rows) == 2 and rows[-1]["by"] == told[0]


def test_undo_revokes_the_callers_last_label_only_and_requeues(store, queued):
    commands.review_answer(store, REVIEWER, queued[1], "photo")
    commands.label(store, SECOND_REVIEWER, str(queued[0]), "illustration")
    reply = commands.undo(store, REVIEWER)
    assert (
        reply.ok and f"Undid your photo on media {queued[1]}" in reply.text and "back in the review queue" in reply.text
    )
    rows = labels_rows(store, queued[1])
    assert len(rows) == 1 and rows[0]["revoked_at"] is not None
    assert store.current_label(queued[1]) is None and queue_state(store, queued[1]) == "pending"
    assert store.current_label(queued[0])["by"] == "discord:202"
    assert commands.next_review(store).item.media_id == queued[1]
    again = commands.undo(store, REVIEWER)
    assert not again.ok and "no label to undo" in again.text


def test_undo_falls_back_to_the_previous_label(store, queued):
    commands.label(store, SECOND_REVIEWER, str(queued[2]), "illustration")
    commands.label(store, REVIEWER, str(queued[2]), "photo")
    reply = commands.undo(store, REVIEWER)
    assert "It is now illustration by discord:202" in reply.text
    assert store.final_label(queued[2]) == "illustration" and queue_state(store, queued[2]) == "done"


def test_why_returns_the_stored_overlay_and_says_fresh_is_unavailable(store, queued):
    reply = commands.why(store, str(queued[0]))
    assert reply.ok and "stored Grad-CAM overlay" in reply.text and "unavailable" in reply.text
    assert reply.attachments[0].path == review.review_item(store, queued[0]).overlay_path
    assert not commands.why(store, str(queued[0]), "smoothgrad").ok


def test_why_with_an_explainer_stores_and_returns_a_fresh_overlay(store, queued):
    calls = []

    def explainer(path, method):
        calls.append((path, method))
        return b"GIF89a fresh overlay", "gif"

    reply = commands.why(store, str(queued[0]), "lime", explainer=explainer)
    assert calls == [(store.media_path(queued[0]), "lime")]
    fresh = reply.attachments[0].path
    assert fresh.suffix == ".gif" and fresh.read_bytes() == b"GIF89a fresh overlay"


def test_why_reports_a_failing_explainer_and_falls_back(store, queued):
    def broken(path, method):
        raise RuntimeError("no active model")

    reply = commands.why(store, str(queued[0]), explainer=broken)
    assert "fresh gradcam explanation failed: no active model" in reply.text
    assert reply.attachments[0].path == review.review_item(store, queued[0]).overlay_path


def test_why_without_any_overlay(store, queued):
    media_id = ingest_images(store, [9])[0]
    predict(store, media_id, (0.5, 0.3, 0.2), with_overlay=False)
    reply = commands.why(store, str(media_id))
    assert not reply.ok and "no stored overlay" in reply.text and reply.attachments == ()


def test_stats_counts_labels_since_the_active_model_and_its_metrics(store, queued):
    commands.label(store, REVIEWER, str(queued[0]), "photo")
    store.execute(
        "INSERT INTO models (version, path, backbone, metrics, active, created_at) "
        "VALUES ('m1', 'm1.pt', 'vgg16', ?, 1, '2000-01-01T00:00:00+00:00')",
        (json.dumps({"accuracy": 0.91, "macro_f1": 0.875, "confusion": [[1]]}),),
    )
    commands.label(store, REVIEWER, str(queued[1]), "screenshot")
    data = commands.stats_data(store)
    assert data["labels_since_model"] == 2 and data["review_pending"] == 1
    assert data["by_label"] == {"illustration": 1, "photo": 1, "screenshot": 1}
    text = commands.stats(store).text
    assert "Metrics: accuracy 0.910, macro_f1 0.875" in text and "2 since the active model" in text
    store.execute("UPDATE models SET created_at = '2999-01-01T00:00:00+00:00'")
    assert commands.stats_data(store)["labels_since_model"] == 0


def test_retrain_request_is_queued_once_claimed_and_finished(store):
    woken = []
    first = commands.request_retrain(store, REVIEWER, notify=lambda: woken.append(1))
    second = commands.request_retrain(store, SECOND_REVIEWER, notify=lambda: woken.append(2))
    assert "Retrain queued (request 1)" in first.text and "already queued (request 1 by discord:101" in second.text
    assert woken == [1] and "A retrain is queued." in commands.stats(store).text
    claimed = retrain.claim_request(store)
    assert claimed["id"] == 1 and retrain.claim_request(store) is None
    retrain.finish_request(store, claimed["id"], "new model m2")
    row = store.query_one("SELECT * FROM retrain_requests WHERE id = 1")
    assert row["result"] == "new model m2" and row["finished_at"]
    assert "Retrain queued (request 2)" in commands.request_retrain(store, REVIEWER).text


def test_follow_unfollow_and_sources(store, queued):
    assert (
        commands.follow(store, REVIEWER, "Bluesky", "@Artist.bsky.social").text
        == "Now following artist.bsky.social on bluesky."
    )
    assert (
        commands.follow(store, REVIEWER, "bluesky", "artist.bsky.social").text
        == "Already following artist.bsky.social on bluesky."
    )
    store.execute(
        "UPDATE accounts SET last_crawl_at = '2026-01-02T03:04:05+00:00', last_error = 'HTTP 500' "
        "WHERE handle = 'artist.bsky.social'"
    )
    listing = commands.sources(store).text.splitlines()
    assert "bluesky (enabled): config -; followed artist.bsky.social; unfollowed -; reads today 0" in listing
    assert "  - artist.bsky.social: last crawl 2026-01-02T03:04:05+00:00, last error: HTTP 500" in listing
    assert (
        commands.follow(store, REVIEWER, "x", "alice", followed=False).text
        == "Unfollowed alice on x; its stored posts stay."
    )
    assert store.scalar("SELECT COUNT(*) FROM posts") == 4  # unfollowing keeps what was stored
    assert "x (enabled): config -; followed -; unfollowed alice; reads today 0" in commands.sources(store).text
    assert "was not followed" in commands.follow(store, REVIEWER, "x", "alice", followed=False).text
    assert commands.follow(store, REVIEWER, "x", "@ALICE").text == "Now following alice on x."
    assert store.query("SELECT followed, followed_via FROM accounts WHERE source = 'x'") == [
        {"followed": 1, "followed_via": "command"}
    ]


def test_follow_refuses_unknown_sources_and_bad_handles(store):
    replies = [
        commands.follow(store, REVIEWER, "myspace", "bob"),
        commands.follow(store, REVIEWER, "x", "two words"),
        commands.follow(store, REVIEWER, "mastodon", "painter"),
    ]
    assert all(not r.ok and r.private for r in replies)
    assert "unknown source 'myspace'" in replies[0].text and "X handle 'two words'" in replies[1].text
    assert "Mastodon handle 'painter' is not user@instance" in replies[2].text
    assert store.scalar("SELECT COUNT(*) FROM accounts") == 0


def test_feed_batch_posts_each_illustration_once_in_order(store, queued):
    # queued[3] is a confident illustration; queued[0] becomes one by a human label; queued[2] stays photo.
    commands.label(store, REVIEWER, str(queued[0]), "illustration")
    batch = feed_channel.feed_batch(store, "discord:1", limit=10, max_attachment_bytes=10**9)
    assert [item.media_id for item in batch.items] == [queued[0], queued[3]]
    assert batch.text.startswith("1. by Alice (@alice on x) - https://x.example/alice/status/1")
    feed_channel.mark_feed_posted(store, "discord:1", [item.media_id for item in batch.items], "555")
    assert feed_channel.feed_batch(store, "discord:1", 10, 10**9).items == []
    assert len(feed_channel.feed_batch(store, "discord:2", 10, 10**9).items) == 2  # another channel
    assert len(feed_channel.feed_batch(store, "discord:2", 1, 10**9).items) == 1


def test_feed_batch_links_images_over_the_attachment_budget(store, queued):
    commands.label(store, REVIEWER, str(queued[0]), "illustration")
    first_size = store.media(queued[0])["bytes"]
    batch = feed_channel.feed_batch(store, "discord:1", limit=10, max_attachment_bytes=first_size)
    assert [i.media_id for i in batch.attached] == [queued[0]] and [i.media_id for i in batch.linked] == [queued[3]]


def test_feed_batch_links_an_image_whose_file_is_missing(store, queued):
    store.media_path(queued[3]).unlink()
    batch = feed_channel.feed_batch(store, "discord:1", limit=10, max_attachment_bytes=10**9)
    assert [i.media_id for i in batch.linked] == [queued[3]] and batch.attached == []


def test_a_missing_image_file_leaves_it_out_of_the_reply(store, queued):
    store.media_path(queued[1]).unlink()
    reply = commands.next_review(store)
    assert reply.item.media_id == queued[1]
    assert [a.description for a in reply.attachments] == [f"Grad-CAM overlay of media {queued[1]}"]


def test_a_new_feed_channel_skips_the_backlog_once(store, queued):
    assert feed_channel.skip_feed_backlog(store, "discord:1") == 1  # queued[3], the confident illustration
    assert feed_channel.feed_batch(store, "discord:1", 10, 10**9).items == []
    commands.label(store, REVIEWER, str(queued[0]), "illustration")
    assert feed_channel.skip_feed_backlog(store, "discord:1") == 0  # the channel has started: new items stay
    assert [i.media_id for i in feed_channel.feed_batch(store, "discord:1", 10, 10**9).items] == [queued[0]]
    assert store.query("SELECT media_id, message_id FROM feed_posts") == [{"media_id": queued[3], "message_id": None}]


def test_queue_order_follows_the_classifiers_priority_then_age(store):
    """Higher priority (1 - margin, as classifier.inference.decide writes it) first; equal ones oldest first."""
    media_ids = ingest_images(store, [21, 22, 23])
    for media_id, priority, created in zip(media_ids, (0.5, 0.9, 0.9), ("2026-01-03", "2026-01-02", "2026-01-01")):
        store.execute(
            "INSERT INTO review_queue (media_id, reason, priority, state, created_at, updated_at) "
            "VALUES (?, 'test', ?, 'pending', ?, ?)",
            (media_id, priority, created, created),
        )
    order = []
    reply = commands.next_review(store)
    for _ in range(4):
        order.append(reply.item.media_id)
        assert reply.item.probabilities is None and "Not classified yet." in reply.text
        reply = commands.review_answer(store, REVIEWER, reply.item.media_id, "skip")
    # Skipped items come back in the order they were skipped, after every pending one.
    assert order == [media_ids[2], media_ids[1], media_ids[0], media_ids[2]]


def test_feed_batch_follows_the_web_feeds_rule(store, queued):
    # queued[3] is a confident illustration (no human label): human_only leaves it out, the default keeps it.
    assert [i.media_id for i in feed_channel.feed_batch(store, "discord:1", 10, 10**9).items] == [queued[3]]
    assert feed_channel.feed_batch(store, "discord:1", 10, 10**9, rule="human_only").items == []
    # any_prediction trusts borderline calls too: queued[0] is a borderline illustration call.
    any_items = feed_channel.feed_batch(store, "discord:1", 10, 10**9, rule="any_prediction").items
    assert [i.media_id for i in any_items] == [queued[0], queued[3]]
