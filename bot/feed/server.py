"""The feed web app (aiohttp): gallery, Atom feed, JSON API, media and thumbnails, health check."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

from aiohttp import web
from aiohttp.helpers import ETAG_ANY

from bot.config import Config, FeedConfig
from bot.feed.queries import (
    FeedItem,
    FeedPage,
    FeedQueryError,
    feed_counts,
    feed_page,
    media_detail,
    parse_account,
    parse_cursor,
    parse_label,
    parse_limit,
    visible_media,
)
from bot.feed.render import STYLESHEET, STYLESHEET_URL, alt_text, atom_xml, detail_html, gallery_html, safe_link
from bot.feed.thumbnails import (
    Thumbnail,
    ThumbnailSpec,
    record_thumbnail,
    render_thumbnail,
    stored_thumbnail,
)
from storage import SCHEMA_VERSION, StorageFault, Store, storage_fault
from storage.blobs import SHA256_PATTERN
from storage.check import mark_damaged
from storage.errors import data_dir_writable

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Blobs are named by their content, so a cached copy is always right; a day keeps removals from lingering.
BLOB_CACHE_CONTROL = "public, max-age=86400"
# Pages change as media arrive: browsers revalidate each time (cheap, thanks to the ETag).
PAGE_CACHE_CONTROL = "no-cache"


class StoreWorker:
    """Runs every store call on one dedicated thread.

    The Store is a single sqlite3 connection: keeping it on one thread avoids interleaved use, and keeping
    it off the event loop means a writer elsewhere holding the database lock (WAL allows other processes to
    write meanwhile) stalls only this thread, never the loop that the chat bot and scheduler share.
    """

    def __init__(self, store_factory: Callable[[], Store]):
        self._store_factory = store_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feed-store")
        self._store: Store | None = None

    async def open(self) -> None:
        self._store = await asyncio.get_running_loop().run_in_executor(self._executor, self._store_factory)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, self._store, *args)
        )

    async def close(self) -> None:
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)


STORE = web.AppKey("store", StoreWorker)
SETTINGS = web.AppKey("settings", FeedConfig)
THUMBNAIL_LOCKS = web.AppKey("thumbnail_locks", dict)


def settings_of(request: web.Request) -> FeedConfig:
    return request.app[SETTINGS]


def thumbnail_spec(settings: FeedConfig) -> ThumbnailSpec:
    return ThumbnailSpec(size=settings.thumbnail_size, format=settings.thumbnail_format)


def base_url(request: web.Request) -> str:
    return settings_of(request).public_url.rstrip("/") or f"{request.scheme}://{request.host}"


def _not_modified(request: web.Request, etag: str) -> bool:
    candidates = request.if_none_match or ()
    return any(candidate.value in (etag, ETAG_ANY) for candidate in candidates)


def _cached(request: web.Request, etag: str, cache_control: str) -> web.Response | None:
    """A 304 when the client already holds this version."""
    if _not_modified(request, etag):
        response = web.Response(status=304)
        response.etag = etag
        response.headers["Cache-Control"] = cache_control
        return response
    return None


def _page_response(request: web.Request, body: bytes, content_type: str) -> web.Response:
    etag = hashlib.sha256(body).hexdigest()[:32]
    response = _cached(request, etag, PAGE_CACHE_CONTROL) or web.Response(
        body=body, content_type=content_type, charset="utf-8"
    )
    response.etag = etag
    response.headers["Cache-Control"] = PAGE_CACHE_CONTROL
    return response


async def _page(request: web.Request, default_limit: int) -> tuple[str, int, FeedPage]:
    """The page a request's label, cursor, limit and account ask for: (label, limit, page)."""
    settings = settings_of(request)
    label = parse_label(request.query.get("label"))
    cursor = parse_cursor(request.query.get("cursor"))
    limit = parse_limit(request.query.get("limit"), default_limit, settings.max_page_size)
    account = parse_account(request.query.get("account"))
    page = await request.app[STORE].call(feed_page, settings.rule, label, cursor, limit, account)
    return label, limit, page


async def gallery(request: web.Request) -> web.Response:
    settings = settings_of(request)
    label, limit, page = await _page(request, settings.page_size)
    document = gallery_html(
        page,
        settings.title,
        label,
        settings.thumbnail_size,
        limit if limit != settings.page_size else None,
        request.query.get("account"),
    )
    return _page_response(request, document.encode("utf-8"), "text/html")


