"""Chat commands without a transport: plain functions over the store that return `Reply` objects.

The Discord adapter (`bot/chat/discord_bot.py`) and the terminal (`bot/cli/chat.py`) both call these and only
render the replies, so every behaviour here is testable on a real store without Discord.

Conventions shared with the classifier and the runner:
- `review_queue.priority`: higher is reviewed first. The classifier (`classifier.inference.decide`) writes
  1 - margin there, so the most uncertain call comes first; ties go to the oldest row.
- `labels.by` is a stable identity (`discord:<user id>`, or the terminal's user name), `labels.via` the
  interface ("discord", "cli"). A correction adds a row; `/undo` sets `revoked_at`; the latest row counts.
- `retrain_requests`: a row with `started_at` NULL is a pending request. The runner calls
  `claim_retrain_request` before training and `finish_retrain_request` after it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bot.sources import follows
from bot.config import Config, FeedConfig
from bot.feed.queries import RULE_COLUMNS, credits_for
from bot.sources.follows import FollowError
from bot.status import store_status
from storage import LABELS, Store, StoreError, utc_now
from storage.store import DB_FILENAME

log = logging.getLogger(__name__)

SKIP = "skip"
# (terminal key, button text, answer): the answers a review item offers, in display order.
REVIEW_CHOICES: tuple[tuple[str, str, str], ...] = (
    ("i", "Illustration", "illustration"),
    ("s", "Screenshot", "screenshot"),
    ("p", "Photo", "photo"),
    ("k", "Skip", SKIP),
)
REVIEW_ANSWERS = tuple(answer for _key, _text, answer in REVIEW_CHOICES)
EXPLAIN_METHODS = ("gradcam", "guided-gradcam", "lime")  # explain.media.METHODS
OVERLAY_EXTS = ("png", "gif")
DEFAULT_FEED_RULE = FeedConfig.rule  # the Discord feed channel shows what the web feed shows


# --- who is asking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """The person behind a command: `by` is recorded in label rows, `authorised` gates every write."""

    by: str
    via: str
    name: str
    authorised: bool


@dataclass(frozen=True)
class Permissions:
    """Who may write (label, skip, undo, retrain, follow): configured user ids, or members of configured roles."""

    allowed_user_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()

    def allows(self, user_id: int, role_ids: Iterable[int] = ()) -> bool:
        return user_id in self.allowed_user_ids or not self.allowed_role_ids.isdisjoint(role_ids)


# --- replies --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    path: Path
    description: str

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Choice:
    """A button or key: `answer` (a label or "skip") applies to `media_id`."""

    key: str
    text: str
    answer: str
    media_id: int


@dataclass(frozen=True)
class Reply:
    """What a command answers. `ok` False is a refusal or an error; `private` replies go to the caller only."""

    text: str
    ok: bool = True
    private: bool = False
    attachments: tuple[Attachment, ...] = ()
    choices: tuple[Choice, ...] = ()
    item: "ReviewItem | None" = None
    notice: str | None = None  # for the caller alone, e.g. that someone else labelled the item first


def refusal(text: str) -> Reply:
    return Reply(text, ok=False, private=True)


NOT_ALLOWED = "You are not allowed to do that here: ask the bot's owner to add your user id or role to [discord]."


# --- review ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewItem:
    media_id: int
    image_path: Path
    overlay_path: Path | None
    probabilities: dict[str, float] | None
    predicted: str | None
    model_version: str | None
    author: str | None
    post_url: str | None
    reason: str
    pending: int  # queue size including this item


def overlay_path(store: Store, overlay_sha256: str | None) -> Path | None:
    """The stored overlay file (PNG for stills, GIF for animations) of a prediction, if it exists."""
    if not overlay_sha256:
        return None
    for ext in OVERLAY_EXTS:
        if store.derived.exists(overlay_sha256, ext):
            return store.derived.path(overlay_sha256, ext)
    return None


def media_origin(store: Store, media_id: int) -> tuple[str | None, str | None]:
    """(author as "Name (@handle on source)", post url) of the first post that carried the media."""
    credit = credits_for(store, [media_id]).get(media_id)
    if credit is None:
        return None, None
    handle = f"@{credit.handle} on {credit.source}"
    return (f"{credit.display_name} ({handle})" if credit.display_name else handle), credit.post_url


def review_item(store: Store, media_id: int, reason: str = "", pending: int = 0) -> ReviewItem:
    prediction = store.query_one("SELECT * FROM latest_prediction WHERE media_id = ?", (media_id,))
    author, post_url = media_origin(store, media_id)
    return ReviewItem(
        media_id=media_id,
        image_path=store.media_path(media_id),
        overlay_path=overlay_path(store, prediction["overlay_sha256"]) if prediction else None,
        probabilities={label: prediction[f"prob_{label}"] for label in LABELS} if prediction else None,
        predicted=prediction["label"] if prediction else None,
        model_version=prediction["model_version"] if prediction else None,
        author=author, post_url=post_url, reason=reason, pending=pending,
    )


def format_item(item: ReviewItem) -> str:
    return f"Media {item.media_id} ({item.pending} waiting for review)\n{item_details(item)}"


def item_details(item: ReviewItem) -> str:
    """The call, why it was queued, and where the image came from."""
    lines = []
    if item.probabilities is not None:
        probabilities = "  ".join(f"{label} {item.probabilities[label]:.0%}" for label in LABELS)
        lines.append(f"Model {item.model_version} says {item.predicted}: {probabilities}")
    else:
        lines.append("Not classified yet.")
    if item.reason:
        lines.append(f"Queued because: {item.reason}")
    lines.append(f"By {item.author or 'unknown author'}" + (f" - {item.post_url}" if item.post_url else ""))
    return "\n".join(lines)


def item_reply(item: ReviewItem, prefix: str = "") -> Reply:
    attachments = []
    # A file missing on disk (restored database, deleted blob) must not break the reply.
    if item.image_path.is_file():
        attachments.append(Attachment(item.image_path, f"image of media {item.media_id}"))
    if item.overlay_path is not None:
        attachments.append(Attachment(item.overlay_path, f"Grad-CAM overlay of media {item.media_id}"))
    choices = tuple(Choice(key, text, answer, item.media_id) for key, text, answer in REVIEW_CHOICES)
    text = f"{prefix}\n\n{format_item(item)}" if prefix else format_item(item)
    return Reply(text, attachments=tuple(attachments), choices=choices, item=item)


def next_review(store: Store, prefix: str = "", notice: str | None = None) -> Reply:
    """The most uncertain pending item (highest priority first), or a reply saying the queue is empty."""
    pending = store.query(
        "SELECT q.media_id, q.reason FROM review_queue q JOIN media m ON m.id = q.media_id "
        "WHERE q.state = 'pending' AND m.status = 'ok' ORDER BY q.priority DESC, q.created_at, q.media_id")
    if not pending:
        text = "The review queue is empty."
        return Reply(f"{prefix}\n\n{text}" if prefix else text, notice=notice)
    head = pending[0]
    reply = item_reply(review_item(store, head["media_id"], head["reason"], len(pending)), prefix)
    return dataclasses.replace(reply, notice=notice)


def _describe_label(row: dict) -> str:
    return f"{row['label']} by {row['by']} via {row['via']} at {row['at']}"


def _record_label(store: Store, actor: Actor, media_id: int, label: str) -> tuple[str, bool]:
    """Add the label row; returns (what happened, whether the media already had a label). The read and the
    write share one transaction, so two reviewers answering at once are ordered and the second one learns
    about the first."""
    with store.transaction():
        previous = store.current_label(media_id)
        store.add_label(media_id, label, by=actor.by, via=actor.via)
    if previous is None:
        return f"Media {media_id} labelled {label}.", False
    if previous["by"] == actor.by and previous["label"] == label:
        return f"Media {media_id} labelled {label} again (you had already labelled it).", False
    return (f"Media {media_id} was already labelled {_describe_label(previous)}; "
            f"your {label} is recorded too and now counts (history keeps both)."), True


def review_answer(store: Store, actor: Actor, media_id: int, answer: str) -> Reply:
    """A press on a review item: record the label (or skip) and show the next item."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    if answer not in REVIEW_ANSWERS:
        return refusal(f"Unknown answer {answer!r}; expected one of {', '.join(REVIEW_ANSWERS)}.")
    try:
        store.media(media_id)
        if answer == SKIP:
            outcome, already_labelled = _skip(store, media_id)
        else:
            outcome, already_labelled = _record_label(store, actor, media_id, answer)
    except StoreError as error:
        return refusal(str(error))
    return next_review(store, prefix=outcome, notice=outcome if already_labelled else None)


