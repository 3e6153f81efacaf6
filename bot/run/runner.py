"""`illustfeed run`: one asyncio process with the job scheduler, the feed server and, with a token, the Discord bot."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Callable

from bot import app, retrain
from bot.config import Config, redacted
from bot.run.lock import DataDirLock
from bot.run.scheduler import (
    CRAWL_JOB,
    FOLDER_JOB,
    RETRAIN_JOB,
    JobContext,
    build_scheduler,
    log_event,
    run_soon,
    without_folder,
)
from storage import Store

log = logging.getLogger("illustfeed.runner")


# --- job bodies (each runs on a scheduler thread with its own Store) ---------------------------------------


def _ingest_fields(totals: dict) -> dict:
    return {
        "new": totals["media_new"],
        "duplicates": totals["duplicates"],
        "rejected": totals["rejected"],
        "failed": totals["failed"],
    }


def folder_job(store: Store, context: JobContext) -> dict:
    """Import what is new in the inbox folder, then classify it."""
    from bot.ingest.crawl import CrawlSummary, crawl_folder

    with context.ingest_lock:
        run = crawl_folder(store, context.config)
    summary = CrawlSummary(runs=[run] if run is not None else [])
    for problem in run.problems if run is not None else ():
        log_event("folder.problem", logging.WARNING, problem=problem)
    wake_for_retrain_request(store, context)
    return {**_ingest_fields(summary.as_dict()), **classify_new(store, context)}


def crawl_job(store: Store, context: JobContext) -> dict:
    """Crawl every enabled network source once, then classify what came in."""
    from bot.ingest.crawl import crawl_once

    with context.ingest_lock:
        summary = crawl_once(store, without_folder(context.config))
    wake_for_retrain_request(store, context)
    totals = summary.as_dict()
    return {
        "sources": len(summary.runs),
        "accounts": totals["accounts"],
        "posts": totals["posts"],
        **_ingest_fields(totals),
        **classify_new(store, context),
    }


def classify_new(store: Store, context: JobContext) -> dict:
    """Classify media the active model has not scored yet (the classifier commits per batch)."""
    from classifier.model import ModelFileError
    from classifier.weights import WeightsError

    with context.model_lock:
        try:
            model, runner = context.active_model.get(store)
        except (ModelFileError, WeightsError) as error:
            # Media stay stored and are classified once a model exists; the crawl itself succeeded.
            # Said once per distinct problem, not on every poll.
            if context.classify_problem != str(error):
                context.classify_problem = str(error)
                log_event("classify.unavailable", logging.WARNING, error=str(error))
            return {"classified": 0}
        context.classify_problem = None
        summary = app.classify(store, context.config, model, runner)
    return {
        "classified": summary.classified,
        "borderline": summary.borderline,
        "queued": summary.queued_for_review,
        "model": summary.model_version,
    }


def wake_for_retrain_request(store: Store, context: JobContext) -> None:
    """A retrain asked for by another process (the terminal chat) starts at the next poll."""
    if context.wake_retrain is not None and retrain.pending_request(store) is not None:
        context.wake_retrain()


def retrain_job(store: Store, context: JobContext) -> dict:
    """The nightly retrain, or one asked for with /retrain (which trains whatever the number of new labels)."""
    request = retrain.claim_request(store)
    try:
        outcome = retrain.run_retrain(
            store, context.config, force=request is not None, model_lock=context.model_lock, report=context.report
        )
    except Exception as error:
        if request is not None:
            retrain.finish_request(store, request["id"], f"failed: {type(error).__name__}: {error}")
        raise
    if request is not None:
        retrain.finish_request(store, request["id"], outcome.summary())
    return {**({"request": request["id"]} if request else {}), **outcome.log_fields()}


# --- the process --------------------------------------------------------------------------------------------


def startup_facts(config: Config, feed_url: str | None, discord_on: bool) -> list[str]:
    """What a person starting the bot needs to know: where data lives, where to drop images, where to look."""
    facts = [f"data: {config.data_path.resolve()} (SQLite {config.data_path.resolve() / 'illustfeed.db'})"]
    folder = config.sources.folder
    if folder.enabled:
        facts.append(
            f"inbox: {Path(folder.path).resolve()} (drop images into <inbox>/<account>/; "
            f"scanned every {config.scheduler.folder_poll_seconds} s)"
        )
    facts.append(f"network crawl: every {config.scheduler.crawl_interval_seconds} s")
    facts.append(f"feed: {feed_url}" if feed_url else "feed: off")
    facts.append("discord: on" if discord_on else "discord: off (no token)")
    settings = config.retrain
    facts.append(
        f"retrain: {settings.schedule!r} {settings.timezone or 'local time'}, min {settings.min_new_labels} new labels"
        if settings.enabled
        else "retrain: off"
    )
    return facts


class Runner:
    """Starts the pieces inside the running loop and stops them in reverse order."""

    def __init__(self, config: Config, announce: Callable[[str], None]):
        # APScheduler narrates every run in several lines; our jobs log one event line each instead.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.config = config
        self.announce = announce
        self.context = JobContext(config)
        self.stopping = asyncio.Event()
        self.scheduler = None
        self.feed_runner = None
        self.bot = None
        self.bot_task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def open_store(self) -> Store:
        return Store.open(self.config.data_path, busy_timeout_s=self.config.storage.busy_timeout_seconds)

    def jobs(self) -> dict[str, Callable[[Store, JobContext], dict]]:
        jobs = {CRAWL_JOB: crawl_job}
        if self.config.sources.folder.enabled:
            jobs[FOLDER_JOB] = folder_job
        if self.config.retrain.enabled:
            jobs[RETRAIN_JOB] = retrain_job
        return jobs

    def wake_retrain(self) -> None:
        """A /retrain request: retrain now rather than at the nightly time (also when nightly runs are off)."""
        if self.scheduler is not None and self.scheduler.running:
            run_soon(self.scheduler, self.context, RETRAIN_JOB, retrain_job)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Migrate the schema once, before any thread opens the database.
        await asyncio.to_thread(lambda: self.open_store().close())
        if self.config.sources.folder.enabled:
            Path(self.config.sources.folder.path).mkdir(parents=True, exist_ok=True)

        from bot.feed.server import server_url, start_feed_server

        from bot.chat.web import EXTENSIONS

        self.feed_runner = await start_feed_server(self.config, extensions=EXTENSIONS)
        feed_url = server_url(self.feed_runner)
        await self._start_discord(loop)
        self.context.wake_retrain = lambda: loop.call_soon_threadsafe(self.wake_retrain)
        self.scheduler = build_scheduler(self.context, self.jobs())
        self.scheduler.start()
        for fact in startup_facts(self.config, feed_url, self.bot is not None):
            self.announce(fact)
        log_event(
            "runner.started",
            pid=os.getpid(),
            feed=feed_url,
            discord="on" if self.bot else "off",
            jobs=",".join(self.jobs()),
        )
        log.debug("config %s", redacted(self.config))

    async def _start_discord(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self.config.discord
        if not settings.token:
            return
        from bot.chat.discord_bot import create_bot

        # The bot's Store is its own connection, used on the loop thread only.
        self.bot = create_bot(
            settings,
            self.open_store(),
            explainer=app.ActiveModelExplainer(self.config),
            on_retrain_requested=self.wake_retrain,
            config=self.config,
        )
        self.loop = loop
        self.context.report = self.report_to_discord

        async def run_bot() -> None:
            try:
                async with self.bot:
                    await self.bot.start(settings.token)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Discord trouble (bad token, network) must not stop the feed and jobs
                log_event("discord.failed", logging.ERROR, error=f"{type(error).__name__}: {error}")

        self.bot_task = asyncio.create_task(run_bot(), name="illustfeed-discord")

    def report_to_discord(self, text: str, png: Path | None = None) -> None:
        """The retrain report in the report channel. Called from a job thread: the message is handed to the
        loop, and the job waits until it is sent."""
        data = png.read_bytes() if png is not None else None
        asyncio.run_coroutine_threadsafe(self.bot.post_report(text, data), self.loop).result(timeout=120)

    async def stop(self) -> bool:
        """Stop taking new work, let running jobs reach a commit, close everything; False if a job overran."""
        self.context.stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        grace = self.config.scheduler.shutdown_grace_seconds
        idle = await asyncio.to_thread(self.context.wait_idle, grace)
        if self.bot_task is not None:
            self.bot_task.cancel()
            await asyncio.gather(self.bot_task, return_exceptions=True)
        if self.bot is not None:
            self.bot.store.close()
        if self.feed_runner is not None:
            await self.feed_runner.cleanup()
        return idle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            await self.start()
            await self.stopping.wait()
            log_event("runner.stopping")
        finally:
            idle = await self.stop()
        if not idle:
            log_event("runner.stopped", logging.WARNING, forced=True, busy=",".join(sorted(self.context.running)))
            # A job thread is still inside slow non-database work (a download, a forward pass); its last
            # transaction has committed or will roll back atomically, so exiting now loses nothing stored.
            logging.shutdown()
            os._exit(0)
        log_event("runner.stopped", forced=False)
        return 0


def run(config: Config, announce: Callable[[str], None] = print) -> int:
    """Hold the data dir's lock for the life of the process and run until SIGTERM/SIGINT."""
    with DataDirLock(config.data_path):
        return asyncio.run(Runner(config, announce).run())
