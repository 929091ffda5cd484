"""Hardening against a hostile browser and client: CSWSH, XSRF, headers, caps, limits, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from chat import logs
from tests.helpers import Api, next_frame, probe_joined, refused_status, two_members

XSRF = "2|abcd1234|" + "0" * 40 + "|" + str(int(time.time()))


def cookie_login(api: Api) -> tuple[httpx.Client, str]:
    """A browser-like client holding the HttpOnly login cookie (and no header token)."""
    client = httpx.Client(base_url=api.base_url, timeout=10)
    reply = client.post("/auth/jwt/create/", json={"username": api.username, "password": api.password})
    assert reply.status_code == 200, reply.text
    return client, client.cookies["chat_token"]






@pytest.fixture
def room(server):
    alice = Api(server.url).signup()
    return alice, alice.new_chat()


# Cross-site WebSocket hijacking and XSRF ------------------------------------------

def test_a_foreign_origin_with_a_valid_cookie_cannot_open_a_socket(server, room):
    alice, uri = room
    _, cookie = cookie_login(alice)
    url = f"{server.ws_url}/ws/chats/{uri}/"
    jar = {"Cookie": f"chat_token={cookie}"}

    async def scenario():
        for origin in ("https://evil.example", "null", server.url.replace("127.0.0.1", "localhost")):
            assert await refused_status(url, origin=origin, additional_headers=jar) == 403, origin
        # The page's own origin (the Host it was served from) with the same cookie works.
        async with websockets.connect(url, origin=server.url, additional_headers=jar,
                                      open_timeout=5) as ws:
            await probe_joined(ws)

    asyncio.run(scenario())


def test_cookie_authenticated_writes_need_the_xsrf_token(server, room):
    alice, uri = room
    client, _ = cookie_login(alice)
    forged = [
        ("POST", "/api/chats/", {}),
        ("POST", f"/api/chats/{uri}/messages/", {"data": {"message": "forged"}}),
        ("PATCH", f"/api/chats/{uri}/", {"json": {}}),
        ("POST", "/auth/logout/", {}),
    ]
    for method, path, body in forged:
        reply = client.request(method, path, **body)
        assert reply.status_code == 403, (path, reply.text)
        assert "CSRF" in reply.json()["detail"]
        # a cookie with a header that does not match it is no better
        client.cookies.set("_xsrf", XSRF)
        reply = client.request(method, path, headers={"X-XSRFToken": XSRF.replace("0", "1")}, **body)
        assert reply.status_code == 403, (path, reply.text)
        client.cookies.delete("_xsrf")
    assert alice.history(uri)["messages"] == []
    assert client.get("/auth/me/").status_code == 200  # the cookie still works: no logout happened
    client.cookies.set("_xsrf", XSRF)
    reply = client.post(f"/api/chats/{uri}/messages/", data={"message": "mine"},
                        headers={"X-XSRFToken": XSRF})
    assert reply.status_code == 200, reply.text


def test_a_stale_login_cookie_does_not_block_logging_in_again(server):
    alice = Api(server.url).signup()
    client, cookie = cookie_login(alice)
    assert alice.request("POST", "/auth/logout/", headers={"Authorization": f"JWT {cookie}"}) \
        .status_code == 204
    client.cookies.set("_xsrf", XSRF)
    assert client.get("/auth/me/").status_code == 401
    reply = client.post("/auth/jwt/create/", headers={"X-XSRFToken": XSRF},
                        json={"username": alice.username, "password": alice.password})
    assert reply.status_code == 200, reply.text
    assert client.get("/auth/me/").json()["username"] == alice.username


# Security headers -------------------------------------------------------------------

def test_every_response_has_the_security_headers(server, room):
    alice, uri = room
    http = httpx.Client(base_url=server.url, timeout=10)
    replies = {
        "ok": http.get("/healthz"),
        "openapi": http.get("/api/openapi.json"),
        "401": http.get("/auth/me/"),
        "404": http.get("/no/such/thing"),
        "405": http.put("/auth/me/"),
        "400": alice.request("POST", f"/api/chats/{uri}/messages/", content=b"{not json",
                             headers={"Content-Type": "application/json"}),
        "metrics": http.get("/metrics"),
        "socket refused": http.get(f"/ws/chats/{uri}/"),
        "not an upgrade": alice.request("GET", f"/ws/chats/{uri}/"),
        "page": http.get("/"),
        "static": http.get("/static/css/app.css"),
    }
    for name, reply in replies.items():
        headers = reply.headers
        assert headers.get("x-content-type-options") == "nosniff", name
        assert headers.get("referrer-policy") in ("no-referrer", "same-origin"), name
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), name
    for name in ("ok", "openapi", "401", "404", "400", "metrics"):
        assert replies[name].headers["content-security-policy"] == \
            "default-src 'none'; frame-ancestors 'none'", name


def test_request_ids_are_echoed_when_sane_and_made_up_otherwise(server):
    reply = httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "abc-123.x"})
    assert reply.headers["x-request-id"] == "abc-123.x"
    reply = httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "bad id\twith junk"})
    assert reply.headers["x-request-id"] not in ("", "bad id\twith junk")
    assert len(httpx.get(f"{server.url}/healthz").headers["x-request-id"]) >= 16


# Caps and rate limits ----------------------------------------------------------------

def test_a_user_has_at_most_max_sockets_per_user(start_server):
    server = start_server(max_sockets_per_user=3)
    alice, bob, uri = two_members(server.url)

    async def scenario():
        sockets = [await websockets.connect(alice.ws_url(uri), open_timeout=5) for _ in range(3)]
        for ws in sockets:
            await probe_joined(ws)
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(alice.ws_url(uri), open_timeout=5)
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) > 0
        async with websockets.connect(bob.ws_url(uri), open_timeout=5) as other:  # per user
            await probe_joined(other)
        await sockets.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close a moment later
            try:
                sockets.append(await websockets.connect(alice.ws_url(uri), open_timeout=5))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "a closed socket still counts against the cap"
                await asyncio.sleep(0.1)
        for ws in sockets:
            await ws.close()

    asyncio.run(scenario())


def test_sign_ups_and_logins_are_limited_per_ip(start_server):
    server = start_server(signup_per_ip_per_minute=3, login_per_ip_per_minute=3)
    http = httpx.Client(base_url=server.url, timeout=10)
    names = [f"u{uuid.uuid4().hex[:10]}" for _ in range(4)]
    for name in names[:3]:
        assert http.post("/auth/users/create/", json={"username": name, "password": "pw-1"}) \
            .status_code == 201
    # Not behind a proxy: a forged X-Real-IP / X-Forwarded-For changes nothing.
    reply = http.post("/auth/users/create/", json={"username": names[3], "password": "pw-1"},
                      headers={"X-Real-IP": "198.51.100.9", "X-Forwarded-For": "198.51.100.9"})
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["Retry-After"]) > 0
    for _ in range(3):
        assert http.post("/auth/jwt/create/", json={"username": names[0], "password": "pw-1"}) \
            .status_code == 200
        http.cookies.clear()  # with the login cookie, a login needs the XSRF token too
    reply = http.post("/auth/jwt/create/", json={"username": names[0], "password": "pw-1"})
    assert reply.status_code == 429 and int(reply.headers["Retry-After"]) > 0


def test_behind_a_proxy_the_limits_apply_to_the_forwarded_address(start_server):
    server = start_server(behind_proxy=True, signup_per_ip_per_minute=2)
    http = httpx.Client(base_url=server.url, timeout=10)

    def sign_up(ip: str) -> int:
        return http.post("/auth/users/create/", headers={"X-Real-IP": ip},
                         json={"username": f"u{uuid.uuid4().hex[:10]}", "password": "pw"}).status_code

    assert [sign_up("198.51.100.1") for _ in range(3)] == [201, 201, 429]
    assert sign_up("198.51.100.2") == 201


# Logout closes sockets, on every process -----------------------------------------------

@pytest.mark.slow
def test_logout_closes_that_tokens_sockets_within_a_second_on_every_process(start_server, fresh_db):
    a = start_server(mongo_url=fresh_db)
    b = start_server(mongo_url=fresh_db)
    alice = Api(a.url).signup()
    uri = alice.new_chat()
    other_token = Api(a.url, alice.username).login().token

    async def scenario():
        url_a = alice.ws_url(uri)
        url_b = url_a.replace(f":{a.port}/", f":{b.port}/")
        on_a = await websockets.connect(url_a, open_timeout=5)
        on_b = await websockets.connect(url_b, open_timeout=5)
        kept = await websockets.connect(url_b.replace(alice.token, other_token), open_timeout=5)
        for ws in (on_a, on_b, kept):
            await probe_joined(ws)
        started = time.monotonic()
        reply = await asyncio.to_thread(alice.request, "POST", "/auth/logout/")
        assert reply.status_code == 204
        for ws in (on_a, on_b):
            await asyncio.wait_for(ws.wait_closed(), 1.0)
            assert ws.close_code == 1008
        assert time.monotonic() - started < 1.5
        # The other login of the same user is untouched.
        await asyncio.to_thread(Api(a.url, alice.username).login().post, uri, "still here")
        frame = await next_frame(kept)
        assert frame["message"] == "still here"
        await kept.close()

    asyncio.run(scenario())
    assert alice.request("GET", "/auth/me/").status_code == 401


# Logs ----------------------------------------------------------------------------------

def test_logs_carry_ids_and_reasons_but_no_secrets(start_server):
    server = start_server(log_format="json", log_level="DEBUG")
    password = f"pw-{uuid.uuid4().hex}"
    alice = Api(server.url, password=password).signup()
    bob = Api(server.url, password=f"pw-{uuid.uuid4().hex}").signup()
    uri = alice.new_chat()
    bob.join(uri)
    texts = [f"text-{uuid.uuid4().hex}" for _ in range(4)]
    alice.post(uri, texts[0])
    tokens = [alice.token, bob.token]

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0), open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "message", "message": texts[1], "client_id": "c1"}))
            await asyncio.to_thread(alice.post, uri, texts[2])
            seen = []
            while len(seen) < 3:
                frame = await next_frame(ws)
                if frame["type"] == "message":
                    seen.append(frame["message"])
        # refused: a bad token in the URL, and a foreign origin
        assert await refused_status(alice.ws_url(uri).replace(alice.token, "eyJ.bad.token")) == 401
        assert await refused_status(alice.ws_url(uri), origin="https://evil.example") == 403

    asyncio.run(scenario())
    wrong = httpx.post(f"{server.url}/auth/jwt/create/",
                       json={"username": alice.username, "password": f"{password}-wrong"})
    assert wrong.status_code == 400
    refresh = alice.http.post("/auth/jwt/refresh/", json={"token": alice.token})
    tokens.append(refresh.json()["token"])
    alice.token = tokens[-1]  # the refreshed token replaces the old one
    alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": texts[3]})
    assert alice.request("POST", "/auth/logout/").status_code == 204
    server.stop()

    text = server.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    secrets = [password, bob.password, f"{password}-wrong", *texts, *tokens,
               *(t.rsplit(".", 1)[1] for t in tokens)]
    for secret in secrets:
        assert secret not in text, f"a secret reached the log: {secret[:12]}..."
    assert "token=[redacted]" in text
    assert "token=" not in text.replace("token=[redacted]", "")

    access = [entry for entry in lines if entry["logger"] == "chat.access"]
    posted = [e for e in access if e["event"].startswith(f"POST /api/chats/{uri}/messages/")]
    assert posted and all(e["user"] == alice.username and e["room"] == uri and e["request_id"]
                          for e in posted)
    failed = [e for e in access if e["event"].startswith("POST /auth/jwt/create/")
              and e["status"] == 400]
    assert failed and "Unable to log in" in failed[0]["reason"]
    sockets = [e for e in access if e["event"].startswith("GET /ws/chats/")]
    assert {e["status"] for e in sockets} >= {101, 401, 403}
    assert all(e["room"] == uri for e in sockets)
    refused = [e for e in lines if "refused" in e["event"]]
    assert refused, "a refused socket is logged with its reason"


def test_log_lines_are_scrubbed_in_both_formats():
    # Tornado's own error lines quote the request URI; a socket's carries ?token=.
    record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1,
                               "Uncaught exception GET %s (%s)",
                               ("/ws/chats/x/?token=eyJhb.cd.ef&since=2", "eyJzz.yy.xx"), None)
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        line = formatter.format(record)
        assert "eyJhb" not in line and "eyJzz" not in line, line
        assert "?token=[redacted]&since=2" in line
