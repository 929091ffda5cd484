"""Presence, typing and read positions across two server processes on the real
RabbitMQ and nx-27017, and the chat list's unread counts."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.helpers import Api, Listener, next_frame, two_members, wait_for

# Short but real: the same code paths as the defaults, on a test's time scale.
FAST = {"presence_grace_seconds": 2, "presence_ttl_seconds": 3, "typing_ttl_seconds": 1,
        "read_flush_seconds": 0.2}


@pytest.fixture
def two_servers(start_server):
    first = start_server(**FAST)
    return first, start_server(mongo_url=first.mongo_url, **FAST)


def presence(listener: Listener) -> set[str]:
    """Who the socket was told is online: its full state, then the diffs."""
    online: set[str] = set()
    for frame in listener.frames:
        if frame["type"] == "presence":
            if "users" in frame:
                online = {user["username"] for user in frame["users"]}
            else:
                online |= {user["username"] for user in frame["joined"]}
                online -= {user["username"] for user in frame["left"]}
    return online


def of(listener: Listener, kind: str) -> list[dict]:
    return [frame for frame in listener.frames if frame["type"] == kind]


def mentions(frames: list[dict], username: str) -> list[dict]:
    return [frame for frame in frames if frame["type"] == "presence" and username in json.dumps(frame)]


def chat(api: Api, uri: str, base_url: str | None = None) -> dict:
    reply = api.http.get(f"{base_url or api.base_url}/api/chats/{uri}/", headers=api.auth)
    assert reply.status_code == 200, reply.text
    return reply.json()


def chat_list(api: Api) -> dict[str, dict]:
    reply = api.request("GET", "/api/chats/")
    assert reply.status_code == 200, reply.text
    return {room["uri"]: room for room in reply.json()}


def test_presence_state_and_diffs_agree_on_both_processes(two_servers):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)

    async def scenario():
        on_a, on_b = Listener(alice, uri).start(), Listener(bob, uri).start()
        both = {alice.username, bob.username}
        await wait_for(lambda: presence(on_a) == presence(on_b) == both, 15, "both online")
        for listener in (on_a, on_b):
            kinds = [frame["type"] for frame in listener.frames]
            # the full state comes right after ready, diffs after that
            assert kinds[kinds.index("ready") + 1] == "presence"
            assert "users" in listener.frames[kinds.index("ready") + 1]
        for api in (alice, bob):  # each asks its own process
            assert chat(api, uri)["online"] == sorted(both)
        await on_b.stop()
        await wait_for(lambda: presence(on_a) == {alice.username}, 15, "bob gone after the grace")
        assert of(on_a, "presence")[-1] == {"type": "presence", "uri": uri, "joined": [],
                                           "left": [{"id": bob.user["id"], "username": bob.username}]}
        assert chat(bob, uri)["online"] == [alice.username]
        await on_a.stop()

    asyncio.run(scenario())


def test_a_reconnect_within_the_grace_announces_nothing(start_server):
    a = start_server(**{**FAST, "presence_grace_seconds": 4})
    b = start_server(mongo_url=a.mongo_url, **FAST)
    alice, bob, uri = two_members(a.url, b.url)
    carol = Api(a.url).signup()
    carol.join(uri)

    async def scenario():
        watcher = Listener(bob, uri).start()
        alice_on_a, carol_on_a = Listener(alice, uri).start(), Listener(carol, uri).start()
        everyone = {alice.username, bob.username, carol.username}
        await wait_for(lambda: presence(watcher) == everyone, 15, "everyone online")
        seen = len(watcher.frames)
        # alice's laptop drops and comes back through the other process; carol just goes
        await alice_on_a.stop()
        await carol_on_a.stop()
        alice_on_b = Listener(alice, uri, base_url=b.url).start()
        # carol left with the same grace as alice: once she is announced gone,
        # alice's leave would have been too, had her reconnect not cancelled it
        await wait_for(lambda: presence(watcher) == {alice.username, bob.username}, 20,
                       "carol gone after the grace")
        assert mentions(watcher.frames[seen:], alice.username) == []
        assert presence(alice_on_b) == {alice.username, bob.username}
        await watcher.stop()
        await alice_on_b.stop()

    asyncio.run(scenario())


def test_a_killed_process_members_leave_everyones_view(two_servers):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)

    async def scenario():
        on_a, on_b = Listener(alice, uri).start(), Listener(bob, uri).start()
        await wait_for(lambda: presence(on_b) == {alice.username, bob.username}, 15, "both online")
        a.kill()  # SIGKILL: no goodbye, its sockets just drop
        # gone once a's last snapshot expires (ttl 3 s, checked every second):
        # within 30 s however busy the machine is
        await wait_for(lambda: presence(on_b) == {bob.username}, 30, "alice gone")
        assert chat(bob, uri)["online"] == [bob.username]
        await on_a.stop()
        await on_b.stop()

    asyncio.run(scenario())


def test_typing_reaches_the_other_process_expires_without_a_stop_and_ends_with_a_message(
        two_servers):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)

    async def scenario():
        watcher = Listener(bob, uri).start()
        plain = Listener(bob, uri).start(since=None)  # chatire's client: messages only
        await wait_for(watcher.ready.is_set, 15, "bob ready")
        async with websockets.connect(alice.ws_url(uri, 0)) as ws:
            await next_frame(ws, "ready")
            await ws.send(json.dumps({"type": "typing"}))
            await wait_for(lambda: of(watcher, "typing"), 10, "alice typing on b")
            assert of(watcher, "typing") == [{"type": "typing", "uri": uri, "users": [alice.username]}]
            # no stop: it ends by itself a typing_ttl after the last frame
            await wait_for(lambda: len(of(watcher, "typing")) == 2, 10, "typing expired")
            assert of(watcher, "typing")[-1]["users"] == []
            await ws.send(json.dumps({"type": "typing"}))
            await wait_for(lambda: len(of(watcher, "typing")) == 3, 10, "typing again")
            await ws.send(json.dumps({"type": "message", "message": "done", "client_id": "c1"}))
            await wait_for(lambda: len(of(watcher, "typing")) == 4, 10, "typing ended by a post")
            assert of(watcher, "typing")[-1]["users"] == []
            await ws.send(json.dumps({"type": "typing", "stop": "yes"}))
            assert (await next_frame(ws, "error"))["code"] == "invalid"
        await wait_for(lambda: plain.seqs == [watcher.last], 10, "the message on the plain socket")
        assert not {"presence", "typing", "read"} & {frame["type"] for frame in plain.frames}
        await watcher.stop()
        await plain.stop()

    asyncio.run(scenario())


def test_read_positions_reach_the_readers_other_socket_and_never_go_down(two_servers):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)
    for i in range(4):
        bob.post(uri, f"m{i}")

    async def scenario():
        phone = Listener(alice, uri, base_url=b.url).start()  # alice's other device, on b
        bobs = Listener(bob, uri).start()
        await wait_for(lambda: phone.ready.is_set() and bobs.ready.is_set(), 15, "ready")
        assert alice.request("PUT", f"/api/chats/{uri}/read/", json={"seq": 3}).status_code == 204
        await wait_for(lambda: of(phone, "read"), 10, "the read on the phone")
        assert alice.request("PUT", f"/api/chats/{uri}/read/", json={"seq": 2}).status_code == 204
        async with websockets.connect(alice.ws_url(uri, 0)) as laptop:
            await next_frame(laptop, "ready")
            await laptop.send(json.dumps({"type": "read", "seq": 4}))
            await wait_for(lambda: len(of(phone, "read")) == 2, 10, "the second read")
            await laptop.send(json.dumps({"type": "read", "seq": -1}))
            assert (await next_frame(laptop, "error"))["code"] == "invalid"
            await laptop.send(json.dumps({"type": "read", "seq": 99}))
            assert (await next_frame(laptop, "error"))["code"] == "invalid"
        expected = [{"type": "read", "uri": uri, "user": alice.username, "user_id": alice.user["id"],
                     "seq": seq} for seq in (3, 4)]
        assert of(phone, "read") == expected
        await wait_for(lambda: of(bobs, "read") == expected, 10, "seen by, for bob")
        await phone.stop()
        await bobs.stop()

    asyncio.run(scenario())
    for body in ({"seq": 6}, {"seq": "3"}, {"seq": -1}, {}):  # 5: bob's join and 4 posts
        assert alice.request("PUT", f"/api/chats/{uri}/read/", json=body).status_code == 400
    stranger = Api(a.url).signup()
    assert stranger.request("PUT", f"/api/chats/{uri}/read/", json={"seq": 1}).status_code == 403
    # written within read_flush: every process reads it from MongoDB
    asyncio.run(wait_for(lambda: chat(bob, uri, b.url)["read"].get(alice.username) == 4, 10,
                         "the read stored"))
    assert chat_list(Api(b.url, alice.username, alice.password).login())[uri]["last_read_seq"] == 4


def test_unread_counts_and_latest_message_in_the_chat_list(two_servers):
    a, _b = two_servers
    alice, bob, uri = two_members(a.url)
    quiet = alice.new_chat()
    mine = alice.post(uri, "hi")  # posting: she has read everything before it
    first, _, last = [bob.post(uri, text) for text in ("one", "two", "x" * 150)]
    rooms = chat_list(alice)
    assert rooms[uri]["unread"] == 3 and rooms[uri]["last_read_seq"] == mine["seq"]
    assert rooms[uri]["last_seq"] == last["seq"]
    assert rooms[uri]["last_message"] == {"id": last["id"], "seq": last["seq"], "user": last["user"],
                                          "text": "x" * 100, "created": last["created"]}
    assert [p["username"] for p in rooms[uri]["people"]] == [alice.username, bob.username]
    assert rooms[quiet]["unread"] == 0 and rooms[quiet]["last_message"] is None
    assert chat_list(bob)[uri]["unread"] == 0  # his own messages never count
    read = {"seq": first["seq"]}
    assert alice.request("PUT", f"/api/chats/{uri}/read/", json=read).status_code == 204
    assert chat_list(alice)[uri]["unread"] == 2  # at once on the same process


def test_read_positions_keep_being_saved_long_after_the_request_that_began_saving(two_servers):
    """The first read of a quiet spell may come over HTTP; the writes it starts go on
    while reads keep coming, past that request's MongoDB time budget (2 s here)."""
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)
    last = [alice.post(uri, f"m{i}") for i in range(30)][-1]["seq"]

    async def scenario():
        bobs = Api(a.url, bob.username, bob.password).login()  # bob on a, like alice
        assert alice.request("PUT", f"/api/chats/{uri}/read/", json={"seq": 1}).status_code == 204
        async with websockets.connect(bobs.ws_url(uri, last)) as ws:
            await next_frame(ws, "ready")
            for seq in range(last - 29, last + 1):  # 3 s of reads, one every 0.1 s
                await ws.send(json.dumps({"type": "read", "seq": seq}))
                await asyncio.sleep(0.1)
        # b reads read positions from MongoDB only
        await wait_for(lambda: chat(alice, uri, b.url)["read"].get(bob.username) == last, 10,
                       "bob's last read stored")

    asyncio.run(scenario())