async def media_page(request: web.Request) -> web.Response:
    """`/m/<id>`: one media's page (full image, post, author, label and who decided, relabel link)."""
    settings = settings_of(request)
    item = await request.app[STORE].call(media_detail, settings.rule, int(request.match_info["media_id"]))
    if item is None:
        raise web.HTTPNotFound(text=f"no stored media {request.match_info['media_id']}")
    document = detail_html(item, settings.title, review_on=bool(settings.review_token))
    return _page_response(request, document.encode("utf-8"), "text/html")


async def atom_feed(request: web.Request) -> web.Response:
    settings = settings_of(request)
    label, _limit, page = await _page(request, settings.atom_entries)
    root = base_url(request)
    document = atom_xml(page, settings.title, label, root, root + request.path_qs, request.query.get("account"))
    return _page_response(request, document, "application/atom+xml")


def item_json(item: FeedItem, root: str) -> dict:
    credit = item.credit
    return {
        "id": item.media_id,
        "sha256": item.sha256,
        "label": item.label,
        "decided_by": item.decided_by,
        "mime": item.mime,
        "width": item.width,
        "height": item.height,
        "bytes": item.bytes,
        "first_seen_at": item.first_seen_at,
        "published_at": item.published_at,
        "alt_text": alt_text(item),
        "media_url": f"{root}/media/{item.sha256}",
        "thumbnail_url": f"{root}/thumb/{item.sha256}",
        "page_url": f"{root}/m/{item.media_id}",
        "post": None
        if credit is None
        else {
            "source": credit.source,
            "handle": credit.handle,
            "display_name": credit.display_name,
            "author": credit.author,
            "url": credit.post_url,
            "link": safe_link(credit.post_url),
            "text": credit.text,
            "created_at": credit.created_at,
            "posts": credit.posts,
        },
    }


async def api_media(request: web.Request) -> web.Response:
    label, _limit, page = await _page(request, settings_of(request).page_size)
    root = base_url(request)
    response = web.json_response(
        {
            "label": label,
            "account": request.query.get("account"),
            "rule": settings_of(request).rule,
            "items": [item_json(item, root) for item in page.items],
            "next_cursor": page.next_cursor,
        }
    )
    response.headers["Cache-Control"] = PAGE_CACHE_CONTROL
    return response


async def _visible_media(request: web.Request) -> dict:
    sha256 = request.match_info["sha256"]
    # Validated before anything else: only a 64-hex name can reach the database or a path.
    media = await request.app[STORE].call(visible_media, sha256) if SHA256_PATTERN.match(sha256) else None
    if media is None:
        raise web.HTTPNotFound(text=f"no media {sha256[:80]!r}")
    return media


def _refuse(status: int, reason: str) -> web.HTTPException:
    """A 404/410 that no cache keeps: the file may come back (`illustfeed check --repair`, a re-import)."""
    error_class = web.HTTPGone if status == 410 else web.HTTPNotFound
    return error_class(text=reason, headers={"Cache-Control": "no-store"})


