"""One crawl of every enabled source: new posts per account, ingested, then the account's cursor saved.

`crawl_once(store, config)` is what `illustfeed crawl --once` and the scheduler's interval job call. Per
network account: read the posts after the stored cursor, ingest each (one transaction per post), and only
then store the new cursor, so a crash re-reads instead of skipping and dedupe keeps it exactly-once. A media
that failed to download is recorded in `fetch_failures` in the same transaction as its post and retried on
later runs; a rate-limited account is deferred to the next run while the others go on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from bot.config import Config, IngestConfig
from bot.ingest.fetch import AccessDenied, BudgetExhausted, DownloadRefused, Http, RateLimited, SourceError
from bot.ingest.ingest import FAILED, IngestSummary, MediaOutcome, ingest_post, ingest_source, post_is_stored
from bot.sources.base import FetchError
from bot.sources.records import MediaRef, Post
from bot.sources import NETWORKS
from bot.sources.folder import FolderSource
from bot.sources.network import Account, NetworkSource
from storage import Store, sha256_hex, utc_now
from storage.store import STABLE_ACCOUNT_IDS

log = logging.getLogger(__name__)

RETRIES_PER_RUN = 50  # posts with failed media re-tried per source and run; the rest wait for the next run
# What reading a field of an API answer raises when the answer is not shaped as documented.
ANSWER_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


@dataclass
class SourceRun:
    """What one source did in one crawl."""

    source: str
    accounts: int = 0
    deferred: int = 0
    reads: int = 0
    reads_today: int = 0
    read_budget: int = 0
    recovered: int = 0  # media that failed on an earlier run and are stored now
    skipped_without_media: int = 0
    ingest: IngestSummary = field(default_factory=IngestSummary)
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # the source stopped (credentials, budget)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "accounts": self.accounts,
            "deferred": self.deferred,
            "reads": self.reads,
            "reads_today": self.reads_today,
            "read_budget": self.read_budget,
            "recovered": self.recovered,
            **self.ingest.as_dict(),
            "problems": list(self.problems),
            "error": self.error,
        }

    def line(self) -> str:
        counts = self.ingest
        text = (
            f"{self.source}: {self.accounts} accounts ({self.deferred} deferred), {counts.new_posts} new posts, "
            f"{counts.media_new} new media, {counts.duplicates + counts.near_duplicates} duplicates, "
            f"{counts.rejected} rejected, {counts.failed} failed, {self.recovered} recovered"
        )
        if counts.restored:
            text += f", {counts.restored} damaged files restored"
        if self.source != "folder":
            budget = f"/{self.read_budget}" if self.read_budget else ""
            text += f", reads {self.reads} (today {self.reads_today}{budget})"
        return text


@dataclass
class CrawlSummary:
    runs: list[SourceRun] = field(default_factory=list)
    started_at: str = ""
    seconds: float = 0.0

    def total(self, name: str) -> int:
        return sum(getattr(run.ingest, name) for run in self.runs)

    @property
    def accounts(self) -> int:
        return sum(run.accounts for run in self.runs)

    @property
    def deferred(self) -> int:
        return sum(run.deferred for run in self.runs)

    @property
    def reads(self) -> int:
        return sum(run.reads for run in self.runs)

    def as_dict(self) -> dict:
        return {
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "accounts": self.accounts,
            "posts": self.total("new_posts"),
            "media_new": self.total("media_new"),
            "duplicates": self.total("duplicates") + self.total("near_duplicates"),
            "rejected": self.total("rejected"),
            "failed": self.total("failed"),
            "deferred": self.deferred,
            "reads": self.reads,
            "sources": [run.as_dict() for run in self.runs],
        }

    def text(self) -> str:
        lines = [run.line() for run in self.runs] or ["no source enabled"]
        for run in self.runs:
            lines += [f"  {run.source}: {problem}" for problem in run.problems]
            if run.error:
                lines.append(f"  {run.source}: stopped: {run.error}")
        totals = self.as_dict()
        lines.append(
            f"total: {totals['accounts']} accounts, {totals['posts']} new posts, {totals['media_new']} new "
            f"media, {totals['duplicates']} duplicates, {totals['rejected']} rejected, {totals['failed']} "
            f"failed, {totals['deferred']} deferred, {totals['reads']} API reads, {self.seconds:.1f} s"
        )
        return "\n".join(lines)


class ReadBudget:
    """API requests per source and UTC day, persisted in `api_usage`; `spend` raises once `limit` is reached."""

    def __init__(self, store: Store, source: str, limit: int, clock: Callable[[], float] = time.time):
        self.store = store
        self.source = source
        self.limit = limit  # 0: no cap (free APIs)
        self.clock = clock
        self.used_in_run = 0

    def day(self) -> str:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc).date().isoformat()

    def used_today(self) -> int:
        return (
            self.store.scalar("SELECT reads FROM api_usage WHERE source = ? AND day = ?", (self.source, self.day()))
            or 0
        )

    def spend(self) -> None:
        day = self.day()
        with self.store.transaction():
            used = (
                self.store.scalar("SELECT reads FROM api_usage WHERE source = ? AND day = ?", (self.source, day)) or 0
            )
            if self.limit and used >= self.limit:
                raise BudgetExhausted(
                    f"{self.source}: the daily read budget of {self.limit} requests is spent "
                    f"({used} on {day} UTC); the remaining accounts wait for tomorrow"
                )
            self.store.execute(
                "INSERT INTO api_usage (source, day, reads) VALUES (?, ?, 1) "
                "ON CONFLICT (source, day) DO UPDATE SET reads = reads + 1",
                (self.source, day),
            )
        self.used_in_run += 1


# Failed media ---------------------------------------------------------------------------------------------


def post_to_json(post: Post) -> str:
    return json.dumps(asdict(post), sort_keys=True)


def post_from_json(text: str) -> Post:
    fields = json.loads(text)
    fields["media"] = tuple(
        MediaRef(**{**ref, "fallbacks": tuple(ref.get("fallbacks", ()))}) for ref in fields["media"]
    )
    return Post(**fields)


class _FailureBook:
    """Wraps a source's fetch to tell permanent refusals apart, and writes `fetch_failures` rows."""

    def __init__(self, store: Store, source, max_attempts: int):
        self.store = store
        self.source = source
        self.max_attempts = max_attempts
        self.refused: set[str] = set()

    def fetch(self, ref: MediaRef) -> bytes:
        try:
            return self.source.fetch(ref)
        except DownloadRefused:
            self.refused.add(ref.url)
            raise

    def after_write(self, post: Post) -> Callable[[list[MediaOutcome]], None]:
        def record(outcomes: list[MediaOutcome]) -> None:
            now = utc_now()
            for outcome in outcomes:
                key = (self.source.name, post.post_id, outcome.ref.url)
                if outcome.status != FAILED:
                    self.store.execute(
                        "UPDATE fetch_failures SET resolved_at = ? WHERE source = ? AND "
                        "post_external_id = ? AND url = ? AND resolved_at IS NULL",
                        (now, *key),
                    )
                    continue
                give_up = int(outcome.ref.url in self.refused)
                self.store.execute(
                    "INSERT INTO fetch_failures (source, post_external_id, url, post_json, reason, attempts, "
                    "given_up, first_failed_at, last_failed_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?) "
                    "ON CONFLICT (source, post_external_id, url) DO UPDATE SET reason = excluded.reason, "
                    "attempts = attempts + 1, last_failed_at = excluded.last_failed_at, resolved_at = NULL, "
                    "given_up = MAX(excluded.given_up, attempts + 1 >= ?)",
                    (*key, post_to_json(post), outcome.reason or "unknown", give_up, now, now, self.max_attempts),
                )

        return record