def test_a_stop_a_post_or_leaving_ends_typing_and_a_leaver_is_gone_at_once(start_server):
    # A grace and typing entries far outliving the test: only what is under test ends them.
    a = start_server(**{**FAST, "presence_grace_seconds": 60, "typing_ttl_seconds": 60})
    b = start_server(mongo_url=a.mongo_url, **{**FAST, "presence_grace_seconds": 60,
                                                 "typing_ttl_seconds": 60})
    alice, bob, uri = two_members(a.url, b.url)

    async def scenario():
        watcher = Listener(alice, uri).start()

        def typing() -> list[str] | None:
            return of(watcher, "typing")[-1]["users"] if of(watcher, "typing") else None

        async with websockets.connect(bob.ws_url(uri, 0)) as ws:
            await next_frame(ws, "ready")
            await ws.send(json.dumps({"type": "typing"}))
            await wait_for(lambda: typing() == [bob.username], 10, "bob typing")
            await ws.send(json.dumps({"type": "typing", "stop": True}))
            await wait_for(lambda: typing() == [], 10, "ended by a stop")
            await ws.send(json.dumps({"type": "typing"}))
            await wait_for(lambda: typing() == [bob.username], 10, "bob typing again")
            await ws.send(json.dumps({"type": "message", "message": "done", "client_id": "c1"}))
            await wait_for(lambda: typing() == [], 10, "ended by his post")
            await ws.send(json.dumps({"type": "typing"}))
            await wait_for(lambda: typing() == [bob.username], 10, "bob typing once more")
            assert bob.request("DELETE", f"/api/chats/{uri}/members/{bob.username}/").status_code == 204
            await wait_for(lambda: presence(watcher) == {alice.username}, 10, "bob gone")
            await wait_for(lambda: typing() == [], 10, "ended by his leaving")
        assert chat(alice, uri)["online"] == [alice.username]
        await watcher.stop()

    asyncio.run(scenario())


