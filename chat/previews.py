"""Link previews: the first http(s) link of a message, fetched in the background
through the guard (chat/fetch.py), becomes a `preview` event about the message.

A preview is {url, title, description, site_name, image}: `image` is the
page's image fetched through the same guard and stored as a thumbnail in the
room's GridFS files, never a link to the other site. Each URL is fetched at most
once an hour over all processes (the `link_previews` cache keeps the result,
the image's thumbnail included, for every room that links it). The author may
remove it: a `preview` event with `preview: null`.
"""

from __future__ import annotations

import asyncio
import datetime
import html.parser
import logging
import re
import urllib.parse
from typing import Any

from chat.fetch import Fetcher, Refused
from chat.files import file_url, process_image
from chat.store import Forbidden, NotFound, background, now

log = logging.getLogger("chat.previews")

URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
CACHE_FOR = datetime.timedelta(hours=1)
TITLE_CHARS = 200
DESCRIPTION_CHARS = 500


def first_url(text: str) -> str | None:
    found = URL.search(text or "")
    return found.group(0).rstrip(".,;:!?)]}") if found else None


class OpenGraph(html.parser.HTMLParser):
    """The page's og: properties, <title> and meta description (from its head)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.properties: dict[str, str] = {}
        self.title = ""
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "meta":
            key = (values.get("property") or values.get("name") or "").lower()
            if key and "content" in values:
                self.properties.setdefault(key, values["content"])
        elif tag == "title":
            self.in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False

    def handle_data(self, data: str) -> None:
        if self.in_title and len(self.title) < TITLE_CHARS:
            self.title += data


def parse_page(body: bytes, content_type: str) -> dict[str, str]:
    charset = "utf-8"
    found = re.search(r"charset=([\w-]+)", content_type, re.IGNORECASE)
    if found:
        charset = found.group(1)
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    parser = OpenGraph()
    try:
        parser.feed(text)
    except Exception:  # what was parsed so far is kept
        pass
    meta = parser.properties
    return {
        "title": (meta.get("og:title") or parser.title).strip()[:TITLE_CHARS],
        "description": (meta.get("og:description") or meta.get("description") or "")
        .strip()[:DESCRIPTION_CHARS],
        "site_name": (meta.get("og:site_name") or "").strip()[:TITLE_CHARS],
        "image": (meta.get("og:image") or "").strip(),
    }


class Previews:
    def __init__(self, store, events, fetcher: Fetcher, files, enabled: bool = True):
        self.store = store
        self.events = events
        self.fetcher = fetcher
        self.files = files
        self.enabled = enabled
        self.tasks: set[asyncio.Task] = set()

    def schedule(self, user: dict, uri: str, message: dict[str, Any]) -> None:
        """Preview the message's first link in the background, unless it has that
        preview already (an edit that keeps the link)."""
        if not self.enabled or message.get("deleted"):
            return
        url = first_url(message.get("message", ""))
        if url is None or url == (message.get("preview") or {}).get("url"):
            return
        task = background(self.run(user, uri, message["id"], url))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, user: dict, uri: str, message_id: str, url: str) -> None:
        try:
            found = await self.preview_of(url)
            if found is None:
                return
            _, message = await self.events.target(user, uri, message_id)
            if message.get("deleted") or first_url(message["message"]) != url \
                    or (message.get("preview") or {}).get("url") == url:
                return  # deleted or edited meanwhile, or previewed already (a repeated post)
            preview = {key: found[key] for key in ("url", "title", "description", "site_name")}
            if found.get("thumb"):
                image = self.store.upload_stream()
                await image.write(found["thumb"])
                await image.finish({"room": uri, "user_id": user["id"], "name": "preview.webp",
                                    "type": "image/webp", "kind": "preview",
                                    "attached": message["seq"]})
                preview["image"] = file_url(uri, image.id)
            await self.events.change(uri, message, {
                "type": "preview", "user": {"id": user["id"], "username": user["username"]},
                "user_id": user["id"], "preview": preview})
        except Exception:
            log.warning("preview of %s in %s failed", url, uri, exc_info=True)

    async def preview_of(self, url: str) -> dict | None:
        """The preview of url: from the cache, else fetched (and cached, a refusal too)."""
        cached = await self.store.cached_preview(url)
        if cached is not None:
            return cached["preview"]
        try:
            found = await self.fetch(url)
        except Refused as refused:
            log.info("no preview of %s: %s", url, refused)
            found = None
        await self.store.cache_preview(url, found, now() + CACHE_FOR)
        return found

    async def fetch(self, url: str) -> dict | None:
        page = await self.fetcher.fetch(url)
        if page.status != 200 or "html" not in page.content_type.lower():
            return None
        loop = asyncio.get_running_loop()
        # Up to a megabyte of someone else's HTML: parsed off the event loop.
        parsed = await loop.run_in_executor(self.files.pool, parse_page, page.body, page.content_type)
        found: dict[str, Any] = {"url": url, **parsed}
        if not found["title"]:
            return None
        image_url = found.pop("image")
        if image_url:
            try:
                image = await self.fetcher.fetch(urllib.parse.urljoin(page.url, image_url),
                                                 accept="image/*")
                if image.status == 200 and not image.truncated:
                    decoded = await loop.run_in_executor(self.files.pool, process_image, image.body)
                    if decoded is not None:
                        found["thumb"] = decoded["thumb"]
            except Exception as error:  # the preview stays, without an image
                log.info("no preview image from %s: %s", image_url, error)
        return found

    async def remove(self, user: dict, uri: str, message_id: str) -> None:
        """The author removes their message's preview."""
        _, message = await self.events.target(user, uri, message_id)
        if message["user_id"] != user["id"]:
            raise Forbidden("Only the message's author can remove its preview.")
        if message.get("deleted") or not message.get("preview"):
            raise NotFound(message_id)
        await self.events.change(uri, message, {
            "type": "preview", "user": {"id": user["id"], "username": user["username"]},
            "user_id": user["id"], "preview": None})
        await self.store.delete_files({"room": uri, "kind": "preview", "attached": message["seq"]})

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
