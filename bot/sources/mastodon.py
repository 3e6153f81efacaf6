"""Mastodon source: images posted by followed accounts on any instance, through each account's own instance API.

Handles are `user@instance`. `GET /api/v1/accounts/lookup` gives the account's id on its own instance (whose
copy of its statuses is complete), `GET /api/v1/accounts/:id/statuses?only_media=true` pages newest first
following the `Link` header, from `since_id` (the cursor) on. Attachments of type image are fetched at full
size; video and gifv (an MP4) as their file, the preview frame when the file is refused (too large). A
status's HTML `content` is stored as plain text. The optional access
token is sent only to the configured home instance.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from bot.config import MastodonSourceConfig
from bot.ingest.fetch import Http, JsonReply, SourceError
from bot.sources.records import MediaRef, Post
from bot.sources.network import (
    Account,
    AccountBatch,
    ListedAccountsSource,
    Targets,
    account_batch,
    normalise_handle,
    numeric_id_key,
)

SOURCE_NAME = "mastodon"
FOLLOWING_PAGE = 80  # the API's maximum for /following
HANDLE = re.compile(r"^[a-z0-9_.\-]+@[a-z0-9.\-]+\.[a-z]{2,}$")


class MastodonHandleError(ValueError):
    """Not a `user@instance` handle."""


def mastodon_handle(handle: str, default_instance: str = "") -> str:
    """'@Artist@Mastodon.Social' -> 'artist@mastodon.social'; a bare name takes `default_instance`."""
    handle = normalise_handle(handle)
    if "@" not in handle and default_instance:
        handle = f"{handle}@{default_instance.lower()}"
    if not HANDLE.match(handle):
        raise MastodonHandleError(f"Mastodon handle {handle!r} is not user@instance (e.g. @artist@mastodon.social)")
    return handle


class _PlainText(HTMLParser):
    """Collects the text of a status: paragraphs end in a blank line, <br> in a line break, entities decoded."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "p":
            self.parts.append("\n\n")

    def handle_data(self, data):
        # Link text hidden behind class="invisible" spans is kept: the full URL reads better than a shortened one.
        self.parts.append(data)


def html_to_text(content: str | None) -> str | None:
    """Mastodon's status HTML as plain text, None when there is none."""
    if not content:
        return None
    parser = _PlainText()
    parser.feed(content)
    parser.close()
    return "".join(parser.parts).strip() or None


def attachment_ref(attachment: Mapping) -> MediaRef | None:
    kind = attachment.get("type")
    alt = attachment.get("description") or None
    if kind == "image" and attachment.get("url"):
        return MediaRef(url=attachment["url"], kind="photo", alt=alt)
    if kind in ("gifv", "video"):
        renditions = [url for url in (attachment.get("url"), attachment.get("preview_url")) if url]
        if renditions:
            return MediaRef(
                url=renditions[0],
                kind="animated_gif" if kind == "gifv" else "video",
                alt=alt,
                fallbacks=tuple(renditions[1:]),
            )
    return None


