"""The review page in the browser: one more chat client, beside Discord and the terminal, on the feed server.

`GET /review` shows the item `/review` in chat would show (`/review?media=ID`: that media, to relabel it) (image and stored overlay side by side, the three
probabilities, author and post link) with plain HTML form buttons Illustration / Screenshot / Photo / Skip /
Undo (keys i/s/p/k/u through `accesskey`, no script). Answers are POSTed to `/review`, go through the same
command layer, and record `via = web`; the answer is followed by a redirect, so reloading never answers twice.

Access: off unless `[feed] review_token` is set. `/review?token=TOKEN` once sets an HttpOnly, SameSite=Strict
cookie (derived from the token, so changing the token logs every browser out) and redirects to `/review`.
Without the cookie GET answers 401 and POST 403; a POST without the page's CSRF field answers 403.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Callable
from urllib.parse import quote

from aiohttp import web

from bot.chat import commands
from bot.chat.commands import Actor, Reply
from bot.feed.render import STYLESHEET_URL, safe_link
from bot.feed.server import STORE, settings_of
from bot.review import ReviewItem, review_item
from storage import LABELS, Store, StoreError

COOKIE = "illustfeed_review"
ACTOR = Actor(by="web", via="web", name="web reviewer", authorised=True)
# The page's answers, with their access keys (i/s/p/k as in the terminal and Discord, u for undo).
ANSWERS: tuple[tuple[str, str, str], ...] = (*commands.REVIEW_CHOICES, ("u", "Undo", "undo"))
MESSAGE_LIMIT = 300  # characters of the last answer's outcome carried in the redirect


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    return _derive(token, "illustfeed review session")


def csrf_value(token: str) -> str:
    return _derive(token, "illustfeed review form")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _authorised(request: web.Request, token: str) -> bool:
    return hmac.compare_digest(request.cookies.get(COOKIE, ""), session_value(token))


def _token(request: web.Request) -> str:
    token = settings_of(request).review_token
    if not token:
        raise web.HTTPNotFound(text="the review page is off: set [feed] review_token (or ILLUSTFEED_FEED_REVIEW_TOKEN)")
    return token


async def review_page(request: web.Request) -> web.Response:
    token = _token(request)
    offered = request.query.get("token")
    if offered is not None:
        if not hmac.compare_digest(offered, token):
            raise web.HTTPUnauthorized(text="wrong review token")
        # The token leaves the address bar (and history) at once; the cookie carries the session.
        response = web.HTTPSeeOther("/review")
        response.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="Strict",
            path="/review",
            secure=request.secure,
            max_age=400 * 24 * 3600,
        )
        raise response
    if not _authorised(request, token):
        raise web.HTTPUnauthorized(text="open /review?token=TOKEN once in this browser ([feed] review_token)")
    media = request.query.get("media")  # "wrong? relabel" on a media page names one
    reply = (
        await request.app[STORE].call(commands.show, media)
        if media
        else await request.app[STORE].call(commands.next_review)
    )
    document = review_html(reply, csrf_value(token), request.query.get("said", "")[:MESSAGE_LIMIT])
    return web.Response(text=document, content_type="text/html", headers={"Cache-Control": "no-store"})


async def review_answer(request: web.Request) -> web.Response:
    token = _token(request)
    if not _authorised(request, token):
        raise web.HTTPForbidden(text="no review session: open /review?token=TOKEN first")
    form = await request.post()
    if not hmac.compare_digest(str(form.get("csrf", "")), csrf_value(token)):
        raise web.HTTPForbidden(text="the form's CSRF field is missing or wrong: reload /review")
    answer = str(form.get("answer", ""))
    if answer == "undo":
        reply = await request.app[STORE].call(commands.undo, ACTOR)
    else:
        media = str(form.get("media", ""))
        if not (media.isascii() and media.isdigit() and len(media) <= 18):
            raise web.HTTPBadRequest(text=f"media must be a media id, got {media[:40]!r}")
        reply = await request.app[STORE].call(_answer, int(media), answer)
    outcome = reply.text.split("\n\n", 1)[0][:MESSAGE_LIMIT]
    raise web.HTTPSeeOther(f"/review?said={quote(outcome)}")


def _answer(store: Store, media_id: int, answer: str) -> Reply:
    return commands.review_answer(store, ACTOR, media_id, answer)


async def review_file(request: web.Request) -> web.Response:
    """The stored image or overlay of an item, for the page's <img> (overlays are not feed media)."""
    if not _authorised(request, _token(request)):
        raise web.HTTPUnauthorized(text="no review session")
    kind, media_id = request.match_info["kind"], int(request.match_info["media_id"])
    item = await request.app[STORE].call(_item_or_none, media_id)
    path = None if item is None else (item.image_path if kind == "image" else item.overlay_path)
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text=f"no {kind} for media {media_id}")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"})


