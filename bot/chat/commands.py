"""Chat commands without a transport: plain functions over the store that return `Reply` objects.

The Discord adapter (`bot/chat/discord_bot.py`), the terminal (`bot/chat/terminal.py`) and the web review
page call these and only render the replies, so every behaviour here is testable on a real store without
Discord. The work itself lives in its stage: the queue in `bot.review`, retrain requests in `bot.retrain`,
follows in `bot.sources.follows`. `labels.by` is a stable identity (`discord:<user id>`, or the terminal's
user name), `labels.via` the interface ("discord", "cli"); a correction adds a row, `/undo` sets
`revoked_at`, the latest row counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from bot import retrain, review
from bot.config import Config
from bot.review import ReviewItem
from bot.sources import follows
from bot.sources.follows import FollowError
from bot.status import store_status
from explain import DEFAULT_METHOD, METHOD_NAMES
from storage import LABELS, Store, StoreError, utc_now

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

# The chat commands, name -> what it does (Discord shows it as the slash command's description). Every
# transport offers these; a test keeps the Discord tree and the README in step with this table.
CHAT_COMMANDS: dict[str, str] = {
    "review": "Show the most uncertain image waiting for review",
    "label": "Label an image",
    "undo": "Revoke your latest label",
    "why": "Show where the classifier looked",
    "stats": "Counts by label, review queue, labels since the model, metrics",
    "retrain": "Queue a retrain now",
    "follow": "Crawl an account from now on",
    "unfollow": "Stop crawling an account (its stored posts stay)",
    "sources": "Followed accounts, last crawl and errors",
}
EXPLAIN_METHODS = METHOD_NAMES


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
    item: ReviewItem | None = None
    notice: str | None = None  # for the caller alone, e.g. that someone else labelled the item first


def refusal(text: str) -> Reply:
    return Reply(text, ok=False, private=True)


NOT_ALLOWED = "You are not allowed to do that here: ask the bot's owner to add your user id or role to [discord]."


# --- review ---------------------------------------------------------------------------------------------


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
    item = review.next_item(store)
    if item is None:
        text = "The review queue is empty."
        return Reply(f"{prefix}\n\n{text}" if prefix else text, notice=notice)
    return dataclasses.replace(item_reply(item, prefix), notice=notice)


def show(store: Store, media_reference: str | int) -> Reply:
    """One media as a review item, to relabel it, whether or not it waits in the queue."""
    try:
        media_id = store.resolve_media(media_reference)
        item = review.review_item(store, media_id, pending_total=review.reviewable_count(store))
    except StoreError as error:
        return refusal(str(error))
    return item_reply(item)


def _describe_label(row: dict) -> str:
    return f"{row['label']} by {row['by']} via {row['via']} at {row['at']}"


def _record_label(store: Store, actor: Actor, media_id: int, label: str) -> tuple[str, bool]:
    """Add the label row; returns (what happened, whether the media already had a label). The read and the
    write share one transaction, so two reviewers answering at once are ordered and the second one learns
    about the first."""
    _label_id, previous = review.record_label(store, media_id, label, by=actor.by, via=actor.via)
    if previous is None:
        return f"Media {media_id} labelled {label}.", False
    if previous["by"] == actor.by and previous["label"] == label:
        return f"Media {media_id} labelled {label} again (you had already labelled it).", False
    return (
        f"Media {media_id} was already labelled {_describe_label(previous)}; "
        f"your {label} is recorded too and now counts (history keeps both)."
    ), True


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
        skipped = review.skip(store, media_id)
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
            'SELECT * FROM labels WHERE "by" = ? AND revoked_at IS NULL ORDER BY id DESC LIMIT 1', (actor.by,)
        )
        if last is None:
            return refusal("You have no label to undo.")
        store.execute("UPDATE labels SET revoked_at = ? WHERE id = ?", (utc_now(), last["id"]))
        media_id = last["media_id"]
        current = store.current_label(media_id)
        requeued = review.requeue(store, media_id) if current is None else 0
    text = f"Undid your {last['label']} on media {media_id}."
    if current is not None:
        text += f" It is now {_describe_label(current)}."
    elif requeued:
        text += " It has no label now and is back in the review queue."
    else:
        text += " It has no human label now."
    return Reply(text)


# --- explanations ---------------------------------------------------------------------------------------

# (image file, method) -> (encoded overlay bytes, "png" | "gif" | "mp4"). Built from the active model by the app;
# raises for anything it cannot explain.
Explainer = Callable[[Path, str], tuple[bytes, str]]


def why(
    store: Store, media_reference: str | int, method: str = DEFAULT_METHOD, explainer: Explainer | None = None
) -> Reply:
    """`/why media [method]`: a fresh overlay when an explainer is available, else the stored Grad-CAM."""
    if method not in EXPLAIN_METHODS:
        return refusal(f"Unknown explanation method {method!r}; expected one of {', '.join(EXPLAIN_METHODS)}.")
    try:
        media_id = store.resolve_media(media_reference)
        image_path = store.media_path(media_id)
    except StoreError as error:
        return refusal(str(error))
    item = review.review_item(store, media_id)
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
            return Reply(
                f"Media {media_id}: fresh {method} explanation.\n{summary}",
                attachments=(Attachment(fresh, f"{method} overlay of media {media_id}"),),
            )
    if item.overlay_path is None:
        return Reply(f"Media {media_id} has no stored overlay. {note}\n{summary}", ok=False)
    return Reply(
        f"Media {media_id}: stored Grad-CAM overlay. {note}\n{summary}",
        attachments=(Attachment(item.overlay_path, f"Grad-CAM overlay of media {media_id}"),),
    )


# --- stats and retraining -------------------------------------------------------------------------------


def stats_data(store: Store) -> dict:
    status = store_status(store)
    active = store.active_model()
    since = active["created_at"] if active else ""
    status["labels_since_model"] = store.scalar(
        "SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND at > ?", (since,)
    )
    status["active_model_metrics"] = json.loads(active["metrics"]) if active and active["metrics"] else {}
    status["retrain_pending"] = retrain.pending_request(store) is not None
    return status


def _format_metrics(metrics: dict) -> str:
    shown = [
        f"{name} {value:.3f}"
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
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


def request_retrain(store: Store, actor: Actor, notify: Callable[[], None] | None = None) -> Reply:
    """`/retrain`: queue one retrain request (repeats join the pending one); `notify` wakes the runner."""
    if not actor.authorised:
        return refusal(NOT_ALLOWED)
    request_id, pending = retrain.request(store, actor.by, actor.via)
    if pending is not None:
        return Reply(
            f"A retrain is already queued (request {pending['id']} by {pending['requested_by']} "
            f"at {pending['requested_at']})."
        )
    if notify is not None:
        notify()
    return Reply(f"Retrain queued (request {request_id}); the runner starts it at its next check.")


# --- sources --------------------------------------------------------------------------------------------


def follow(
    store: Store, actor: Actor, source: str, handle: str, followed: bool = True, mastodon_instance: str = ""
) -> Reply:
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
        lines.append(
            f"{item['source']} ({state}): config {', '.join(item['configured_accounts']) or '-'}; "
            f"followed {', '.join(item['followed']) or '-'}; "
            f"unfollowed {', '.join(item['unfollowed']) or '-'}; reads today {item['reads_today']}"
        )
        for account in item["accounts"]:
            if not account["followed"]:
                continue
            line = f"  - {account['handle']}: last crawl {account['last_crawl_at'] or 'never'}"
            if account["last_error"]:
                line += f", last error: {account['last_error']}"
            lines.append(line)
    return Reply("\n".join(lines))
