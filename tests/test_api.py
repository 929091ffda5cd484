"""The JSON HTTP API against a real server process, MongoDB wire server and RabbitMQ.

Every response goes through `checked`, which validates it against the
server's own OpenAPI document.
"""

from __future__ import annotations

import re
import time

import httpx
import jsonschema
import pytest

from tests.helpers import Api

URI_PATTERN = re.compile(r"/[0-9a-f]{15}/")


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    reply = httpx.get(f"{server.url}/api/openapi.json")
    assert reply.status_code == 200
    document = reply.json()
    assert document["openapi"].startswith("3.1")
    return document


@pytest.fixture
def checked(openapi):
    """Validate a response against the OpenAPI document, then return it."""

    def check(reply: httpx.Response) -> httpx.Response:
        path = URI_PATTERN.sub("/{uri}/", reply.request.url.path)
        operation = openapi["paths"][path][reply.request.method.lower()]
        documented = operation["responses"].get(str(reply.status_code))
        assert documented is not None, f"{reply.status_code} is not documented for {path}"
        content = documented.get("content")
        if content is None:
            assert reply.content == b""
            return reply
        assert reply.headers["content-type"].startswith("application/json")
        schema = {**content["application/json"]["schema"], "components": openapi["components"]}
        jsonschema.Draft202012Validator(schema).validate(reply.json())
        return reply

    return check


@pytest.fixture
def alice(server) -> Api:
    return Api(server.url).signup()


@pytest.fixture
def bob(server) -> Api:
    return Api(server.url).signup()


# Accounts -----------------------------------------------------------------

def test_register_with_json_and_with_a_form(server, checked):
    reply = checked(httpx.post(f"{server.url}/auth/users/create/",
                               json={"username": "json.user+1", "password": "pw", "email": "a@b.co"}))
    assert reply.status_code == 201
    assert reply.json()["username"] == "json.user+1"
    assert reply.json()["email"] == "a@b.co"
    reply = checked(httpx.post(f"{server.url}/auth/users/create/",
                               data={"username": "form_user", "password": "pw"}))
    assert reply.status_code == 201
    assert set(reply.json()) >= {"id", "username", "email"}


def test_register_refuses_a_taken_username(server, alice, checked):
    reply = checked(httpx.post(f"{server.url}/auth/users/create/",
                               json={"username": alice.username, "password": "other"}))
    assert reply.status_code == 400
    assert reply.json() == {"username": ["A user with that username already exists."]}


@pytest.mark.parametrize("body, field", [
    ({"password": "pw"}, "username"),
    ({"username": "nopass"}, "password"),
    ({"username": "", "password": "pw"}, "username"),
    ({"username": "has space", "password": "pw"}, "username"),
    ({"username": "x" * 151, "password": "pw"}, "username"),
    ({"username": 12, "password": "pw"}, "username"),
    ({"username": "okname", "password": ["pw"]}, "password"),
    ({"username": "okname2", "password": "pw", "email": "not-an-email"}, "email"),
    ({"username": "okname3", "password": "é" * 37}, "password"),  # 74 bytes: over bcrypt's 72
])
def test_register_names_the_bad_field(server, checked, body, field):
    reply = checked(httpx.post(f"{server.url}/auth/users/create/", json=body))
    assert reply.status_code == 400
    assert field in reply.json()


def test_register_explains_the_bcrypt_limit(server):
    reply = httpx.post(f"{server.url}/auth/users/create/",
                       json={"username": "longpw", "password": "p" * 73})
    assert reply.status_code == 400
    assert "72 bytes" in reply.json()["password"][0]


@pytest.mark.parametrize("raw, content_type", [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"\xff\xfe", "application/json"),
])
def test_malformed_bodies_are_400_not_500(server, raw, content_type):
    reply = httpx.post(f"{server.url}/auth/users/create/", content=raw,
                       headers={"Content-Type": content_type})
    assert reply.status_code == 400
    assert "detail" in reply.json()