def retry_failed_media(store: Store, source, ingest: IngestConfig, max_attempts: int) -> int:
    """Re-ingest posts whose media failed on an earlier run; returns how many of those media are stored now."""
    rows = store.query(
        "SELECT post_external_id, MIN(post_json) AS post_json, COUNT(*) AS failing FROM fetch_failures "
        "WHERE source = ? AND resolved_at IS NULL AND given_up = 0 GROUP BY post_external_id "
        "ORDER BY MIN(first_failed_at) LIMIT ?",
        (source.name, RETRIES_PER_RUN),
    )
    book = _FailureBook(store, source, max_attempts)
    recovered = 0
    for row in rows:
        post = post_from_json(row["post_json"])
        failing = {
            item["url"]
            for item in store.query(
                "SELECT url FROM fetch_failures WHERE source = ? AND post_external_id = ? AND resolved_at IS NULL",
                (source.name, post.post_id),
            )
        }
        # The whole post is re-ingested so positions stay right; media already stored dedupe by sha256.
        _new, outcomes = ingest_post(store, post, book.fetch, ingest, book.after_write(post))
        recovered += sum(1 for outcome in outcomes if outcome.ref.url in failing and outcome.status != FAILED)
    return recovered


def refetch_damaged_media(store: Store, source) -> int:
    """Download again the media marked damaged (`illustfeed check --repair`, the feed server) whose posts came
    from this network, as hydrus' file maintenance re-fetches damaged files: the crawl's cursor is past those
    posts, so it would never meet them again. Returns how many files were written back."""
    rows = store.query(
        "SELECT d.media_id, m.sha256, m.ext, MIN(pm.source_url) AS url FROM damaged_media d"
        " JOIN media m ON m.id = d.media_id JOIN post_media pm ON pm.media_id = m.id"
        " JOIN posts p ON p.id = pm.post_id WHERE p.source = ? AND pm.source_url IS NOT NULL"
        " GROUP BY d.media_id ORDER BY d.found_at LIMIT ?",
        (source.name, RETRIES_PER_RUN),
    )
    restored = 0
    for row in rows:
        try:
            data = source.fetch(MediaRef(row["url"]))
        except FetchError as error:
            log.info("damaged media %s: cannot download it again: %s", row["media_id"], error)
            continue
        if sha256_hex(data) != row["sha256"]:
            log.info("damaged media %s: %s now serves other bytes", row["media_id"], row["url"])
            continue
        store.blobs.put(data, row["ext"])
        with store.transaction():
            store.restore_media(row["media_id"])
        restored += 1
    return restored


