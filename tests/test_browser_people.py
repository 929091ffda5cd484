"""The page's people features in Chromium: a DM started from the "New message"
dialog, @ completion and the @ badge, formatted messages with code blocks,
names and topics edited inline. Screenshots go to tests/artifacts/people/
(CHAT_SCREENSHOTS overrides), desktop and phone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import Api
from tests.test_browser import Tab, browser, expect, screenshots, tabs  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True}


def shots() -> Path:
    return screenshots("people")


def test_a_dm_a_mention_and_a_code_block_in_the_page(server, tabs):  # noqa: F811
    alice_api, bob_api = Api(server.url).signup(), Api(server.url).signup()
    # They share a named room, which the DM dialog suggests people from.
    room = alice_api.request("POST", "/api/chats/", json={"name": "Launch plans",
                                                          "topic": "Ship on Friday"}).json()["uri"]
    bob_api.join(room)
    alice = tabs(server.url).sign_in(alice_api)
    bob = tabs(server.url, **PHONE).sign_in(bob_api)

    # Alice starts a DM with Bob from the "New message" dialog.
    alice.page.goto("/")
    alice.page.get_by_role("button", name="New message").click()
    field = alice.page.get_by_label("To (username)")
    expect(field).to_be_focused()
    options = alice.page.locator("#dm-people option")
    expect(options).to_have_count(1)
    assert options.first.get_attribute("value") == bob_api.username
    field.fill(bob_api.username)
    field.press("Enter")
    expect(alice.page).to_have_url(re.compile(r"/chats/[0-9a-f]{15}/$"))
    dm_uri = alice.page.url.rstrip("/").rsplit("/", 1)[1]
    expect(alice.page.locator(".chat-title")).to_have_text(bob_api.username)
    expect(alice.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    alice.send("Hi Bob, **bold** plan:")
    box = alice.page.get_by_label("Message", exact=True)
    box.fill("```\nprint('ship it')\n```")
    box.press("Enter")

    # Bob's list shows the DM, named after Alice (his page loads it: the user
    # stream that adds it live is not on this branch), and he answers.
    bob.page.goto("/")
    row = bob.page.locator(".chat-item", has_text=alice_api.username)
    expect(row).to_have_count(1)
    row.click()
    expect(bob.page).to_have_url(re.compile(f"/chats/{dm_uri}/$"))
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(bob.page.locator(".text.formatted strong", has_text="bold")).to_be_visible()
    code = bob.page.locator(".code-block pre code")
    expect(code).to_have_text("print('ship it')\n")
    assert code.evaluate("c => getComputedStyle(c).fontFamily").lower().find("mono") >= 0
    expect(bob.page.locator(".code-block .copy-code")).to_be_visible()
    bob.send("Hi Alice!")
    expect(alice.page.locator(".messages > li[data-seq] .text", has_text="Hi Alice!")).to_be_visible()
    bob.page.screenshot(path=str(shots() / "dm-phone.png"))
    alice.page.screenshot(path=str(shots() / "dm-desktop.png"))

    # In the room, Alice mentions Bob through @ completion: keyboard...
    alice.page.goto(f"/chats/{room}/")
    expect(alice.page.locator(".chat-title")).to_have_text("Launch plans")
    expect(alice.page.locator(".chat-topic")).to_have_text("Ship on Friday")
    expect(alice.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    box = alice.page.get_by_label("Message", exact=True)
    box.press_sequentially("look @" + bob_api.username[:4])
    completion = alice.page.locator(".mention-list li")
    expect(completion.first).to_contain_text(bob_api.username)
    alice.page.screenshot(path=str(shots() / "completion-desktop.png"))
    box.press("Enter")  # picks the name, does not send
    expect(box).to_have_value(f"look @{bob_api.username} ")
    box.press_sequentially("here")
    box.press("Enter")
    sent = alice.page.locator(".messages > li[data-seq] .mention")
    expect(sent).to_have_text(f"@{bob_api.username}")
    # ...and mouse.
    box.press_sequentially("and @" + bob_api.username[:3])
    completion.first.click()
    expect(box).to_have_value(f"and @{bob_api.username} ")
    box.fill("")

    # Bob's list gets the @ badge on the room; the mention is highlighted for him.
    bob.page.goto("/")
    badge = bob.page.locator(".chat-item", has_text="Launch plans").locator(".mention-badge")
    expect(badge).to_have_text("@")
    bob.page.screenshot(path=str(shots() / "list-phone.png"))
    bob.page.locator(".chat-item", has_text="Launch plans").click()
    expect(bob.page.locator(".mention.me")).to_have_count(1)
    expect(bob.page.locator(".msg.mentions-me")).to_have_count(1)
    bob.page.screenshot(path=str(shots() / "room-phone.png"))

    # The owner renames the room and sets its topic inline; Bob's header follows live.
    alice.page.get_by_role("button", name="Edit name and topic").click()
    alice.page.get_by_label("Chat name").fill("Launch")
    alice.page.get_by_label("Chat topic").fill("Moved to Monday")
    alice.page.get_by_role("button", name="Save").click()
    expect(alice.page.locator(".chat-title")).to_have_text("Launch")
    expect(bob.page.locator(".chat-title")).to_have_text("Launch")
    expect(bob.page.locator(".chat-topic")).to_have_text("Moved to Monday")
    expect(bob.page.get_by_role("button", name="Edit name and topic")).to_be_hidden()
    alice.page.screenshot(path=str(shots() / "room-desktop.png"))

    # Alice blocks Bob from the member list: his messages in the room are hidden
    # behind a button; his new ones too.
    alice.page.get_by_role("button", name=f"Manage {bob_api.username}").click()
    alice.page.get_by_role("menuitem", name="Block").click()
    expect(alice.page.locator(".toast", has_text="is blocked")).to_be_visible()
    bob_api.post(room, "a message Alice hides")
    hidden = alice.page.locator(".msg", has_text="Message from someone you blocked")
    expect(hidden).to_have_count(1)
    expect(alice.page.locator(".text", has_text="a message Alice hides")).to_have_count(0)
    alice.page.screenshot(path=str(shots() / "blocked-desktop.png"))
    hidden.get_by_role("button", name="Show").click()
    expect(alice.page.locator(".text", has_text="a message Alice hides")).to_be_visible()
    assert [b["user"]["username"] for b in alice_api.request("GET", "/api/blocks/").json()] == \
        [bob_api.username]
