"""Accounts people manage (issue 24): profile and picture, password change and
reset (mail through a local aiosmtpd), leaving; checked over HTTP, on sockets
and in MongoDB directly."""

from __future__ import annotations

import asyncio
import datetime
import email
import io
import re

import pytest
import websockets
from bson import ObjectId
from PIL import Image

from tests.conftest import serve
from tests.helpers import Api, next_frame, two_members, wait_until
from tests.mailbox import smtp_inbox


@pytest.fixture(scope="module")
def inbox():
    with smtp_inbox() as running:
        yield running


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, tmp_path_factory, inbox):
    """One process, open sign-up, mail to the local SMTP server."""
    yield from serve(mongo_base, amqp_url, tmp_path_factory, smtp_host="127.0.0.1",
                     smtp_port=inbox[1], smtp_security="none", smtp_from="chat@example.test",
                     public_url="http://chat.example.test", password_reset_per_account_per_hour=2)


def set_in_the_past(collection, condition: dict, field: str, **ago) -> None:
    """Move a stored time back by hand. Whole documents are replaced: nx-27017
    stores a datetime given to $set as a string."""
    for doc in collection.find(condition):
        doc[field] = datetime.datetime.now(datetime.UTC) - datetime.timedelta(**ago)
        collection.replace_one({"_id": doc["_id"]}, doc)


def png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def with_email(api: Api) -> Api:
    address = f"{api.username}@example.test"
    assert api.request("PATCH", "/auth/me/", json={"email": address}).status_code == 200
    return api


def me(api: Api) -> dict:
    reply = api.request("GET", "/auth/me/")
    assert reply.status_code == 200, reply.text
    return reply.json()


def members(api: Api, uri: str) -> dict[str, dict]:
    reply = api.request("GET", f"/api/chats/{uri}/")
    assert reply.status_code == 200, reply.text
    return {m["id"]: m for m in reply.json()["members"]}


# Profile ------------------------------------------------------------------

def test_profile_fields_are_checked_and_named(server):
    api = Api(server.url).signup()
    for body, field in [({"display_name": "x" * 65}, "display_name"),
                        ({"display_name": "   "}, "display_name"),
                        ({"display_name": 7}, "display_name"),
                        ({"email": "not an email"}, "email"),
                        ({"avatar": "some-file-id"}, "avatar")]:
        reply = api.request("PATCH", "/auth/me/", json=body)
        assert reply.status_code == 400 and field in reply.json(), (body, reply.text)
    assert me(api)["display_name"] == "" and me(api)["avatar"] is None


