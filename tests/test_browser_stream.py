"""The page on the user stream, in Chromium: one WebSocket per tab, the chat
list beside the open chat kept live by it (order, previews, unread badges,
chats that come and go), rooms switched without a new socket."""

from __future__ import annotations

import re

import pytest

from tests import test_browser
from tests.helpers import Api
from tests.test_browser import SECOND, expect

pytestmark = pytest.mark.browser

browser = test_browser.browser
tabs = test_browser.tabs

DESKTOP = {"width": 1280, "height": 800}


def watch_sockets(tab) -> list[str]:
    """The URLs of every WebSocket the page opens, from now on."""
    opened: list[str] = []
    tab.page.on("websocket", lambda ws: opened.append(ws.url))
    return opened


def sidebar(tab):
    return tab.page.locator(".sidebar .chat-item")


def row(tab, uri: str):
    return tab.page.locator(f'.sidebar .chat-item[data-uri="{uri}"]')


def rows(tab) -> list[dict]:
    """What the sidebar shows, top to bottom."""
    return sidebar(tab).evaluate_all("""items => items.map(a => ({
        uri: a.dataset.uri,
        title: a.querySelector('.chat-item-title').textContent,
        preview: a.querySelector('.chat-item-preview').textContent,
        badge: a.querySelector('.badge')?.textContent || null}))""")


