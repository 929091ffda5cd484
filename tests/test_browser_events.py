"""The page's edits, deletes, reactions, leaving and moderation, in Chromium:
two users in two browser contexts against a real server."""

from __future__ import annotations

import os
import time
import urllib.parse

import pytest

from tests import test_browser
from tests.helpers import Api, two_members
from tests.test_browser import ARTIFACTS, DOCS, SECOND, expect

pytestmark = pytest.mark.browser

# test_browser's fixtures: a Chromium for the module, and tabs (browser contexts)
# that fail the test on any page error.
browser = test_browser.browser
tabs = test_browser.tabs


def message_item(tab, text: str):
    """The stored message (an element with a seq) whose text contains `text`."""
    return tab.page.locator(".messages > li[data-seq]", has=tab.page.locator(".text", has_text=text))


def tool(tab, text: str, label: str):
    item = message_item(tab, text)
    item.hover()
    return item.get_by_role("button", name=label)


def reaction(tab, text: str, emoji: str):
    return message_item(tab, text).locator(".reaction", has_text=emoji)


def react_path(uri: str, message: dict, emoji: str) -> str:
    return f"/api/chats/{uri}/messages/{message['id']}/reactions/{urllib.parse.quote(emoji)}/"


def test_edit_react_and_delete_show_live_on_both_pages(server, tabs):
    alice_api, bob_api, uri = two_members(server.url)
    alice = tabs(server.url).sign_in(alice_api).open_chat(uri)
    bob = tabs(server.url).sign_in(bob_api).open_chat(uri)

    alice.send("Lunch at noon?")
    alice.send("Bring the slides")
    expect(message_item(bob, "Bring the slides")).to_have_count(1, timeout=SECOND)

    # Edit from the message's tools: Enter saves, the other page shows it within a second.
    tool(alice, "Lunch at noon?", "Edit message").click()
    field = alice.page.get_by_label("Edit your message")
    expect(field).to_be_focused()
    field.fill("Lunch at one?")
    field.press("Enter")
    expect(message_item(bob, "Lunch at one?").locator(".edited-mark")).to_have_text(
        "edited", timeout=SECOND)
    expect(message_item(alice, "Lunch at one?").locator(".edited-mark")).to_be_visible()

    # Up-arrow in the empty composer edits my last message; Escape leaves it as it was.
    composer = alice.page.get_by_label("Message", exact=True)
    composer.press("ArrowUp")
    field = alice.page.get_by_label("Edit your message")
    expect(field).to_have_value("Bring the slides")
    field.press("Escape")
    expect(field).to_have_count(0)
    expect(composer).to_be_focused()
    composer.press("ArrowUp")
    alice.page.get_by_label("Edit your message").fill("Bring the slides, please")
    alice.page.get_by_label("Edit your message").press("Enter")
    expect(message_item(bob, "Bring the slides, please")).to_have_count(1, timeout=SECOND)

    # Bob cannot edit or delete Alice's messages: the tools offer reactions only.
    message_item(bob, "Lunch at one?").hover()
    expect(message_item(bob, "Lunch at one?").get_by_role("button", name="Edit message")).to_be_hidden()
    expect(message_item(bob, "Lunch at one?").get_by_role("button", name="Delete message")).to_be_hidden()

    # Reactions: Bob picks one, Alice sees its count and adds hers with a click.
    tool(bob, "Lunch at one?", "Add a reaction").click()
    bob.page.get_by_role("button", name="React with 👍").click()
    expect(reaction(alice, "Lunch at one?", "👍")).to_contain_text("1", timeout=SECOND)
    reaction(alice, "Lunch at one?", "👍").click()
    expect(reaction(bob, "Lunch at one?", "👍")).to_contain_text("2", timeout=SECOND)
    expect(reaction(alice, "Lunch at one?", "👍")).to_have_attribute("aria-pressed", "true")
    expect(reaction(bob, "Lunch at one?", "👍")).to_have_attribute("aria-pressed", "true")
    reaction(bob, "Lunch at one?", "👍").click()  # toggled off again
    expect(reaction(alice, "Lunch at one?", "👍")).to_contain_text("1", timeout=SECOND)
    expect(reaction(bob, "Lunch at one?", "👍")).to_have_attribute("aria-pressed", "false")

    # Delete, confirmed in place: "message deleted" on both pages, text gone.
    tool(alice, "Bring the slides, please", "Delete message").click()
    alice.page.get_by_role("group", name="Delete this message?").get_by_role(
        "button", name="Delete").click()
    for tab in (alice, bob):
        expect(tab.page.locator(".messages > li.deleted .text")).to_have_text(
            "message deleted", timeout=SECOND)
        expect(tab.page.get_by_text("Bring the slides")).to_have_count(0)
    assert alice.seqs() == bob.seqs()