def test_a_changed_name_reaches_other_members_live_and_a_fresh_fetch_agrees(server):
    alice, bob, uri = two_members(server.url)
    before = members(bob, uri)
    since = 1  # bob's join

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=since)) as ws:
            await next_frame(ws, "ready")
            reply = alice.request("PATCH", "/auth/me/", json={"display_name": "Alice Liddell"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["display_name"] == "Alice Liddell"
            return await next_frame(ws, "profile")

    event = asyncio.run(scenario())
    assert event["user"] == {"id": alice.user["id"], "username": alice.username,
                             "display_name": "Alice Liddell", "avatar": None}
    # What bob fetched before, with the event applied, is what a fresh fetch shows.
    before[alice.user["id"]].update(display_name=event["user"]["display_name"],
                                    avatar=event["user"]["avatar"])
    assert members(bob, uri) == before
    # Posts carry the author as they are now; the event is replayed by seq.
    assert alice.post(uri, "hi")["user"]["display_name"] == "Alice Liddell"
    replay = bob.history(uri, after=since, events=1)["messages"]
    assert [e["type"] for e in replay] == ["profile", "message"]


def test_a_picture_is_checked_by_content_reencoded_and_served_safely(server, db):
    api = Api(server.url).signup()
    hostile = {
        "html": b"<html><script>alert(1)</script></html>",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "png magic then garbage": b"\x89PNG\r\n\x1a\n" + b"<script>alert(1)</script>" * 4,
        "truncated gif": b"GIF89a\x01\x00",
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj",
        "empty": b"",
    }
    for name, body in hostile.items():
        reply = api.request("PUT", "/auth/me/avatar/", content=body,
                            headers={"Content-Type": "image/png"})
        assert reply.status_code == 400 and "avatar" in reply.json(), (name, reply.text)
    too_big = api.request("PUT", "/auth/me/avatar/", content=b"\x89PNG" + b"0" * 600_000)
    assert too_big.status_code == 413
    # A large image is stored as a small PNG, whatever the upload's type.
    out = io.BytesIO()
    Image.new("RGB", (1000, 500), (0, 90, 200)).save(out, "JPEG")
    reply = api.request("PUT", "/auth/me/avatar/", content=out.getvalue())
    assert reply.status_code == 200, reply.text
    url = reply.json()["avatar"]
    assert re.fullmatch(r"/api/avatars/[0-9a-f]{24}/[0-9a-f]{12}/", url)
    served = api.http.get(url)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served.headers["Content-Security-Policy"]
    assert Image.open(io.BytesIO(served.content)).size == (256, 128)
    # A new picture replaces it: the old URL is gone.
    again = api.request("PUT", "/auth/me/avatar/", content=png())
    assert again.status_code == 200, again.text
    assert api.http.get(again.json()["avatar"]).status_code == 200
    assert api.http.get(url).status_code == 404
    url = again.json()["avatar"]
    # Removed: the profile says none, and the old URL is gone.
    assert api.request("PATCH", "/auth/me/", json={"avatar": None}).json()["avatar"] is None
    assert api.http.get(url).status_code == 404
    assert db.avatars.count_documents({"user_id": api.user["id"]}) == 0


def test_a_picture_can_be_an_image_uploaded_to_a_chat(server):
    api, other = Api(server.url).signup(), Api(server.url).signup()
    uri = api.new_chat()

    def upload(who: Api, body: bytes, name: str) -> str:
        reply = who.request("POST", f"/api/chats/{uri}/files/?name={name}", content=body)
        assert reply.status_code == 201, reply.text
        return reply.json()["id"]

    other.join(uri)
    picture = upload(api, png((600, 300)), "me.png")
    text = upload(api, b"just words", "notes.txt")
    theirs = upload(other, png(), "theirs.png")
    for bad in (text, theirs, "0" * 24, "not-an-id"):
        reply = api.request("PATCH", "/auth/me/", json={"avatar": bad})
        assert reply.status_code == 400 and "avatar" in reply.json(), (bad, reply.text)
    reply = api.request("PATCH", "/auth/me/", json={"avatar": picture, "display_name": "Me"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["display_name"] == "Me"
    served = api.http.get(reply.json()["avatar"])
    assert served.status_code == 200 and Image.open(io.BytesIO(served.content)).size == (256, 128)


# Passwords ----------------------------------------------------------------

def test_changing_the_password_revokes_every_other_token(server):
    api = Api(server.url).signup()
    other = Api(server.url, api.username, api.password).login()
    for body, field in [({"old_password": "wrong-password", "new_password": "a-good-one-1"},
                         "old_password"),
                        ({"old_password": api.password, "new_password": "short"}, "new_password"),
                        ({"old_password": api.password, "new_password": "a" * 12}, "new_password"),
                        ({"old_password": api.password, "new_password": api.username},
                         "new_password"),
                        ({"old_password": api.password, "new_password": "é" * 40}, "new_password"),
                        ({"old_password": api.password}, "new_password")]:
        reply = api.request("POST", "/auth/password/", json=body)
        assert reply.status_code == 400 and field in reply.json(), (body, reply.text)
    assert other.request("GET", "/auth/me/").status_code == 200
    reply = api.request("POST", "/auth/password/",
                        json={"old_password": api.password, "new_password": "a-good-one-1"})
    assert reply.status_code == 204, reply.text
    assert api.request("GET", "/auth/me/").status_code == 200
    assert other.request("GET", "/auth/me/").status_code == 401
    api.password = "a-good-one-1"
    api.login()


def test_sign_out_of_other_devices_keeps_this_one(server):
    api = Api(server.url).signup()
    other = Api(server.url, api.username, api.password).login()
    assert api.request("POST", "/auth/sessions/others/").status_code == 204
    assert api.request("GET", "/auth/me/").status_code == 200
    assert other.request("GET", "/auth/me/").status_code == 401


def reset_token(mail: email.message.Message) -> str:
    return re.search(r"#reset=([\w-]+)", mail.get_payload()).group(1)


def test_a_forgotten_password_is_reset_once_by_the_mailed_link(server, inbox, db):
    handler, _ = inbox
    api = with_email(Api(server.url).signup())
    stranger = api.http.post("/auth/password/reset/", json={"username": "nobody-" + api.username})
    asked = api.http.post("/auth/password/reset/", json={"email": api.username.upper() + "@EXAMPLE.test"})
    assert stranger.status_code == asked.status_code == 202
    assert stranger.json() == asked.json()
    assert api.http.post("/auth/password/reset/", json={}).status_code == 400
    mail = handler.wait_for(f"{api.username}@example.test")[0]
    assert mail["From"] == "chat@example.test"
    assert "http://chat.example.test/#reset=" in mail.get_payload()
    token = reset_token(mail)
    assert db.password_resets.count_documents({"user_id": api.user["id"]}) == 1
    assert db.password_resets.count_documents({"_id": token}) == 0  # stored hashed

    confirm = {"token": token, "new_password": "x"}
    weak = api.http.post("/auth/password/reset/confirm/", json=confirm)
    assert weak.status_code == 400 and "new_password" in weak.json()
    confirm["new_password"] = "brand-new-secret"
    assert api.http.post("/auth/password/reset/confirm/", json=confirm).status_code == 204
    again = api.http.post("/auth/password/reset/confirm/", json=confirm)
    assert again.status_code == 400 and "token" in again.json()
    assert api.request("GET", "/auth/me/").status_code == 401  # every token revoked
    api.password = "brand-new-secret"
    api.login()

    # Expired after 30 minutes: the clock is moved by hand in MongoDB.
    api.http.post("/auth/password/reset/", json={"username": api.username})
    token = reset_token(handler.wait_for(f"{api.username}@example.test", 2)[1])
    set_in_the_past(db.password_resets, {"user_id": api.user["id"]}, "expires", seconds=1)
    late = api.http.post("/auth/password/reset/confirm/",
                         json={"token": token, "new_password": "another-secret-1"})
    assert late.status_code == 400 and "token" in late.json()


def test_resets_are_limited_per_account_and_per_address(server, inbox, start_server):
    handler, _ = inbox
    # Per account (2 an hour here), however it is named: the third ask gets the
    # same 202, and no mail.
    api = with_email(Api(server.url).signup())
    for body in ({"username": api.username}, {"email": f"{api.username}@example.test"},
                 {"username": api.username.upper()}):
        assert api.http.post("/auth/password/reset/", json=body).status_code == 202
    handler.wait_for(f"{api.username}@example.test", 2)
    wait_until(lambda: f"password reset for user {api.user['id']} not sent" in
               server.log_path.read_text(), 10, "the third reset refused")
    assert len(handler.wait_for(f"{api.username}@example.test", 2)) == 2
    # Per address: 429 past the limit.
    strict = start_server(password_reset_per_ip_per_hour=2)
    answers = [Api(strict.url).http.post("/auth/password/reset/", json={"username": "x"}).status_code
               for _ in range(3)]
    assert answers == [202, 202, 429]


# Leaving ------------------------------------------------------------------

def test_deleting_an_account_erases_it_and_keeps_its_messages(server, db):
    alice, bob, uri = two_members(server.url)
    with_email(bob)
    bob.request("PUT", "/auth/me/avatar/", content=png())
    bob.request("PATCH", "/auth/me/", json={"display_name": "Bob B"})
    posted = bob.post(uri, "bob was here")
    bob_uri = bob.new_chat()
    db.push_subscriptions.insert_one({"user_id": bob.user["id"], "endpoint": "https://push"})
    db.blocks.insert_one({"user_id": bob.user["id"], "blocked_id": alice.user["id"]})

    wrong = bob.request("DELETE", "/auth/me/", json={"password": "not-it"})
    assert wrong.status_code == 400 and "password" in wrong.json()
    assert bob.request("DELETE", "/auth/me/", json={"password": bob.password}).status_code == 204
    assert bob.request("GET", "/auth/me/").status_code == 401
    assert bob.http.post("/auth/jwt/create/", json={"username": bob.username,
                                                    "password": bob.password}).status_code == 400

    bob_id = bob.user["id"]
    doc = db.users.find_one({"_id": ObjectId(bob_id)})
    assert doc["email"] == "" and "display_name" not in doc and "avatar" not in doc
    assert not doc["active"] and doc["deleted"]
    assert db.tokens.count_documents({"user_id": bob_id}) == 0
    assert db.avatars.count_documents({"user_id": bob_id}) == 0
    assert db.push_subscriptions.count_documents({"user_id": bob_id}) == 0
    assert db.blocks.count_documents({"user_id": bob_id}) == 0
    assert db.rooms.count_documents({"members": bob_id}) == 0
    for room in (uri, bob_uri):
        assert db.messages.count_documents({"room": room, "type": "member", "op": "leave",
                                            "user.id": bob_id}) == 1
    message = db.messages.find_one({"_id": ObjectId(posted["id"])})
    assert message["message"] == "bob was here"
    assert message["user"] == {"id": bob_id, "username": "Deleted user", "first_name": "",
                               "last_name": ""}
    shown = [m for m in alice.history(uri)["messages"] if m["id"] == posted["id"]]
    assert shown[0]["user"]["username"] == "Deleted user"
    # Nobody can add the deleted account to a chat by its old name.
    added = alice.request("PATCH", f"/api/chats/{uri}/", json={"username": bob.username})
    assert added.status_code == 400 and "username" in added.json()

    # The username is kept for username_reuse_days, then free.
    again = bob.http.post("/auth/users/create/", json={"username": bob.username,
                                                       "password": "pass-word-2"})
    assert again.status_code == 400 and "username" in again.json()
    month_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=31)
    db.users.update_one({"_id": ObjectId(bob_id)}, {"$set": {"deleted": month_ago.timestamp()}})
    again = bob.http.post("/auth/users/create/", json={"username": bob.username,
                                                       "password": "pass-word-2"})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != bob_id