class MastodonSource(ListedAccountsSource):
    name = SOURCE_NAME
    settings: MastodonSourceConfig

    def __init__(
        self, settings: MastodonSourceConfig, http: Http, max_bytes: int, meter: Callable[[], None] | None = None
    ):
        super().__init__(settings, http, max_bytes, meter)
        self.home = settings.instance.lower()
        self.instances: set[str] = {self.home} if self.home else set()

    def configured(self) -> str | None:
        return None  # public timelines need no token

    def media_hosts(self) -> list[str]:
        """Every instance read this run, with its subdomains (files.<instance>), and the configured CDNs."""
        hosts = [host for instance in sorted(self.instances) for host in (instance, f".{instance}")]
        return hosts + list(self.settings.media_hosts)

    def _api(self, url: str, what: str, expect: type, params: dict | None = None) -> JsonReply:
        host = urlsplit(url).hostname or ""
        self.instances.add(host)
        headers = (
            {"Authorization": f"Bearer {self.settings.access_token}"}
            if self.settings.access_token and host == self.home
            else None
        )
        return self.http.get_json(
            url, f"Mastodon {what}", host, expect, params=params, headers=headers, meter=self.meter
        )

    def lookup(self, handle: str) -> Account:
        user, instance = handle.split("@", 1)
        body = self._api(f"https://{instance}/api/v1/accounts/lookup", f"lookup {handle}", dict, {"acct": user}).body
        if not body.get("id"):
            raise SourceError(f"Mastodon lookup {handle}: the answer names no account id: {str(body)[:200]}")
        return Account(handle, str(body["id"]), body.get("display_name") or None)

    def following(self, handle: str) -> list[Account]:
        owner = self.lookup(handle)
        instance = handle.split("@", 1)[1]
        accounts: list[Account] = []
        url: str | None = f"https://{instance}/api/v1/accounts/{owner.external_id}/following"
        params: dict | None = {"limit": FOLLOWING_PAGE}
        while url:
            reply = self._api(url, f"following of {handle}", list, params)
            for item in reply.body:
                acct = item["acct"] if "@" in item["acct"] else f"{item['acct']}@{instance}"
                # The id here is the home instance's; the account's own instance has another, looked up later.
                accounts.append(Account(acct.lower(), None, item.get("display_name") or None))
            url, params = self._next_page(reply, instance), None
        return accounts

    @staticmethod
    def _next_page(reply: JsonReply, instance: str) -> str | None:
        url = (reply.links.get("next") or {}).get("url")
        # A Link pointing elsewhere is not followed: the allow-list of hosts is the instances we chose.
        return url if url and urlsplit(url).hostname == instance else None

    def targets(self, followed: Sequence[str], known_ids: Mapping[str, str]) -> Targets:
        problems: list[str] = []
        handles: list[str] = []
        if self.settings.following_of:
            try:
                owner = mastodon_handle(self.settings.following_of, self.home)
                handles += [account.handle for account in self.following(owner)]
            except (SourceError, MastodonHandleError) as error:
                problems.append(f"following list of {self.settings.following_of} unavailable: {error}")
        for handle in (*self.settings.accounts, *followed):
            try:
                handles.append(mastodon_handle(handle, self.home))
            except MastodonHandleError as error:
                problems.append(str(error))
        accounts = []
        for handle in dict.fromkeys(handles):
            if handle in known_ids:
                accounts.append(Account(handle, known_ids[handle]))
                self.instances.add(handle.split("@", 1)[1])
                continue
            try:
                accounts.append(self.lookup(handle))
            except SourceError as error:
                problems.append(f"Mastodon account {handle} not found: {error}")
        return Targets(tuple(accounts), tuple(problems))

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch:
        instance = account.handle.split("@", 1)[1]
        url: str | None = f"https://{instance}/api/v1/accounts/{account.external_id}/statuses"
        params: dict | None = {
            "only_media": "true",
            "exclude_replies": "true",
            "exclude_reblogs": "false" if self.settings.include_reblogs else "true",
            "limit": self.settings.page_size,
            **({"since_id": cursor} if cursor else {}),
        }
        statuses: list[dict] = []
        while url:
            reply = self._api(url, f"statuses of {account.handle}", list, params)
            page = reply.body
            fresh = [s for s in page if cursor is None or numeric_id_key(str(s["id"])) > numeric_id_key(cursor)]
            statuses += fresh
            if len(fresh) < len(page) or not page or (cursor is None and len(statuses) >= self.settings.backfill_posts):
                break
            url, params = self._next_page(reply, instance), None
        return account_batch(
            account,
            statuses,
            lambda status: str(status["id"]),
            cursor is None,
            self.settings.backfill_posts,
            lambda status: self._post(account, status),
            numeric_id_key,
        )

    def _post(self, account: Account, status: Mapping) -> Post | None:
        shown = status.get("reblog") or status  # a boost carries the original's attachments
        media = [ref for ref in map(attachment_ref, shown.get("media_attachments") or []) if ref is not None]
        if not media:
            return None
        return Post(
            source=SOURCE_NAME,
            account=account.handle,
            post_id=status.get("uri") or str(status["id"]),
            url=shown.get("url") or status.get("url"),
            text=html_to_text(shown.get("content")),
            created_at=status.get("created_at"),
            media=tuple(media),
            account_id=account.external_id,
            display_name=account.display_name,
        )

    def fetch(self, ref: MediaRef) -> bytes:
        return self.http.download_first([ref.url, *ref.fallbacks], self.media_hosts(), self.max_bytes)


def canonical_handle(handle: str, default_instance: str = "") -> str:
    """`user@instance` as the store keeps it; a bare name takes `default_instance`."""
    return mastodon_handle(handle, default_instance)


SOURCE_CLASS = MastodonSource