def test_a_body_over_64_kib_is_413(server, alice):
    reply = alice.request("POST", "/api/chats/", content=b"x" * (64 * 1024 + 1),
                          headers={"Content-Type": "application/json"})
    assert reply.status_code == 413


def test_login_gives_a_token_that_works_with_both_prefixes(server, alice, checked):
    reply = checked(httpx.post(f"{server.url}/auth/jwt/create/",
                               data={"username": alice.username, "password": alice.password}))
    assert reply.status_code == 200
    token = reply.json()["token"]
    for prefix in ("JWT", "Bearer"):
        me = checked(httpx.get(f"{server.url}/auth/me/", headers={"Authorization": f"{prefix} {token}"}))
        assert me.status_code == 200
        assert me.json()["username"] == alice.username
        assert set(me.json()) >= {"id", "username", "email", "first_name", "last_name"}


def test_login_sets_an_httponly_samesite_cookie_that_authenticates(server, alice):
    client = httpx.Client(base_url=server.url)
    reply = client.post("/auth/jwt/create/", json={"username": alice.username, "password": alice.password})
    cookie = reply.headers["set-cookie"]
    assert "chat_token=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/auth/me/").json()["username"] == alice.username


def test_wrong_password_and_unknown_user_get_the_same_answer(server, alice, checked):
    wrong = checked(httpx.post(f"{server.url}/auth/jwt/create/",
                               json={"username": alice.username, "password": "wrong"}))
    unknown = checked(httpx.post(f"{server.url}/auth/jwt/create/",
                                 json={"username": "nobody-here", "password": "wrong"}))
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.json() == unknown.json() == {
        "non_field_errors": ["Unable to log in with provided credentials."]}


def test_login_with_an_over_long_password_is_the_generic_failure(server, alice):
    reply = httpx.post(f"{server.url}/auth/jwt/create/",
                       json={"username": alice.username, "password": "p" * 100})
    assert reply.status_code == 400
    assert "non_field_errors" in reply.json()


def test_more_than_ten_failed_logins_are_throttled(server, checked):
    user = Api(server.url).signup()
    for _ in range(10):
        reply = httpx.post(f"{server.url}/auth/jwt/create/",
                           json={"username": user.username, "password": "wrong"})
        assert reply.status_code == 400
    reply = checked(httpx.post(f"{server.url}/auth/jwt/create/",
                               json={"username": user.username, "password": user.password}))
    assert reply.status_code == 429
    assert 0 < int(reply.headers["Retry-After"]) <= 900


def test_refresh_gives_a_fresh_working_token(server, alice, checked):
    reply = checked(httpx.post(f"{server.url}/auth/jwt/refresh/", json={"token": alice.token}))
    assert reply.status_code == 200
    fresh = reply.json()["token"]
    assert fresh != alice.token
    assert httpx.get(f"{server.url}/auth/me/", headers={"Authorization": f"JWT {fresh}"}).status_code == 200


def test_refresh_refuses_garbage(server, checked):
    reply = checked(httpx.post(f"{server.url}/auth/jwt/refresh/", json={"token": "a.b.c"}))
    assert reply.status_code == 400


def test_logout_revokes_the_token(server, alice, checked):
    reply = checked(alice.request("POST", "/auth/logout/"))
    assert reply.status_code == 204
    reply = checked(alice.request("GET", "/auth/me/"))
    assert reply.status_code == 401


@pytest.mark.parametrize("header", [None, "JWT", "JWT not-a-token", "Basic abc", "Bearer a.b.c"])
def test_no_or_bad_token_is_401_with_a_challenge(server, checked, header):
    headers = {"Authorization": header} if header is not None else {}
    reply = checked(httpx.get(f"{server.url}/auth/me/", headers=headers))
    assert reply.status_code == 401
    assert "JWT" in reply.headers["WWW-Authenticate"]


def test_a_forged_token_is_refused(server, alice):
    header, payload, signature = alice.token.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}AA"
    reply = httpx.get(f"{server.url}/auth/me/", headers={"Authorization": f"JWT {forged}"})
    assert reply.status_code == 401


# Chats --------------------------------------------------------------------

