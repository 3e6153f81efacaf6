"""Discord transport: slash commands, persistent review buttons and the feed channel over `bot.chat.commands`.

This module only translates: an interaction becomes an `Actor` and a call into `bot.chat.commands`, and the
`Reply` becomes message content, files and buttons. Buttons are `DynamicItem`s whose custom id carries the
media id and the answer (`illustfeed:label:<media_id>:<answer>`), so they keep working after a restart.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path
from typing import Any, Callable, Literal

import discord
from discord import app_commands

from bot.chat import commands
from bot.chat.commands import Actor, Explainer, Permissions, Reply
from bot.config import Config, DiscordConfig
from bot.feed import channel as feed_channel
from bot.sources import HANDLE_HELP, NETWORK_NAMES
from storage import LABELS, Store, StoreError

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # characters of content per Discord message
CUSTOM_ID_PREFIX = "illustfeed:label"
CUSTOM_ID_PATTERN = rf"{CUSTOM_ID_PREFIX}:(?P<media_id>[0-9]+):(?P<answer>[a-z]+)"
BUTTON_STYLES = {"illustration": discord.ButtonStyle.success, "skip": discord.ButtonStyle.secondary}
# Discord ids in replies ("discord:123") are shown as mentions; AllowedMentions.none() keeps them silent.
DISCORD_BY = re.compile(r"discord:([0-9]+)")


class DiscordTokenMissing(RuntimeError):
    """No bot token in ILLUSTFEED_DISCORD_TOKEN or [discord] token."""


async def _explained_in_thread(explainer: Explainer, image_path: Path, method: str) -> Explainer:
    """Run `explainer` in a worker thread now and return one that replays its result (or its error), so the
    command layer and the store stay on the loop thread."""
    try:
        result = await asyncio.to_thread(explainer, image_path, method)
    except Exception as error:  # replayed inside commands.why, which reports it
        failure = error  # `error` is unbound when the except block ends

        def replay_error(_path: Path, _method: str) -> tuple[bytes, str]:
            raise failure

        return replay_error
    return lambda _path, _method: result


def custom_id(media_id: int, answer: str) -> str:
    return f"{CUSTOM_ID_PREFIX}:{media_id}:{answer}"


class ReviewButton(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID_PATTERN):
    """One answer for one media; rebuilt from its custom id by discord.py when pressed, even after a restart."""

    def __init__(self, media_id: int, answer: str, text: str | None = None):
        super().__init__(
            discord.ui.Button(
                label=text or answer.title(),
                custom_id=custom_id(media_id, answer),
                style=BUTTON_STYLES.get(answer, discord.ButtonStyle.primary),
            )
        )
        self.media_id = media_id
        self.answer = answer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
    ) -> "ReviewButton":
        return cls(int(match["media_id"]), match["answer"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.chat.press(interaction, self.media_id, self.answer)


def render(reply: Reply) -> dict[str, Any]:
    """Keyword arguments for send_message / edit_message / followup.send."""
    content = DISCORD_BY.sub(r"<@\1>", reply.text)
    if len(content) > MESSAGE_LIMIT:
        content = content[: MESSAGE_LIMIT - 1] + "…"
    view = None
    if reply.choices:
        view = discord.ui.View(timeout=None)
        for choice in reply.choices:
            view.add_item(ReviewButton(choice.media_id, choice.answer, choice.text))
    return {
        "content": content,
        "files": [discord.File(a.path, filename=a.filename, description=a.description) for a in reply.attachments],
        "view": view,
        "allowed_mentions": discord.AllowedMentions.none(),
    }


class ChatAdapter:
    """Each slash command and button press: who is asking, which command, how the reply is sent."""

    def __init__(
        self,
        store: Store,
        permissions: Permissions,
        explainer: Explainer | None = None,
        on_retrain_requested: Callable[[], None] | None = None,
        config: Config | None = None,
    ):
        self.store = store
        self.permissions = permissions
        self.explainer = explainer
        self.on_retrain_requested = on_retrain_requested
        self.config = config or Config()  # for /sources (configured accounts) and Mastodon handles

    def actor(self, user: discord.abc.User) -> Actor:
        role_ids = [role.id for role in getattr(user, "roles", ())]  # a Member has roles, a DM User none
        return Actor(
            by=f"discord:{user.id}",
            via="discord",
            name=str(user),
            authorised=self.permissions.allows(user.id, role_ids),
        )

    async def send(self, interaction: discord.Interaction, reply: Reply) -> None:
        kwargs = render(reply)
        if kwargs["view"] is None:
            del kwargs["view"]  # followup.send rejects view=None
        ephemeral = reply.private or not reply.ok
        if interaction.response.is_done():
            await interaction.followup.send(ephemeral=ephemeral, **kwargs)
        else:
            await interaction.response.send_message(ephemeral=ephemeral, **kwargs)

    # Slash commands -------------------------------------------------------------------------------------

    async def review(self, interaction: discord.Interaction) -> None:
        await self.send(interaction, commands.next_review(self.store))

    async def label(self, interaction: discord.Interaction, media: str, label: str) -> None:
        await self.send(interaction, commands.label(self.store, self.actor(interaction.user), media, label))

    async def undo(self, interaction: discord.Interaction) -> None:
        await self.send(interaction, commands.undo(self.store, self.actor(interaction.user)))

    async def why(self, interaction: discord.Interaction, media: str, method: str = "gradcam") -> None:
        explainer = self.explainer
        image_path = self._media_file(media)
        if explainer is not None and image_path is not None and method in commands.EXPLAIN_METHODS:
            # A fresh explanation runs the network for seconds: acknowledge now, compute in a worker thread.
            await interaction.response.defer(thinking=True)
            explainer = await _explained_in_thread(explainer, image_path, method)
        await self.send(interaction, commands.why(self.store, media, method, explainer))

    def _media_file(self, media: str) -> Path | None:
        try:
            return self.store.media_path(self.store.resolve_media(media))
        except StoreError:
            return None  # commands.why names the problem

    async def stats(self, interaction: discord.Interaction) -> None:
        await self.send(interaction, commands.stats(self.store))

    async def retrain(self, interaction: discord.Interaction) -> None:
        actor = self.actor(interaction.user)
        await self.send(interaction, commands.request_retrain(self.store, actor, self.on_retrain_requested))

    async def follow(self, interaction: discord.Interaction, source: str, handle: str, followed: bool = True) -> None:
        await self.send(
            interaction,
            commands.follow(
                self.store,
                self.actor(interaction.user),
                source,
                handle,
                followed,
                self.config.sources.mastodon.instance,
            ),
        )

    async def sources(self, interaction: discord.Interaction) -> None:
        await self.send(interaction, commands.sources(self.store, self.config))

    # Buttons --------------------------------------------------------------------------------------------

    async def press(self, interaction: discord.Interaction, media_id: int, answer: str) -> None:
        """Record the answer and show the next item in place of this one; refusals go to the presser only."""
        reply = commands.review_answer(self.store, self.actor(interaction.user), media_id, answer)
        if not reply.ok:
            await self.send(interaction, reply)
            return
        kwargs = render(reply)
        kwargs["attachments"] = kwargs.pop("files")  # edit_message replaces the old files with these
        await interaction.response.edit_message(**kwargs)
        if reply.notice:
            await interaction.followup.send(
                DISCORD_BY.sub(r"<@\1>", reply.notice), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )


# Literal of a tuple is the Literal of its items: Discord shows them as the option's choices.
Label = Literal[LABELS]
Method = Literal[commands.EXPLAIN_METHODS]
Source = Literal[NETWORK_NAMES]


# Commands that take no options: the slash command name is also the ChatAdapter method.
COMMANDS_WITHOUT_OPTIONS = ("review", "undo", "stats", "retrain", "sources")


def _forward(method: Callable[[discord.Interaction], Any]) -> Callable[[discord.Interaction], Any]:
    # A plain function: discord.py reads the callback's signature, and a bound method's would confuse it.
    async def callback(interaction: discord.Interaction) -> None:
        await method(interaction)

    return callback


def build_tree(client: discord.Client, chat: ChatAdapter) -> app_commands.CommandTree:
    """The slash commands; each one hands its interaction to `chat`."""
    described = commands.CHAT_COMMANDS
    tree = app_commands.CommandTree(client)
    for name in COMMANDS_WITHOUT_OPTIONS:
        tree.add_command(
            app_commands.Command(name=name, description=described[name], callback=_forward(getattr(chat, name)))
        )

    @tree.command(name="label", description=described["label"])
    @app_commands.describe(media="media id or sha256 prefix", label="what the image is")
    async def label(interaction: discord.Interaction, media: str, label: Label) -> None:
        await chat.label(interaction, media, label)

    @tree.command(name="why", description=described["why"])
    @app_commands.describe(media="media id or sha256 prefix", method="explanation method")
    async def why(interaction: discord.Interaction, media: str, method: Method = "gradcam") -> None:
        await chat.why(interaction, media, method)

    for name, followed in (("follow", True), ("unfollow", False)):
        tree.add_command(
            app_commands.Command(name=name, description=described[name], callback=_follow_callback(chat, followed))
        )
    missing = set(described) - {command.name for command in tree.get_commands()}
    if missing:  # a command registered in bot.chat.commands without its Discord wiring
        raise RuntimeError(f"chat commands without a slash command: {', '.join(sorted(missing))}")
    return tree


def _follow_callback(chat: ChatAdapter, followed: bool) -> Callable[..., Any]:
    @app_commands.describe(source="network", handle=HANDLE_HELP)
    async def callback(interaction: discord.Interaction, source: Source, handle: str) -> None:
        await chat.follow(interaction, source, handle, followed)

    return callback


def feed_channel_key(channel_id: int) -> str:
    return f"discord:{channel_id}"


class IllustfeedBot(discord.Client):
    """The Discord client: syncs the commands to the configured guild and posts the feed in batches."""

    def __init__(
        self,
        settings: DiscordConfig,
        store: Store,
        explainer: Explainer | None = None,
        on_retrain_requested: Callable[[], None] | None = None,
        config: Config | None = None,
    ):
        # Slash commands and buttons need no privileged intent: roles come with each interaction's member.
        super().__init__(intents=discord.Intents.default())
        self.settings = settings
        self.store = store
        permissions = Permissions(frozenset(settings.allowed_user_ids), frozenset(settings.allowed_role_ids))
        self.chat = ChatAdapter(store, permissions, explainer, on_retrain_requested, config)
        self.tree = build_tree(self, self.chat)
        self.feed_task: asyncio.Task | None = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ReviewButton)
        if self.settings.guild_id:
            guild = discord.Object(id=self.settings.guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d slash commands to %s", len(synced), self.settings.guild_id or "all guilds")
        if self.settings.feed_channel_id:
            self.feed_task = asyncio.create_task(self.feed_loop(), name="illustfeed-discord-feed")

    async def close(self) -> None:
        if self.feed_task is not None:
            self.feed_task.cancel()
        await super().close()

    async def channel(self, channel_id: int) -> discord.abc.Messageable:
        return self.get_channel(channel_id) or await self.fetch_channel(channel_id)

    async def feed_loop(self) -> None:
        await self.wait_until_ready()
        if not self.settings.feed_post_backlog:
            skipped = feed_channel.skip_feed_backlog(
                self.store, feed_channel_key(self.settings.feed_channel_id), self.chat.config.feed.rule
            )
            if skipped:
                log.info(
                    "feed channel %s starts after %d stored illustrations (feed_post_backlog = false)",
                    self.settings.feed_channel_id,
                    skipped,
                )
        while not self.is_closed():
            try:
                await post_feed_batch(
                    self.store,
                    await self.channel(self.settings.feed_channel_id),
                    self.settings,
                    self.chat.config.feed.rule,
                )
            except (discord.HTTPException, OSError) as error:
                # Not marked as posted: the same items go out at the next tick.
                log.warning("posting to feed channel %s failed: %s", self.settings.feed_channel_id, error)
            await asyncio.sleep(self.settings.feed_interval_seconds)

    async def post_report(self, text: str, png: bytes | None = None) -> None:
        """For the runner: a message in the report channel (retrain results, crawl errors), with an optional
        PNG (a confusion matrix, say), when a report channel is set."""
        if self.settings.report_channel_id:
            channel = await self.channel(self.settings.report_channel_id)
            files = [discord.File(io.BytesIO(png), filename="report.png")] if png is not None else []
            await channel.send(text[:MESSAGE_LIMIT], files=files, allowed_mentions=discord.AllowedMentions.none())


async def post_feed_batch(
    store: Store, channel: discord.abc.Messageable, settings: DiscordConfig, rule: str = feed_channel.DEFAULT_FEED_RULE
) -> int:
    """Post one message with the next unposted illustrations; returns how many it carried. One message per
    interval stays far below Discord's per-channel rate limit (5 messages / 5 s)."""
    key = feed_channel_key(channel.id)
    batch = feed_channel.feed_batch(store, key, settings.feed_batch_size, settings.feed_max_attachment_bytes, rule)
    if not batch.items:
        return 0
    files = [
        discord.File(
            item.image_path,
            filename=f"illustfeed-{item.media_id}{item.image_path.suffix}",
            description=item.caption[:1024],
        )
        for item in batch.attached
    ]
    # Link previews of every post would bury the images.
    message = await channel.send(
        batch.text[:MESSAGE_LIMIT], files=files, suppress_embeds=True, allowed_mentions=discord.AllowedMentions.none()
    )
    feed_channel.mark_feed_posted(store, key, [item.media_id for item in batch.items], str(message.id))
    return len(batch.items)


def create_bot(
    settings: DiscordConfig,
    store: Store,
    explainer: Explainer | None = None,
    on_retrain_requested: Callable[[], None] | None = None,
    config: Config | None = None,
) -> IllustfeedBot:
    """The bot, not yet connected. `config` (the whole configuration) lets /sources show configured accounts."""
    if not settings.token:
        raise DiscordTokenMissing("no Discord bot token: set ILLUSTFEED_DISCORD_TOKEN or [discord] token")
    return IllustfeedBot(settings, store, explainer, on_retrain_requested, config)


async def run_bot(
    settings: DiscordConfig,
    store: Store,
    explainer: Explainer | None = None,
    on_retrain_requested: Callable[[], None] | None = None,
    config: Config | None = None,
) -> None:
    """The async entry the runner starts inside its loop; returns when the bot is closed or cancelled."""
    bot = create_bot(settings, store, explainer, on_retrain_requested, config)
    async with bot:
        await bot.start(settings.token)
