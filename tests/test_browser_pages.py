"""The page under floods: the chat list pages on scroll, and a burst of member
events re-reads the member list at most once a second (Playwright, Debian's
Chromium, a real server)."""

from __future__ import annotations

import datetime
import os
import secrets

import pymongo
import pytest

from tests.helpers import Api
from tests.test_browser import ARTIFACTS, DOCS, browser, expect, tabs  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def shots_dir():
    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def test_the_chat_list_loads_more_on_scroll(server, tabs):  # noqa: F811
    """230 chats a script added the victim to push none of theirs out of reach."""
    victim, spammer = Api(server.url).signup(), Api(server.url).signup()
    mine = victim.new_chat()
    victim.post(mine, "my own chat, the oldest")
    client = pymongo.MongoClient(server.mongo_url)
    moment = datetime.datetime.now(datetime.UTC)
    client.get_default_database().rooms.insert_many([
        {"uri": secrets.token_hex(8)[:15], "owner": spammer.user["id"],
         "members": [spammer.user["id"], victim.user["id"]],
         "seq": 0, "created": moment, "updated": moment.timestamp() + i} for i in range(230)])
    client.close()
    for viewport, shot in (({"width": 1280, "height": 800}, "chat-list-more.png"),
                           ({"width": 390, "height": 844}, "chat-list-more-phone.png")):
        tab = tabs(server.url, viewport=viewport).sign_in(victim)
        tab.page.goto("/")
        items = tab.page.locator(".chat-item")
        expect(items).to_have_count(200, timeout=20_000)
        items.last.scroll_into_view_if_needed()
        expect(items).to_have_count(231, timeout=20_000)
        expect(items.last).to_contain_text("my own chat, the oldest")
        expect(tab.page.locator(".chat-list-more")).to_have_count(0)
        items.last.scroll_into_view_if_needed()
        tab.page.screenshot(path=str(shots_dir() / shot))


def test_a_burst_of_member_events_rereads_the_member_list_once_a_second(server, tabs):  # noqa: F811
    owner = Api(server.url).signup()
    uri = owner.new_chat()
    joiners = [Api(server.url).signup() for _ in range(20)]
    tab = tabs(server.url, viewport={"width": 1280, "height": 800}).sign_in(owner).open_chat(uri)
    reads: list[str] = []
    tab.page.on("request", lambda request: reads.append(request.url)
                if request.method == "GET" and request.url.endswith(f"/api/chats/{uri}/") else None)
    # The page's clock stands still: its timers move only when this test moves them.
    tab.page.clock.install()
    tab.page.clock.pause_at(datetime.datetime.now() + datetime.timedelta(seconds=5))
    for api in joiners:
        api.join(uri)
    tab.page.wait_for_timeout(1500)  # real time: every member event has reached the page
    assert len(reads) == 1, reads  # the first at once; the rest wait for the second to pass
    tab.page.clock.run_for(1000)
    expect(tab.page.locator(".member-list > li")).to_have_count(21)
    assert len(reads) == 2, reads
    tab.page.screenshot(path=str(shots_dir() / "members-burst.png"))