def test_create_a_chat(alice, checked):
    reply = checked(alice.request("POST", "/api/chats/"))
    body = reply.json()
    assert body["status"] == "SUCCESS"
    assert re.fullmatch(r"[0-9a-f]{15}", body["uri"])
    assert body["message"] == "New chat session created"


def test_chat_uris_are_unique(alice):
    assert len({alice.new_chat() for _ in range(20)}) == 20


def test_list_my_chats_newest_activity_first(alice, bob, checked):
    first, second = alice.new_chat(), alice.new_chat()
    alice.post(first, "bump the first")
    reply = checked(alice.request("GET", "/api/chats/"))
    uris = [chat["uri"] for chat in reply.json()]
    assert uris.index(first) < uris.index(second)
    assert checked(bob.request("GET", "/api/chats/")).json() == []


def test_get_a_chat_with_owner_and_members(alice, bob, checked):
    uri = alice.new_chat()
    bob.join(uri)
    body = checked(alice.request("GET", f"/api/chats/{uri}/")).json()
    assert body["owner"]["username"] == alice.username
    assert [m["username"] for m in body["members"]] == [alice.username, bob.username]


def test_join_a_chat(alice, bob, checked):
    uri = alice.new_chat()
    reply = checked(bob.request("PATCH", f"/api/chats/{uri}/"))
    body = reply.json()
    assert body["status"] == "SUCCESS"
    assert body["message"] == f"{bob.username} joined the chat"
    assert body["user"]["username"] == bob.username
    assert [m["username"] for m in body["members"]] == [alice.username, bob.username]
    again = checked(bob.request("PATCH", f"/api/chats/{uri}/"))
    assert len(again.json()["members"]) == 2


def test_the_owner_adds_another_user_and_others_cannot(server, alice, bob, checked):
    carol = Api(server.url).signup()
    uri = alice.new_chat()
    reply = checked(alice.request("PATCH", f"/api/chats/{uri}/", json={"username": bob.username}))
    assert reply.status_code == 200
    assert reply.json()["user"]["username"] == bob.username
    reply = checked(bob.request("PATCH", f"/api/chats/{uri}/", json={"username": carol.username}))
    assert reply.status_code == 403
    reply = checked(alice.request("PATCH", f"/api/chats/{uri}/", json={"username": "no-such-user"}))
    assert reply.status_code == 400
    assert "username" in reply.json()


def test_unknown_chat_is_404_and_a_stranger_is_403(alice, bob, checked):
    assert checked(alice.request("GET", "/api/chats/0123456789abcde/")).status_code == 404
    assert checked(alice.request("PATCH", "/api/chats/0123456789abcde/")).status_code == 404
    assert checked(alice.request("GET", "/api/chats/0123456789abcde/messages/")).status_code == 404
    uri = alice.new_chat()
    assert checked(bob.request("GET", f"/api/chats/{uri}/")).status_code == 403
    assert checked(bob.request("GET", f"/api/chats/{uri}/messages/")).status_code == 403
    assert checked(bob.request("POST", f"/api/chats/{uri}/messages/",
                               json={"message": "hi"})).status_code == 403


def test_unknown_paths_answer_json_404(server):
    reply = httpx.get(f"{server.url}/api/nothing-here")
    assert reply.status_code == 404
    assert reply.json() == {"detail": "Not found."}


# Messages -----------------------------------------------------------------

def test_post_messages_get_gap_free_seqs(alice, checked):
    uri = alice.new_chat()
    replies = [checked(alice.request("POST", f"/api/chats/{uri}/messages/",
                                     json={"message": f"m{i}"})).json() for i in range(5)]
    assert [r["seq"] for r in replies] == [1, 2, 3, 4, 5]
    assert all(r["status"] == "SUCCESS" and r["uri"] == uri for r in replies)
    assert replies[0]["user"]["username"] == alice.username
    assert replies[0]["message"] == "m0"


def test_post_with_a_form_body(alice):
    uri = alice.new_chat()
    reply = alice.request("POST", f"/api/chats/{uri}/messages/", data={"message": "from a form"})
    assert reply.status_code == 200
    assert reply.json()["message"] == "from a form"


