"""Talking to people (issue 20) on a real server process (RabbitMQ, the MongoDB
wire server): formatted text, mentions, names and topics, direct messages and
blocks, their error paths, and the events each change makes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import pytest
import websockets

from tests.conftest import database_url, serve
from tests.helpers import Api, ServerProcess, next_frame
from tests.xss_payloads import markdown_payloads, unsafe

# @room needs a role in chats of more than this many members (20 by default).
ROOM_MENTION_MAX = 3


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, tmp_path_factory):
    yield from serve(mongo_base, amqp_url, tmp_path_factory,
                     mention_room_max_without_role=ROOM_MENTION_MAX)


@pytest.fixture(scope="module")
def pair(mongo_base, amqp_url, tmp_path_factory):
    """Two more server processes on one database, shared by this module's two-process tests."""
    logs = tmp_path_factory.mktemp("pair-logs")
    first = ServerProcess(database_url(mongo_base), amqp_url, log_dir=logs).start(wait=False)
    second = ServerProcess(first.mongo_url, amqp_url, log_dir=logs).start(wait=False)
    first.wait_ready()
    second.wait_ready()
    yield first, second
    first.stop()
    second.stop()


def users(server, count: int) -> list[Api]:
    return [Api(server.url).signup() for _ in range(count)]


def chat_of(api: Api, uri: str) -> dict:
    return next(c for c in api.request("GET", "/api/chats/").json() if c["uri"] == uri)


def events(api: Api, uri: str, after: int = 0) -> list[dict]:
    return api.history(uri, after=after, events=1, limit=200)["messages"]


def dm(api: Api, username: str):
    return api.request("POST", "/api/dms/", json={"username": username})


# Formatted text ----------------------------------------------------------

def test_messages_carry_html_rendered_once_and_history_and_frames_agree(server):
    alice, bob = users(server, 2)
    uri = alice.new_chat()
    bob.join(uri)

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0)) as full, \
                websockets.connect(bob.ws_url(uri)) as plain:
            await next_frame(full, "ready")
            posted = alice.post(uri, "**hi** @" + bob.username.upper() + "\n```\ncode()\n```")
            return posted, await next_frame(full, "message"), await next_frame(plain, "message")

    posted, full_frame, plain_frame = asyncio.run(scenario())
    assert "<strong>hi</strong>" in posted["html"]
    assert f'<span class="mention" data-user="{bob.username}">' in posted["html"]
    assert "<pre><code>code()\n</code></pre>" in posted["html"]
    assert posted["mentions"] == [bob.username] and posted["mentions_room"] is False
    # The same bytes to both streams: chatire's client reads `message` and ignores the rest.
    assert full_frame == plain_frame
    assert {k: full_frame[k] for k in ("html", "mentions", "mentions_room", "message")} == \
        {k: posted[k] for k in ("html", "mentions", "mentions_room", "message")}
    stored = alice.history(uri)["messages"][-1]
    assert stored["html"] == posted["html"] and stored["message"] == posted["message"]


def test_no_xss_payload_survives_into_html_of_messages_or_edits(server):
    alice, = users(server, 1)
    uri = alice.new_chat()
    first = alice.post(uri, "to be edited")
    payloads = markdown_payloads()
    for payload in payloads:
        posted = alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": payload})
        assert posted.status_code == 200, posted.text
        assert unsafe(posted.json()["html"]) == [], (payload, posted.json()["html"])
        assert posted.json()["message"] == payload  # the text stays as written
        edited = alice.request("PATCH", f"/api/chats/{uri}/messages/{first['id']}/",
                               json={"message": payload + " (edited)"})
        assert edited.status_code == 200, edited.text
        assert unsafe(edited.json()["html"]) == [], (payload, edited.json()["html"])
    for page in (alice.history(uri, limit=200), alice.history(uri, after=0, events=1, limit=200)):
        for event in page["messages"]:
            assert unsafe(event.get("html", "")) == [], event


# Mentions ----------------------------------------------------------------

def test_mentions_are_members_found_at_post_and_updated_by_edits(server):
    alice, bob, carol, stranger = users(server, 4)
    uri = alice.new_chat()
    bob.join(uri)
    carol.join(uri)
    posted = alice.post(uri, f"@{bob.username.upper()} and @{carol.username}, not "
                             f"@{stranger.username} nor `@{carol.username}` nor x@{bob.username}")
    assert posted["mentions"] == [bob.username, carol.username]
    assert posted["mentions_room"] is False
    edit = alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                         json={"message": f"only @{carol.username} and @room"}).json()
    assert edit["mentions"] == [carol.username] and edit["mentions_room"] is True
    history = events(alice, uri)
    edit_event = next(e for e in history if e["type"] == "edit")
    assert edit_event["mentions"] == [carol.username] and edit_event["mentions_room"] is True
    message = next(e for e in history if e["type"] == "message")
    assert message["mentions"] == [carol.username] and message["mentions_room"] is True
    # A member who joins later is mentioned at once (the cache is told of joins).
    stranger.join(uri)
    again = alice.post(uri, f"welcome @{stranger.username}")
    assert again["mentions"] == [stranger.username]


