"""HTML gallery and Atom 1.0 documents from feed pages; every user-derived string is escaped here."""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from urllib.parse import urlencode, urlsplit

from bot.feed.queries import Credit, FeedItem, FeedPage
from bot.feed.thumbnails import fitted_size
from storage import LABELS

ATOM_NS = "http://www.w3.org/2005/Atom"
EPOCH = "1970-01-01T00:00:00Z"
# Characters XML 1.0 forbids even escaped; a post text carrying one would make the whole feed unparseable.
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

STYLESHEET_URL = "/static/feed.css"
STYLESHEET = """
:root { color-scheme: light dark; font-family: system-ui, sans-serif; --fg: #1a1a1a; --bg: #fafafa;
        --muted: #666; --card: #fff; --link: #0b57d0; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e8e8e8; --bg: #121212; --muted: #9a9a9a; --card: #1e1e1e; --link: #8ab4f8; }
}
body { margin: 0 auto; max-width: 1600px; padding: 0 1rem 2rem; color: var(--fg); background: var(--bg); }
a { color: var(--link); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: baseline; }
header h1 { margin: .8rem 0; font-size: 1.5rem; }
header h1 a { color: inherit; text-decoration: none; }
nav { display: flex; flex-wrap: wrap; gap: .8rem; }
nav a[aria-current] { font-weight: bold; }
.grid { columns: 15rem; column-gap: 1rem; }
.tile { margin: 0 0 1rem; break-inside: avoid; background: var(--card); border-radius: .5rem; overflow: hidden; }
.tile img, .tile video { display: block; width: 100%; height: auto; background: #8882; }
.tile figcaption { padding: .4rem .6rem .6rem; font-size: .85rem; overflow-wrap: anywhere; }
.tile figcaption .meta { color: var(--muted); }
.tile p { margin: .3rem 0 0; }
.pager { margin-top: 2rem; display: flex; gap: 1rem; }
.empty { color: var(--muted); }
.detail { display: grid; gap: 1.5rem; grid-template-columns: minmax(0, 3fr) minmax(16rem, 1fr); align-items: start; }
.detail img, .detail video { max-width: 100%; height: auto; max-height: 90vh; display: block; margin: auto; }
.detail dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
.detail dt { color: var(--muted); }
.detail dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 700px) { .detail { grid-template-columns: 1fr; } }
.review .pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 1rem; }
.review figure { margin: 0; }
.review .pair img { width: 100%; height: auto; max-height: 70vh; object-fit: contain; background: #8882; }
.review .answers { display: flex; flex-wrap: wrap; gap: .5rem; margin: 1rem 0; }
.review .answers button { font-size: 1.1rem; padding: .5rem 1rem; }
.review .said { padding: .5rem; background: #8882; }
.review meter { width: 10rem; }
"""


def safe_link(url: str | None) -> str | None:
    """The URL when a browser may follow it from our pages (http or https), else None (javascript:, file:...)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime (naive ones are taken as UTC); None if unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def rfc3339(value: str | None, fallback: str = EPOCH) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else fallback


def shorten(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def alt_text(item: FeedItem) -> str:
    if item.credit and item.credit.alt_text:
        return item.credit.alt_text
    kind = (item.label or "media").capitalize()
    return f"{kind} by {item.credit.author}" if item.credit else kind


def entry_title(item: FeedItem) -> str:
    text = shorten(item.credit.text if item.credit else None, 80)
    return text or alt_text(item)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def account_key(credit: Credit) -> str:
    """How `?account=` names an author: SOURCE:HANDLE."""
    return f"{credit.source}:{credit.handle}"


def _author_link(credit: Credit | None) -> str:
    """The author's name, linked to their own view of the gallery."""
    if credit is None:
        return "unknown author"
    name = _e(credit.author) + (f' <span class="meta">@{_e(credit.handle)}</span>' if credit.display_name else "")
    return f'<a href="/?{_e(urlencode({"account": account_key(credit)}))}">{name}</a>'


def _when(item: FeedItem) -> str:
    moment = parse_time(item.published_at)
    return (
        f'<time datetime="{_e(rfc3339(item.published_at))}">{_e(moment.strftime("%Y-%m-%d %H:%M"))}</time>'
        if moment
        else ""
    )