def _skip(store: Store, media_id: int) -> tuple[str, bool]:
    with store.transaction():
        current = store.current_label(media_id)
        skipped = store.execute(
            "UPDATE review_queue SET state = 'skipped', updated_at = ? WHERE media_id = ? AND state = 'pending'",
            (utc_now(), media_id)).rowcount
    if skipped:
        return f"Media {media_id} skipped.", False
    if current is not None:
        return f"Media {media_id} was already labelled {_describe_label(current)}; nothing skipped.", True
    return f"Media {media_id} is not waiting for review; nothing skipped.", False


# --- labels ---------------------------------------------------------------------------------------------


def label(store: Store, actor: Actor, media_reference: str | int, label_name: str) -> Reply:
    """`/label media label`: record a human label for a media id or sha256 prefix."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    if label_name not in LABELS:
        return refusal(f"Unknown label {label_name!r}; expected one of {', '.join(LABELS)}.")
    try:
        media_id = store.resolve_media(media_reference)
        outcome, already_labelled = _record_label(store, actor, media_id, label_name)
        return Reply(outcome, notice=outcome if already_labelled else None)
    except StoreError as error:
        return refusal(str(error))


def undo(store: Store, actor: Actor) -> Reply:
    """Revoke the caller's latest label; the row stays as history. A reviewed item goes back to the queue
    when no other label remains."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    with store.transaction():
        last = store.query_one(
            'SELECT * FROM labels WHERE "by" = ? AND revoked_at IS NULL ORDER BY id DESC LIMIT 1', (actor.by,))
        if last is None:
            return refusal("You have no label to undo.")
        now = utc_now()
        store.execute("UPDATE labels SET revoked_at = ? WHERE id = ?", (now, last["id"]))
        media_id = last["media_id"]
        current = store.current_label(media_id)
        requeued = 0
        if current is None:
            requeued = store.execute(
                "UPDATE review_queue SET state = 'pending', updated_at = ? WHERE media_id = ? AND state = 'done'",
                (now, media_id)).rowcount
    text = f"Undid your {last['label']} on media {media_id}."
    if current is not None:
        text += f" It is now {_describe_label(current)}."
    elif requeued:
        text += " It has no label now and is back in the review queue."
    else:
        text += " It has no human label now."
    return Reply(text)