def test_unread_counts_leave_out_edits_deletes_and_other_events(two_servers):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)
    carol = Api(b.url).signup()
    carol.join(uri)  # a member event: not a message
    posts = [bob.post(uri, f"m{i}") for i in range(4)]
    assert chat_list(alice)[uri]["unread"] == 4
    edited = bob.request("PATCH", f"/api/chats/{uri}/messages/{posts[0]['id']}/",
                         json={"message": "m0, edited"})
    assert edited.status_code == 200, edited.text
    assert bob.request("PUT", f"/api/chats/{uri}/messages/{posts[1]['id']}/reactions/👍/"
                       ).status_code == 204
    rooms = chat_list(alice)
    assert rooms[uri]["unread"] == 4  # an edit and a reaction are no new messages
    assert rooms[uri]["last_message"]["text"] == "m3"
    for post in posts[2:]:
        assert bob.request("DELETE", f"/api/chats/{uri}/messages/{post['id']}/").status_code == 204
    rooms = chat_list(alice)
    assert rooms[uri]["unread"] == 2  # deleted ones are not waiting to be read
    assert rooms[uri]["last_message"]["text"] == "m1"
    assert rooms[uri]["last_seq"] > posts[-1]["seq"]  # the deletes are events with seqs
    assert alice.request("PUT", f"/api/chats/{uri}/read/",
                         json={"seq": rooms[uri]["last_seq"]}).status_code == 204
    assert chat_list(alice)[uri]["unread"] == 0
    on_b = Api(b.url, alice.username, alice.password).login()  # b has it from MongoDB
    asyncio.run(wait_for(lambda: chat_list(on_b)[uri]["unread"] == 0, 10, "read on b"))