def _shown(item: FeedItem, source: str, width: int, height: int, lazy: bool = True) -> str:
    """The image, or for a video a looping muted clip that plays by itself as X shows a GIF (no script)."""
    if (item.mime or "").startswith("video/"):
        return (
            f'<video src="/media/{item.sha256}" poster="/thumb/{item.sha256}" width="{width}" '
            f'height="{height}" autoplay loop muted playsinline preload="none" '
            f'aria-label="{_e(alt_text(item))}"></video>'
        )
    loading = ' loading="lazy" decoding="async"' if lazy else ""
    return f'<img src="{source}" width="{width}" height="{height}" alt="{_e(alt_text(item))}"{loading}>'


def _tile(item: FeedItem, thumbnail_size: int) -> str:
    width, height = fitted_size(item.width or thumbnail_size, item.height or thumbnail_size, thumbnail_size)
    credit = item.credit
    post_link = safe_link(credit.post_url) if credit else None
    to_post = f' · <a href="{_e(post_link)}" rel="noopener noreferrer nofollow">post</a>' if post_link else ""
    text = shorten(credit.text if credit else None, 200)
    return (
        f'<figure class="tile" id="m{item.media_id}">'
        f'<a href="/m/{item.media_id}">{_shown(item, f"/thumb/{item.sha256}", width, height)}</a>'
        f'<figcaption>{_author_link(credit)} <span class="meta">· {_when(item)}{to_post}</span>'
        + (f"<p>{_e(text)}</p>" if text else "")
        + "</figcaption></figure>"
    )


def _page(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="{STYLESHEET_URL}">{head}</head>'
        f"<body>{body}</body></html>\n"
    )


def gallery_html(
    page: FeedPage, title: str, label: str, thumbnail_size: int, limit: int | None = None, account: str | None = None
) -> str:
    """The gallery page; `limit` (when not the default page size) and `account` (SOURCE:HANDLE, one author's
    view) are kept in the page's links."""
    kept = {"account": account} if account else {}
    label_links = " ".join(
        f'<a href="/?{_e(urlencode({"label": name} | kept))}"'
        + (' aria-current="page"' if name == label else "")
        + f">{_e(name)}s</a>"
        for name in LABELS
    )
    tiles = "".join(_tile(item, thumbnail_size) for item in page.items)
    older_query = {"label": label} | kept | {"cursor": page.next_cursor} | ({"limit": limit} if limit else {})
    older = f'<a rel="next" href="/?{_e(urlencode(older_query))}">Older →</a>' if page.next_cursor else ""
    atom = f"/feed.atom?{urlencode(kept)}" if account else "/feed.atom"
    heading = f"{_e(title)}: {_e(account)}" if account else _e(title)
    everyone = ' <a href="/">all authors</a>' if account else ""
    body = (
        f'<header><h1><a href="/">{heading}</a></h1><nav>{label_links}{everyone}</nav>'
        f'<a href="{_e(atom)}">Atom feed</a></header>'
        + (f'<main class="grid">{tiles}</main>' if tiles else f'<main><p class="empty">No {_e(label)}s yet.</p></main>')
        + f'<nav class="pager"><a href="/?{_e(urlencode({"label": label} | kept))}">Newest</a>{older}</nav>'
    )
    head = f'<link rel="alternate" type="application/atom+xml" title="{_e(title)}" href="{_e(atom)}">'
    return _page(f"{title}: {account}" if account else title, body, head)


def detail_html(item: FeedItem, title: str, review_on: bool) -> str:
    """One media: the full image, the post's text, author, link, label and who decided, and a way to relabel."""
    credit = item.credit
    post_link = safe_link(credit.post_url) if credit else None
    label = _e(item.label) if item.label else "undecided (waiting for review)"
    decided = f" (decided by {'a human' if item.decided_by == 'human' else 'the model'})" if item.label else ""
    relabel = (
        f'<a href="/review?{_e(urlencode({"media": item.media_id}))}">wrong? relabel</a>'
        if review_on
        else f"relabel with <code>illustfeed label {item.media_id} LABEL</code> or /label in chat"
    )
    facts = [("label", f"{label}{decided}"), ("author", _author_link(credit)), ("posted", _when(item))]
    if post_link:
        facts.append(
            ("post", f'<a href="{_e(post_link)}" rel="noopener noreferrer nofollow">{_e(shorten(post_link, 80))}</a>')
        )
    if credit and credit.text:
        facts.append(("text", _e(credit.text)))
    facts += [("size", f"{item.width}×{item.height}, {_e(item.mime)}"), ("", relabel)]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    body = (
        f'<header><h1><a href="/">{_e(title)}</a></h1><nav><a href="/">gallery</a></nav></header>'
        f'<main class="detail"><a href="/media/{item.sha256}">'
        f"{_shown(item, f'/media/{item.sha256}', item.width, item.height, lazy=False)}</a>"
        f"<dl>{rows}</dl></main>"
    )
    return _page(f"{alt_text(item)} - {title}", body)