def test_room_mentions_in_big_rooms_need_a_role(server):
    owner, *others = users(server, ROOM_MENTION_MAX + 1)
    uri = owner.new_chat()
    for other in others[:-1]:
        other.join(uri)
    # ROOM_MENTION_MAX members: anyone may.
    assert others[0].post(uri, "hey @room")["mentions_room"] is True
    others[-1].join(uri)  # one more
    refused = others[0].request("POST", f"/api/chats/{uri}/messages/",
                                json={"message": "hey @room"})
    assert refused.status_code == 403
    assert "@room" in refused.json()["detail"] and "moderators" in refused.json()["detail"]

    async def over_the_socket():
        async with websockets.connect(others[0].ws_url(uri, since=0)) as ws:
            await next_frame(ws, "ready")
            await ws.send(json.dumps({"type": "message", "message": "@room", "client_id": "c1"}))
            return await next_frame(ws, "error")

    error = asyncio.run(over_the_socket())
    assert (error["code"], error["client_id"]) == ("forbidden", "c1") and "@room" in error["detail"]
    posted = others[0].post(uri, "an edit may not either")
    refused = others[0].request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                                json={"message": "@room now"})
    assert refused.status_code == 403
    assert owner.post(uri, "all of you: @room")["mentions_room"] is True
    assert owner.request("PUT", f"/api/chats/{uri}/members/{others[0].username}/",
                         json={"role": "moderator"}).status_code == 204
    assert others[0].post(uri, "now I may: @room")["mentions_room"] is True


def test_the_chat_list_counts_unread_mentions_until_they_are_read(server):
    alice, bob = users(server, 2)
    uri = alice.new_chat()
    bob.join(uri)
    bob.post(uri, f"@{bob.username} mine do not count (and a post is a read)")
    alice.post(uri, "no mention")
    alice.post(uri, f"@{bob.username} one")
    alice.post(uri, "@room two")
    gone = alice.post(uri, f"@{bob.username} deleted")
    alice.request("DELETE", f"/api/chats/{uri}/messages/{gone['id']}/")
    listed = chat_of(bob, uri)
    assert (listed["unread"], listed["mentions"]) == (3, 2)
    assert chat_of(alice, uri)["mentions"] == 0
    last = alice.post(uri, f"@{bob.username} three")
    assert chat_of(bob, uri)["mentions"] == 3
    assert bob.request("PUT", f"/api/chats/{uri}/read/", json={"seq": last["seq"]}).status_code == 204
    listed = chat_of(bob, uri)
    assert (listed["unread"], listed["mentions"]) == (0, 0)


# Names and topics ---------------------------------------------------------

def test_names_and_topics_are_set_at_creation_and_by_moderators(server):
    alice, bob = users(server, 2)
    made = alice.request("POST", "/api/chats/", json={"name": "Launch", "topic": "Friday"})
    assert made.status_code == 200
    uri = made.json()["uri"]
    bob.join(uri)  # PATCH without name or topic still joins
    shown = bob.request("GET", f"/api/chats/{uri}/").json()
    assert (shown["kind"], shown["name"], shown["topic"]) == ("room", "Launch", "Friday")
    listed = chat_of(bob, uri)
    assert (listed["kind"], listed["name"], listed["topic"]) == ("room", "Launch", "Friday")

    for body, field in (({"name": "x" * 81}, "name"), ({"name": "   "}, "name"),
                        ({"topic": "t" * 251}, "topic"), ({"name": 5}, "name")):
        refused = alice.request("PATCH", f"/api/chats/{uri}/", json=body)
        assert refused.status_code == 400 and field in refused.json(), (body, refused.text)
        refused = alice.request("POST", "/api/chats/", json=body)
        assert refused.status_code == 400 and field in refused.json(), (body, refused.text)
    assert bob.request("PATCH", f"/api/chats/{uri}/", json={"name": "Mine"}).status_code == 403

    before = events(bob, uri)

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=before[-1]["seq"])) as ws:
            await next_frame(ws, "ready")
            changed = alice.request("PATCH", f"/api/chats/{uri}/", json={"topic": "Monday"})
            return changed, await next_frame(ws, "room")

    changed, frame = asyncio.run(scenario())
    assert changed.status_code == 200
    assert (changed.json()["name"], changed.json()["topic"]) == ("Launch", "Monday")
    assert {k: frame[k] for k in ("type", "uri", "name", "topic")} == \
        {"type": "room", "uri": uri, "name": "Launch", "topic": "Monday"}
    assert frame["by"]["username"] == alice.username and frame["seq"] and frame["created"]
    # What bob had, plus the event he got, is what he reads now.
    after = events(bob, uri)
    assert after == [*before, frame]
    assert events(bob, uri, after=before[-1]["seq"]) == [frame]
    assert chat_of(bob, uri)["topic"] == "Monday"
    # Clearing the topic; the same values again change nothing.
    alice.request("PATCH", f"/api/chats/{uri}/", json={"topic": ""})
    assert bob.request("GET", f"/api/chats/{uri}/").json()["topic"] == ""
    seq = events(bob, uri)[-1]["seq"]
    alice.request("PATCH", f"/api/chats/{uri}/", json={"name": "Launch"})
    assert events(bob, uri)[-1]["seq"] == seq
    plain = alice.request("POST", "/api/chats/")  # chatire's client: no body
    assert plain.status_code == 200
    assert alice.request("GET", f"/api/chats/{plain.json()['uri']}/").json()["name"] is None


