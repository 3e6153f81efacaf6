"""The runner's jobs: crawl, poll the folder, retrain; each on its own thread and Store, logged as one-line events.

A job never takes the process down: an exception is logged (`event=<job>.failed`) and the job runs again at
its next time. On shutdown a job stops at its next transaction boundary (the current one commits first).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.app import ActiveModel
from bot.config import Config
from storage import Store, storage_fault
from storage.errors import LOCKED, lock_holder_pid

log = logging.getLogger("illustfeed.runner")

CRAWL_JOB, FOLDER_JOB, RETRAIN_JOB = "crawl", "folder", "retrain"


def format_event(event: str, **fields: Any) -> str:
    """`event=crawl.done new=3 duration_s=1.2`: one line, values with spaces or quotes quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, format_event(event, **fields))


class JobCancelled(Exception):
    """The runner is stopping: raised at a transaction boundary so the job ends between two commits."""


class StoppableStore(Store):
    """A Store that refuses to begin a new outermost transaction once `stop` is set.

    The transaction in progress (if any) still commits; nested ones join it as usual.
    """

    stop: threading.Event

    @classmethod
    def open_stoppable(cls, data_dir, stop: threading.Event, busy_timeout_s: float = 30.0) -> "StoppableStore":
        store = cls.open(data_dir, busy_timeout_s=busy_timeout_s)
        store.stop = stop
        return store

    def transaction(self):
        if self.stop.is_set() and not self.conn.in_transaction:
            raise JobCancelled("shutting down")
        return super().transaction()


@dataclass
class JobContext:
    """What every job shares: the config, the stop flag and the lock that keeps model changes and
    classification apart (a retrain's promotion and re-scoring never interleave with a crawl's classify)."""

    config: Config
    stop: threading.Event = field(default_factory=threading.Event)
    # The active model, loaded once; its lock keeps model changes and classification apart.
    active_model: ActiveModel = field(init=False)
    # Only one ingest at a time: the folder poll and the network crawl both write posts and media.
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    # Called with (text, png path or None) for retrain reports; the Discord bot's channel when it runs.
    report: Callable[[str, Any], None] | None = None
    # Starts the retrain job now (set by the runner; called from job threads).
    wake_retrain: Callable[[], None] | None = None
    classify_problem: str | None = None  # the last "no model" problem logged, so it is logged once
    running: set[str] = field(default_factory=set)
    running_changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.active_model = ActiveModel(self.config)

    @property
    def model_lock(self) -> threading.Lock:
        return self.active_model.lock

    def open_store(self) -> StoppableStore:
        return StoppableStore.open_stoppable(self.config.data_path, self.stop, self.config.storage.busy_timeout_seconds)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs; False when `timeout` seconds passed first."""
        with self.running_changed:
            return self.running_changed.wait_for(lambda: not self.running, timeout=timeout)


JobBody = Callable[[Store, JobContext], dict]


def run_job(name: str, body: JobBody, context: JobContext) -> dict | None:
    """Run `body(store, context)` on a fresh Store; log its result fields as `event=<name>.done`."""
    if context.stop.is_set():
        return None
    with context.running_changed:
        context.running.add(name)
    started = time.monotonic()
    try:
        with context.open_store() as store:
            result = body(store, context) or {}
        log_event(f"{name}.done", **result, duration_s=time.monotonic() - started)
        return result
    except JobCancelled:
        log_event(f"{name}.cancelled", duration_s=time.monotonic() - started)
    except Exception as error:  # the edge of a job: record it, keep the process up, retry next time
        fault = storage_fault(error)
        if fault is not None:  # a full, read-only or locked data dir: the sentence says it all, no traceback
            if fault.kind == LOCKED and fault.holder_pid is None:
                fault.holder_pid = lock_holder_pid(context.config.data_path)
            log_event(
                f"{name}.failed",
                logging.ERROR,
                storage=fault.kind,
                error=str(fault),
                duration_s=time.monotonic() - started,
            )
        else:
            log_event(
                f"{name}.failed",
                logging.ERROR,
                error=f"{type(error).__name__}: {error}",
                duration_s=time.monotonic() - started,
            )
        log.debug("%s failed", name, exc_info=True)
    finally:
        with context.running_changed:
            context.running.discard(name)
            context.running_changed.notify_all()
    return None


def without_folder(config: Config) -> Config:
    """The config for the network crawl: the folder has its own, faster job."""
    folder = dataclasses.replace(config.sources.folder, enabled=False)
    return dataclasses.replace(config, sources=dataclasses.replace(config.sources, folder=folder))


def build_scheduler(context: JobContext, jobs: dict[str, JobBody]) -> AsyncIOScheduler:
    """Interval jobs for the crawls, a cron job for retraining; none overlaps itself, missed runs coalesce."""
    config = context.config
    scheduler = AsyncIOScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=len(jobs))},
        job_defaults={"max_instances": 1, "coalesce": True},
    )
    intervals = {FOLDER_JOB: config.scheduler.folder_poll_seconds, CRAWL_JOB: config.scheduler.crawl_interval_seconds}
    for name, body in jobs.items():
        if name == RETRAIN_JOB:
            trigger = CronTrigger.from_crontab(config.retrain.schedule, timezone=config.retrain.timezone or None)
            # Generous grace: a 03:00 run missed while the machine slept still happens when it wakes.
            timing = {"misfire_grace_time": config.retrain.misfire_grace_seconds}
        else:
            trigger = IntervalTrigger(seconds=intervals[name])
            # Crawls start at once, so a fresh start shows the inbox within seconds.
            timing = {"misfire_grace_time": intervals[name], "next_run_time": datetime.now(scheduler.timezone)}
        scheduler.add_job(run_job, trigger, args=(name, body, context), id=name, name=name, **timing)
    return scheduler


def run_soon(scheduler: AsyncIOScheduler, context: JobContext, name: str, body: JobBody) -> None:
    """Run job `name` now: move its next run forward, or (a job with no schedule) add a one-off run."""
    if scheduler.get_job(name) is not None:
        scheduler.modify_job(name, next_run_time=datetime.now(scheduler.timezone))
    else:
        scheduler.add_job(run_job, "date", args=(name, body, context), id=name, name=name)
