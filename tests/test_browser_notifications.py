"""Desktop notifications in Chromium (issue 21): permission granted in the
context, the page's `Notification` calls observed; the Enable button, desktop
and phone. Screenshots go to tests/artifacts/notifications/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import Api, wait_until
from tests.test_browser import browser, expect, screenshots, tabs  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True}

# Every system notification the page raises, kept for the test to look at.
RECORD = """
const Real = window.Notification;
window.__notes = [];
window.Notification = function (title, options) {
  const note = new Real(title, options);
  window.__notes.push({ title, options, note });
  return note;
};
Object.defineProperty(window.Notification, "permission", { get: () => Real.permission });
window.Notification.requestPermission = (...args) => Real.requestPermission(...args);
"""


def shots() -> Path:
    return screenshots("notifications")


def test_a_dm_while_another_room_is_shown_raises_a_notification_that_opens_it(server, tabs):  # noqa: F811
    alice_api, bob_api = Api(server.url).signup(), Api(server.url).signup()
    room = alice_api.new_chat()
    bob_api.join(room)
    # The DM exists before the page loads: a chat joined live arrives as a `chat`
    # frame whose summary may already hold the first message (no event for it).
    dm = bob_api.request("POST", "/api/dms/", json={"username": alice_api.username}).json()["uri"]
    alice = tabs(server.url, permissions=["notifications"]).sign_in(alice_api)
    alice.page.add_init_script(RECORD)
    alice.page.goto(f"/chats/{room}/")
    expect(alice.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(alice.page.locator("body")).to_have_attribute("data-notifications", "live")
    bob_api.post(room, "not for you: no mention")  # the room's level is mentions
    bob_api.post(dm, "hello alice " + "y" * 120)
    # (wait_for_function would evaluate a string, which the page's CSP refuses)
    wait_until(lambda: alice.page.evaluate("window.__notes.length") >= 1, 10, "a notification")
    notes = alice.page.evaluate("window.__notes.map(n => ({title: n.title, ...n.options}))")
    assert notes == [{"title": bob_api.username, "body": ("hello alice " + "y" * 120)[:100],
                      "tag": dm, "data": {"uri": dm}}]
    alice.page.evaluate("window.__notes[0].note.onclick()")
    expect(alice.page).to_have_url(re.compile(f"/chats/{dm}/$"))
    expect(alice.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    bob_api.post(dm, "now she is looking")
    expect(alice.page.locator(".messages > li[data-seq] .text", has_text="now she is looking")) \
        .to_be_visible()
    assert alice.page.evaluate("window.__notes.length") == 1  # the shown chat raises none
    assert not alice.problems, alice.problems


def test_the_enable_button_on_desktop_and_phone(server, tabs):  # noqa: F811
    api = Api(server.url).signup()
    for name, options in (("desktop", {}), ("phone", PHONE)):
        tab = tabs(server.url, **options).sign_in(api)
        tab.page.goto("/")
        button = tab.page.get_by_role("button", name="Enable notifications")
        expect(button).to_be_visible()
        tab.page.screenshot(path=str(shots() / f"home-{name}.png"))


DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE_TALL = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def levels(api: Api) -> dict[str, str]:
    return {c["uri"]: c["notifications"] for c in api.request("GET", "/api/chats/").json()}


def notes(tab) -> int:
    return tab.page.evaluate("window.__notes.length")


def shoot(tab, name: str, top=None) -> None:
    """A screenshot of the viewport, top (a locator) scrolled to its top, without toasts."""
    tab.page.evaluate("document.querySelectorAll('.toast').forEach((toast) => toast.remove())")
    if top is not None:
        top.evaluate("(el) => el.scrollIntoView()")
    tab.page.screenshot(path=str(shots() / f"{name}.png"))


def test_a_chat_set_to_nothing_in_its_menu_stays_quiet_and_settings_turn_it_back_on(
        server, tabs):  # noqa: F811
    alice_api, bob_api = Api(server.url).signup(), Api(server.url).signup()
    room = alice_api.new_chat()
    bob_api.join(room)
    dm = bob_api.request("POST", "/api/dms/", json={"username": alice_api.username}).json()["uri"]
    desk = tabs(server.url, permissions=["notifications"], **DESKTOP).sign_in(alice_api)
    desk.page.add_init_script(RECORD)
    desk.open_chat(room)
    expect(desk.page.locator("body")).to_have_attribute("data-notifications", "live")
    sidebar_dm = desk.page.locator(f".sidebar .chat-item[data-uri='{dm}']")

    # Before: a DM while another chat is shown notifies.
    bob_api.post(dm, "before")
    wait_until(lambda: notes(desk) == 1, 10, "the first notification")

    # Alice's phone, on the settings page: it learns of the change from its stream.
    phone = tabs(server.url, **PHONE_TALL).sign_in(alice_api)
    phone.page.goto("/settings/")
    phone_select = phone.page.locator(f".level-select[data-uri='{dm}']")
    expect(phone_select).to_have_value("all")

    # The DM's menu: the default is marked; "Nothing" saves "none".
    sidebar_dm.click()
    expect(desk.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(desk.page).to_have_url(re.compile(f"/chats/{dm}/$"))
    desk.page.get_by_role("button", name="Chat menu").click()
    everything = desk.page.get_by_role("menuitemradio", name="All messages (default)")
    expect(everything).to_have_attribute("aria-checked", "true")
    nothing = desk.page.get_by_role("menuitemradio", name="Nothing")
    expect(nothing).to_have_attribute("aria-checked", "false")
    shoot(desk, "chat-menu-desktop")

    # A failed save says so and changes nothing.
    desk.page.route(f"**/api/chats/{dm}/notifications/", lambda route: route.abort())
    nothing.click()
    expect(desk.page.locator(".toast", has_text="Notifications not changed: Cannot reach the server")) \
        .to_be_visible()
    assert levels(alice_api)[dm] == "all"
    desk.page.unroute(f"**/api/chats/{dm}/notifications/")

    desk.page.get_by_role("button", name="Chat menu").click()
    desk.page.get_by_role("menuitemradio", name="Nothing").click()
    expect(desk.page.locator(".toast", has_text="No notifications from this chat")).to_be_visible()
    expect(desk.page.locator(".chat-header .muted-mark")).to_be_visible()
    shoot(desk, "chat-muted-desktop")
    wait_until(lambda: levels(alice_api)[dm] == "none", 10, "the level stored")
    expect(sidebar_dm).to_have_class(re.compile(r"\bmuted\b"))
    expect(phone_select).to_have_value("none")  # the other client, by the stream's frame
    shoot(phone, "settings-phone", phone.page.locator(".notification-settings"))

    # Muted: the DM arrives (the sidebar shows it) and raises nothing.
    desk.page.locator(f".sidebar .chat-item[data-uri='{room}']").click()
    expect(desk.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    bob_api.post(dm, "while muted")
    expect(sidebar_dm.locator(".chat-item-preview")).to_contain_text("while muted")
    expect(sidebar_dm.locator(".badge")).to_have_text("1")
    shoot(desk, "sidebar-muted-desktop")
    assert notes(desk) == 1

    # The settings page turns it back on.
    desk.page.get_by_role("link", name="Settings").click()
    select = desk.page.locator(f".level-select[data-uri='{dm}']")
    expect(select).to_have_value("none")
    expect(desk.page.locator(".notification-settings")).to_contain_text("On: this browser shows")
    shoot(desk, "settings-desktop", desk.page.locator(".notification-settings"))
    select.select_option("all")
    wait_until(lambda: levels(alice_api)[dm] == "all", 10, "the level stored again")
    expect(phone_select).to_have_value("all")
    expect(sidebar_dm).not_to_have_class(re.compile(r"\bmuted\b"))
    desk.page.locator(f".sidebar .chat-item[data-uri='{room}']").click()
    expect(desk.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    bob_api.post(dm, "after")
    wait_until(lambda: notes(desk) == 2, 10, "a notification again")

    # The phone's chat menu.
    phone.page.goto(f"/chats/{room}/")
    expect(phone.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    phone.page.get_by_role("button", name="Chat menu").click()
    expect(phone.page.get_by_role("menuitemradio", name="Mentions only (default)")) \
        .to_have_attribute("aria-checked", "true")
    shoot(phone, "chat-menu-phone")


def test_the_service_worker_shows_a_seq_once_and_not_after_a_read(server, tabs):  # noqa: F811
    """A push sent twice (a process died before marking it sent) or arriving after
    the read's "clear" shows nothing more; a later seq replaces the room's one."""
    api = Api(server.url).signup()
    tab = tabs(server.url, permissions=["notifications"]).sign_in(api)
    with tab.context.expect_event("serviceworker", timeout=10_000) as registered:
        tab.page.goto("/")  # the page registers /sw.js
    worker = registered.value

    def push(payload: dict) -> list[dict]:
        """Handle a push as the worker does; the notifications it shows then."""
        handle = "showMessage" if payload["type"] == "message" else "clear"
        return worker.evaluate(
            f"""async (data) => {{
                await {handle}(data);
                const shown = await self.registration.getNotifications();
                return shown.map((n) => ({{tag: n.tag, title: n.title, seq: n.data.seq}}));
            }}""", payload)

    def message(uri: str, seq: int) -> dict:
        return {"type": "message", "uri": uri, "seq": seq, "room": "Room", "sender": "bob",
                "text": f"m{seq}", "url": f"{server.url}/chats/{uri}/"}
    assert push(message("r1", 5)) == [{"tag": "r1", "title": "bob · Room", "seq": 5}]
    worker.evaluate("async () => (await self.registration.getNotifications()).forEach(n => n.close())")
    assert push(message("r1", 5)) == []  # the same seq again: dismissed stays dismissed
    assert push(message("r1", 4)) == []  # an older one
    assert push(message("r1", 6)) == [{"tag": "r1", "title": "bob · Room", "seq": 6}]
    assert push(message("r2", 1)) == [{"tag": "r1", "title": "bob · Room", "seq": 6},
                                      {"tag": "r2", "title": "bob · Room", "seq": 1}]
    assert push({"type": "clear", "uri": "r1", "seq": 9}) == [{"tag": "r2", "title": "bob · Room",
                                                              "seq": 1}]
    assert push(message("r1", 8)) == [{"tag": "r2", "title": "bob · Room", "seq": 1}]  # read
    assert push(message("r1", 10)) != []