# Direct messages -----------------------------------------------------------

def test_a_dm_is_one_room_per_pair_with_the_rules_of_dms(server):
    alice, bob, carol = users(server, 3)
    assert dm(alice, "no-such-user-here").status_code == 404
    assert alice.request("POST", "/api/dms/", json={}).status_code == 400
    started = dm(alice, bob.username.upper())
    assert started.status_code == 200, started.text
    room = started.json()
    uri = room["uri"]
    assert room["kind"] == "dm" and room["owner"] is None
    assert sorted(m["username"] for m in room["members"]) == sorted([alice.username, bob.username])
    assert dm(bob, alice.username).json()["uri"] == uri
    assert dm(alice, bob.username).json()["uri"] == uri
    joins = [e for e in events(bob, uri) if e["type"] == "member"]
    assert sorted(e["user"]["username"] for e in joins) == sorted([alice.username, bob.username])
    assert {e["op"] for e in joins} == {"join"}
    listed = chat_of(bob, uri)
    assert listed["kind"] == "dm" and listed["other"]["username"] == alice.username

    # Nobody joins by link, and there is nobody to moderate it.
    assert carol.request("PATCH", f"/api/chats/{uri}/").status_code == 403
    for method, path, body in (
            ("PATCH", f"/api/chats/{uri}/", {"username": carol.username}),
            ("PATCH", f"/api/chats/{uri}/", {"locked": True}),
            ("PATCH", f"/api/chats/{uri}/", {"name": "ours"}),
            ("POST", f"/api/chats/{uri}/bans/", {"username": bob.username}),
            ("PUT", f"/api/chats/{uri}/members/{bob.username}/", {"role": "moderator"}),
            ("DELETE", f"/api/chats/{uri}/members/{bob.username}/", None)):
        answer = alice.request(method, path, json=body)
        assert answer.status_code == 403, (method, path, answer.text)

    # Everything else works: posts, edits, reactions, reads.
    posted = alice.post(uri, f"hi @{bob.username}")
    assert posted["mentions"] == [bob.username]
    assert alice.request("PUT", f"/api/chats/{uri}/messages/{posted['id']}/reactions/%F0%9F%91%8D/"
                         ).status_code == 204

    # Bob leaves; alice writes again and he is back, with a join event.
    assert bob.request("DELETE", f"/api/chats/{uri}/members/{bob.username}/").status_code == 204
    assert uri not in {c["uri"] for c in bob.request("GET", "/api/chats/").json()}
    assert bob.request("GET", f"/api/chats/{uri}/").status_code == 403
    alice.post(uri, "still there?")
    assert chat_of(bob, uri)["unread"] >= 1
    last = events(bob, uri)[-2:]
    assert last[0]["type"] == "member" and last[0]["op"] == "join"
    assert last[0]["user"]["username"] == bob.username and last[1]["message"] == "still there?"
    # Alice leaves; she starts it again and is back.
    assert alice.request("DELETE", f"/api/chats/{uri}/members/{alice.username}/").status_code == 204
    assert dm(alice, bob.username).json()["uri"] == uri
    assert chat_of(alice, uri)["kind"] == "dm"