def _item_or_none(store: Store, media_id: int) -> ReviewItem | None:
    try:
        return review_item(store, media_id)
    except StoreError:
        return None


def review_html(reply: Reply, csrf: str, said: str = "") -> str:
    """The page for one reply of `commands.next_review`; every stored or user-derived string is escaped."""
    item = reply.item
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Review{f' media {item.media_id}' if item else ''} - illustfeed</title>"
        f'<link rel="stylesheet" href="{STYLESHEET_URL}"></head><body class="review"><header><h1>Review</h1>'
        f'<nav><a href="/">feed</a></nav></header>'
    ]
    for message in (said, "" if reply.ok else reply.text):
        if message:
            parts.append(f'<p class="said" role="status">{_e(message)}</p>')
    # The answers come first, above the pictures: a reviewer answers without scrolling.
    parts.append(_form_html(item, csrf))
    parts.append('<p class="empty">The review queue is empty.</p>' if item is None else _item_html(item))
    parts.append("</body></html>")
    return "".join(parts)


def _item_html(item: ReviewItem) -> str:
    pictures = [
        f'<figure><img src="/review/image/{item.media_id}" alt="media {item.media_id}">'
        f"<figcaption>image</figcaption></figure>"
    ]
    if item.overlay_path is not None:
        pictures.append(
            f'<figure><img src="/review/overlay/{item.media_id}" alt="Grad-CAM overlay of media '
            f'{item.media_id}"><figcaption>where the model looked (Grad-CAM)</figcaption></figure>'
        )
    if item.probabilities is not None:
        rows = "".join(
            f'<tr><th scope="row">{_e(label)}</th><td>{item.probabilities[label]:.0%}</td>'
            f'<td><meter min="0" max="1" value="{item.probabilities[label]:.4f}"></meter></td></tr>'
            for label in LABELS
        )
        call = (
            f"<p>Model {_e(item.model_version)} says <strong>{_e(item.predicted)}</strong></p>"
            f'<table class="probabilities">{rows}</table>'
        )
    else:
        call = "<p>Not classified yet.</p>"
    link = safe_link(item.post_url)
    author = _e(item.author or "unknown author")
    origin = f'<a href="{_e(link)}" rel="noopener noreferrer">{author}</a>' if link else author
    reason = f"<p>Queued because: {_e(item.reason)}</p>" if item.reason else ""
    return (
        f"<main><p>Media {item.media_id} ({item.pending} waiting for review)</p>"
        f'<div class="pair">{"".join(pictures)}</div>{call}{reason}<p>By {origin}</p></main>'
    )


def _form_html(item: ReviewItem | None, csrf: str) -> str:
    buttons = []
    for key, text, answer in ANSWERS:
        if item is None and answer != "undo":
            continue
        buttons.append(
            f'<button type="submit" name="answer" value="{answer}" accesskey="{key}">'
            f"{_e(text)} <kbd>{key}</kbd></button>"
        )
    media = f'<input type="hidden" name="media" value="{item.media_id}">' if item is not None else ""
    return (
        f'<form method="post" action="/review" class="answers"><input type="hidden" name="csrf" '
        f'value="{_e(csrf)}">{media}{"".join(buttons)}</form>'
    )


def install(app: web.Application) -> None:
    """Add the review routes to the feed app (`start_feed_server(..., extensions=[install])`)."""
    app.router.add_get("/review", review_page)
    app.router.add_post("/review", review_answer)
    app.router.add_get(r"/review/{kind:image|overlay}/{media_id:[0-9]{1,18}}", review_file)


EXTENSIONS: tuple[Callable[[web.Application], None], ...] = (install,)
