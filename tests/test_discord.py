"""The Discord adapter with fake Interaction objects (dpytest cannot drive interactions): each command calls
the command layer on a real store and renders its reply; button ids round-trip; strangers are refused."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import discord
import pytest

from bot import review
from bot.chat.commands import Permissions
from bot.config import DiscordConfig, load_config, parse_config
from bot.chat.discord_bot import (
    ChatAdapter,
    DiscordTokenMissing,
    IllustfeedBot,
    ReviewButton,
    create_bot,
    custom_id,
    post_feed_batch,
)
from tests.chat_store import ingest_images, predict

OWNER_ID, HELPER_ROLE, HELPER_ID, STRANGER_ID = 111, 777, 222, 333


@dataclass
class FakeResponse:
    calls: list = field(default_factory=list)

    def is_done(self) -> bool:
        return bool(self.calls)

    async def send_message(self, content=None, **kwargs):
        self.calls.append(("send_message", content, kwargs))

    async def edit_message(self, **kwargs):
        self.calls.append(("edit_message", kwargs.get("content"), kwargs))

    async def defer(self, **kwargs):
        self.calls.append(("defer", None, kwargs))


@dataclass
class FakeFollowup:
    calls: list = field(default_factory=list)

    async def send(self, content=None, **kwargs):
        self.calls.append(("followup", content, kwargs))


class FakeInteraction:
    """The parts of discord.Interaction the adapter touches."""

    def __init__(self, client, user_id: int, role_ids: tuple[int, ...] = ()):
        self.client = client
        self.user = SimpleNamespace(
            id=user_id, roles=[SimpleNamespace(id=r) for r in role_ids], __str__=lambda: f"user{user_id}"
        )
        self.response = FakeResponse()
        self.followup = FakeFollowup()

    @property
    def sent(self):
        return self.response.calls + self.followup.calls


@pytest.fixture
def media_ids(store):
    ids = ingest_images(store, [1, 2, 3])
    predict(store, ids[0], (0.5, 0.3, 0.2))
    predict(store, ids[1], (0.4, 0.35, 0.25))
    predict(store, ids[2], (0.98, 0.01, 0.01), borderline=False)
    return ids


@pytest.fixture
def chat(store):
    return ChatAdapter(store, Permissions(frozenset({OWNER_ID}), frozenset({HELPER_ROLE})))


def interaction(chat, user_id=OWNER_ID, role_ids=()):
    return FakeInteraction(SimpleNamespace(chat=chat), user_id, role_ids)


def run(coroutine):
    return asyncio.run(coroutine)


def only_call(fake: FakeInteraction):
    assert len(fake.sent) == 1, fake.sent
    return fake.sent[0]


def test_review_sends_the_item_with_image_overlay_and_four_persistent_buttons(chat, media_ids):
    fake = interaction(chat, STRANGER_ID)  # looking is open to everyone
    run(chat.review(fake))
    kind, content, kwargs = only_call(fake)
    assert kind == "send_message" and kwargs["ephemeral"] is False
    assert content.startswith(f"Media {media_ids[1]} (2 waiting for review)")
    assert [f.filename for f in kwargs["files"]][0].endswith(".png") and len(kwargs["files"]) == 2
    view = kwargs["view"]
    assert view.timeout is None and view.is_persistent()
    assert [item.custom_id for item in view.children] == [
        f"illustfeed:label:{media_ids[1]}:{answer}" for answer in ("illustration", "screenshot", "photo", "skip")
    ]
    assert [item.item.label for item in view.children] == ["Illustration", "Screenshot", "Photo", "Skip"]


def test_button_custom_ids_round_trip(chat, media_ids):
    button = ReviewButton(media_ids[0], "photo")
    assert button.custom_id == custom_id(media_ids[0], "photo") == f"illustfeed:label:{media_ids[0]}:photo"
    match = re.fullmatch(ReviewButton.__discord_ui_compiled_template__, button.custom_id)
    rebuilt = run(ReviewButton.from_custom_id(interaction(chat), button.item, match))
    assert (rebuilt.media_id, rebuilt.answer, rebuilt.custom_id) == (media_ids[0], "photo", button.custom_id)
    assert re.fullmatch(ReviewButton.__discord_ui_compiled_template__, "illustfeed:label:x:photo") is None


def test_button_press_labels_and_edits_the_message_in_place_with_the_next_item(chat, store, media_ids):
    fake = interaction(chat, HELPER_ID, (HELPER_ROLE,))
    run(ReviewButton(media_ids[1], "illustration").callback(fake))
    kind, content, kwargs = only_call(fake)
    assert kind == "edit_message"
    assert content.startswith(f"Media {media_ids[1]} labelled illustration.")
    assert f"Media {media_ids[0]} (1 waiting for review)" in content
    assert kwargs["view"].children[0].custom_id == custom_id(media_ids[0], "illustration")
    assert len(kwargs["attachments"]) == 2
    row = store.current_label(media_ids[1])
    assert (row["label"], row["by"], row["via"]) == ("illustration", f"discord:{HELPER_ID}", "discord")


def test_second_presser_is_told_privately_who_labelled_first(chat, store, media_ids):
    run(ReviewButton(media_ids[1], "photo").callback(interaction(chat, OWNER_ID)))
    late = interaction(chat, HELPER_ID, (HELPER_ROLE,))
    run(ReviewButton(media_ids[1], "screenshot").callback(late))
    (edit, _content, _kwargs), (followup, notice, kwargs) = late.sent
    assert edit == "edit_message" and followup == "followup" and kwargs["ephemeral"] is True
    assert notice.startswith(f"Media {media_ids[1]} was already labelled photo by <@{OWNER_ID}> via discord")
    assert store.scalar("SELECT COUNT(*) FROM labels WHERE media_id = ?", (media_ids[1],)) == 2


def test_last_press_shows_the_empty_queue_without_buttons(chat, media_ids):
    run(ReviewButton(media_ids[1], "skip").callback(interaction(chat)))
    fake = interaction(chat)
    run(ReviewButton(media_ids[0], "photo").callback(fake))
    _kind, content, _kwargs = only_call(fake)
    assert f"Media {media_ids[1]} (1 waiting for review)" in content  # the skipped item comes back last
    fake = interaction(chat)
    run(ReviewButton(media_ids[1], "photo").callback(fake))
    _kind, content, kwargs = only_call(fake)
    assert content.endswith("The review queue is empty.") and kwargs["view"] is None and kwargs["attachments"] == []


def test_strangers_are_refused_privately_and_nothing_changes(chat, store, media_ids):
    calls = [
        lambda f: ReviewButton(media_ids[1], "photo").callback(f),
        lambda f: chat.label(f, str(media_ids[0]), "photo"),
        lambda f: chat.undo(f),
        lambda f: chat.retrain(f),
        lambda f: chat.follow(f, "x", "bob"),
        lambda f: chat.follow(f, "x", "alice", followed=False),
    ]
    for call in calls:
        fake = interaction(chat, STRANGER_ID, (5,))
        run(call(fake))
        kind, content, kwargs = only_call(fake)
        assert kind == "send_message" and kwargs["ephemeral"] is True and "not allowed" in content
    assert store.scalar("SELECT COUNT(*) FROM labels") == 0
    assert store.scalar("SELECT COUNT(*) FROM retrain_requests") == 0
    assert store.scalar("SELECT COUNT(*) FROM accounts WHERE followed = 1") == 1


def test_label_undo_and_errors_render(chat, store, media_ids):
    fake = interaction(chat)
    run(chat.label(fake, str(media_ids[2]), "screenshot"))
    assert only_call(fake)[1] == f"Media {media_ids[2]} labelled screenshot."
    fake = interaction(chat)
    run(chat.label(fake, "4242", "photo"))
    kind, content, kwargs = only_call(fake)
    assert kwargs["ephemeral"] is True and content == "no media with id 4242"
    fake = interaction(chat)
    run(chat.undo(fake))
    assert only_call(fake)[1].startswith(f"Undid your screenshot on media {media_ids[2]}.")
    assert store.current_label(media_ids[2]) is None


def test_why_without_explainer_attaches_the_stored_overlay(chat, media_ids):
    fake = interaction(chat, STRANGER_ID)
    run(chat.why(fake, str(media_ids[0]), "lime"))
    _kind, content, kwargs = only_call(fake)
    assert "stored Grad-CAM overlay" in content and "unavailable" in content and len(kwargs["files"]) == 1


def test_why_with_explainer_defers_and_answers_in_a_followup(store, media_ids):
    chat = ChatAdapter(store, Permissions(), explainer=lambda path, method: (f"{method}:{path.name}".encode(), "png"))
    fake = interaction(chat)
    run(chat.why(fake, str(media_ids[0]), "lime"))
    (defer, _, _), (followup, content, kwargs) = fake.sent
    assert (defer, followup) == ("defer", "followup") and "fresh lime explanation" in content
    assert kwargs["files"][0].fp.read().startswith(b"lime:")


def test_stats_retrain_follow_sources_render(chat, store, media_ids):
    woken = []
    chat.on_retrain_requested = lambda: woken.append(True)
    replies = {}
    for name, call in [
        ("retrain", lambda f: chat.retrain(f)),
        ("stats", lambda f: chat.stats(f)),
        ("follow", lambda f: chat.follow(f, "mastodon", "@painter@example.social")),
        ("sources", lambda f: chat.sources(f)),
    ]:
        fake = interaction(chat)
        run(call(fake))
        replies[name] = only_call(fake)[1]
    assert woken == [True] and replies["retrain"].startswith("Retrain queued (request 1)")
    assert "Review queue: 2 pending" in replies["stats"] and "A retrain is queued." in replies["stats"]
    assert replies["follow"] == "Now following painter@example.social on mastodon."
    assert "mastodon (enabled): config -; followed painter@example.social;" in replies["sources"]


def test_slash_command_tree_has_every_command_and_label_choices(store):
    bot = IllustfeedBot(DiscordConfig(token="x", guild_id=1), store)
    names = sorted(command.name for command in bot.tree.get_commands())
    assert names == ["follow", "label", "retrain", "review", "sources", "stats", "undo", "unfollow", "why"]
    label_command = bot.tree.get_command("label")
    choices = [c.value for c in label_command.get_parameter("label").choices]
    assert choices == ["illustration", "screenshot", "photo"]
    assert [c.value for c in bot.tree.get_command("why").get_parameter("method").choices] == [
        "gradcam",
        "guided-gradcam",
        "lime",
    ]
    assert [c.value for c in bot.tree.get_command("unfollow").get_parameter("source").choices] == [
        "x",
        "bluesky",
        "mastodon",
    ]
    assert "@user@instance" in bot.tree.get_command("follow").get_parameter("handle").description


def test_slash_command_callbacks_reach_the_adapter(store, media_ids):
    bot = IllustfeedBot(DiscordConfig(token="x", allowed_user_ids=(OWNER_ID,)), store)
    fake = interaction(bot.chat)
    run(bot.tree.get_command("label").callback(fake, str(media_ids[0]), "photo"))
    assert only_call(fake)[1] == f"Media {media_ids[0]} labelled photo."
    fake = interaction(bot.chat)
    run(bot.tree.get_command("unfollow").callback(fake, "x", "alice"))
    assert only_call(fake)[1] == "Unfollowed alice on x; its stored posts stay."
    fake = interaction(bot.chat)
    run(bot.tree.get_command("stats").callback(fake))
    assert only_call(fake)[1].startswith("Media: 3 (")


def test_no_token_is_a_clear_error_and_the_token_never_shows(store, tmp_path):
    with pytest.raises(DiscordTokenMissing, match="ILLUSTFEED_DISCORD_TOKEN"):
        create_bot(DiscordConfig(), store)
    config = load_config(None, environ={"ILLUSTFEED_DISCORD_TOKEN": "sekrit-token"})
    assert config.discord.token == "sekrit-token" and "sekrit" not in repr(config)


def test_bad_feed_batch_size_names_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[discord]\nfeed_batch_size = 11\n")
    with pytest.raises(Exception, match="discord.feed_batch_size: must be 1..10, got 11"):
        load_config(path)


@dataclass
class FakeChannel:
    id: int
    sent: list = field(default_factory=list)

    async def send(self, content, **kwargs):
        self.sent.append((content, kwargs))
        return SimpleNamespace(id=9000 + len(self.sent))


def test_feed_posts_illustrations_in_batches_once_and_credits_authors(store, media_ids):
    store.execute("UPDATE review_queue SET state = 'done'")
    for media_id in media_ids[:2]:
        review.record_label(store, media_id, "illustration", by="discord:1", via="discord")
    channel = FakeChannel(42)
    settings = DiscordConfig(feed_batch_size=2)
    assert run(post_feed_batch(store, channel, settings)) == 2
    assert run(post_feed_batch(store, channel, settings)) == 1
    assert run(post_feed_batch(store, channel, settings)) == 0
    (first, first_kwargs), (second, _) = channel.sent
    assert first.startswith("1. by Alice (@alice on x) - https://x.example/alice/status/1\n2. by Alice")
    assert [f.filename for f in first_kwargs["files"]] == [f"illustfeed-{m}.png" for m in media_ids[:2]]
    assert first_kwargs["suppress_embeds"] is True
    assert store.query("SELECT media_id, message_id FROM feed_posts ORDER BY media_id") == [
        {"media_id": media_ids[0], "message_id": "9001"},
        {"media_id": media_ids[1], "message_id": "9001"},
        {"media_id": media_ids[2], "message_id": "9002"},
    ]


def test_a_failed_feed_post_is_retried(store, media_ids):
    class BrokenChannel(FakeChannel):
        async def send(self, content, **kwargs):
            raise discord.HTTPException(SimpleNamespace(status=500, reason="boom"), "boom")

    with pytest.raises(discord.HTTPException):
        run(post_feed_batch(store, BrokenChannel(42), DiscordConfig()))
    assert store.scalar("SELECT COUNT(*) FROM feed_posts") == 0
    assert run(post_feed_batch(store, FakeChannel(42), DiscordConfig())) == 1


def test_setup_hook_syncs_to_the_guild_registers_persistent_buttons_and_starts_the_feed(store, monkeypatch):
    bot = IllustfeedBot(DiscordConfig(token="x", guild_id=1234, feed_channel_id=42), store)
    synced = []

    async def fake_sync(*, guild=None):
        synced.append(guild.id if guild else None)
        return bot.tree.get_commands(guild=guild)

    monkeypatch.setattr(bot.tree, "sync", fake_sync)

    async def start_and_close():
        await bot.setup_hook()
        feed_running = bot.feed_task is not None and not bot.feed_task.done()
        await bot.close()
        await asyncio.sleep(0)
        return feed_running, bot.feed_task.cancelled()

    assert run(start_and_close()) == (True, True)
    assert synced == [1234]
    assert sorted(c.name for c in bot.tree.get_commands(guild=discord.Object(1234)))[:2] == ["follow", "label"]
    # After a restart a press on an old message is routed by its custom id alone.
    patterns = bot._connection._view_store._dynamic_items
    ((pattern, factory),) = patterns.items()
    assert factory is ReviewButton and pattern.fullmatch(custom_id(17, "screenshot"))


def test_reports_go_to_the_report_channel_with_an_optional_png(store):
    bot = IllustfeedBot(DiscordConfig(token="x", report_channel_id=77), store)
    channel = FakeChannel(77)
    bot.get_channel = {77: channel}.get
    run(bot.post_report("retrain: model m2 promoted", png=b"\x89PNG fake"))
    run(bot.post_report("crawl: x @bob failed"))
    (first, first_kwargs), (second, second_kwargs) = channel.sent
    assert first == "retrain: model m2 promoted" and first_kwargs["files"][0].filename == "report.png"
    assert first_kwargs["files"][0].fp.read() == b"\x89PNG fake"
    assert second == "crawl: x @bob failed" and second_kwargs["files"] == []
    silent = IllustfeedBot(DiscordConfig(token="x"), store)
    silent.get_channel = {}.__getitem__  # any lookup would raise: no report channel means no message
    run(silent.post_report("nobody hears this"))


@pytest.mark.parametrize("post_backlog, expected_posts", [(False, 0), (True, 1)])
def test_feed_loop_posts_only_new_illustrations_unless_asked_for_the_backlog(
    store, media_ids, post_backlog, expected_posts
):
    bot = IllustfeedBot(DiscordConfig(token="x", feed_channel_id=42, feed_post_backlog=post_backlog), store)
    channel = FakeChannel(42)
    bot.get_channel = {42: channel}.get

    async def ready():
        return None

    bot.wait_until_ready = ready

    async def one_tick():
        task = asyncio.create_task(bot.feed_loop())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(one_tick())
    assert len(channel.sent) == expected_posts  # media_ids[2] is the one stored illustration
    assert store.query("SELECT media_id, message_id IS NULL AS skipped FROM feed_posts") == [
        {"media_id": media_ids[2], "skipped": int(not post_backlog)}
    ]


def test_why_runs_only_the_explainer_off_the_loop_thread_and_reports_its_failure(store, media_ids):
    import threading

    threads = []

    def broken(path, method):
        threads.append(threading.current_thread())
        raise RuntimeError("model file unreadable")

    chat = ChatAdapter(store, Permissions(), explainer=broken)
    fake = interaction(chat)
    run(chat.why(fake, str(media_ids[0]), "gradcam"))
    assert threads and threads[0] is not threading.main_thread()
    (defer, _, _), (followup, content, kwargs) = fake.sent
    assert "fresh gradcam explanation failed: model file unreadable" in content and len(kwargs["files"]) == 1
    unknown = interaction(chat)
    run(chat.why(unknown, "4242"))
    assert only_call(unknown)[1] == "no media with id 4242" and len(threads) == 1


def test_follow_uses_the_configured_mastodon_instance_and_sources_lists_config_accounts(store):
    config = parse_config({"sources": {"mastodon": {"instance": "example.social"}, "x": {"accounts": ["inkwell"]}}})
    chat = ChatAdapter(store, Permissions(frozenset({OWNER_ID})), config=config)
    fake = interaction(chat)
    run(chat.follow(fake, "mastodon", "painter"))
    assert only_call(fake)[1] == "Now following painter@example.social on mastodon."
    fake = interaction(chat)
    run(chat.sources(fake))
    assert "x (enabled): config inkwell;" in only_call(fake)[1]
