"""Store what a source yields: fetch, validate, dedupe, then write one post and its media in one transaction."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Callable, Iterable

from bot.config import IngestConfig
from bot.sources.records import MediaRef, Post
from bot.sources.base import FetchError, MediaRefused
from bot.ingest.validate import ImageInfo, InvalidImage, max_block_difference, validate_image
from classifier.preprocess import load_rgb_frames
from classifier.video import VIDEO_EXTS
from storage import Store, StorageFault, sha256_hex
from storage.store import restorable_rejection

log = logging.getLogger(__name__)

# What happened to one media reference.
NEW, DUPLICATE, NEAR_DUPLICATE, REJECTED, FAILED = "new", "duplicate", "near_duplicate", "rejected", "failed"
# A known media whose stored file was missing or damaged, written again from the bytes just fetched.
RESTORED = "restored"
STORED = (NEW, DUPLICATE, NEAR_DUPLICATE, RESTORED)


@dataclass(frozen=True)
class MediaOutcome:
    ref: MediaRef
    status: str
    media_id: int | None = None
    reason: str | None = None


@dataclass
class IngestSummary:
    posts: int = 0
    known_posts: int = 0  # already stored on an earlier run: skipped without fetching
    new_posts: int = 0
    media_new: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    restored: int = 0  # known media whose missing or damaged file was written again
    rejected: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)  # "where: reason" for rejected and failed media

    def add(self, post: Post, is_new_post: bool, outcomes: Iterable[MediaOutcome]) -> None:
        self.posts += 1
        self.new_posts += int(is_new_post)
        for outcome in outcomes:
            if outcome.status == NEW:
                self.media_new += 1
            elif outcome.status == DUPLICATE:
                self.duplicates += 1
            elif outcome.status == NEAR_DUPLICATE:
                self.near_duplicates += 1
            elif outcome.status == RESTORED:
                self.restored += 1
            else:
                self.rejected += outcome.status == REJECTED
                self.failed += outcome.status == FAILED
                self.problems.append(f"{outcome.ref.url}: {outcome.reason}")

    def as_dict(self) -> dict:
        return {
            "posts": self.posts,
            "known_posts": self.known_posts,
            "new_posts": self.new_posts,
            "media_new": self.media_new,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "restored": self.restored,
            "rejected": self.rejected,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class _Prepared:
    """A media reference after fetch and validation, before the transaction."""

    ref: MediaRef
    status: str
    sha256: str | None = None
    media_id: int | None = None
    info: ImageInfo | None = None
    size: int = 0
    reason: str | None = None


def find_near_duplicate(store: Store, data: bytes, info: ImageInfo, settings: IngestConfig) -> int | None:
    """An accepted media that is the same picture re-encoded or resized, verified on pixels (see config)."""
    candidates = store.near_duplicate_candidates(info.phash, settings.near_duplicate_distance)
    if not candidates:
        return None
    aspect = info.width / info.height
    incoming = load_rgb_frames(data, max_frames=1)[0]
    for candidate in candidates:
        if abs(candidate["width"] / candidate["height"] - aspect) > 0.05 * aspect:
            continue
        if (candidate["ext"] in VIDEO_EXTS) != info.is_video:
            continue  # a clip whose first frame is a stored still (its preview) is still a clip of its own
        stored_path = store.blobs.path(candidate["sha256"], candidate["ext"])
        stored = load_rgb_frames(stored_path, max_frames=1)[0]
        if max_block_difference(incoming, stored) <= settings.near_duplicate_max_block_difference:
            return candidate["id"]
    return None


def _prepare(
    store: Store,
    ref: MediaRef,
    fetch: Callable[[MediaRef], bytes],
    settings: IngestConfig,
    seen_in_post: dict[str, _Prepared],
) -> _Prepared:
    try:
        data = fetch(ref)
    except MediaRefused as error:
        return _Prepared(ref, REJECTED, reason=str(error))
    except FetchError as error:
        return _Prepared(ref, FAILED, reason=str(error))
    digest = sha256_hex(data)
    if digest in seen_in_post:
        return _Prepared(ref, DUPLICATE, sha256=digest)
    existing = store.media_by_sha256(digest)
    if existing is not None:
        if (
            existing["ext"]
            and (existing["status"] == "ok" or restorable_rejection(existing["reject_reason"]))
            and not store.blobs.intact(digest, existing["ext"], len(data))
        ):
            # Its file was deleted or damaged behind the store's back: these are the right bytes, store them.
            store.blobs.put(data, existing["ext"])
            return _Prepared(ref, RESTORED, sha256=digest, media_id=existing["id"])
        status = REJECTED if existing["status"] == "rejected" else DUPLICATE
        return _Prepared(ref, status, sha256=digest, media_id=existing["id"], reason=existing["reject_reason"])
    try:
        info = validate_image(
            data, max_pixels=settings.max_pixels, max_bytes=settings.max_bytes, video_limits=settings.video
        )
    except InvalidImage as error:
        return _Prepared(ref, REJECTED, sha256=digest, size=len(data), reason=str(error))
    near = find_near_duplicate(store, data, info, settings)
    if near is not None:
        return _Prepared(ref, NEAR_DUPLICATE, sha256=digest, media_id=near)
    # The blob goes down before the row: a crash in between leaves an unreferenced file, never a row
    # pointing at nothing. A re-run finds the same name and skips the write.
    store.blobs.put(data, info.ext)
    return _Prepared(ref, NEW, sha256=digest, info=info, size=len(data))


def ingest_post(
    store: Store,
    post: Post,
    fetch: Callable[[MediaRef], bytes],
    settings: IngestConfig,
    after_write: Callable[[list[MediaOutcome]], None] | None = None,
) -> tuple[bool, list[MediaOutcome]]:
    """Fetch and validate the post's media, then write account, post, media and links atomically.

    `after_write(outcomes)` runs inside the same transaction, so a caller's own bookkeeping (the crawl's
    failed-media records) commits with the post or not at all.
    Returns (post is new, one outcome per media reference).
    """
    seen: dict[str, _Prepared] = {}
    prepared = []
    for ref in post.media:
        item = _prepare(store, ref, fetch, settings, seen)
        if item.sha256 is not None and item.sha256 not in seen:
            seen[item.sha256] = item
        prepared.append(item)

    outcomes = []
    with store.transaction():
        account_id = store.upsert_account(post.source, post.account, post.account_id, post.display_name)
        post_row_id, is_new = store.upsert_post(
            account_id, post.source, post.post_id, post.url, post.text, post.created_at
        )
        media_ids: dict[str, int] = {}
        for position, item in enumerate(prepared):
            media_id = item.media_id if item.media_id is not None else media_ids.get(item.sha256 or "")
            if media_id is None and item.status == NEW:
                media_id = store.insert_media(
                    sha256=item.sha256,
                    phash=f"{item.info.phash:016x}",
                    mime=item.info.mime,
                    ext=item.info.ext,
                    width=item.info.width,
                    height=item.info.height,
                    frames=item.info.frames,
                    bytes=item.size,
                    duration_s=item.info.duration_s,
                    status="ok",
                    source_url=item.ref.url,
                )
            elif media_id is None and item.status == REJECTED:
                media_id = store.insert_media(
                    sha256=item.sha256,
                    bytes=item.size,
                    status="rejected",
                    reject_reason=item.reason,
                    source_url=item.ref.url,
                )
            if item.sha256 is not None and media_id is not None:
                media_ids[item.sha256] = media_id
            if item.status == RESTORED:
                store.restore_media(media_id)
            if media_id is not None:
                store.link_post_media(post_row_id, media_id, position, item.ref.alt, item.ref.url)
            outcomes.append(MediaOutcome(item.ref, item.status, media_id, item.reason))
        if after_write is not None:
            after_write(outcomes)
    for outcome in outcomes:
        if outcome.status in (REJECTED, FAILED):
            log.debug("media %s %s: %s", outcome.ref.url, outcome.status, outcome.reason)
    return is_new, outcomes


def post_is_stored(store: Store, post: Post) -> bool:
    """The post and a row for each of its media are stored, with their files intact.

    A media that failed to fetch is tried again, and so is one whose file is missing, of the wrong size or
    marked damaged by `illustfeed check`: fetching the post again is how its file comes back.
    """
    media = store.query(
        "SELECT m.sha256, m.ext, m.bytes, m.status, EXISTS (SELECT 1 FROM damaged_media d WHERE d.media_id = m.id)"
        " AS damaged FROM posts p JOIN post_media pm ON pm.post_id = p.id JOIN media m ON m.id = pm.media_id"
        " WHERE p.source = ? AND p.external_id = ?",
        (post.source, post.post_id),
    )
    if len(media) < len(post.media):
        return False
    return not any(
        row["damaged"] or (row["status"] == "ok" and not store.blobs.intact(row["sha256"], row["ext"], row["bytes"]))
        for row in media
    )


def ingest_source(
    store: Store, source, settings: IngestConfig, progress: bool = False, posts: Iterable[Post] | None = None
) -> IngestSummary:
    """Ingest every post a source yields (or `posts`) that is not stored yet, one transaction per post."""
    from tqdm import tqdm

    items = list(source.posts() if posts is None else posts)
    summary = IngestSummary()
    bar = tqdm(items, desc=f"import {source.name}", unit="post", disable=not progress or len(items) < 2)
    images, stored = sum(len(post.media) for post in items), 0
    try:
        for post in bar:
            if post_is_stored(store, post):
                summary.known_posts += 1
                stored += len(post.media)
                continue
            is_new, outcomes = ingest_post(store, post, source.fetch, settings)
            summary.add(post, is_new, outcomes)
            stored += sum(outcome.status in STORED for outcome in outcomes)
            bar.set_postfix(new=summary.media_new, rejected=summary.rejected, refresh=False)
    except (StorageFault, OSError, sqlite3.Error) as error:
        fault = store.fault(error)
        if fault is None:
            raise
        # Posts commit one by one, so everything counted here is stored for good.
        fault.progress = f"{stored} of {images} images stored"
        if fault is error:
            raise
        raise fault from error
    finally:
        bar.close()
    return summary
