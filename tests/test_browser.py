"""The browser page end to end: Playwright driving Debian's Chromium against real servers.

Every page records uncaught errors, console errors (a CSP violation is one)
and dialogs; a test fails if any of them happened.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import FIRST_MESSAGE, ROOT, Api, two_members
from tests.test_files import png, uploaded

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
DOCS = ROOT / "docs"
ARTIFACTS = ROOT / "tests" / "artifacts"


def screenshots(name: str) -> Path:
    """Where a module's screenshots go: $CHAT_SCREENSHOTS, or tests/artifacts/<name>."""
    folder = Path(os.environ.get("CHAT_SCREENSHOTS", ARTIFACTS / name))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fast_forward_until(page, done) -> None:
    """Move the page's (installed) clock on 40 s at most, in steps shorter than
    the page's "machine slept" check, until done()."""
    for _ in range(10):
        if done():
            return
        page.clock.fast_forward(4_000)
        page.wait_for_timeout(50)
SECOND = 1000  # ms, the "within a second"
RECONNECT = 30_000  # ms: backoff is capped at 30 s, the restart takes a few
USER_STREAM = re.compile(r"/ws/$")  # the page's one socket


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Chromium is missing: `make chromium` installs Debian's package"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, timeout=30_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


class Tab:
    """A browser context with one page, and what went wrong on it."""

    def __init__(self, browser, base_url: str, **options):
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, **options)
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self.on_console)
        self.page.on("dialog", self.on_dialog)

    def on_console(self, message) -> None:
        # The browser logs failed socket handshakes while a server is down; those are expected.
        if message.type == "error" and "WebSocket connection" not in message.text \
                and "Failed to load resource" not in message.text:
            self.problems.append(f"console error: {message.text}")

    def on_dialog(self, dialog) -> None:
        self.problems.append(f"dialog: {dialog.type} {dialog.message}")
        dialog.dismiss()

    def sign_in(self, api: Api) -> Tab:
        """Log in through the API with this context's cookie jar, like the form does."""
        reply = self.context.request.post("/auth/jwt/create/",
                                          data={"username": api.username, "password": api.password})
        assert reply.ok, reply.text()
        return self

    def open_chat(self, uri: str) -> Tab:
        self.page.goto(f"/chats/{uri}/")
        expect(self.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
        return self

    def messages(self):
        return self.page.locator(".messages:not(.outbox) > li")

    def message(self, text: str):
        return self.page.locator(".messages > li .text", has_text=text)

    def confirmed(self, text: str):
        """A stored message (it has a seq), not a pending one."""
        return self.page.locator(".messages > li[data-seq] .text", has_text=text)

    def seqs(self) -> list[int]:
        return [int(s) for s in self.messages().evaluate_all("items => items.map(i => i.dataset.seq)")]

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")


@pytest.fixture
def tabs(browser):
    opened: list[Tab] = []

    def open_tab(base_url: str, **options) -> Tab:
        tab = Tab(browser, base_url, **options)
        opened.append(tab)
        return tab

    yield open_tab
    problems = [p for tab in opened for p in tab.problems]
    for tab in opened:
        tab.context.close()
    assert not problems, problems


def name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def sign_up_in_page(page, username: str, password: str) -> None:
    page.get_by_role("button", name="Create an account").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()


def test_pages_send_security_headers(server):
    for path in ("/", f"/chats/{'a' * 15}/"):
        reply = httpx.get(server.url + path)
        assert reply.status_code == 200
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["referrer-policy"] == "same-origin"
        assert "_xsrf" in reply.cookies
        assert "<script>" not in reply.text and " style=" not in reply.text
    module = httpx.get(f"{server.url}/js/app.js")
    assert module.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert module.headers["cache-control"] == "no-cache"
    assert module.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{server.url}/js/app.js",
                     headers={"If-None-Match": module.headers["etag"]}).status_code == 304


def test_cookie_writes_need_the_xsrf_token(server):
    user = Api(server.url).signup()
    with httpx.Client(base_url=server.url) as browser_like:
        browser_like.get("/")
        login = browser_like.post("/auth/jwt/create/",
                                  json={"username": user.username, "password": user.password})
        assert login.status_code == 200 and "chat_token" in browser_like.cookies
        assert browser_like.post("/api/chats/").status_code == 403
        xsrf = {"X-XSRFToken": browser_like.cookies["_xsrf"]}
        assert browser_like.post("/api/chats/", headers=xsrf).status_code == 200


