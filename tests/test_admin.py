"""The operator (issue 24): admins, sign-up policy and invites, users and
deactivation (a socket on another process closes within 2 s), stats, the
audit log, and account_deletion: erase."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import serve
from tests.helpers import Api, next_frame, two_members, wait_until
from tests.test_accounts import set_in_the_past

ADMIN_PATHS = [("GET", "/api/admin/invites/"), ("POST", "/api/admin/invites/"),
               ("DELETE", "/api/admin/invites/abc/"), ("GET", "/api/admin/users/"),
               ("PATCH", "/api/admin/users/someone/"), ("GET", "/api/admin/stats/"),
               ("GET", "/api/admin/audit/")]
LOGIN_FAILED = {"non_field_errors": ["Unable to log in with provided credentials."]}


@pytest.fixture(scope="module")
def open_server(mongo_base, amqp_url, tmp_path_factory):
    """Open sign-up, no admins configured: the first account is the admin."""
    yield from serve(mongo_base, amqp_url, tmp_path_factory)


@pytest.fixture(scope="module")
def first_admin(open_server) -> Api:
    return Api(open_server.url).signup()


@pytest.fixture(scope="module")
def invite_server(mongo_base, amqp_url, tmp_path_factory):
    yield from serve(mongo_base, amqp_url, tmp_path_factory, signup="invite", admins="boss,chief",
                     account_deletion="erase")


@pytest.fixture(scope="module")
def invite_db(invite_server):
    client = MongoClient(invite_server.mongo_url)
    yield client.get_default_database()
    client.close()


def me(api: Api) -> dict:
    return api.request("GET", "/auth/me/").json()


def sign_up(base_url: str, username: str, invite: str | None = None) -> httpx.Response:
    body = {"username": username, "password": "pass-word-1"}
    if invite is not None:
        body["invite"] = invite
    return httpx.post(f"{base_url}/auth/users/create/", json=body)


def patch_user(by: Api, username: str, **body) -> httpx.Response:
    return by.request("PATCH", f"/api/admin/users/{username}/", json=body)


def test_the_first_account_is_the_admin_and_nobody_else_may_act(open_server, first_admin):
    assert me(first_admin)["admin"] is True
    someone = Api(open_server.url).signup()
    assert me(someone)["admin"] is False
    for method, path in ADMIN_PATHS:
        assert someone.request(method, path, json={}).status_code == 403, path
        assert httpx.request(method, open_server.url + path, json={}).status_code == 401, path


def test_the_last_admin_is_never_removed(open_server, first_admin):
    other = Api(open_server.url).signup()
    for body, field in [({"admin": False}, "admin"), ({"active": False}, "active")]:
        reply = patch_user(first_admin, first_admin.username, **body)
        assert reply.status_code == 400 and field in reply.json(), reply.text
    assert patch_user(first_admin, "nobody-at-all", admin=True).status_code == 404
    assert patch_user(first_admin, other.username, admin="yes").status_code == 400
    assert patch_user(first_admin, other.username, admin=True).json()["admin"] is True
    assert patch_user(other, first_admin.username, admin=False).json()["admin"] is False
    reply = patch_user(other, other.username, admin=False)
    assert reply.status_code == 400 and "admin" in reply.json()
    assert patch_user(other, first_admin.username, admin=True).status_code == 200
    audit = first_admin.request("GET", "/api/admin/audit/").json()["results"]
    assert [(e["by"]["username"], e["action"], e["target"]) for e in audit[:3]] == [
        (other.username, "user.admin", first_admin.username),
        (other.username, "user.unadmin", first_admin.username),
        (first_admin.username, "user.admin", other.username)]


def test_users_are_listed_searched_and_paged(open_server, first_admin):
    prefix = f"zz{time.time_ns() % 10**8}"
    made = [Api(open_server.url, f"{prefix}{n}").signup() for n in range(3)]
    made[1].request("PATCH", "/auth/me/", json={"display_name": "Middle One"})
    page = first_admin.request("GET", "/api/admin/users/", params={"q": prefix.upper()}).json()
    assert [u["username"] for u in page["results"]] == [a.username for a in made]
    assert page["next"] is None
    first = page["results"][0]
    assert set(first) == {"id", "username", "display_name", "email", "created", "last_seen",
                          "active", "admin"}
    assert first["active"] is True and first["last_seen"]
    after = first_admin.request("GET", "/api/admin/users/",
                                params={"q": prefix, "cursor": made[0].username}).json()
    assert [u["username"] for u in after["results"]] == [a.username for a in made[1:]]
    by_name = first_admin.request("GET", "/api/admin/users/", params={"q": "middle"}).json()
    assert made[1].username in [u["username"] for u in by_name["results"]]


def test_a_deactivated_account_is_refused_like_a_wrong_password(open_server, first_admin):
    alice, bob, uri = two_members(open_server.url)
    posted = bob.post(uri, "still here")
    reply = patch_user(first_admin, bob.username, active=False)
    assert reply.status_code == 200 and reply.json()["active"] is False
    assert bob.request("GET", "/auth/me/").status_code == 401
    refused = httpx.post(f"{open_server.url}/auth/jwt/create/",
                         json={"username": bob.username, "password": bob.password})
    assert (refused.status_code, refused.json()) == (400, LOGIN_FAILED)
    assert posted["id"] in [m["id"] for m in alice.history(uri)["messages"]]
    assert patch_user(first_admin, bob.username, active=True).json()["active"] is True
    bob.login()
    actions = [e["action"] for e in
               first_admin.request("GET", "/api/admin/audit/").json()["results"][:2]]
    assert actions == ["user.activate", "user.deactivate"]


def test_stats_count_users_rooms_messages_and_sockets(open_server, first_admin):
    alice, _, uri = two_members(open_server.url)
    alice.post(uri, "counted")

    async def scenario():
        async with websockets.connect(alice.ws_url(uri, since=0)) as ws:
            await next_frame(ws, "ready")
            return first_admin.request("GET", "/api/admin/stats/").json()

    stats = asyncio.run(scenario())
    assert stats["users"]["total"] >= 3 and stats["users"]["active_24h"] >= 3
    assert stats["rooms"] >= 1 and stats["messages"] >= 1
    assert stats["files"] == 0 and stats["file_bytes"] == 0
    assert stats["sockets"]["total"] >= 1
    assert sum(stats["sockets"]["per_process"].values()) == stats["sockets"]["total"]


# Sign-up by invite --------------------------------------------------------

def test_sign_up_by_invite(invite_server, invite_db):
    url = invite_server.url
    assert "invite" in sign_up(url, "walk-in").json()
    assert "invite" in sign_up(url, "walk-in", "made-up-code").json()
    assert sign_up(url, "boss").status_code == 201  # named in admins: no invite needed
    boss = Api(url, "boss").login()
    assert me(boss)["admin"] is True
    bad = boss.request("POST", "/api/admin/invites/", json={"uses": 0})
    assert bad.status_code == 400 and "uses" in bad.json()
    invite = boss.request("POST", "/api/admin/invites/", json={"uses": 2}).json()
    assert invite["url"] == f"{url}/?invite={invite['code']}"
    assert sign_up(url, "boss", invite["code"]).status_code == 400  # taken: the use is given back
    assert sign_up(url, "first-guest", invite["code"]).status_code == 201
    assert sign_up(url, "second-guest", invite["code"]).status_code == 201
    assert "invite" in sign_up(url, "third-guest", invite["code"]).json()
    listed = {i["code"]: i for i in boss.request("GET", "/api/admin/invites/").json()}
    assert listed[invite["code"]]["uses_left"] == 0

    revoked = boss.request("POST", "/api/admin/invites/", json={}).json()
    assert boss.request("DELETE", f"/api/admin/invites/{revoked['code']}/").status_code == 204
    assert boss.request("DELETE", f"/api/admin/invites/{revoked['code']}/").status_code == 404
    assert "invite" in sign_up(url, "late-guest", revoked["code"]).json()
    expired = boss.request("POST", "/api/admin/invites/", json={"expires_in_hours": 1}).json()
    set_in_the_past(invite_db.invites, {"_id": expired["code"]}, "expires", seconds=1)
    assert "invite" in sign_up(url, "late-guest", expired["code"]).json()

    demoted = patch_user(boss, "boss", admin=False)
    assert demoted.status_code == 400 and "admin" in demoted.json()
    assert [e["action"] for e in boss.request("GET", "/api/admin/audit/").json()["results"]] == [
        "invite.create", "invite.delete", "invite.create", "invite.create"]


def test_closed_sign_up_admits_only_the_named_admins(start_server):
    closed = start_server(signup="closed", admins="chief")
    assert sign_up(closed.url, "anyone").status_code == 403
    assert sign_up(closed.url, "chief").status_code == 201


def test_erasing_deletion_leaves_tombstones(invite_server, invite_db):
    assert sign_up(invite_server.url, "chief").status_code == 201
    chief = Api(invite_server.url, "chief").login()
    code = chief.request("POST", "/api/admin/invites/", json={"uses": 2}).json()["code"]
    names = [f"erase-{n}-{time.time_ns() % 10**8}" for n in range(2)]
    for name in names:
        assert sign_up(invite_server.url, name, code).status_code == 201
    alice, bob = (Api(invite_server.url, name).login() for name in names)
    uri = alice.new_chat()
    bob.join(uri)
    posted = bob.post(uri, "secret words")
    edited = bob.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                         json={"message": "more secret words"})
    assert edited.status_code == 200, edited.text
    assert bob.request("DELETE", "/auth/me/", json={"password": bob.password}).status_code == 204
    message = invite_db.messages.find_one({"_id": ObjectId(posted["id"])})
    assert message["message"] == "" and message["deleted"]
    assert message["user"]["username"] == "Deleted user"
    assert invite_db.messages.count_documents({"room": uri, "type": "edit",
                                               "message": {"$exists": True}}) == 0
    assert invite_db.messages.count_documents({"message": {"$regex": "secret"}}) == 0


# Two processes ------------------------------------------------------------

async def closed_within(ws, seconds: float) -> int:
    """The close code of a socket that must close within `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while True:
            await asyncio.wait_for(ws.recv(), max(0.01, deadline - asyncio.get_running_loop().time()))
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code


def test_password_change_and_deactivation_close_sockets_on_the_other_process(two_servers):
    first, second = two_servers
    admin = Api(first.url).signup()
    alice, bob, uri = two_members(first.url)
    other_device = Api(first.url, bob.username, bob.password).login()

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0, base_url=second.url)) as kept, \
                websockets.connect(other_device.ws_url(uri, since=0, base_url=second.url)) as cut:
            await next_frame(kept, "ready")
            await next_frame(cut, "ready")
            # The stats count the sockets of every process on the broker that
            # answers in time (under load, a later ask): both sockets are on the second.
            def census():
                counted = admin.request("GET", "/api/admin/stats/").json()["sockets"]["per_process"]
                return {int(name.split(":")[-2]): n for name, n in counted.items()}
            ports = wait_until(lambda: (found := census()).keys() >= {first.port, second.port}
                               and found, 10, "both processes counted")
            assert (ports[first.port], ports[second.port]) == (0, 2)
            reply = bob.request("POST", "/auth/password/", json={
                "old_password": bob.password, "new_password": "new-pass-word-1"})
            assert reply.status_code == 204, reply.text
            assert await closed_within(cut, 2) == 1008
            # The caller's own token and socket keep working.
            alice.post(uri, "still with you")
            assert (await next_frame(kept, "message"))["message"] == "still with you"
            assert patch_user(admin, bob.username, active=False).status_code == 200
            assert await closed_within(kept, 2) == 1008
    asyncio.run(scenario())
    assert bob.request("GET", "/auth/me/").status_code == 401
    assert Api(second.url, bob.username, "new-pass-word-1").http.post(
        "/auth/jwt/create/", json={"username": bob.username,
                                   "password": "new-pass-word-1"}).status_code == 400