def test_changes_made_while_away_apply_once_on_resume_and_after_a_reload(start_server, tabs):
    """Bob's server restarts; meanwhile Alice edits, reacts and deletes through
    the other one. Bob's page resumes with since and shows each change once."""
    first = start_server()
    second = start_server(mongo_url=first.mongo_url)
    alice_api, bob_api, uri = two_members(second.url, first.url)
    first_message = alice_api.post(uri, "first draft")
    second_message = alice_api.post(uri, "to be deleted")
    bob = tabs(first.url).sign_in(bob_api).open_chat(uri)
    expect(message_item(bob, "to be deleted")).to_have_count(1)

    first.stop()
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "reconnecting")
    edit = alice_api.request("PATCH", f"/api/chats/{uri}/messages/{first_message['id']}/",
                             json={"message": "final text"})
    assert edit.status_code == 200
    for emoji in ("🎉", "👀"):
        assert alice_api.request("PUT", react_path(uri, first_message, emoji)).status_code == 204
    assert alice_api.request("DELETE", react_path(uri, first_message, "👀")).status_code == 204
    assert alice_api.request(
        "DELETE", f"/api/chats/{uri}/messages/{second_message['id']}/").status_code == 204
    first.start()
    bob.page.get_by_role("button", name="Retry now").click()
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live",
                                                            timeout=30_000)

    def check():
        expect(message_item(bob, "final text")).to_have_count(1)
        expect(message_item(bob, "final text").locator(".reaction")).to_have_count(1)
        expect(reaction(bob, "final text", "🎉")).to_contain_text("1")
        expect(bob.page.locator(".messages > li.deleted")).to_have_count(1)
        expect(bob.page.get_by_text("first draft")).to_have_count(0)
        expect(bob.page.get_by_text("to be deleted")).to_have_count(0)

    check()
    bob.page.reload()
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    check()


def test_an_older_history_page_never_undoes_a_newer_change(server, tabs):
    """The history page is read before an edit and answered after the edit's
    frame: the page keeps the edit, whichever it got first."""
    alice_api, bob_api, uri = two_members(server.url)
    posted = alice_api.post(uri, "before the edit")
    bob = tabs(server.url).sign_in(bob_api)

    def stale_history(route):
        stale = route.fetch()  # the history as it is now, before the edit
        reply = alice_api.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                                  json={"message": "after the edit"})
        assert reply.status_code == 200
        route.fulfill(response=stale)

    bob.page.route(f"**/api/chats/{uri}/messages/?*", stale_history)
    bob.page.goto(f"/chats/{uri}/")
    expect(message_item(bob, "after the edit")).to_have_count(1, timeout=5 * SECOND)
    expect(message_item(bob, "after the edit").locator(".edited-mark")).to_be_visible()
    expect(bob.page.get_by_text("before the edit")).to_have_count(0)


def test_an_older_member_list_answered_late_never_undoes_a_newer_one(server, tabs):
    """Two role changes in a row: the member list read after the first is
    answered after the one read after the second, and the page keeps the newer."""
    alice_api, bob_api, uri = two_members(server.url)
    alice = tabs(server.url).sign_in(alice_api).open_chat(uri)
    held = []

    def hold_the_first(route):
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))  # read now, answered later

    role = f"/api/chats/{uri}/members/{bob_api.username}/"
    moderator_tag = alice.page.locator(f'.member[data-username="{bob_api.username}"] .tag.role-moderator')
    alice.page.route(f"**/api/chats/{uri}/", hold_the_first)
    assert alice_api.request("PUT", role, json={"role": "moderator"}).status_code == 204
    deadline = time.monotonic() + 10
    while not held:
        assert time.monotonic() < deadline, "the page did not read the member list"
        alice.page.wait_for_timeout(50)
    with alice.page.expect_response(lambda r: r.url.endswith(f"/api/chats/{uri}/")
                                    and r.request.method == "GET"):
        assert alice_api.request("PUT", role, json={"role": "member"}).status_code == 204
    route, stale = held[0]
    route.fulfill(response=stale)  # bob a moderator: older than what the page shows
    bob_api.post(uri, "after the late answer")  # the page has handled the late answer by then
    expect(alice.confirmed("after the late answer")).to_have_count(1)
    expect(moderator_tag).to_have_count(0)