def _blob_response(
    request: web.Request, path, etag: str, mime: str, size: int | None = None, cache_control: str = BLOB_CACHE_CONTROL
) -> web.Response:
    """The file's bytes, only when they are all there: `size` (the row's) must match the file's."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        log.error("stored file missing: %s", path)
        raise _refuse(404, "the stored file is missing (see `illustfeed check`)") from None
    actual = os.fstat(handle.fileno()).st_size
    if size is not None and actual != size:
        handle.close()
        log.error("stored file damaged: %s has %d bytes, its row says %d", path, actual, size)
        raise _refuse(
            410,
            f"the stored file is damaged ({actual} bytes of {size}); "
            "`illustfeed check --repair` and a re-import restore it",
        )
    # Checked after the size: a 304 must never confirm bytes the server would not serve.
    cached = _cached(request, etag, cache_control)
    if cached is not None:
        handle.close()
        return cached
    if mime.startswith("video/"):
        handle.close()
        # Players fetch videos in byte ranges (Safari will not play one otherwise): FileResponse answers them.
        response = web.FileResponse(path, headers={"Content-Type": mime, "Content-Disposition": "inline"})
        response.etag = etag
        response.headers["Cache-Control"] = cache_control
        return response
    # aiohttp streams a file body in chunks from a worker thread and closes it afterwards. Its default
    # Content-Disposition for files is "attachment"; these are meant to be shown.
    response = web.Response(body=handle, content_type=mime, headers={"Content-Disposition": "inline"})
    response.etag = etag
    response.headers["Cache-Control"] = cache_control
    return response


def _note_damage(store: Store, media_id: int, problem: str) -> None:
    """Record what the server found, so `status`, /healthz and the next import know; not on a read-only store."""
    if store.read_only:
        return
    try:
        mark_damaged(store, media_id, problem)
    except (sqlite3.Error, StorageFault) as error:
        log.warning("cannot record damaged media %s: %s", media_id, error)


async def _original_response(
    request: web.Request, media: dict, cache_control: str = BLOB_CACHE_CONTROL
) -> web.Response:
    worker = request.app[STORE]
    path = await worker.call(lambda store: store.blobs.path(media["sha256"], media["ext"]))
    try:
        return await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                _blob_response, request, path, media["sha256"], media["mime"], media["bytes"], cache_control
            ),
        )
    except web.HTTPException as refused:
        await worker.call(_note_damage, media["id"], refused.text)
        raise


async def media_file(request: web.Request) -> web.Response:
    media = await _visible_media(request)
    return await _original_response(request, media)


async def _thumbnail(request: web.Request, media: dict) -> Thumbnail:
    spec = thumbnail_spec(settings_of(request))
    worker = request.app[STORE]
    existing = await worker.call(stored_thumbnail, media["id"], spec)
    if existing is not None:
        return existing
    # One rendering per media even when a gallery page asks for it from several connections at once.
    locks = request.app[THUMBNAIL_LOCKS]
    lock = locks.setdefault(media["id"], asyncio.Lock())
    try:
        async with lock:
            existing = await worker.call(stored_thumbnail, media["id"], spec)
            if existing is not None:
                return existing
            source = await worker.call(lambda store: store.blobs.path(media["sha256"], media["ext"]))
            # Decoding and encoding run on the default pool, in parallel, off the loop and the store thread.
            data, width, height = await asyncio.get_running_loop().run_in_executor(None, render_thumbnail, source, spec)
            return await worker.call(record_thumbnail, media["id"], spec, data, width, height)
    finally:
        if locks.get(media["id"]) is lock and not lock.locked():
            locks.pop(media["id"], None)


def _original_intact(store: Store, media: dict) -> bool:
    return store.blobs.intact(media["sha256"], media["ext"], media["bytes"])


async def thumbnail_file(request: web.Request) -> web.Response:
    media = await _visible_media(request)
    worker = request.app[STORE]
    if not await worker.call(_original_intact, media):
        return await _original_response(request, media)  # answers the 404/410 that says why
    if await worker.call(lambda store: store.read_only):
        # Nowhere to keep a new thumbnail: the original stands in, revalidated so the thumbnail wins later.
        existing = await worker.call(stored_thumbnail, media["id"], thumbnail_spec(settings_of(request)))
        if existing is None:
            return await _original_response(request, media, PAGE_CACHE_CONTROL)
    try:
        thumbnail = await _thumbnail(request, media)
    except (StorageFault, sqlite3.OperationalError, OSError) as error:
        if storage_fault(error) is None:
            raise
        log.warning("cannot store a thumbnail of media %s (%s); serving the original", media["id"], error)
        return await _original_response(request, media, PAGE_CACHE_CONTROL)
    path = await request.app[STORE].call(lambda store: store.derived.path(thumbnail.sha256, thumbnail.ext))
    return _blob_response(request, path, thumbnail.sha256, thumbnail.mime)


def storage_health(store: Store) -> str:
    """`ok`, `read-only`, or `damaged N` (media whose stored file is known to be missing or wrong)."""
    damaged = store.damaged_count()
    if damaged:
        return f"damaged {damaged}"
    derived = store.derived.root
    if (
        store.read_only
        or not data_dir_writable(store.data_dir)
        or (derived.is_dir() and not data_dir_writable(derived))
    ):
        return "read-only"
    return "ok"


async def healthz(request: web.Request) -> web.Response:
    worker = request.app[STORE]
    try:
        counts = await worker.call(feed_counts, settings_of(request).rule)
        storage = await worker.call(storage_health)
    except sqlite3.Error as error:
        log.error("health check failed: %s", error)
        return web.json_response({"ok": False, "error": f"database: {error}", "storage": "unreadable"}, status=503)
    # Damage or a read-only disk leaves the feed readable: the check stays 200 and says what is wrong.
    return web.json_response(
        {
            "ok": True,
            "storage": storage,
            "schema_version": SCHEMA_VERSION,
            "rule": settings_of(request).rule,
            "feed": counts["by_label"]["illustration"],
            **counts,
        }
    )


async def stylesheet(request: web.Request) -> web.Response:
    response = web.Response(text=STYLESHEET, content_type="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@web.middleware
async def _bad_requests(request: web.Request, handler) -> web.StreamResponse:
    """A bad label, cursor or limit is a 400 naming it: JSON for the API, plain text elsewhere."""
    try:
        return await handler(request)
    except FeedQueryError as error:
        if request.path.startswith("/api/"):
            return web.json_response({"error": str(error)}, status=400)
        raise web.HTTPBadRequest(text=str(error)) from None


@web.middleware
async def _storage_faults(request: web.Request, handler) -> web.StreamResponse:
    """A write the disk refuses (full, read-only, locked: a review answer, say) is a 503 with the sentence,
    not a 500 and a traceback in the log."""
    try:
        return await handler(request)
    except (StorageFault, sqlite3.OperationalError) as error:
        fault = storage_fault(error)
        if fault is None:
            raise
        log.error("%s %s: %s", request.method, request.path, fault)
        raise web.HTTPServiceUnavailable(text=str(fault), headers={"Cache-Control": "no-store"}) from None


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"


# Adds routes to the feed app, e.g. the review page of bot.chat.web (which the feed must not import).
Extension = Callable[[web.Application], None]


def create_app(
    settings: FeedConfig, store_factory: Callable[[], Store], extensions: Sequence[Extension] = ()
) -> web.Application:
    """The feed app; it opens its own Store (one connection, on its store thread) at startup."""
    app = web.Application(middlewares=[_storage_faults, _bad_requests])
    app[SETTINGS] = settings
    app[THUMBNAIL_LOCKS] = {}

    async def store_context(app: web.Application):
        worker = StoreWorker(store_factory)
        await worker.open()
        app[STORE] = worker
        yield
        await worker.close()

    app.cleanup_ctx.append(store_context)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", gallery)
    app.router.add_get(r"/m/{media_id:[0-9]{1,18}}", media_page)
    app.router.add_get("/feed.atom", atom_feed)
    app.router.add_get("/api/media", api_media)
    app.router.add_get("/media/{sha256}", media_file)
    app.router.add_get("/thumb/{sha256}", thumbnail_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(STYLESHEET_URL, stylesheet)
    for extend in extensions:
        extend(app)
    return app


async def start_feed_server(
    config: Config,
    store_factory: Callable[[], Store] | None = None,
    host: str | None = None,
    port: int | None = None,
    extensions: Sequence[Extension] = (),
) -> web.AppRunner:
    """Start serving inside the running loop; returns the runner (`await runner.cleanup()` stops it).

    `store_factory` must return a Store of its own (default: `Store.open(config.data_path)`): the app calls it
    once, on its store thread, and closes that Store when the runner is cleaned up.

    `runner.addresses` holds the bound (host, port), which tells the port chosen when `port` is 0.
    """
    # Read-only when the data dir cannot be written: the feed is still served, thumbnails from the originals.
    factory = store_factory or (
        lambda: Store.open(config.data_path, read_only=None, busy_timeout_s=config.storage.busy_timeout_seconds)
    )
    runner = web.AppRunner(create_app(config.feed, factory, extensions))
    await runner.setup()
    site = web.TCPSite(runner, host or config.feed.host, config.feed.port if port is None else port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def server_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_until_stopped(
    config: Config,
    host: str | None,
    port: int | None,
    on_started: Callable[[str], None] = print,
    extensions: Sequence[Extension] = (),
) -> None:
    """Serve until SIGINT or SIGTERM (the `illustfeed serve` command)."""
    runner = await start_feed_server(config, host=host, port=port, extensions=extensions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        on_started(server_url(runner))
        await stop.wait()
    finally:
        await runner.cleanup()