# --- explanations ---------------------------------------------------------------------------------------

# (image file, method) -> (encoded overlay bytes, "png" | "gif"). Built from the active model by the app;
# raises for anything it cannot explain.
Explainer = Callable[[Path, str], tuple[bytes, str]]


class ActiveModelExplainer:
    """An Explainer over the active model (else the shipped default), loaded on first use and reloaded when
    another model becomes active. It runs in a worker thread, so it reads the models table through its own
    read-only connection, and one explanation runs at a time (Grad-CAM hooks the shared model)."""

    def __init__(self, config: Config):
        self.config = config
        self._loaded: tuple[Path, Any] | None = None
        self._lock = threading.Lock()

    def active_model_path(self) -> Path:
        from classifier.versions import default_model_file

        database = (self.config.data_path / DB_FILENAME).resolve()
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT path FROM models WHERE active = 1").fetchone()
        return Path(row[0]) if row else default_model_file()

    def __call__(self, image_path: Path, method: str) -> tuple[bytes, str]:
        from bot.cli.explain import model_frame_views, model_probabilities
        from classifier.runtime import load_classifier
        from explain.media import explain_image

        model_path = self.active_model_path()
        with self._lock:
            if self._loaded is None or self._loaded[0] != model_path:
                self._loaded = (model_path, load_classifier(None, self.config, str(model_path)))
            model = self._loaded[1]
            overlay = explain_image(model, image_path, method=method, labels=tuple(getattr(model, "labels", LABELS)),
                                    frame_views=model_frame_views(model), probabilities_of=model_probabilities(model),
                                    max_frames=self.config.classifier.max_frames)
        return overlay.data, overlay.ext