def test_the_owner_moderates_from_the_member_list(server, tabs):
    alice_api, bob_api, uri = two_members(server.url)
    carol_api = Api(server.url).signup()
    alice = tabs(server.url).sign_in(alice_api).open_chat(uri)
    bob = tabs(server.url).sign_in(bob_api).open_chat(uri)
    members = alice.page.locator(".member-list")

    # Roles: Bob becomes a moderator; both pages show it.
    members.get_by_role("button", name=f"Manage {bob_api.username}").click()
    alice.page.get_by_role("menuitem", name="Make moderator").click()
    for tab in (alice, bob):
        expect(tab.page.locator(f'.member[data-username="{bob_api.username}"] .tag.role-moderator')
               ).to_have_text("moderator", timeout=SECOND)
    # As a moderator Bob may delete Alice's message; as a member Carol would not.
    alice.send("moderated message")
    message_item(bob, "moderated message").hover()
    expect(message_item(bob, "moderated message").get_by_role("button", name="Delete message")
           ).to_be_visible()

    # Lock: Carol cannot join by the link.
    alice.page.get_by_label("Locked: the link no longer lets people join").check()
    expect(alice.page.locator(".toast").last).to_contain_text("Chat locked")
    carol = tabs(server.url).sign_in(carol_api)
    carol.page.goto(f"/chats/{uri}/")
    expect(carol.page.get_by_role("alert")).to_contain_text("locked")
    alice.page.get_by_label("Locked: the link no longer lets people join").uncheck()
    expect(alice.page.locator(".toast").last).to_contain_text("Chat unlocked")

    # Ban: Bob's page is closed out at once and lists him in Alice's bans.
    members.get_by_role("button", name=f"Manage {bob_api.username}").click()
    alice.page.get_by_role("menuitem", name="Ban from chat").click()
    expect(bob.page.get_by_text("You were banned from this chat.")).to_be_visible(timeout=SECOND)
    expect(members.locator(f'.member[data-username="{bob_api.username}"]')).to_have_count(0)
    bans = alice.page.locator(".ban-list")
    expect(bans).to_contain_text(bob_api.username)
    bob.page.goto(f"/chats/{uri}/")  # the link does not let him back
    expect(bob.page.get_by_role("alert")).to_contain_text("banned")
    bans.get_by_role("button", name=f"Unban {bob_api.username}").click()
    expect(bans).to_have_count(0)
    bob.page.goto(f"/chats/{uri}/")
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(members.locator(f'.member[data-username="{bob_api.username}"]')).to_have_count(1)

    # Remove, then Bob leaves by himself from the chat's menu after rejoining.
    members.get_by_role("button", name=f"Manage {bob_api.username}").click()
    alice.page.get_by_role("menuitem", name="Remove from chat").click()
    expect(bob.page.get_by_text("You were removed from this chat.")).to_be_visible(timeout=SECOND)
    bob.page.goto(f"/chats/{uri}/")
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    bob.page.get_by_role("button", name="Chat menu").click()
    bob.page.get_by_role("menuitem", name="Leave chat").click()
    expect(bob.page.get_by_role("heading", name="My chats")).to_be_visible()
    # The member list is read again at most once a second on a burst of member
    # events (a removal, a rejoin and a leave within it): allow for that wait.
    expect(members.locator(f'.member[data-username="{bob_api.username}"]')).to_have_count(
        0, timeout=3 * SECOND)
    # The owner's menu has no "Leave": the chat must be handed over first.
    alice.page.get_by_role("button", name="Chat menu").click()
    expect(alice.page.get_by_role("menuitem", name="Leave chat")).to_have_count(0)