# Crawl ------------------------------------------------------------------------------------------------


def _account_rows(store: Store, source: str) -> dict[str, dict]:
    return {
        row["handle"]: row
        for row in store.query(
            "SELECT handle, external_id, followed, followed_via, cursor, last_crawl_at FROM accounts WHERE source = ?",
            (source,),
        )
    }


def _set_account_state(store: Store, source: str, account: Account, cursor: str | None, error: str | None) -> None:
    with store.transaction():
        account_id = store.upsert_account(source, account.handle, account.external_id, account.display_name)
        if error is None:
            store.execute(
                "UPDATE accounts SET cursor = COALESCE(?, cursor), last_crawl_at = ?, last_error = NULL WHERE id = ?",
                (cursor, utc_now(), account_id),
            )
        else:
            store.execute("UPDATE accounts SET last_error = ? WHERE id = ?", (error, account_id))


@contextmanager
def _api_answer(doing: str):
    """A field missing from, or of another type in, an API answer becomes a SourceError about `doing`."""
    try:
        yield
    except ANSWER_SHAPE_ERRORS as error:
        # The traceback goes to the log: the same exceptions would also come from a bug in the source.
        log.warning("unexpected API answer %s", doing, exc_info=True)
        raise SourceError(f"unexpected API answer {doing}: {type(error).__name__}: {error}") from error


def crawl_network_source(
    store: Store, source: NetworkSource, budget: ReadBudget, ingest: IngestConfig, max_attempts: int
) -> SourceRun | None:
    """Crawl one network source; None when it has nothing configured or followed."""
    rows = _account_rows(store, source.name)
    by_id = {
        row["external_id"]: row for row in rows.values() if row["external_id"] and source.name in STABLE_ACCOUNT_IDS
    }

    def row_of(account: Account) -> dict:
        """The stored state of an account: by its id where that outlives a renamed handle, else by handle."""
        return by_id.get(account.external_id or "") or rows.get(account.handle) or {}

    followed = [handle for handle, row in rows.items() if row["followed"] and row["followed_via"]]
    if not source.has_work(followed):
        return None
    run = SourceRun(source.name, read_budget=budget.limit)
    try:
        reason = source.configured()
        if reason is not None:
            run.error = reason
            return run
        with _api_answer("while listing the accounts to crawl"):
            known_ids = {
                **store.former_handles(source.name),
                **{h: row["external_id"] for h, row in rows.items() if row["external_id"]},
            }
            targets = source.targets(followed, known_ids)
        # After `targets`: a source may derive its media host allow-list from the accounts it resolved.
        run.recovered = retry_failed_media(store, source, ingest, max_attempts)
        run.ingest.restored += refetch_damaged_media(store, source)
        run.problems += targets.problems
        # Accounts crawled longest ago go first, so a budget or rate limit that cuts a run short rotates.
        accounts = sorted(
            (account for account in targets.accounts if row_of(account).get("followed", 1)),
            key=lambda account: row_of(account).get("last_crawl_at") or "",
        )
        run.accounts = len(accounts)
        with store.transaction():  # remember resolved ids, so later runs skip the lookup (a paid read on X)
            for account in accounts:
                store.upsert_account(source.name, account.handle, account.external_id, account.display_name)
        book = _FailureBook(store, source, max_attempts)
        # A first run backfills every account: show progress when a person is watching (never in the runner's log).
        progress = tqdm(
            accounts,
            desc=f"crawl {source.name}",
            unit="account",
            disable=not (ingest.progress and sys.stderr.isatty()) or len(accounts) < 2,
        )
        for index, account in enumerate(progress):
            cursor = row_of(account).get("cursor")
            try:
                with _api_answer(f"for @{account.handle}'s posts"):
                    batch = source.account_posts(account, cursor)
            except RateLimited as error:
                run.deferred += 1
                run.problems.append(f"@{account.handle} deferred to the next run: {error}")
                _set_account_state(store, source.name, account, None, str(error))
                continue
            except BudgetExhausted as error:
                run.deferred += len(accounts) - index
                run.error = str(error)
                break
            except AccessDenied as error:
                if error.status == 401:
                    run.error = str(error)
                    break
                run.problems.append(f"@{account.handle}: {error}")
                _set_account_state(store, source.name, account, None, str(error))
                continue
            except SourceError as error:
                run.problems.append(f"@{account.handle}: {error}")
                _set_account_state(store, source.name, account, None, str(error))
                continue
            run.skipped_without_media += batch.skipped_without_media
            for post in batch.posts:
                if post_is_stored(store, post):
                    run.ingest.known_posts += 1
                    continue
                is_new, outcomes = ingest_post(store, post, book.fetch, ingest, book.after_write(post))
                run.ingest.add(post, is_new, outcomes)
            _set_account_state(store, source.name, account, batch.cursor, None)
    except (AccessDenied, BudgetExhausted) as error:
        run.error = str(error)
    except SourceError as error:
        run.error = f"{source.name}: {error}"
    finally:
        run.reads = budget.used_in_run
        run.reads_today = budget.used_today()
    return run