def test_two_users_share_a_link_and_talk(server, tabs):
    alice, bob = tabs(server.url), tabs(server.url)
    alice.context.grant_permissions(["clipboard-read", "clipboard-write"])

    # Alice signs up and starts a chat: it shows its share link with a copy button.
    alice.page.goto("/")
    alice_name = name("alice")
    sign_up_in_page(alice.page, alice_name, "pass-word-1")
    expect(alice.page.get_by_role("heading", name="My chats")).to_be_visible()
    alice.page.get_by_role("button", name="New chat").click()
    expect(alice.page).to_have_url(re.compile(r"/chats/[0-9a-f]{15}/$"))
    link = alice.page.locator("#empty-link")
    share = link.input_value()
    assert share == alice.page.url
    alice.page.locator(".empty-card").get_by_role("button", name="Copy").click()
    expect(alice.page.locator(".toast")).to_have_text("Invite link copied")
    assert alice.page.evaluate("navigator.clipboard.readText()") == share

    # Bob opens the link: signs up there, then lands in the chat as a member.
    bob.page.goto(share)
    expect(bob.page.get_by_text("Sign in to join this chat.")).to_be_visible()
    bob_name = name("bob")
    # By keyboard alone: the username field has the focus, Tab moves on, Enter submits.
    expect(bob.page.get_by_label("Username")).to_be_focused()
    bob.page.keyboard.type(bob_name)
    bob.page.keyboard.press("Tab")
    bob.page.keyboard.type("not-yet-signed-up")
    bob.page.keyboard.press("Enter")
    expect(bob.page.get_by_role("alert")).to_have_text("Unable to log in with provided credentials.")
    sign_up_in_page(bob.page, bob_name, "pass-word-2")
    expect(bob.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(bob.page.locator(".toast")).to_have_text("You joined this chat")
    assert bob.page.url == share
    members = bob.page.locator(".member-name")
    expect(members).to_have_text(sorted([alice_name, bob_name], key=[alice_name, bob_name].index))
    expect(alice.page.locator(".chat-view")).to_have_attribute("data-connection", "live")

    # Enter sends; the message shows on both pages within a second.
    bob.send("Hi Alice!")
    expect(alice.message("Hi Alice!")).to_be_visible(timeout=SECOND)
    expect(bob.confirmed("Hi Alice!")).to_be_visible(timeout=SECOND)
    # Alice's page learns the new member from his message.
    expect(alice.page.locator(".member-name", has_text=bob_name)).to_have_count(1)

    # Shift+Enter is a new line, Enter sends.
    box = alice.page.get_by_label("Message", exact=True)
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"
    box.press("Enter")
    expect(box).to_have_value("")
    expect(bob.message("second line")).to_have_text("first line\nsecond line", timeout=SECOND)
    expect(alice.confirmed("second line")).to_be_visible(timeout=SECOND)

    for tab in (alice, bob):
        assert tab.seqs() == [2, 3]  # Bob's join is seq 1
        expect(tab.page.locator(".outbox > li")).to_have_count(0)

    # Both see the chat in their list (beside the chat on a wide screen), newest
    # activity first, with the last message.
    alice.page.get_by_role("link", name="Chat", exact=True).click()
    row = alice.page.locator(".chat-item").first
    expect(row.locator(".chat-item-title")).to_have_text(bob_name)
    expect(row.locator(".chat-item-preview")).to_have_text("You: first line second line")

    # Sign out ends the session: the page asks to sign in and the cookie no longer works.
    alice.page.get_by_role("button", name="Sign out").click()
    expect(alice.page.get_by_text("You are signed out.")).to_be_visible()
    assert alice.context.request.get("/auth/me/").status == 401


def test_messages_sent_while_the_server_restarts_appear_once(start_server, tabs):
    first = start_server()
    second = start_server(mongo_url=first.mongo_url)
    alice, bob, uri = two_members(first.url, second.url)
    alice.post(uri, "before the restart")

    page = tabs(first.url).sign_in(alice).open_chat(uri)
    bob.post(uri, "still here?")
    expect(page.message("still here?")).to_be_visible(timeout=SECOND)

    first.stop()
    expect(page.page.locator(".banner")).to_contain_text("Reconnecting")
    sent_meanwhile = [bob.post(uri, f"while you were away {i}")["seq"] for i in range(5)]
    # A message typed meanwhile waits as pending and goes out after the reconnect.
    page.send("typed while offline")
    pending = page.page.locator(".outbox > li", has_text="typed while offline")
    expect(pending).to_contain_text("Waiting for the connection")
    first.start()

    expect(page.page.locator(".chat-view")).to_have_attribute("data-connection", "live", timeout=RECONNECT)
    expect(page.page.locator(".banner")).to_be_hidden()
    for seq in sent_meanwhile:
        expect(page.page.locator(f'.messages > li[data-seq="{seq}"]')).to_have_count(1)
    expect(pending).to_have_count(0)
    expect(page.confirmed("typed while offline")).to_have_count(1)
    bob.post(uri, "welcome back")
    expect(page.message("welcome back")).to_be_visible(timeout=SECOND)

    stored = alice.all_seqs(uri)
    assert page.seqs() == stored  # every message, in order, each exactly once
    assert len(stored) == 2 + len(sent_meanwhile) + 2
    page.page.reload()  # a reloaded page shows the same
    expect(page.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(page.messages()).to_have_count(len(stored))
    assert page.seqs() == stored


def test_scrolling_up_loads_older_history(server, tabs):
    alice, bob, uri = two_members(server.url)
    total = 130
    for i in range(1, total + 1):
        alice.post(uri, f"message number {i}")
    page = tabs(server.url, viewport={"width": 1000, "height": 700}).sign_in(alice).open_chat(uri)
    expect(page.message(f"message number {total}")).to_be_in_viewport()
    assert len(page.seqs()) < total

    scroller = page.page.locator(".scroller")
    deadline = time.monotonic() + 20
    while not page.page.get_by_text("This is the beginning of the chat.").is_visible():
        assert time.monotonic() < deadline, "older history did not load"
        scroller.evaluate("el => { el.scrollTop = 0; }")
        page.page.wait_for_timeout(100)
    assert page.seqs() == list(range(FIRST_MESSAGE, FIRST_MESSAGE + total))
    scroller.evaluate("el => { el.scrollTop = 0; }")
    expect(page.page.get_by_text("message number 1", exact=True)).to_be_in_viewport()

    # Reading old messages: a new one does not yank the view down, a pill says so.
    bob.post(uri, "something new")
    pill = page.page.locator(".pill")
    expect(pill).to_have_text("1 new message")
    assert scroller.evaluate("el => el.scrollTop") == 0
    expect(page.message("something new")).not_to_be_in_viewport()
    pill.click()
    expect(page.message("something new")).to_be_in_viewport()
    expect(pill).to_be_hidden()


def test_a_message_arriving_while_history_loads_is_kept(server, tabs):
    alice, bob, uri = two_members(server.url)
    for i in range(3):
        alice.post(uri, f"old {i}")
    page = tabs(server.url).sign_in(alice)
    held = []
    page.page.route(re.compile(r"/messages/\?"), lambda route: held.append(route))
    page.page.goto(f"/chats/{uri}/")
    expect(page.page.locator(".chat-view")).to_have_attribute("data-connection", "live")
    bob.post(uri, "raced the history")
    expect(page.page.locator('.messages > li[data-seq="5"]')).to_have_count(1)  # join is 1
    assert held, "the history request was not held"
    for route in held:
        route.continue_()
    expect(page.messages()).to_have_count(4)
    assert page.seqs() == [2, 3, 4, 5]


def test_a_wrong_link_says_so_in_words(server, tabs):
    page = tabs(server.url).sign_in(Api(server.url).signup())
    page.page.goto(f"/chats/{'0' * 15}/")
    expect(page.page.get_by_role("alert")).to_contain_text("This chat does not exist.")
    page.page.get_by_role("link", name="Back to my chats").click()
    expect(page.page.get_by_role("heading", name="My chats")).to_be_visible()


def test_markup_in_a_message_is_shown_as_text(server, tabs):
    alice, bob, uri = two_members(server.url)
    page = tabs(server.url).sign_in(alice).open_chat(uri)
    attack = "<img src=x onerror=alert(1)>"
    page.send(attack)
    bob.post(uri, "<script>alert(2)</script> see javascript:alert(3) and https://example.com/a?b=1.")

    mine = page.confirmed("onerror")
    expect(mine).to_have_text(attack, timeout=SECOND)
    expect(page.message("<script>alert(2)</script>")).to_be_visible(timeout=SECOND)
    assert page.page.locator(".messages img, .messages script").count() == 0
    links = page.page.locator(".messages a")
    expect(links).to_have_count(1)
    assert links.get_attribute("href") == "https://example.com/a?b=1"
    assert "noopener" in links.get_attribute("rel")
    page.page.wait_for_timeout(300)  # a dialog, if anything ran, would be recorded by now


def test_failed_send_stays_visible_and_retries(server, tabs):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    page = tabs(server.url).sign_in(alice)

    def refuse_first_message(ws):
        server_side = ws.connect_to_server()
        refused = []

        def from_page(text):
            frame = json.loads(text)
            if frame.get("type") == "message" and not refused:
                refused.append(frame)
                ws.send(json.dumps({"type": "error", "code": "unavailable", "client_id": frame["client_id"],
                                    "uri": frame["uri"],
                                    "detail": "The database is unavailable; try again shortly."}))
            else:
                server_side.send(text)

        ws.on_message(from_page)

    page.page.route_web_socket(USER_STREAM, refuse_first_message)
    page.open_chat(uri)
    page.send("please arrive")
    failed = page.page.locator(".outbox > li.failed")
    expect(failed).to_contain_text("The database is unavailable")
    expect(failed.get_by_role("button", name="Retry")).to_be_visible()
    failed.get_by_role("button", name="Retry").click()
    expect(page.page.locator(".outbox > li")).to_have_count(0)
    expect(page.confirmed("please arrive")).to_have_count(1)
    assert alice.history(uri)["messages"][-1]["message"] == "please arrive"
    page.send("and the next one")
    expect(page.page.locator('.messages > li[data-seq="2"]')).to_contain_text("and the next one")
    page.page.wait_for_timeout(300)
    assert page.seqs() == [1, 2]


def test_a_silent_socket_is_replaced_and_resumed(server, tabs):
    """A connection that stops answering (a network that died without a word)."""
    alice, bob, uri = two_members(server.url)
    page = tabs(server.url).sign_in(alice)
    connections = []

    def relay(ws):
        silent = connections == []  # the first connection goes silent when told
        connections.append(ws)
        server_side = ws.connect_to_server()
        server_side.on_message(lambda text: None if silent and dead else ws.send(text))
        ws.on_message(lambda text: None if silent and dead else server_side.send(text))

    dead = False
    page.page.route_web_socket(USER_STREAM, relay)
    page.open_chat(uri)
    dead = True
    bob.post(uri, "said into the silence")
    page.send("anyone there?")
    failed = page.page.locator(".outbox > li.failed")
    expect(failed).to_contain_text("the server did not confirm it", timeout=15_000)
    expect(page.confirmed("said into the silence")).to_have_count(1)  # the new socket's catch-up
    assert len(connections) == 2
    failed.get_by_role("button", name="Retry").click()
    expect(page.confirmed("anyone there?")).to_have_count(1)
    expect(page.page.locator(".outbox > li")).to_have_count(0)
    bob.post(uri, "I hear you")
    expect(page.message("I hear you")).to_be_visible(timeout=SECOND)
    assert page.seqs() == alice.all_seqs(uri) == [2, 3, 4]  # Bob's join is seq 1


def test_a_socket_that_never_gets_ready_is_given_up_and_retried(server, tabs):
    """The server accepted the stream but its snapshot and ready never come (a proxy
    that hangs, a server that never closes it): the page gives up and reconnects."""
    alice, bob, uri = two_members(server.url)
    bob.post(uri, "sent before")
    page = tabs(server.url).sign_in(alice)
    connections = []

    def first_never_ready(ws):
        connections.append(ws)
        if len(connections) > 1:
            ws.connect_to_server()  # later ones reach the real server

    page.page.clock.install()
    page.page.route_web_socket(USER_STREAM, first_never_ready)
    page.page.goto(f"/chats/{uri}/")
    view = page.page.locator(".chat-view")
    expect(view).to_have_attribute("data-connection", "connecting")
    fast_forward_until(page.page, lambda: len(connections) > 1)
    assert len(connections) == 2
    expect(view).to_have_attribute("data-connection", "live")
    expect(page.confirmed("sent before")).to_have_count(1)


def test_unread_count_in_title_while_away(server, tabs):
    alice, bob, uri = two_members(server.url)
    page = tabs(server.url).sign_in(alice).open_chat(uri)
    title = page.page.title()
    page.page.evaluate("document.hasFocus = () => false")
    bob.post(uri, "are you there?")
    bob.post(uri, "hello?")
    expect(page.page).to_have_title(f"(2) {title}")
    page.page.evaluate("delete document.hasFocus; window.dispatchEvent(new Event('focus'))")
    expect(page.page).to_have_title(title)


def test_screenshots_of_the_chat(start_server, tabs):
    """screenshot.png (desktop, my chats beside the chat), screenshot-phone.png (390 px
    wide), screenshot-phone-home.png (my chats on the phone) and the rest. The lists hold a
    DM and a named chat with an unread mention (its @ badge); the chat, a formatted
    message and an image.

    They go to tests/artifacts/, or to docs/ (the README's) with UPDATE_SCREENSHOTS=1,
    so an ordinary test run leaves the checkout clean.
    """
    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
    process = start_server()
    maya = Api(process.url, "maya").signup()
    leo = Api(process.url, "leo").signup()
    sam = Api(process.url, "sam").signup()
    uri = maya.new_chat()
    leo.join(uri)
    sam.join(uri)
    assert maya.request("PATCH", f"/api/chats/{uri}/",
                        json={"name": "Launch", "topic": "Friday's release"}).status_code == 200
    script = [
        (leo, "Morning! Did the deploy go out last night?"),
        (maya, "It did! The new chat server is **live** behind nginx."),
        (maya, "Three processes, one RabbitMQ, history in `MongoDB`."),
        (sam, "Nice. I restarted one process during lunch and nobody lost a message."),
        (leo, "That's the seq resume doing its job. Notes are in https://example.com/runbook"),
        (sam, "Shift+Enter for new lines works too:\n- sign up\n- share the link\n- talk"),
        (leo, "Shall we try it with the whole team on Friday?"),
    ]
    for api, text in script:
        api.post(uri, text)
    graph = uploaded(sam, uri, png(1200, 600, "seagreen"), "load.png")
    assert sam.request("POST", f"/api/chats/{uri}/messages/", json={
        "message": "Load during the switch-over:", "attachments": [graph["id"]]}).status_code == 200
    script.append((sam, "Load during the switch-over:"))
    lunch = leo.new_chat()
    sam.join(lunch)
    maya.join(lunch)
    assert leo.request("PATCH", f"/api/chats/{lunch}/", json={"name": "Lunch"}).status_code == 200
    leo.post(lunch, "Lunch at the usual place?")
    sam.post(lunch, "Sure, 12:30. @maya @leo coming?")
    dm = maya.request("POST", "/api/dms/", json={"username": "leo"}).json()["uri"]
    maya.post(dm, "Can you look at my pull request after lunch?")
    sam.new_chat()  # a chat nobody joined yet

    home = tabs(process.url, viewport={"width": 1280, "height": 800}).sign_in(sam).open_chat(uri)
    desktop = tabs(process.url, viewport={"width": 1280, "height": 800}).sign_in(maya).open_chat(uri)
    home.page.get_by_role("link", name="Chat", exact=True).click()
    desktop.send("Yes! I'll send the link round.")
    expect(desktop.page.locator(".messages > li[data-seq]")).to_have_count(len(script) + 1)
    expect(desktop.page.locator(".chat-item", has_text="Lunch").locator(".mention-badge")).to_have_text("@")
    expect(desktop.page.locator(".chat-item-title").filter(has_text=re.compile(r"^leo$"))).to_be_visible()
    expect(desktop.page.locator(".attachment-image img")).to_have_js_property("complete", True)
    desktop.page.locator(".composer textarea").fill("See you all then")
    desktop.page.locator(".composer textarea").blur()
    shots.mkdir(parents=True, exist_ok=True)
    desktop.page.screenshot(path=str(shots / "screenshot.png"))

    phone = tabs(process.url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                 is_mobile=True, has_touch=True).sign_in(leo).open_chat(uri)
    expect(phone.page.locator(".messages > li[data-seq]")).to_have_count(len(script) + 1)
    phone.page.screenshot(path=str(shots / "screenshot-phone.png"))
    phone.page.locator(".chat-header").get_by_role("button", name="Members").click()
    expect(phone.page.locator(".chat-side")).to_be_visible()
    phone.page.wait_for_timeout(300)  # the drawer's slide
    phone.page.screenshot(path=str(shots / "screenshot-phone-members.png"))
    phone.page.get_by_role("button", name="Close").tap()
    phone.page.get_by_role("link", name="Back to my chats").tap()
    expect(phone.page.locator(".sidebar .chat-item")).to_have_count(3)
    expect(phone.page.locator(".chat-item", has_text="Lunch").locator(".mention-badge")).to_have_text("@")
    phone.page.screenshot(path=str(shots / "screenshot-phone-home.png"))

    dark = tabs(process.url, viewport={"width": 1280, "height": 800}, color_scheme="dark")
    dark.sign_in(leo).open_chat(uri)
    expect(dark.page.locator(".messages > li[data-seq]")).to_have_count(len(script) + 1)
    dark.page.screenshot(path=str(shots / "screenshot-dark.png"))

    # Sam left the chat before Maya's last message: his list shows it unread.
    home.page.reload()
    expect(home.page.locator(".chat-item")).to_have_count(3)
    expect(home.page.locator(".chat-item-preview").first).to_contain_text("maya: Yes!")
    expect(home.page.locator(".chat-item").first.locator(".badge")).to_have_text("1")
    home.page.screenshot(path=str(shots / "screenshot-home.png"))
    signin = tabs(process.url, viewport={"width": 1280, "height": 800})
    signin.page.goto("/")
    expect(signin.page.get_by_role("button", name="Sign in")).to_be_visible()
    signin.page.screenshot(path=str(shots / "screenshot-signin.png"))
    assert os.path.getsize(shots / "screenshot.png") > 10_000


def test_two_users_see_each_other_online_typing_and_seen_by(start_server, tabs):
    # Typing entries outlive the test: only the page's stop can end them.
    process = start_server(presence_grace_seconds=1, typing_ttl_seconds=60)
    alice, bob, uri = two_members(process.url)
    bob.post(uri, "before you came")
    ann = tabs(process.url).sign_in(alice).open_chat(uri)
    expect(ann.page.locator(".unread-divider")).to_have_text("New messages")
    ann.send("hello bob")
    expect(ann.confirmed("hello bob")).to_have_count(1)
    ben = tabs(process.url).sign_in(bob).open_chat(uri)
    for tab, other in ((ann, bob), (ben, alice)):
        expect(tab.page.locator(f".member.online[data-user='{other.user['id']}']")).to_have_count(1)
        expect(tab.page.locator(".chat-subtitle")).to_have_text("2 members · 2 online")
    # bob's page has read alice's message: she sees it under her message
    expect(ann.page.locator(".msg.mine .seen-by")).to_have_text(f"Seen by {bob.username}")
    ben.page.get_by_label("Message", exact=True).press_sequentially("typing a rep")
    expect(ann.page.locator(".typing-line")).to_have_text(f"{bob.username} is typing…")
    expect(ben.page.locator(".typing-line")).to_have_text("")  # never the reader
    ben.page.get_by_label("Message", exact=True).fill("")
    ben.page.get_by_label("Message", exact=True).press("Backspace")  # an input event: stop
    expect(ann.page.locator(".typing-line")).to_have_text("")
    ben.page.get_by_role("link", name="Chat", exact=True).click()  # his subscription ends
    expect(ann.page.locator(".chat-subtitle")).to_have_text("2 members · 1 online")
    expect(ann.page.locator(f".member.online[data-user='{bob.user['id']}']")).to_have_count(0)


def test_a_second_tab_clears_its_badge_when_the_first_reads(server, browser, tabs):
    alice, bob, uri = two_members(server.url)
    bob.post(uri, "one")
    bob.post(uri, "two")
    laptop = tabs(server.url).sign_in(alice)
    laptop.page.goto("/")
    badge = laptop.page.locator(".chat-item.unread .badge")
    expect(badge).to_have_text("2")
    second = laptop.context.new_page()  # the same browser, another tab
    second.goto(f"/chats/{uri}/")
    expect(second.locator(".chat-view")).to_have_attribute("data-connection", "live")
    expect(badge).to_have_count(0)
    laptop.page.reload()  # and the server agrees
    expect(laptop.page.locator(".chat-item").first).to_be_visible()
    expect(badge).to_have_count(0)