def why(store: Store, media_reference: str | int, method: str = "gradcam",
        explainer: Explainer | None = None) -> Reply:
    """`/why media [method]`: a fresh overlay when an explainer is available, else the stored Grad-CAM."""
    if method not in EXPLAIN_METHODS:
        return refusal(f"Unknown explanation method {method!r}; expected one of {', '.join(EXPLAIN_METHODS)}.")
    try:
        media_id = store.resolve_media(media_reference)
        image_path = store.media_path(media_id)
    except StoreError as error:
        return refusal(str(error))
    item = review_item(store, media_id)
    summary = item_details(item)
    note = "Fresh explanations are unavailable (no explainer or active model loaded)."
    if explainer is not None:
        try:
            data, ext = explainer(image_path, method)
        except Exception as error:  # the edge: a failed explanation is reported, the stored one still shown
            log.warning("explaining media %s with %s failed: %s", media_id, method, error)
            note = f"A fresh {method} explanation failed: {error}"
        else:
            fresh = store.derived.path(store.derived.put(data, ext), ext)
            return Reply(f"Media {media_id}: fresh {method} explanation.\n{summary}",
                         attachments=(Attachment(fresh, f"{method} overlay of media {media_id}"),))
    if item.overlay_path is None:
        return Reply(f"Media {media_id} has no stored overlay. {note}\n{summary}", ok=False)
    return Reply(f"Media {media_id}: stored Grad-CAM overlay. {note}\n{summary}",
                 attachments=(Attachment(item.overlay_path, f"Grad-CAM overlay of media {media_id}"),))


# --- stats and retraining -------------------------------------------------------------------------------


def stats_data(store: Store) -> dict:
    status = store_status(store)
    active = store.active_model()
    since = active["created_at"] if active else ""
    status["labels_since_model"] = store.scalar(
        "SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND at > ?", (since,))
    status["active_model_metrics"] = json.loads(active["metrics"]) if active and active["metrics"] else {}
    status["retrain_pending"] = pending_retrain_request(store) is not None
    return status