def test_a_dm_with_yourself_is_your_notes(server):
    alice, = users(server, 1)
    notes = dm(alice, alice.username).json()
    assert notes["kind"] == "dm" and [m["username"] for m in notes["members"]] == [alice.username]
    assert dm(alice, alice.username).json()["uri"] == notes["uri"]
    alice.post(notes["uri"], "remember the milk")
    listed = chat_of(alice, notes["uri"])
    assert listed["other"]["username"] == alice.username and listed["members"] == 1


def test_blocked_users_cannot_start_a_dm_post_in_it_or_add_you(server):
    alice, bob = users(server, 2)
    uri = dm(bob, alice.username).json()["uri"]
    bob_room = bob.new_chat()
    assert alice.request("PUT", "/api/blocks/no-such-user-here/").status_code == 404
    assert alice.request("PUT", f"/api/blocks/{alice.username}/").status_code == 400
    assert alice.request("PUT", f"/api/blocks/{bob.username}/").status_code == 204
    assert alice.request("PUT", f"/api/blocks/{bob.username}/").status_code == 204  # as asked
    listed = alice.request("GET", "/api/blocks/").json()
    assert [b["user"]["username"] for b in listed] == [bob.username]

    for refused in (dm(bob, alice.username),
                    bob.request("POST", f"/api/chats/{uri}/messages/", json={"message": "hi"}),
                    bob.request("PATCH", f"/api/chats/{bob_room}/", json={"username": alice.username})):
        assert refused.status_code == 403, refused.text
        assert "block" not in refused.text.lower()
    # Alice may still write to him; he is not told.
    alice.post(uri, "I can still write")
    assert alice.request("DELETE", f"/api/blocks/{bob.username}/").status_code == 204
    assert alice.request("DELETE", f"/api/blocks/{bob.username}/").status_code == 404
    assert alice.request("GET", "/api/blocks/").json() == []
    assert dm(bob, alice.username).status_code == 200
    bob.post(uri, "thanks")
    assert bob.request("PATCH", f"/api/chats/{bob_room}/",
                       json={"username": alice.username}).status_code == 200


def test_starting_a_dm_tells_the_other_persons_open_sockets(server):
    """The DM's first events are the members' joins, through the room's log,
    which the user stream turns into `chat` frames."""
    alice, bob = users(server, 2)
    uri = dm(alice, bob.username).json()["uri"]

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0)) as ws:
            frames = [await next_frame(ws, "member"), await next_frame(ws, "member")]
            await next_frame(ws, "ready")
            return frames

    frames = asyncio.run(scenario())
    assert sorted(f["user"]["username"] for f in frames) == sorted([alice.username, bob.username])
    assert all(f["by"]["username"] == alice.username for f in frames)


@pytest.mark.slow
def test_concurrent_first_dms_from_both_sides_on_two_processes_make_one_room(pair):
    first, second = pair
    alice, bob = Api(first.url).signup(), Api(second.url).signup()
    bob_on_first = Api(first.url, bob.username, bob.password).login()
    alice_on_second = Api(second.url, alice.username, alice.password).login()
    calls = ([(alice, bob.username), (alice_on_second, bob.username)] * 5
             + [(bob, alice.username), (bob_on_first, alice.username)] * 5)

    def start(call) -> object:
        # 503 (MongoDB slower than the request's budget on a loaded machine) is
        # an answer a client retries; the call is idempotent.
        api, username = call
        for _ in range(5):
            answer = dm(api, username)
            if answer.status_code != 503:
                return answer
            time.sleep(float(answer.headers.get("Retry-After", "1")))
        return answer

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(start, calls))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.json()["uri"] for a in answers}) == 1
    uri = answers[0].json()["uri"]
    dms = [c for c in alice.request("GET", "/api/chats/").json() if c["kind"] == "dm"]
    assert [c["uri"] for c in dms] == [uri]
    joins = [e for e in events(alice, uri) if e["type"] == "member"]
    assert len(joins) == 2  # made once, announced once


@pytest.mark.slow
def test_a_member_who_joins_through_another_process_is_mentioned_at_once(pair):
    """Each process caches a room's people for the post path; a join through
    another process reaches it as a control notice, ahead of the join event."""
    first, second = pair
    alice = Api(first.url).signup()
    bob = Api(second.url).signup()
    uri = alice.new_chat()
    assert alice.post(uri, f"@{bob.username} is not here yet")["mentions"] == []

    async def scenario():
        async with websockets.connect(alice.ws_url(uri, since=0)) as ws:
            await next_frame(ws, "ready")
            bob.join(uri)  # on the second process
            joined = await next_frame(ws, "member")
            return joined, alice.post(uri, f"welcome @{bob.username}")

    joined, posted = asyncio.run(scenario())
    assert joined["user"]["username"] == bob.username
    assert posted["mentions"] == [bob.username]
