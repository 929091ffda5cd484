"""The page's search in Chromium: the box in the top bar, its results, and a
result opening its chat at the message, highlighted, with the history around it."""

from __future__ import annotations

import os
import uuid

import pytest

from tests import test_browser
from tests.helpers import two_members
from tests.test_browser import ARTIFACTS, DOCS, expect

pytestmark = pytest.mark.browser

# test_browser's fixtures: a Chromium for the module, and tabs (browser contexts)
# that fail the test on any page error.
browser = test_browser.browser
tabs = test_browser.tabs

# More than the page's first history page (50): the hit is not among the latest.
BEFORE, AFTER = 10, 70
# With the two above, more results than a page of them (20): the rest come on scrolling.
MORE = 22


def test_search_a_word_and_open_the_result_in_its_chat(server, tabs):
    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
    shots.mkdir(exist_ok=True)
    alice, bob, uri = two_members(server.url)
    key = "k" + uuid.uuid4().hex[:8]
    for i in range(BEFORE):
        bob.post(uri, f"earlier message {i}")
    hit = bob.post(uri, f"The release notes for {key} are <b>ready</b>, have a look")
    for i in range(AFTER):
        alice.post(uri, f"later message {i}")
    other = alice.new_chat()
    alice.post(other, f"{key} also comes up in another chat")
    for i in range(MORE):
        alice.post(other, f"{key} and again, number {i}")

    tab = tabs(server.url, viewport={"width": 1280, "height": 800}).sign_in(alice)
    page = tab.page
    page.goto("/")
    expect(page.get_by_role("heading", name="My chats")).to_be_visible()
    page.keyboard.press("/")
    box = page.get_by_role("searchbox", name="Search messages")
    expect(box).to_be_focused()
    box.fill(key)
    results = page.locator(".search-result")
    expect(results).to_have_count(20)
    # More as the list is scrolled to its end.
    page.locator(".search-panel").evaluate("panel => panel.scrollTo(0, panel.scrollHeight)")
    expect(results).to_have_count(MORE + 2)
    # Grouped by chat, the word marked, the message's markup shown as text.
    expect(page.locator(".search-group")).to_have_count(2)
    # The filters: one chat, one person.
    page.get_by_label("In chat").select_option(uri)
    expect(results).to_have_count(1)
    page.get_by_label("In chat").select_option("")
    expect(results).to_have_count(20)
    page.get_by_label("From").fill(bob.username)
    expect(results).to_have_count(1)
    expect(results.locator(".search-result-user")).to_have_text(bob.username)
    page.get_by_label("From").fill("")
    expect(results).to_have_count(20)
    page.locator(".search-panel").evaluate("panel => panel.scrollTo(0, panel.scrollHeight)")
    expect(results).to_have_count(MORE + 2)
    first = results.filter(has_text="release notes")
    expect(first.locator("mark")).to_have_text(key)
    expect(first).to_contain_text("<b>ready</b>")
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "screenshot-search.png"))

    first.click()
    expect(page).to_have_url(f"{server.url}/chats/{uri}/?at={hit['seq']}")
    shown = page.locator(".messages > li.search-hit")
    expect(shown).to_have_count(1)
    expect(shown).to_have_attribute("data-seq", str(hit["seq"]))
    expect(shown).to_contain_text("release notes")
    expect(shown).to_be_in_viewport()
    # The history around it, and everything up to the latest, without a hole.
    seqs = tab.seqs()
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert seqs[0] < hit["seq"] and seqs[-1] >= hit["seq"] + AFTER
    page.screenshot(path=str(shots / "screenshot-search-hit.png"))
    # Ctrl+K focuses the box from the chat too.
    page.keyboard.press("Control+k")
    expect(box).to_be_focused()

    phone = tabs(server.url, viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True).sign_in(alice)
    phone.page.goto("/")
    phone_box = phone.page.get_by_role("searchbox", name="Search messages")
    phone_box.fill(key)
    expect(phone.page.locator(".search-result")).to_have_count(20)
    phone.page.locator(".search-panel").evaluate("panel => panel.scrollTo(0, panel.scrollHeight)")
    expect(phone.page.locator(".search-result")).to_have_count(MORE + 2)
    phone.page.locator(".search-result").last.scroll_into_view_if_needed()
    phone.page.screenshot(path=str(shots / "screenshot-search-phone.png"))
    phone.page.locator(".search-result").filter(has_text="release notes").click()
    expect(phone.page.locator(".messages > li.search-hit")).to_be_in_viewport()
    phone.page.screenshot(path=str(shots / "screenshot-search-hit-phone.png"))


def test_a_partial_answer_says_so_on_its_first_page(start_server, tabs):
    """More matches than search.max_scan: the first page (of 20, more to scroll to)
    already says these are some of them."""
    server = start_server(search_max_scan=25)
    alice, _, uri = two_members(server.url)
    key = "w" + uuid.uuid4().hex[:10]
    for i in range(30):
        alice.post(uri, f"{key} n{i}")
    page = tabs(server.url, viewport={"width": 1280, "height": 800}).sign_in(alice).page
    page.goto("/")
    page.get_by_role("searchbox", name="Search messages").fill(key)
    expect(page.locator(".search-result")).to_have_count(20)
    expect(page.locator(".search-status")).to_contain_text("Many messages match")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-partial.png"))
    page.get_by_role("searchbox", name="Search messages").fill(f"{key} n3")
    expect(page.locator(".search-result")).to_have_count(1)
    expect(page.locator(".search-status")).to_have_text("")