def _x(value: object) -> str:
    """Text for an XML element or attribute: escaped, and without the characters XML cannot carry at all."""
    return html.escape(XML_ILLEGAL.sub("", str(value)), quote=True)


def _entry_content(item: FeedItem, media_url: str) -> str:
    credit = item.credit
    post_link = safe_link(credit.post_url) if credit else None
    if (item.mime or "").startswith("video/"):
        poster = f"{media_url.rsplit('/media/', 1)[0]}/thumb/{item.sha256}"
        image = (
            f'<video src="{_e(media_url)}" poster="{_e(poster)}" width="{item.width}" height="{item.height}" '
            f"controls loop muted playsinline>{_e(alt_text(item))}</video>"
        )
    else:
        image = f'<img src="{_e(media_url)}" alt="{_e(alt_text(item))}" width="{item.width}" height="{item.height}">'
    parts = [f'<p><a href="{_e(post_link)}">{image}</a></p>' if post_link else f"<p>{image}</p>"]
    if credit and credit.text:
        parts.append(f"<p>{_e(credit.text)}</p>")
    if credit:
        parts.append(f"<p>by {_e(credit.author)} (@{_e(credit.handle)} on {_e(credit.source)})</p>")
    return "".join(parts)


def _atom_entry(item: FeedItem, base_url: str) -> str:
    media_url = f"{base_url}/media/{item.sha256}"
    credit = item.credit
    post_link = safe_link(credit.post_url) if credit else None
    published = (
        f"<published>{rfc3339(credit.created_at)}</published>" if credit and parse_time(credit.created_at) else ""
    )
    return (
        f"<entry><id>urn:illustfeed:media:{item.sha256}</id>"
        f"<title>{_x(entry_title(item))}</title>"
        f"<updated>{rfc3339(item.first_seen_at)}</updated>{published}"
        f"<author><name>{_x(credit.author if credit else 'unknown')}</name></author>"
        f'<link rel="alternate" type="text/html" href="{_x(post_link or media_url)}"/>'
        f'<link rel="enclosure" type="{_x(item.mime)}" length="{int(item.bytes or 0)}" href="{_x(media_url)}"/>'
        # The HTML is escaped once more to become the text of a type="html" content element.
        f'<content type="html">{_x(_entry_content(item, media_url))}</content></entry>'
    )


def atom_xml(page: FeedPage, title: str, label: str, base_url: str, self_url: str, account: str | None = None) -> bytes:
    """An Atom 1.0 feed (RFC 4287) of the page; images are linked by absolute URL under `base_url`. With
    `account` (SOURCE:HANDLE) it is that author's feed, with an id of its own."""
    feed_title = title if label == "illustration" else f"{title}: {label}s"
    feed_title += f" by {account}" if account else ""
    updated = rfc3339(page.items[0].first_seen_at) if page.items else EPOCH
    alternate = f"{base_url}/?{urlencode({'label': label} | ({'account': account} if account else {}))}"
    feed_id = f"urn:illustfeed:feed:{label}" + (f":{account}" if account else "")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<feed xmlns="{ATOM_NS}"><id>{_x(feed_id)}</id><title>{_x(feed_title)}</title>'
        f"<updated>{updated}</updated>"
        f'<link rel="self" type="application/atom+xml" href="{_x(self_url)}"/>'
        f'<link rel="alternate" type="text/html" href="{_x(alternate)}"/><generator>illustfeed</generator>'
        + "".join(_atom_entry(item, base_url) for item in page.items)
        + "</feed>\n"
    ).encode("utf-8")
