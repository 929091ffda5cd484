"""Browsers on other origins: CORS for allowed_origins, and Tornado's cross-origin
protection against login CSRF and forged cookie-authenticated writes."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import websockets

from tests.conftest import serve
from tests.helpers import Api, ServerProcess, next_frame

ALLOWED = "http://localhost:8080"  # chatire's dev server
FOREIGN = "https://evil.example"


@pytest.fixture(scope="module")
def cors_server(mongo_base, amqp_url, tmp_path_factory):
    yield from serve(mongo_base, amqp_url, tmp_path_factory,
                     allowed_origins=f"{ALLOWED},https://other.example")


@pytest.fixture(scope="module")
def alice(cors_server) -> Api:
    return Api(cors_server.url).signup()


def preflight(url: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(url, timeout=5, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type"})


def cors_headers(reply: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in reply.headers.items() if k.lower().startswith("access-control")}


@pytest.mark.parametrize("path, methods", [
    ("/auth/users/create/", {"POST"}),
    ("/auth/jwt/create/", {"POST"}),
    ("/api/chats/", {"GET", "POST"}),
    ("/api/chats/{uri}/", {"GET", "PATCH"}),
    ("/api/chats/{uri}/messages/", {"GET", "POST"}),
])
def test_an_allowed_origins_preflight_is_answered(cors_server, alice, path, methods):
    uri = alice.new_chat()
    reply = preflight(cors_server.url + path.replace("{uri}", uri), ALLOWED)
    assert reply.status_code == 204, reply.text
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in reply.headers["Vary"]
    assert set(reply.headers["Access-Control-Allow-Methods"].split(", ")) >= methods
    allowed_headers = {h.strip().lower() for h in
                       reply.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    assert "Access-Control-Allow-Credentials" not in reply.headers


def test_answers_to_an_allowed_origin_echo_it_errors_too(cors_server, alice):
    uri = alice.new_chat()
    ok = alice.request("GET", f"/api/chats/{uri}/messages/", headers={"Origin": ALLOWED})
    bad = alice.request("GET", f"/api/chats/{uri}/messages/?after=x", headers={"Origin": ALLOWED})
    anonymous = httpx.get(f"{cors_server.url}/auth/me/", headers={"Origin": ALLOWED})
    for reply, status in ((ok, 200), (bad, 400), (anonymous, 401)):
        assert reply.status_code == status
        assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "Origin" in reply.headers["Vary"]
    other = alice.request("GET", "/auth/me/", headers={"Origin": "https://other.example"})
    assert other.headers["Access-Control-Allow-Origin"] == "https://other.example"


def test_other_origins_get_no_access_control_headers(cors_server, alice):
    uri = alice.new_chat()
    refused = preflight(f"{cors_server.url}/api/chats/{uri}/messages/", FOREIGN)
    assert refused.status_code == 403
    assert cors_headers(refused) == {}
    for origin in (FOREIGN, "null", ALLOWED + ".evil.example", "http://localhost:8081"):
        reply = alice.request("GET", f"/api/chats/{uri}/messages/", headers={"Origin": origin})
        assert reply.status_code == 200 and cors_headers(reply) == {}, origin


def test_the_default_configuration_allows_no_other_origin(server):
    reply = preflight(f"{server.url}/auth/jwt/create/", ALLOWED)
    assert reply.status_code == 403 and cors_headers(reply) == {}


def login(server: ServerProcess, api: Api, headers: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/auth/jwt/create/", timeout=5, headers=headers,
                      data={"username": api.username, "password": api.password})


@pytest.mark.parametrize("headers", [
    {"Origin": FOREIGN, "Sec-Fetch-Site": "cross-site"},
    {"Origin": FOREIGN},  # a browser that sends no Sec-Fetch-Site
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed frame
    {"Sec-Fetch-Site": "cross-site"},
])
def test_a_cross_site_login_form_sets_no_cookie(cors_server, alice, headers):
    # Login CSRF: a foreign page posting the attacker's credentials would log the
    # victim's browser into the attacker's account.
    reply = login(cors_server, alice, headers)
    assert reply.status_code == 403, reply.text
    assert "set-cookie" not in reply.headers
    assert "detail" in reply.json()


@pytest.mark.parametrize("headers", [
    {},  # an API client (curl, chatire's jQuery from a page of its own origin via a proxy)
    {"Origin": ALLOWED, "Sec-Fetch-Site": "same-site"},
    {"Origin": ALLOWED},
    {"Sec-Fetch-Site": "same-origin", "Origin": "{own}"},
    {"Sec-Fetch-Site": "none"},
])
def test_logins_from_api_clients_and_trusted_origins_work(cors_server, alice, headers):
    headers = {k: v.replace("{own}", cors_server.url) for k, v in headers.items()}
    reply = login(cors_server, alice, headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["token"]


def test_a_cross_site_write_with_the_login_cookie_is_refused(cors_server, alice):
    uri = alice.new_chat()
    browser = httpx.Client(base_url=cors_server.url, timeout=5)
    assert browser.post("/auth/jwt/create/", json={"username": alice.username,
                                                   "password": alice.password}).status_code == 200
    browser.get("/")  # the page sets the _xsrf cookie
    xsrf = browser.cookies["_xsrf"]
    forged = browser.post(f"/api/chats/{uri}/messages/", json={"message": "forged"},
                          headers={"X-XSRFToken": xsrf, "Origin": FOREIGN,
                                   "Sec-Fetch-Site": "cross-site"})
    assert forged.status_code == 403
    own = browser.post(f"/api/chats/{uri}/messages/", json={"message": "mine"},
                       headers={"X-XSRFToken": xsrf, "Origin": cors_server.url,
                                "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200, own.text
    assert [m["message"] for m in alice.history(uri)["messages"]] == ["mine"]


# chatire's client, replayed -----------------------------------------------------------

class ChatireBrowser:
    """What chatire-frontend's page on localhost:8080 makes Chromium send: jQuery's
    form-encoded $.post/$.ajax, `Authorization: JWT <token>` after login, and a
    preflight before every request that carries it (or uses PATCH). Each answer
    must let the page read it (Access-Control-Allow-Origin), as a browser checks."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.token: str | None = None

    def call(self, method: str, path: str, data: dict | None = None) -> dict | list:
        headers = {"Origin": ALLOWED, "Sec-Fetch-Site": "same-site", "Accept": "*/*"}
        if self.token is not None or method not in ("GET", "POST"):
            asked = ["authorization"] if self.token is not None else []
            check = self.http.options(path, headers={
                **headers, "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": ",".join(asked)})
            assert check.status_code == 204, (path, check.text)
            assert check.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert method in check.headers["Access-Control-Allow-Methods"].split(", ")
            allowed = check.headers["Access-Control-Allow-Headers"].lower()
            assert all(h in allowed for h in asked)
        if self.token is not None:
            headers["Authorization"] = f"JWT {self.token}"
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded; charset=UTF-8"
        reply = self.http.request(method, path, data=data, headers=headers)
        assert reply.status_code in (200, 201), (method, path, reply.text)
        assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
        self.http.cookies.clear()  # the page reads the JSON; cross-site, no cookie is kept
        return reply.json()


