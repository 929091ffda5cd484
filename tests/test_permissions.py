"""Permission changes as conditional writes: concurrent requests against a real
server (RabbitMQ, the MongoDB wire server) never leave a room owned by a
banned or departed user, and concurrent edits and reactions keep their bounds."""

from __future__ import annotations

import asyncio
import urllib.parse

import httpx
import pytest

from tests.helpers import Api

ROUNDS = 15


@pytest.fixture(scope="module")
def people(server):
    """(owner, moderator, a): three users of the module's server."""
    return tuple(Api(server.url).signup() for _ in range(3))


def new_room(owner: Api, moderator: Api, a: Api) -> str:
    """A chat of owner's with moderator (a moderator) and a (a member)."""
    uri = owner.new_chat()
    moderator.join(uri)
    a.join(uri)
    reply = owner.request("PUT", f"/api/chats/{uri}/members/{moderator.username}/",
                          json={"role": "moderator"})
    assert reply.status_code == 204, reply.text
    return uri


async def at_once(*requests: tuple[Api, str, str, dict | None]) -> list[httpx.Response]:
    """Send the requests together, each from its own connection."""
    async def send(api: Api, method: str, path: str, body: dict | None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
            return await http.request(method, path, headers=api.auth, json=body)
    return await asyncio.gather(*(send(*request) for request in requests))


def assert_one_owner_who_is_a_member(db, uri: str) -> None:
    room = db.rooms.find_one({"uri": uri})
    assert room["owner"] in room["members"], room
    assert room["owner"] not in room.get("banned", []), room


def outcome(replies: list[httpx.Response]) -> list[int]:
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses[0] == 204, [reply.text for reply in replies]
    assert statuses[1] in (403, 404, 409), [reply.text for reply in replies]
    return statuses


@pytest.mark.parametrize("rival", ["a moderator bans the new owner", "the new owner leaves"])
def test_handing_over_while_the_new_owner_goes_leaves_one_owner_who_is_a_member(people, db, rival):
    owner, moderator, a = people
    for _ in range(ROUNDS):
        uri = new_room(owner, moderator, a)
        goes = ((moderator, "POST", f"/api/chats/{uri}/bans/", {"username": a.username})
                if rival.startswith("a moderator") else
                (a, "DELETE", f"/api/chats/{uri}/members/{a.username}/", None))
        replies = asyncio.run(at_once(
            (owner, "PUT", f"/api/chats/{uri}/members/{a.username}/", {"role": "owner"}), goes))
        outcome(replies)
        assert_one_owner_who_is_a_member(db, uri)


def test_a_moderator_removing_a_member_the_owner_promotes_meanwhile_is_refused(people, db):
    owner, moderator, a = people
    for _ in range(ROUNDS):
        uri = new_room(owner, moderator, a)
        replies = asyncio.run(at_once(
            (owner, "PUT", f"/api/chats/{uri}/members/{a.username}/", {"role": "moderator"}),
            (moderator, "DELETE", f"/api/chats/{uri}/members/{a.username}/", None)))
        outcome(replies)
        room = db.rooms.find_one({"uri": uri})
        # Either a was removed as a plain member, or promoted and stays.
        assert (a.user["id"] in room["members"]) == (room.get("roles", {}).get(a.user["id"])
                                                     == "moderator"), room


def test_concurrent_edits_get_distinct_versions(people, db):
    owner, moderator, a = people
    uri = new_room(owner, moderator, a)
    posted = owner.post(uri, "draft")
    path = f"/api/chats/{uri}/messages/{posted['id']}/"
    replies = asyncio.run(at_once(*((owner, "PATCH", path, {"message": f"edit {i}"})
                                    for i in range(8))))
    assert all(reply.status_code == 200 for reply in replies), [r.text for r in replies]
    edits = list(db.messages.find({"room": uri, "type": "edit"}))
    assert sorted(edit["version"] for edit in edits) == list(range(1, 9))
    message = db.messages.find_one({"room": uri, "seq": posted["seq"]})
    last = max(edits, key=lambda edit: edit["seq"])
    assert message["message"] == last["message"] and message["version"] == 8


def test_the_reaction_cap_holds_under_concurrent_distinct_reactions(people, db):
    owner, moderator, a = people
    uri = new_room(owner, moderator, a)
    posted = owner.post(uri, "react to this")
    emojis = ["😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎", "😍",
              "😘", "🥰", "😗", "😙", "😚", "🙂", "🤗", "🤩", "🤔", "🤨", "😐", "😑", "😶",
              "🙄", "😏", "😣", "😥"]
    replies = asyncio.run(at_once(*(
        (user, "PUT", f"/api/chats/{uri}/messages/{posted['id']}/reactions/"
                      f"{urllib.parse.quote(emoji)}/", None)
        for emoji in emojis for user in (owner, a))))
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) <= {204, 400}, [r.text for r in replies if r.status_code not in (204, 400)]
    message = owner.history(uri)["messages"][-1]
    assert len(message["reactions"]) == 20, message["reactions"]
    stored = db.messages.find_one({"room": uri, "seq": posted["seq"]})
    assert len(stored["reactions"]) == 20
    # What was refused was never stored as an event either.
    added = db.messages.distinct("emoji", {"room": uri, "type": "reaction", "op": "add"})
    assert len(added) == 20