def crawl_folder(store: Store, config: Config) -> SourceRun | None:
    settings = config.sources.folder
    if not settings.enabled:
        return None
    run = SourceRun("folder")
    root = Path(settings.path)
    if not root.is_dir():
        if follows_network_accounts(store, config):
            # The inbox is on by default; someone who follows network accounts need not create it.
            log.debug("inbox folder %s does not exist; skipped", root)
            return None
        run.problems.append(f"folder {root} does not exist (create it, or run `illustfeed init`)")
        return run
    source = FolderSource(root, max_bytes=config.ingest.max_bytes)
    run.ingest = ingest_source(store, source, config.ingest)
    run.accounts = len({account for account, _path in source.files()})
    return run


def follows_network_accounts(store: Store, config: Config) -> bool:
    """Whether any enabled network source has an account to crawl (in the config or followed by hand)."""
    for network in NETWORKS.values():
        section = network.settings(config.sources)
        if section.enabled and (
            section.accounts
            or section.following_of
            or store.scalar("SELECT 1 FROM accounts WHERE source = ? AND followed = 1 LIMIT 1", (network.name,))
        ):
            return True
    return False


def http_for(
    config: Config, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time
) -> Http:
    return Http(config.sources.http, sleep=sleep, clock=clock)


def network_sources(store: Store, config: Config, http: Http) -> list[tuple[NetworkSource, ReadBudget]]:
    """Each enabled network source with its read meter."""
    found: list[tuple[NetworkSource, ReadBudget]] = []
    for network in NETWORKS.values():
        section = network.settings(config.sources)
        if section.enabled:
            # Only paid reads have a daily budget; the others are counted (limit 0) for the summary.
            limit = max(0, section.daily_read_budget) if network.paid_reads else 0
            budget = ReadBudget(store, network.name, limit, http.clock)
            found.append((network.source_class()(section, http, config.ingest.max_bytes, meter=budget.spend), budget))
    return found


def crawl_once(store: Store, config: Config, http: Http | None = None) -> CrawlSummary:
    """Run every enabled source once (folder included) and summarise; never raises for one source's trouble."""
    http = http or http_for(config)
    started = time.monotonic()
    summary = CrawlSummary(started_at=utc_now())
    folder_run = crawl_folder(store, config)
    if folder_run is not None:
        summary.runs.append(folder_run)
    for source, budget in network_sources(store, config, http):
        run = crawl_network_source(store, source, budget, config.ingest, config.sources.http.max_media_attempts)
        if run is not None:
            summary.runs.append(run)
    summary.seconds = time.monotonic() - started
    for run in summary.runs:
        for problem in run.problems:
            log.warning("%s: %s", run.source, problem)
        if run.error:
            log.error("%s stopped: %s", run.source, run.error)
    return summary
