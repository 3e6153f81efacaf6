"""HTML gallery and Atom 1.0 documents from feed pages; every user-derived string is escaped here."""
from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from urllib.parse import urlencode, urlsplit

from bot.feed.queries import FeedItem, FeedPage
from bot.feed.thumbnails import fitted_size
from storage import LABELS

ATOM_NS = "http://www.w3.org/2005/Atom"
EPOCH = "1970-01-01T00:00:00Z"
# Characters XML 1.0 forbids even escaped; a post text carrying one would make the whole feed unparseable.
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

STYLESHEET_URL = "/static/feed.css"
STYLESHEET = """
:root { color-scheme: light dark; font-family: system-ui, sans-serif; }
body { margin: 0 auto; max-width: 1400px; padding: 0 1rem 2rem; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: baseline; }
header h1 a { color: inherit; text-decoration: none; }
nav a[aria-current] { font-weight: bold; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }
.tile { margin: 0; display: flex; flex-direction: column; gap: .3rem; }
.tile img { width: 100%; height: auto; aspect-ratio: 1 / 1; object-fit: contain; background: #8882; }
.tile figcaption { font-size: .85rem; overflow-wrap: anywhere; }
.tile p { margin: .2rem 0 0; opacity: .8; }
.pager { margin-top: 2rem; display: flex; gap: 1rem; }
.empty { opacity: .7; }
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
    return f"{item.label.capitalize()} by {item.credit.author}" if item.credit else item.label.capitalize()


def entry_title(item: FeedItem) -> str:
    text = shorten(item.credit.text if item.credit else None, 80)
    return text or alt_text(item)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _tile(item: FeedItem, thumbnail_size: int) -> str:
    width, height = fitted_size(item.width or thumbnail_size, item.height or thumbnail_size, thumbnail_size)
    credit = item.credit
    moment = parse_time(item.published_at)
    when = (f'<time datetime="{_e(rfc3339(item.published_at))}">{_e(moment.strftime("%Y-%m-%d %H:%M"))}</time>'
            if moment else "")
    if credit is None:
        byline = "unknown author"
    else:
        name = _e(credit.author) + (f" <span>@{_e(credit.handle)}</span>" if credit.display_name else "")
        post_link = safe_link(credit.post_url)
        byline = (f'<a href="{_e(post_link)}" rel="noopener noreferrer nofollow">{name}</a>' if post_link
                  else name)
    text = shorten(credit.text if credit else None, 200)
    return (
        f'<figure class="tile" id="m{item.media_id}">'
        f'<a href="/media/{item.sha256}"><img src="/thumb/{item.sha256}" width="{width}" height="{height}" '
        f'alt="{_e(alt_text(item))}" loading="lazy" decoding="async"></a>'
        f"<figcaption>{byline} \u00b7 {when}"
        + (f"<p>{_e(text)}</p>" if text else "")
        + "</figcaption></figure>"
    )


def gallery_html(page: FeedPage, title: str, label: str, thumbnail_size: int, limit: int | None = None) -> str:
    """The gallery page; `limit` (when not the default page size) is kept in the link to older tiles."""
    label_links = " ".join(
        f'<a href="/?{urlencode({"label": name})}"' + (' aria-current="page"' if name == label else "")
        + f">{_e(name)}s</a>"
        for name in LABELS
    )
    tiles = "".join(_tile(item, thumbnail_size) for item in page.items)
    older_query = {"label": label, "cursor": page.next_cursor} | ({"limit": limit} if limit else {})
    older = f'<a rel="next" href="/?{_e(urlencode(older_query))}">Older \u2192</a>' if page.next_cursor else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<link rel="stylesheet" href="{STYLESHEET_URL}">'
        f'<link rel="alternate" type="application/atom+xml" title="{_e(title)}" href="/feed.atom"></head>'
        f'<body><header><h1><a href="/">{_e(title)}</a></h1><nav>{label_links}</nav>'
        f'<a href="/feed.atom">Atom feed</a></header>'
        + (f'<main class="grid">{tiles}</main>' if tiles else f'<main><p class="empty">No {_e(label)}s yet.</p></main>')
        + f'<nav class="pager"><a href="/?{_e(urlencode({"label": label}))}">Newest</a>{older}</nav>'
        "</body></html>\n"
    )


def _x(value: object) -> str:
    """Text for an XML element or attribute: escaped, and without the characters XML cannot carry at all."""
    return html.escape(XML_ILLEGAL.sub("", str(value)), quote=True)


def _entry_content(item: FeedItem, media_url: str) -> str:
    credit = item.credit
    post_link = safe_link(credit.post_url) if credit else None
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
    published = (f"<published>{rfc3339(credit.created_at)}</published>"
                 if credit and parse_time(credit.created_at) else "")
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


def atom_xml(page: FeedPage, title: str, label: str, base_url: str, self_url: str) -> bytes:
    """An Atom 1.0 feed (RFC 4287) of the page; images are linked by absolute URL under `base_url`."""
    feed_title = title if label == "illustration" else f"{title}: {label}s"
    updated = rfc3339(page.items[0].first_seen_at) if page.items else EPOCH
    alternate = f"{base_url}/?{urlencode({'label': label})}"
    return (
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
        f'<feed xmlns="{ATOM_NS}"><id>urn:illustfeed:feed:{_x(label)}</id><title>{_x(feed_title)}</title>'
        f"<updated>{updated}</updated>"
        f'<link rel="self" type="application/atom+xml" href="{_x(self_url)}"/>'
        f'<link rel="alternate" type="text/html" href="{_x(alternate)}"/><generator>illustfeed</generator>'
        + "".join(_atom_entry(item, base_url) for item in page.items)
        + "</feed>\n"
    ).encode("utf-8")