def test_the_sidebar_follows_every_chat_and_switching_opens_no_socket(server, tabs):
    me, ann, ben = (Api(server.url).signup() for _ in range(3))
    room_a, room_b = ann.new_chat(), ben.new_chat()
    me.join(room_a)
    me.join(room_b)
    ben.post(room_b, "older news in B")
    ann.post(room_a, "latest in A")  # A is on top when the page opens

    tab = tabs(server.url, viewport=DESKTOP).sign_in(me)
    sockets = watch_sockets(tab)
    tab.open_chat(room_a)
    expect(sidebar(tab)).to_have_count(2)
    expect(sidebar(tab).first).to_have_attribute("data-uri", room_a)
    expect(row(tab, room_a)).to_have_attribute("aria-current", "page")
    expect(row(tab, room_b).locator(".badge")).to_have_text("1")
    # The tab title counts B's unread; A is read as it is looked at.
    expect(tab.page).to_have_title(re.compile(r"^\(1\) "))
    title = tab.page.title()

    # A message in B, with A open: B goes to the top with its badge and preview, no reload.
    tab.page.evaluate("window.loaded = true")  # a reload would forget it
    ben.post(room_b, "news from B")
    expect(sidebar(tab).first).to_have_attribute("data-uri", room_b, timeout=SECOND)
    expect(row(tab, room_b).locator(".chat-item-preview")).to_have_text(f"{ben.username}: news from B")
    expect(row(tab, room_b).locator(".badge")).to_have_text("2")
    expect(tab.page).to_have_title(title.replace("(1)", "(2)"))
    expect(tab.message("news from B")).to_have_count(0)  # the open chat is still A
    ann.post(room_a, "and more in A")  # the open chat, looked at: read, no badge
    expect(tab.message("and more in A")).to_be_visible(timeout=SECOND)
    expect(sidebar(tab).first).to_have_attribute("data-uri", room_a)
    expect(row(tab, room_a).locator(".badge")).to_have_count(0)
    assert tab.page.evaluate("window.loaded") is True

    # Switching rooms from the sidebar: the same socket, B read and its badge gone.
    row(tab, room_b).click()
    expect(tab.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(tab.confirmed("news from B")).to_be_visible()
    expect(row(tab, room_b).locator(".badge")).to_have_count(0)
    expect(row(tab, room_b)).to_have_attribute("aria-current", "page")
    ann.post(room_a, "A while B is open")
    expect(row(tab, room_a).locator(".badge")).to_have_text("1", timeout=SECOND)
    row(tab, room_a).focus()  # by keyboard
    tab.page.keyboard.press("Enter")
    expect(tab.confirmed("A while B is open")).to_be_visible()
    expect(row(tab, room_a).locator(".badge")).to_have_count(0)
    tab.send("typed in A after switching")
    expect(tab.confirmed("typed in A after switching")).to_have_count(1)
    assert sockets == [server.url.replace("http://", "ws://") + "/ws/"], sockets

    # What the list shows live equals a fresh snapshot's.
    live = rows(tab)
    tab.page.reload()
    expect(sidebar(tab)).to_have_count(2)
    expect(tab.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    assert rows(tab) == live


def test_chats_that_come_and_go_appear_and_leave_the_sidebar(server, tabs):
    me, ann = Api(server.url).signup(), Api(server.url).signup()
    mine = me.new_chat()
    tab = tabs(server.url, viewport=DESKTOP).sign_in(me).open_chat(mine)
    sockets = watch_sockets(tab)
    expect(sidebar(tab)).to_have_count(1)

    # Ann starts a chat and adds me: it appears, without a reload.
    added = ann.new_chat()
    reply = ann.request("PATCH", f"/api/chats/{added}/", json={"username": me.username})
    assert reply.status_code == 200, reply.text
    expect(row(tab, added)).to_have_count(1, timeout=SECOND)
    expect(row(tab, added).locator(".chat-item-title")).to_have_text(ann.username)
    ann.post(added, "welcome aboard")
    expect(row(tab, added).locator(".badge")).to_have_text("1", timeout=SECOND)
    expect(sidebar(tab).first).to_have_attribute("data-uri", added)

    # A chat I start here appears too (its owner gets it from the stream).
    tab.page.get_by_role("button", name="New chat").click()
    expect(sidebar(tab)).to_have_count(3)
    expect(tab.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    started = tab.page.url.rstrip("/").rsplit("/", 1)[1]
    expect(row(tab, started)).to_have_attribute("aria-current", "page")

    # Removed from a chat that is not open: it leaves the list.
    assert ann.request("DELETE", f"/api/chats/{added}/members/{me.username}/").status_code == 204
    expect(row(tab, added)).to_have_count(0, timeout=SECOND)

    # Removed from the open chat: the page says so and the chat leaves the list.
    second = ann.new_chat()
    me.join(second)
    row(tab, second).click()
    expect(tab.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    assert ann.request("DELETE", f"/api/chats/{second}/members/{me.username}/").status_code == 204
    expect(tab.page.get_by_text("You were removed from this chat.")).to_be_visible(timeout=SECOND)
    expect(row(tab, second)).to_have_count(0)
    assert len(sockets) == 0, sockets  # all of it on the socket opened before

    live = rows(tab)
    tab.page.goto("/")
    expect(sidebar(tab)).to_have_count(len(live))
    assert sorted(rows(tab), key=lambda r: r["uri"]) == sorted(live, key=lambda r: r["uri"])


def test_on_a_phone_the_list_and_the_chat_take_turns(server, tabs):
    me, ann = Api(server.url).signup(), Api(server.url).signup()
    uri = ann.new_chat()
    me.join(uri)
    ann.post(uri, "hello phone")
    phone = tabs(server.url, viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True).sign_in(me)
    phone.page.goto("/")
    expect(row(phone, uri)).to_be_visible()
    expect(row(phone, uri).locator(".badge")).to_have_text("1")
    row(phone, uri).tap()
    expect(phone.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(phone.page.locator(".sidebar")).to_be_hidden()
    phone.page.get_by_role("link", name="Back to my chats").tap()
    expect(row(phone, uri)).to_be_visible()
    expect(row(phone, uri).locator(".badge")).to_have_count(0)


def test_a_subscription_whose_ready_never_comes_reconnects_the_stream(server, tabs):
    """The stream works but the open chat's `ready` never comes (lost on the way):
    after 20 s the page drops the socket, takes a fresh snapshot and subscribes again."""
    alice, bob = Api(server.url).signup(), Api(server.url).signup()
    uri = alice.new_chat()
    bob.join(uri)
    bob.post(uri, "sent before")
    page = tabs(server.url).sign_in(alice)
    connections = []

    def relay(ws):
        connections.append(ws)
        first = len(connections) == 1
        server_side = ws.connect_to_server()
        server_side.on_message(
            lambda text: None if first and '"type":"ready"' in text.replace(" ", "") else ws.send(text))
        ws.on_message(server_side.send)

    page.page.clock.install()
    page.page.route_web_socket(test_browser.USER_STREAM, relay)
    page.page.goto(f"/chats/{uri}/")
    view = page.page.locator(".chat-view")
    expect(page.page.locator(".sidebar .chat-item")).to_have_count(1)  # the snapshot came
    expect(view).to_have_attribute("data-connection", "connecting")
    bob.post(uri, "sent while waiting")
    test_browser.fast_forward_until(page.page, lambda: len(connections) > 1)
    assert len(connections) == 2
    expect(view).to_have_attribute("data-connection", "live")
    for text in ("sent before", "sent while waiting"):
        expect(page.confirmed(text)).to_have_count(1)
    assert page.seqs() == alice.all_seqs(uri)