def test_the_same_client_id_returns_the_stored_message(alice, bob):
    uri = alice.new_chat()
    bob.join(uri)
    first = alice.post(uri, "once", client_id="c-1")
    again = alice.post(uri, "once", client_id="c-1")
    assert again["id"] == first["id"] and again["seq"] == first["seq"] == 2  # bob's join is 1
    other = bob.post(uri, "bob's own", client_id="c-1")  # another user's c-1 is another message
    assert other["seq"] == 3
    assert alice.all_seqs(uri) == [2, 3]


@pytest.mark.parametrize("body, field", [
    ({}, "message"), ({"message": ""}, "message"), ({"message": "   "}, "message"),
    ({"message": 5}, "message"), ({"message": None}, "message"), ({"message": "x" * 2001}, "message"),
    ({"message": "ok", "client_id": 7}, "client_id"),
    ({"message": "ok", "client_id": "c" * 65}, "client_id"),
])
def test_bad_messages_are_400_naming_the_field_and_store_nothing(alice, checked, body, field):
    uri = alice.new_chat()
    reply = checked(alice.request("POST", f"/api/chats/{uri}/messages/", json=body))
    assert reply.status_code == 400
    assert field in reply.json()
    assert alice.all_seqs(uri) == []


def test_a_message_of_exactly_the_limit_is_stored(alice):
    uri = alice.new_chat()
    assert alice.post(uri, "x" * 2000)["seq"] == 1


def test_concurrent_posts_get_distinct_gap_free_seqs(server, alice):
    import concurrent.futures
    uri = alice.new_chat()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: Api.post(alice, uri, f"c{i}"), range(80)))
    assert sorted(r["seq"] for r in replies) == list(range(1, 81))
    assert alice.all_seqs(uri) == list(range(1, 81))


def test_history_pages(alice, checked):
    uri = alice.new_chat()
    for i in range(1, 121):
        alice.post(uri, f"m{i}")
    latest = checked(alice.request("GET", f"/api/chats/{uri}/messages/")).json()
    assert [m["seq"] for m in latest["messages"]] == list(range(71, 121))
    assert latest["has_more"] is True and latest["uri"] == uri
    before = alice.history(uri, before=71, limit=30)
    assert [m["seq"] for m in before["messages"]] == list(range(41, 71))
    assert before["has_more"] is True
    oldest = alice.history(uri, before=11)
    assert [m["seq"] for m in oldest["messages"]] == list(range(1, 11))
    assert oldest["has_more"] is False
    after = alice.history(uri, after=100, limit=10)
    assert [m["seq"] for m in after["messages"]] == list(range(101, 111))
    assert after["has_more"] is True
    tail = alice.history(uri, after=110, limit=200)
    assert [m["seq"] for m in tail["messages"]] == list(range(111, 121))
    assert tail["has_more"] is False


@pytest.mark.parametrize("params, field", [
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"),
    ("after=-1", "after"), ("before=0", "before"), ("after=1&before=5", "before"),
])
def test_bad_history_parameters_are_400(alice, checked, params, field):
    uri = alice.new_chat()
    reply = checked(alice.request("GET", f"/api/chats/{uri}/messages/?{params}"))
    assert reply.status_code == 400
    assert field in reply.json()


def test_health_reports_mongo_and_broker(server, checked):
    reply = checked(httpx.get(f"{server.url}/healthz"))
    assert reply.json() == {"mongo": "ok", "broker": "ok"}


def test_cookie_posts_need_the_xsrf_token(server, alice):
    client = httpx.Client(base_url=server.url)
    client.post("/auth/jwt/create/", json={"username": alice.username, "password": alice.password})
    refused = client.post("/api/chats/")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    xsrf = "2|abcd1234|" + "0" * 40 + "|" + str(int(time.time()))
    client.cookies.set("_xsrf", xsrf)
    allowed = client.post("/api/chats/", headers={"X-XSRFToken": xsrf})
    assert allowed.status_code == 200, allowed.text