def test_the_member_menu_works_from_the_keyboard_and_keeps_its_focus(server, tabs):
    """The member list is drawn anew whenever someone comes online or a role
    changes: the focused "Manage" button is focused again, not lost to the page."""
    alice_api, bob_api, uri = two_members(server.url)
    alice = tabs(server.url).sign_in(alice_api).open_chat(uri)
    members = alice.page.locator(".member-list")
    manage = members.get_by_role("button", name=f"Manage {bob_api.username}")
    manage.focus()
    tabs(server.url).sign_in(bob_api).open_chat(uri)  # bob comes online: the list is redrawn
    expect(members.locator(f".member.online[data-user='{bob_api.user['id']}']")).to_have_count(1)
    expect(manage).to_be_focused()
    alice.page.keyboard.press("Enter")
    expect(alice.page.get_by_role("menuitem", name="Make moderator")).to_be_focused()
    alice.page.keyboard.press("ArrowUp")  # round to the last item, and back
    alice.page.keyboard.press("ArrowDown")
    alice.page.keyboard.press("Enter")
    expect(members.locator(f'.member[data-username="{bob_api.username}"] .tag.role-moderator')
           ).to_have_text("moderator")
    expect(manage).to_be_focused()
    alice.page.keyboard.press("Enter")
    alice.page.keyboard.press("Escape")  # closes the menu, focus back on its button
    expect(alice.page.get_by_role("menu")).to_have_count(0)
    expect(manage).to_be_focused()
    alice.page.keyboard.press("Enter")
    alice.page.keyboard.press("Tab")  # leaves the menu (closed) for what follows its button
    expect(alice.page.get_by_role("menu")).to_have_count(0)
    assert alice.page.evaluate(
        "() => document.activeElement.closest('#chat-side') !== null")


def test_on_a_phone_a_tap_on_a_message_shows_its_tools(server, tabs):
    alice_api, bob_api, uri = two_members(server.url)
    alice_api.post(uri, "tap me")
    phone = tabs(server.url, viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True).sign_in(bob_api).open_chat(uri)
    item = message_item(phone, "tap me")
    react = item.get_by_role("button", name="Add a reaction")
    expect(react).to_be_hidden()
    item.locator(".bubble").tap()
    expect(react).to_be_visible()
    react.tap()
    phone.page.get_by_role("button", name="React with 🎉").tap()
    expect(reaction(phone, "tap me", "🎉")).to_contain_text("1")
    item.locator(".bubble").tap()
    expect(react).to_be_hidden()


def test_screenshots_of_edits_reactions_and_moderation(start_server, tabs):
    """docs/screenshot-events.png and docs/screenshot-moderation.png (with
    UPDATE_SCREENSHOTS=1; tests/artifacts/ otherwise)."""
    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
    shots.mkdir(parents=True, exist_ok=True)
    process = start_server()
    maya, leo, sam = (Api(process.url, name).signup() for name in ("maya", "leo", "sam"))
    uri = maya.new_chat()
    leo.join(uri)
    sam.join(uri)
    plan = leo.post(uri, "Retro on Thursday at 3?")
    maya.post(uri, "Works for me. I'll book the big room.")
    typo = sam.post(uri, "Cn we do 3:30? I have a call until 3.")
    oops = leo.post(uri, "(wrong chat, sorry)")
    maya.post(uri, "3:30 it is. Bring one thing that went well and one that didn't.")
    sam.request("PATCH", f"/api/chats/{uri}/messages/{typo['id']}/",
                json={"message": "Can we do 3:30? I have a call until 3."})
    leo.request("DELETE", f"/api/chats/{uri}/messages/{oops['id']}/")
    for api, emoji in ((maya, "👍"), (sam, "👍"), (leo, "🎉")):
        api.request("PUT", react_path(uri, plan, emoji))
    maya.request("PUT", f"/api/chats/{uri}/members/leo/", json={"role": "moderator"})

    desktop = tabs(process.url, viewport={"width": 1280, "height": 800}).sign_in(maya).open_chat(uri)
    expect(desktop.page.locator(".messages > li.deleted")).to_have_count(1)
    tool(desktop, "3:30 it is", "Add a reaction").click()
    expect(desktop.page.locator(".picker")).to_be_visible()
    desktop.page.screenshot(path=str(shots / "screenshot-events.png"))
    desktop.page.keyboard.press("Escape")
    desktop.page.locator(".member-list").get_by_role("button", name="Manage sam").click()
    expect(desktop.page.get_by_role("menuitem", name="Ban from chat")).to_be_visible()
    desktop.page.screenshot(path=str(shots / "screenshot-moderation.png"))
    assert os.path.getsize(shots / "screenshot-events.png") > 10_000