def _format_metrics(metrics: dict) -> str:
    shown = [f"{name} {value:.3f}" for name, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return ", ".join(shown) or "none recorded"


def stats(store: Store) -> Reply:
    data = stats_data(store)
    labels = ", ".join(f"{name} {count}" for name, count in sorted(data["by_label"].items())) or "none yet"
    lines = [
        f"Media: {data['media_total']} ({labels}; undecided {data['undecided']})",
        f"Review queue: {data['review_pending']} pending",
        f"Human labels: {data['labels_total']}, {data['labels_since_model']} since the active model",
        f"Active model: {data['active_model'] or 'none'}",
    ]
    if data["active_model"]:
        lines.append(f"Metrics: {_format_metrics(data['active_model_metrics'])}")
    if data["retrain_pending"]:
        lines.append("A retrain is queued.")
    return Reply("\n".join(lines))


def pending_retrain_request(store: Store) -> dict | None:
    return store.query_one("SELECT * FROM retrain_requests WHERE started_at IS NULL ORDER BY id LIMIT 1")


def request_retrain(store: Store, actor: Actor, notify: Callable[[], None] | None = None) -> Reply:
    """`/retrain`: queue one retrain request (repeats join the pending one); `notify` wakes the runner."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    with store.transaction():
        pending = pending_retrain_request(store)
        if pending is None:
            request_id = store.execute(
                "INSERT INTO retrain_requests (requested_by, via, requested_at) VALUES (?, ?, ?)",
                (actor.by, actor.via, utc_now())).lastrowid
    if pending is not None:
        return Reply(f"A retrain is already queued (request {pending['id']} by {pending['requested_by']} "
                     f"at {pending['requested_at']}).")
    if notify is not None:
        notify()
    return Reply(f"Retrain queued (request {request_id}); the runner starts it at its next check.")


def claim_retrain_request(store: Store) -> dict | None:
    """For the runner: mark every pending request started and return the oldest, or None."""
    with store.transaction():
        pending = pending_retrain_request(store)
        if pending is not None:
            store.execute("UPDATE retrain_requests SET started_at = ? WHERE started_at IS NULL", (utc_now(),))
    return pending


def finish_retrain_request(store: Store, request_id: int, result: str) -> None:
    """For the runner: record the outcome ("new model v7", "failed: ...") of the requests it claimed."""
    store.execute("UPDATE retrain_requests SET finished_at = ?, result = ? "
                  "WHERE started_at IS NOT NULL AND finished_at IS NULL AND id >= ?",
                  (utc_now(), result, request_id))


# --- sources --------------------------------------------------------------------------------------------


def follow(store: Store, actor: Actor, source: str, handle: str, followed: bool = True,
           mastodon_instance: str = "") -> Reply:
    """`/follow source handle` (and `/unfollow` with followed=False), through bot.sources.follows."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    change = follows.follow if followed else follows.unfollow
    try:
        result = change(store, source.strip().lower(), handle, mastodon_instance)
    except FollowError as error:
        return refusal(f"{error}.")
    name = f"{result['handle']} on {result['source']}"
    if followed:
        return Reply(f"Already following {name}." if result["was_followed"] else f"Now following {name}.")
    if result["was_followed"]:
        return Reply(f"Unfollowed {name}; its stored posts stay.")
    return Reply(f"{name} was not followed; it stays skipped even if a config list names it.")


def sources(store: Store, config: Config | None = None) -> Reply:
    """`/sources`: per source what is crawled, each account's last crawl and last error."""
    lines = []
    for item in follows.list_sources(store, config):
        state = "enabled" if item["enabled"] else "disabled"
        if item["source"] == "folder":
            lines.append(f"folder ({state}): {item['path']}, {item['accounts']} accounts")
            continue
        lines.append(f"{item['source']} ({state}): config {', '.join(item['configured_accounts']) or '-'}; "
                     f"followed {', '.join(item['followed']) or '-'}; "
                     f"unfollowed {', '.join(item['unfollowed']) or '-'}; reads today {item['reads_today']}")
        for account in item["accounts"]:
            if not account["followed"]:
                continue
            line = f"  - {account['handle']}: last crawl {account['last_crawl_at'] or 'never'}"
            if account["last_error"]:
                line += f", last error: {account['last_error']}"
            lines.append(line)
    return Reply("\n".join(lines))


# --- feed channel ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedItem:
    media_id: int
    image_path: Path
    size: int
    author: str | None
    post_url: str | None

    @property
    def caption(self) -> str:
        credit = f"by {self.author}" if self.author else "author unknown"
        return f"{credit} - {self.post_url}" if self.post_url else credit


@dataclass
class FeedBatch:
    """Items for one message; `linked` ones are too large to attach and are posted as links only."""

    attached: list[FeedItem] = field(default_factory=list)
    linked: list[FeedItem] = field(default_factory=list)

    @property
    def items(self) -> list[FeedItem]:
        return self.attached + self.linked

    @property
    def text(self) -> str:
        return "\n".join(f"{n}. {item.caption}" for n, item in enumerate(self.items, start=1))


def _unposted_illustrations(store: Store, channel: str, rule: str, limit: int = -1) -> list[dict]:
    """Media that are illustrations under the web feed's `rule` and that `channel` has not had, oldest first."""
    column = RULE_COLUMNS[rule]  # a fixed column name per rule, never user input
    return store.query(
        f"SELECT m.id, m.bytes FROM media_verdict v JOIN media m ON m.id = v.media_id "
        f"WHERE v.{column} = 'illustration' AND m.status = 'ok' "
        f"AND NOT EXISTS (SELECT 1 FROM feed_posts f WHERE f.media_id = m.id AND f.channel = ?) "
        f"ORDER BY m.id LIMIT ?", (channel, limit))


def skip_feed_backlog(store: Store, channel: str, rule: str = DEFAULT_FEED_RULE) -> int:
    """On a channel's first start, mark the illustrations already stored as seen (message_id NULL) so only
    new ones are posted; a channel that has had posts keeps its backlog. Returns how many were skipped."""
    with store.transaction():
        if store.scalar("SELECT 1 FROM feed_posts WHERE channel = ? LIMIT 1", (channel,)):
            return 0
        backlog = [row["id"] for row in _unposted_illustrations(store, channel, rule)]
        mark_feed_posted(store, channel, backlog, None)
    return len(backlog)


def feed_batch(store: Store, channel: str, limit: int, max_attachment_bytes: int,
               rule: str = DEFAULT_FEED_RULE) -> FeedBatch:
    """The oldest illustrations (under the web feed's `rule`) not yet posted to `channel`, at most `limit`,
    attachments kept under `max_attachment_bytes` in total."""
    rows = _unposted_illustrations(store, channel, rule, limit)
    batch = FeedBatch()
    attached_bytes = 0
    for row in rows:
        author, post_url = media_origin(store, row["id"])
        item = FeedItem(row["id"], store.media_path(row["id"]), row["bytes"] or 0, author, post_url)
        # A file gone from disk is linked, not attached: one missing blob must not stop the feed.
        if item.image_path.is_file() and attached_bytes + item.size <= max_attachment_bytes:
            batch.attached.append(item)
            attached_bytes += item.size
        else:
            batch.linked.append(item)
    return batch


def mark_feed_posted(store: Store, channel: str, media_ids: Iterable[int], message_id: str | None) -> None:
    with store.transaction():
        for media_id in media_ids:
            store.execute("INSERT OR IGNORE INTO feed_posts (media_id, channel, message_id, posted_at) "
                          "VALUES (?, ?, ?, ?)", (media_id, channel, message_id, utc_now()))