def test_chatires_client_works_as_it_is(cors_server):
    names = [f"chatire{uuid.uuid4().hex[:8]}" for _ in range(2)]
    owner, guest = ChatireBrowser(cors_server.url), ChatireBrowser(cors_server.url)
    for page, name in ((owner, names[0]), (guest, names[1])):
        # Signup.vue: $.post('/auth/users/create/', this.$data), then signIn().
        page.call("POST", "/auth/users/create/", {"username": name, "password": "pw-chatire",
                                                  "email": ""})
        # Signin: $.post('/auth/jwt/create/', ...) -> data.token into sessionStorage.
        page.token = page.call("POST", "/auth/jwt/create/",
                               {"username": name, "password": "pw-chatire"})["token"]
    # Chat.vue startChatSession: $.post('/api/chats/') -> data.uri (the route).
    created = owner.call("POST", "/api/chats/")
    assert created["status"] == "SUCCESS" and created["message"]
    uri = created["uri"]
    # joinChatSession: $.ajax PATCH {username} -> data.members.find(m => m.username === me).
    for page, name in ((owner, names[0]), (guest, names[1])):
        joined = page.call("PATCH", f"/api/chats/{uri}/", {"username": name})
        assert any(member["username"] == name for member in joined["members"])

    async def talk() -> list[list[dict]]:
        # A page of ours (a full socket) is in the room first, so the room has
        # started and a plain socket is live from the moment it connects.
        ours = f"{cors_server.ws_url}/ws/chats/{uri}/?token={owner.token}&since=0"
        async with websockets.connect(ours, origin=cors_server.url, open_timeout=5) as page:
            await next_frame(page, "ready")
            # connectToWebSocket: new WebSocket(url), onmessage pushing every frame
            # into the message list; the one change: /ws/chats/<uri>/?token=<its JWT>.
            chatire = [await websockets.connect(
                f"{cors_server.ws_url}/ws/chats/{uri}/?token={p.token}", origin=ALLOWED,
                open_timeout=5) for p in (owner, guest)]
            # fetchChatSessionHistory: $.get(messages/) -> data.messages.
            assert guest.call("GET", f"/api/chats/{uri}/messages/")["messages"] == []
            # postMessage: $.post(messages/, {message}); the sockets bring it back.
            await asyncio.to_thread(owner.call, "POST", f"/api/chats/{uri}/messages/",
                                    {"message": "hello from chatire"})
            await asyncio.to_thread(guest.call, "POST", f"/api/chats/{uri}/messages/",
                                    {"message": "hi back"})
            received = []
            for ws in chatire:
                received.append([json.loads(await asyncio.wait_for(ws.recv(), 5))
                                 for _ in range(2)])
                with pytest.raises(TimeoutError):  # nothing else: no ready, no signals
                    await asyncio.wait_for(ws.recv(), 0.5)
                await ws.close()
            return received

    expected = [(names[0], "hello from chatire"), (names[1], "hi back")]
    # Every frame is rendered as a message: {{ message.user.username }}: {{ message.message }}.
    for frames in asyncio.run(talk()):
        assert [(f["user"]["username"], f["message"]) for f in frames] == expected
    history = guest.call("GET", f"/api/chats/{uri}/messages/")
    assert [(m["user"]["username"], m["message"]) for m in history["messages"]] == expected
