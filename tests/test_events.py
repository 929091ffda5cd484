"""Edits, deletes, reactions, leaving and moderation: room events on one real
server process (RabbitMQ, the MongoDB wire server)."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse

import pytest
import websockets
from bson import ObjectId
from websockets.exceptions import ConnectionClosed

from tests.helpers import (
    Api,
    next_frame,
    probe_joined,
    refused_status,
    server_in_thread,
)

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics


def emoji_path(uri: str, message_id: str, emoji: str) -> str:
    return f"/api/chats/{uri}/messages/{message_id}/reactions/{urllib.parse.quote(emoji)}/"


def events(api: Api, uri: str, after: int = 0) -> list[dict]:
    return api.history(uri, after=after, events=1, limit=200)["messages"]


def current(api: Api, uri: str, message_id: str) -> dict:
    return next(m for m in api.history(uri, limit=200)["messages"] if m["id"] == message_id)


# The frames of the room's log, and ready; not signals (presence, typing, read).
LOG_FRAMES = {"message", "edit", "delete", "reaction", "member", "ready"}


async def frames_until(ws, kind: str, wait: float = 5) -> list[dict]:
    """Every frame of the log up to and including the next of `kind`."""
    frames = []
    while True:
        frame = await next_frame(ws, wait=wait)
        if frame["type"] in LOG_FRAMES:
            frames.append(frame)
            if frame["type"] == kind:
                return frames


async def no_more_log_frames(ws, wait: float) -> None:
    with pytest.raises(asyncio.TimeoutError):
        while True:
            if (await next_frame(ws, wait=wait))["type"] in LOG_FRAMES:
                return


# Edits ---------------------------------------------------------------------

def test_edits_change_the_message_in_place_and_are_events_of_their_own(room):
    alice, bob, uri = room
    posted = alice.post(uri, "helo")
    assert posted["last_event_seq"] == posted["seq"] and "version" not in posted

    first = alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                          json={"message": "hello"})
    assert first.status_code == 200, first.text
    assert first.json()["message"] == "hello" and first.json()["version"] == 1
    second = alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                           data={"message": "hello!"}).json()  # a form works too
    assert second["version"] == 2 and second["edited"] >= first.json()["edited"]
    assert second["id"] == posted["id"] and second["seq"] == posted["seq"]

    shown = current(bob, uri, posted["id"])
    assert shown["message"] == "hello!" and shown["version"] == 2
    log = events(bob, uri)
    assert [e["type"] for e in log] == ["member", "message", "edit", "edit"]
    assert [e["seq"] for e in log] == [1, 2, 3, 4]
    assert shown["last_event_seq"] == 4
    edit = log[3]
    assert {k: edit[k] for k in ("id", "target_seq", "message", "version")} == {
        "id": posted["id"], "target_seq": posted["seq"], "message": "hello!", "version": 2}
    assert edit["user"]["username"] == alice.username and edit["edited"]
    # The same text again changes nothing and makes no event.
    same = alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                         json={"message": "hello!"})
    assert same.status_code == 200 and same.json()["version"] == 2
    assert len(events(bob, uri)) == 4


def test_who_may_edit_and_what_is_refused(server, room):
    alice, bob, uri = room
    mine = alice.post(uri, "alice's")
    other_room = alice.new_chat()
    elsewhere = alice.post(other_room, "in another room")
    stranger = Api(server.url).signup()

    def edit(api: Api, message_id: str, body, room_uri: str = uri):
        return api.request("PATCH", f"/api/chats/{room_uri}/messages/{message_id}/", json=body)

    assert edit(bob, mine["id"], {"message": "bob's now"}).status_code == 403
    assert edit(stranger, mine["id"], {"message": "x"}).status_code == 403
    # Another room's message through this room's URL: as if it did not exist.
    assert edit(alice, elsewhere["id"], {"message": "x"}).status_code == 404
    for missing in ("0" * 24, "not-an-id", "zz" * 12):
        assert edit(alice, missing, {"message": "x"}).status_code == 404
    for body, field in (({}, "message"), ({"message": ""}, "message"),
                        ({"message": 5}, "message"), ({"message": "x" * 2001}, "message")):
        reply = edit(alice, mine["id"], body)
        assert reply.status_code == 400 and field in reply.json(), reply.text
    assert alice.request("PATCH", f"/api/chats/{uri}/messages/{mine['id']}/",
                         content=b"[1]", headers={"Content-Type": "application/json"}
                         ).status_code == 400
    assert current(alice, uri, mine["id"])["message"] == "alice's"


# Deletes -------------------------------------------------------------------

def test_a_deleted_message_keeps_its_seq_and_loses_its_text_everywhere(room, db):
    alice, bob, uri = room
    posted = alice.post(uri, "secret draft one")
    alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                  json={"message": "secret draft two"})
    alice.post(uri, "stays")

    reply = alice.request("DELETE", f"/api/chats/{uri}/messages/{posted['id']}/")
    assert reply.status_code == 204
    shown = current(bob, uri, posted["id"])
    assert shown["deleted"] is True and shown["message"] == ""
    assert shown["seq"] == posted["seq"] and shown["id"] == posted["id"]
    delete = events(bob, uri)[-1]
    assert delete["type"] == "delete" and delete["id"] == posted["id"]
    assert delete["target_seq"] == posted["seq"] and delete["by"]["username"] == alice.username
    assert "message" not in delete
    # Gone from MongoDB itself: the message and every earlier version of it.
    stored = list(db.messages.find({"room": uri}))
    assert "secret" not in repr(stored)
    assert any(doc.get("message") == "stays" for doc in stored)
    assert db.messages.find_one({"_id": ObjectId(posted["id"])})["deleted"]
    # Deleting again is fine; editing or reacting to it is not.
    assert alice.request("DELETE", f"/api/chats/{uri}/messages/{posted['id']}/").status_code == 204
    assert alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                         json={"message": "back"}).status_code == 404
    assert bob.request("PUT", emoji_path(uri, posted["id"], "👍")).status_code == 404
    assert [e["type"] for e in events(bob, uri)].count("delete") == 1


def test_members_delete_their_own_and_the_owner_and_moderators_anyones(server, room):
    alice, bob, uri = room
    carol = Api(server.url).signup()
    carol.join(uri)
    alices, bobs, carols = (api.post(uri, f"by {api.username}") for api in (alice, bob, carol))

    def delete(api: Api, message: dict) -> int:
        return api.request("DELETE", f"/api/chats/{uri}/messages/{message['id']}/").status_code

    assert delete(bob, alices) == 403
    assert delete(bob, carols) == 403
    assert delete(bob, bobs) == 204
    assert delete(alice, carols) == 204  # the owner
    carols_second = carol.post(uri, "again")
    reply = alice.request("PUT", f"/api/chats/{uri}/members/{bob.username}/",
                          json={"role": "moderator"})
    assert reply.status_code == 204
    assert delete(bob, carols_second) == 204  # a moderator
    assert delete(carol, alices) == 403
    assert not current(alice, uri, alices["id"]).get("deleted")


# Reactions -----------------------------------------------------------------

def test_reactions_are_toggled_per_user_and_counted(room):
    alice, bob, uri = room
    posted = alice.post(uri, "react to me")
    path = emoji_path(uri, posted["id"], "👍")
    assert alice.request("PUT", path).status_code == 204
    assert bob.request("PUT", path).status_code == 204
    assert bob.request("PUT", path).status_code == 204  # again: nothing changes
    assert bob.request("PUT", emoji_path(uri, posted["id"], "❤")).status_code == 204
    shown = current(alice, uri, posted["id"])
    # "❤" is stored in its fully qualified form, so "❤" and "❤️" are one reaction
    assert shown["reactions"] == {"👍": [alice.username, bob.username], "❤️": [bob.username]}
    assert alice.request("DELETE", path).status_code == 204
    assert alice.request("DELETE", path).status_code == 204
    assert current(bob, uri, posted["id"])["reactions"] == {"👍": [bob.username],
                                                            "❤️": [bob.username]}
    reactions = [e for e in events(alice, uri) if e["type"] == "reaction"]
    assert [(e["emoji"], e["op"], e["user"]["username"]) for e in reactions] == [
        ("👍", "add", alice.username), ("👍", "add", bob.username), ("❤️", "add", bob.username),
        ("👍", "remove", alice.username)]
    assert all(e["id"] == posted["id"] and e["target_seq"] == posted["seq"] for e in reactions)
    assert current(alice, uri, posted["id"])["last_event_seq"] == reactions[-1]["seq"]


@pytest.mark.parametrize("emoji", ["a", "👍👍", "%20", "x" * 100, "%F0%9F", "<b>"])
def test_a_reaction_must_be_one_emoji(room, emoji):
    alice, _, uri = room
    posted = alice.post(uri, "hi")
    path = f"/api/chats/{uri}/messages/{posted['id']}/reactions/{emoji}/"
    for method in ("PUT", "DELETE"):
        reply = alice.request(method, path)
        assert reply.status_code == 400 and "emoji" in reply.json(), reply.text


def test_reactions_on_messages_elsewhere_or_by_strangers_are_refused(server, room):
    alice, bob, uri = room
    elsewhere = alice.post(alice.new_chat(), "other room")
    stranger = Api(server.url).signup()
    posted = alice.post(uri, "hi")
    assert bob.request("PUT", emoji_path(uri, elsewhere["id"], "👍")).status_code == 404
    assert stranger.request("PUT", emoji_path(uri, posted["id"], "👍")).status_code == 403
    assert bob.request("PUT", emoji_path(uri, "f" * 24, "👍")).status_code == 404
    assert Api(server.url).request("PUT", emoji_path(uri, posted["id"], "👍")).status_code == 401


# Membership ----------------------------------------------------------------

def test_members_leave_and_the_owner_cannot_without_handing_over(server, room):
    alice, bob, uri = room
    assert alice.request("DELETE", f"/api/chats/{uri}/members/{alice.username}/").status_code == 403
    assert bob.request("DELETE", f"/api/chats/{uri}/members/{bob.username}/").status_code == 204
    assert bob.request("GET", f"/api/chats/{uri}/").status_code == 403
    assert bob.request("POST", f"/api/chats/{uri}/messages/", json={"message": "x"}).status_code == 403
    assert bob.request("DELETE", f"/api/chats/{uri}/members/{bob.username}/").status_code == 403
    bob.join(uri)  # left of their own accord: the link still works

    # Handing the room over: bob owns it, alice is a moderator and may leave.
    reply = alice.request("PUT", f"/api/chats/{uri}/members/{bob.username}/", json={"role": "owner"})
    assert reply.status_code == 204
    room_view = bob.request("GET", f"/api/chats/{uri}/").json()
    assert room_view["owner"]["username"] == bob.username
    assert {m["username"]: m["role"] for m in room_view["members"]} == {
        alice.username: "moderator", bob.username: "owner"}
    assert alice.request("DELETE", f"/api/chats/{uri}/members/{alice.username}/").status_code == 204
    ops = [(e["op"], e["user"]["username"], e["by"]["username"], e.get("role"))
           for e in events(bob, uri)]
    assert ops == [("join", bob.username, bob.username, None),
                   ("leave", bob.username, bob.username, None),
                   ("join", bob.username, bob.username, None),
                   ("role", bob.username, alice.username, "owner"),
                   ("leave", alice.username, alice.username, None)]


def test_roles_and_who_may_remove_whom(server, room):
    alice, bob, uri = room
    carol, dave = Api(server.url).signup(), Api(server.url).signup()
    carol.join(uri)
    dave.join(uri)

    def role(actor: Api, target: Api, value) -> int:
        return actor.request("PUT", f"/api/chats/{uri}/members/{target.username}/",
                             json={"role": value}).status_code

    def remove(actor: Api, target: Api) -> int:
        return actor.request("DELETE", f"/api/chats/{uri}/members/{target.username}/").status_code

    assert role(bob, carol, "moderator") == 403  # only the owner sets roles
    assert role(alice, bob, "admin") == 400
    assert role(alice, bob, None) == 400
    assert role(alice, Api(server.url).signup(), "moderator") == 404  # not a member
    assert role(alice, bob, "moderator") == 204
    assert role(alice, bob, "moderator") == 204  # no change, no event
    assert remove(carol, dave) == 403  # members remove nobody
    assert remove(bob, alice) == 403  # nobody removes the owner
    assert role(alice, carol, "moderator") == 204
    assert remove(bob, carol) == 403  # a moderator removes members only
    assert remove(bob, dave) == 204
    assert remove(bob, dave) == 404  # not a member any more
    assert remove(alice, carol) == 204  # the owner removes a moderator
    assert role(alice, bob, "member") == 204
    assert remove(bob, alice) == 403
    view = alice.request("GET", f"/api/chats/{uri}/").json()
    assert {m["username"]: m["role"] for m in view["members"]} == {
        alice.username: "owner", bob.username: "member"}
    member_ops = [(e["op"], e["user"]["username"], e.get("role")) for e in events(alice, uri)]
    assert member_ops[-5:] == [("role", bob.username, "moderator"),
                               ("role", carol.username, "moderator"),
                               ("remove", dave.username, None), ("remove", carol.username, None),
                               ("role", bob.username, "member")]


def test_a_ban_refuses_every_path_until_lifted(server, room):
    alice, bob, uri = room
    posted = bob.post(uri, "before the ban")

    async def banned_socket_is_closed():
        async with websockets.connect(bob.ws_url(uri, since=0)) as b:
            await frames_until(b, "ready")
            reply = await asyncio.to_thread(alice.request, "POST", f"/api/chats/{uri}/bans/",
                                            json={"username": bob.username})
            assert reply.status_code == 204
            with pytest.raises(ConnectionClosed):
                while True:
                    await next_frame(b, wait=5)
            return b.close_code, b.close_reason

    assert asyncio.run(banned_socket_is_closed()) == (1008, "banned from the chat")
    refused = [
        bob.request("PATCH", f"/api/chats/{uri}/"),
        bob.request("GET", f"/api/chats/{uri}/"),
        bob.request("GET", f"/api/chats/{uri}/messages/"),
        bob.request("POST", f"/api/chats/{uri}/messages/", json={"message": "let me in"}),
        bob.request("PUT", emoji_path(uri, posted["id"], "👍")),
        bob.request("DELETE", f"/api/chats/{uri}/messages/{posted['id']}/"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert refused[0].json()["detail"] == "You are banned from this chat."
    assert asyncio.run(refused_status(bob.ws_url(uri, since=0))) == 403
    # The owner cannot add them by name either, until the ban is lifted.
    assert alice.request("PATCH", f"/api/chats/{uri}/", json={"username": bob.username}
                         ).status_code == 403
    view = alice.request("GET", f"/api/chats/{uri}/").json()
    assert [u["username"] for u in view["bans"]] == [bob.username]
    assert bob.username not in [m["username"] for m in view["members"]]

    assert alice.request("DELETE", f"/api/chats/{uri}/bans/{bob.username}/").status_code == 204
    assert alice.request("DELETE", f"/api/chats/{uri}/bans/{bob.username}/").status_code == 404
    bob.join(uri)
    assert bob.post(uri, "back again")["message"] == "back again"
    assert "bans" not in bob.request("GET", f"/api/chats/{uri}/").json()  # members do not see bans
    ops = [(e["op"], e["user"]["username"]) for e in events(alice, uri) if e["type"] == "member"]
    assert ops[-3:] == [("ban", bob.username), ("unban", bob.username), ("join", bob.username)]


def test_bans_are_for_the_owner_and_moderators_and_never_of_them(server, room):
    alice, bob, uri = room
    carol = Api(server.url).signup()
    carol.join(uri)

    def ban(actor: Api, username) -> int:
        return actor.request("POST", f"/api/chats/{uri}/bans/", json={"username": username}).status_code

    assert ban(bob, carol.username) == 403
    assert ban(alice, alice.username) == 403
    assert ban(alice, "nobody-by-this-name") == 400
    assert ban(alice, None) == 400
    assert alice.request("POST", f"/api/chats/{uri}/bans/", json=[]).status_code == 400
    assert alice.request("PUT", f"/api/chats/{uri}/members/{bob.username}/",
                         json={"role": "moderator"}).status_code == 204
    assert ban(bob, alice.username) == 403
    # A user who never joined can be banned ahead of time.
    outsider = Api(server.url).signup()
    assert ban(bob, outsider.username) == 204
    assert outsider.request("PATCH", f"/api/chats/{uri}/").status_code == 403
    assert bob.request("DELETE", f"/api/chats/{uri}/bans/{outsider.username}/").status_code == 204
    assert carol.request("DELETE", f"/api/chats/{uri}/bans/{outsider.username}/").status_code == 403


def test_a_locked_room_cannot_be_joined_by_link_but_members_can_be_added(server, room):
    alice, bob, uri = room
    carol, dave = Api(server.url).signup(), Api(server.url).signup()
    assert bob.request("PATCH", f"/api/chats/{uri}/", json={"locked": True}).status_code == 403
    assert alice.request("PATCH", f"/api/chats/{uri}/", json={"locked": "yes"}).status_code == 400
    reply = alice.request("PATCH", f"/api/chats/{uri}/", json={"locked": True})
    assert reply.status_code == 200 and reply.json()["locked"] is True
    refused = carol.request("PATCH", f"/api/chats/{uri}/")
    assert refused.status_code == 403 and "locked" in refused.json()["detail"]
    assert bob.request("PATCH", f"/api/chats/{uri}/").status_code == 200  # a member already
    added = alice.request("PATCH", f"/api/chats/{uri}/", json={"username": carol.username})
    assert added.status_code == 200 and added.json()["user"]["username"] == carol.username
    assert carol.post(uri, "added")["message"] == "added"
    assert alice.request("PATCH", f"/api/chats/{uri}/", json={"locked": False}).status_code == 200
    dave.join(uri)
    joins = [(e["user"]["username"], e["by"]["username"]) for e in events(alice, uri)
             if e["type"] == "member" and e["op"] == "join"]
    assert joins == [(bob.username, bob.username), (carol.username, alice.username),
                     (dave.username, dave.username)]


# The socket ------------------------------------------------------------------

def test_the_full_stream_gets_every_event_and_the_plain_stream_messages_only(room):
    alice, bob, uri = room

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0)) as full, \
                websockets.connect(bob.ws_url(uri)) as plain:
            await frames_until(full, "ready")
            await probe_joined(plain)
            posted = await asyncio.to_thread(alice.post, uri, "one")
            base = f"/api/chats/{uri}/messages/{posted['id']}/"
            await asyncio.to_thread(alice.request, "PATCH", base, json={"message": "one!"})
            await asyncio.to_thread(bob.request, "PUT", emoji_path(uri, posted["id"], "🎉"))
            await asyncio.to_thread(alice.request, "DELETE", base)
            await asyncio.to_thread(alice.post, uri, "two")
            got = await frames_until(full, "message")  # "one"
            got += await frames_until(full, "message")  # "two"
            plain_got = [await next_frame(plain), await next_frame(plain)]
            await no_more_log_frames(full, 0.5)
            with pytest.raises(asyncio.TimeoutError):
                await next_frame(plain, wait=0.2)
            return got, plain_got

    got, plain_got = asyncio.run(scenario())
    assert [(f["type"], f["seq"]) for f in got] == [
        ("message", 2), ("edit", 3), ("reaction", 4), ("delete", 5), ("message", 6)]
    assert [(f["type"], f["seq"]) for f in plain_got] == [("message", 2), ("message", 6)]
    # A socket resuming from 0 replays the log: the message in its current
    # (deleted) state, then each event once, in order.
    async def replay():
        async with websockets.connect(bob.ws_url(uri, since=0)) as again:
            return await frames_until(again, "ready")

    replayed = asyncio.run(replay())
    assert [(f["type"], f["seq"]) for f in replayed] == [
        ("member", 1), ("message", 2), ("edit", 3), ("reaction", 4), ("delete", 5),
        ("message", 6), ("ready", 6)]
    assert replayed[1]["deleted"] is True and replayed[1]["message"] == ""
    assert replayed[2]["message"] == ""  # the edit's text went with the delete


def test_history_folds_in_an_event_its_writer_did_not_save(room, db):
    """A writer that counted its change, stored its event and died before
    saving the message's new state: history shows the event anyway, and the
    next change saves both."""
    alice, bob, uri = room
    posted = alice.post(uri, "original")
    seq = posted["seq"] + 1
    db.messages.update_one({"_id": ObjectId(posted["id"])}, {"$inc": {"changing": 1}})
    db.messages.insert_one({
        "room": uri, "seq": seq, "type": "edit", "target_seq": posted["seq"],
        "target_id": posted["id"], "user": {"id": alice.user["id"], "username": alice.username},
        "user_id": alice.user["id"], "message": "edited, then the writer died", "version": 1,
        "created": db.messages.find_one({"seq": posted["seq"], "room": uri})["created"]})
    shown = current(bob, uri, posted["id"])
    assert shown["message"] == "edited, then the writer died"
    assert shown["last_event_seq"] == seq and shown["version"] == 1
    assert db.messages.find_one({"_id": ObjectId(posted["id"])})["message"] == "original"
    assert bob.request("PUT", emoji_path(uri, posted["id"], "👀")).status_code == 204
    saved = db.messages.find_one({"_id": ObjectId(posted["id"])})
    assert saved["message"] == "edited, then the writer died" and saved["version"] == 1
    assert saved["reactions"] == {"👀": [bob.username]} and saved["last_event_seq"] == seq + 1


def test_a_ban_between_a_sockets_handshake_and_its_join_still_closes_it(fresh_db):
    """The ban's notice finds no socket to close while the handshake is still
    joining the room: the join itself sees the membership is gone."""
    release = threading.Event()

    def hold_bobs_join(server):
        join = server.hub.join

        async def held(sock, uri, since):
            if sock.user["username"].startswith("held"):
                await asyncio.to_thread(release.wait, 10)
            return await join(sock, uri, since)
        server.hub.join = held

    with server_in_thread(fresh_db, hold_bobs_join) as (_server, url):
        alice = Api(url).signup()
        bob = Api(url, f"held{alice.username}").signup()
        uri = alice.new_chat()
        bob.join(uri)

        async def scenario():
            async with websockets.connect(bob.ws_url(uri, since=0)) as b:  # held in its join
                reply = await asyncio.to_thread(alice.request, "POST", f"/api/chats/{uri}/bans/",
                                                json={"username": bob.username})
                assert reply.status_code == 204
                release.set()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await next_frame(b, wait=5)
                return b.close_code, b.close_reason

        assert asyncio.run(scenario()) == (1008, "banned from the chat")
