"""The user stream, /ws/, across two server processes on the real RabbitMQ and
nx-27017: one socket carries every chat of its user, its snapshot and the
live events add up to a fresh fetch, membership changes made on either
process reach it (and close it out of a room even when the control notice
is lost), and each process holds one broker queue."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pika
import pytest
import websockets

from tests.conftest import database_url
from tests.helpers import Api, ServerProcess, rabbitmqctl, scratch_vhost, vhost_of, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(mongo_base, amqp_url, tmp_path_factory):
    """Two server processes on one database and broker, for the module."""
    logs = tmp_path_factory.mktemp("logs")
    first = ServerProcess(database_url(mongo_base), amqp_url, log_dir=logs).start()
    second = ServerProcess(first.mongo_url, amqp_url, log_dir=logs).start()
    yield first, second
    first.stop()
    second.stop()


class Stream:
    """A user stream that records every frame it gets."""

    def __init__(self, api: Api, base_url: str | None = None):
        self.api = api
        base = (base_url or api.base_url).replace("http://", "ws://")
        self.url = f"{base}/ws/?token={api.token}"
        self.frames: list[dict] = []
        self.closed: int | None = None
        self.ws = None
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Stream:
        self.ws = await websockets.connect(self.url, max_queue=None, open_timeout=5)
        self.task = asyncio.ensure_future(self.read())
        await self.wait(lambda: self.of("chats"), "the chats snapshot")
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.ws.close()
        await self.task

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.closed = self.ws.close_code

    def of(self, kind: str, uri: str | None = None) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind and (uri is None or f.get("uri") == uri)]

    def events(self, uri: str) -> list[dict]:
        """The room events (they carry seq) of uri, in the order received."""
        return [f for f in self.frames if f.get("uri") == uri and "seq" in f
                and f["type"] not in ("ready", "read")]

    def snapshot(self) -> dict[str, dict]:
        return {chat["uri"]: chat for chat in self.of("chats")[0]["chats"]}

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait(self, predicate, what: str, seconds: float = 10):
        await wait_for(predicate, seconds, what)
        return predicate()


def run(coroutine):
    return asyncio.run(coroutine)


def test_one_stream_gets_every_chat_once_in_order_wherever_the_posts_go(pair):
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    rooms = [alice.new_chat() for _ in range(3)]
    for uri in rooms:
        Api(b.url, bob.username).login().join(uri)
    bob.login()
    alice.post(rooms[0], "before")

    async def scenario():
        async with Stream(alice) as stream:  # on a: the posts go through b
            shown = stream.snapshot()
            assert set(shown) == set(rooms)
            assert shown[rooms[0]]["last_message"]["text"] == "before"
            for i in range(20):
                bob.post(rooms[i % 3], f"m{i}")
            await stream.wait(lambda: sum(len(stream.events(uri)) for uri in rooms) == 20,
                              "the 20 posts")
            for uri in rooms:
                seqs = [e["seq"] for e in stream.events(uri)]
                assert seqs == sorted(set(seqs)), "once each, in order"
                assert seqs[0] == shown[uri]["last_seq"] + 1
                history = [m["seq"] for m in alice.history(uri, events=1)["messages"]]
                assert [s for s in history if s > shown[uri]["last_seq"]] == seqs
    run(scenario())


def test_what_is_posted_while_the_snapshot_is_built_is_neither_lost_nor_repeated(pair):
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = alice.new_chat()
    bob.join(uri)

    async def scenario():
        posting = asyncio.ensure_future(asyncio.to_thread(
            lambda: [bob.post(uri, f"race {i}") for i in range(40)]))
        streams = []
        for _ in range(5):  # streams opened at different moments of the posting
            stream = Stream(alice)
            await stream.__aenter__()
            streams.append(stream)
        await posting
        last = alice.history(uri, events=1)["messages"][-1]["seq"]
        for stream in streams:
            shown = stream.snapshot()[uri]["last_seq"]
            await stream.wait(lambda stream=stream, shown=shown: shown == last or (
                stream.events(uri) and stream.events(uri)[-1]["seq"] == last), "the last post")
            seqs = [e["seq"] for e in stream.events(uri)]
            assert seqs == list(range(shown + 1, last + 1))
            await stream.__aexit__()
    run(scenario())


def test_a_chat_started_on_another_process_reaches_the_starters_stream(pair):
    """Starting a chat writes no member event: a `joined` notice gives it to the
    starter's streams (another tab, another device), which can then subscribe."""
    a, b = pair
    alice = Api(a.url).signup()

    async def scenario():
        async with Stream(alice, b.url) as stream:  # alice's stream is on b
            uri = alice.new_chat()  # started through a
            chat = (await stream.wait(lambda: stream.of("chat", uri), "the chat frame"))[0]["chat"]
            assert chat["uri"] == uri and chat["last_seq"] == 0
            await stream.send({"type": "subscribe", "uri": uri, "since": 0})
            ready = await stream.wait(lambda: stream.of("ready", uri), "ready")
            assert ready == [{"type": "ready", "uri": uri, "seq": 0}]
            assert not stream.of("error")
    run(scenario())


def test_a_member_added_elsewhere_gets_the_chat_then_its_events_and_a_removal_ends_them(pair):
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = alice.new_chat()  # alice is its owner, on a

    async def scenario():
        async with Stream(bob) as stream:  # bob's stream is on b
            assert stream.snapshot() == {}
            reply = alice.request("PATCH", f"/api/chats/{uri}/", json={"username": bob.username})
            assert reply.status_code == 200, reply.text
            chat = (await stream.wait(lambda: stream.of("chat"), "the chat frame"))[0]["chat"]
            assert chat["uri"] == uri
            posted = alice.post(uri, "welcome")
            await stream.wait(lambda: any(e.get("id") == posted["id"] for e in stream.events(uri)),
                              "the message after the chat frame")
            assert all(e["seq"] > chat["last_seq"] for e in stream.events(uri))
            # Removed through a: chat_gone on b, and nothing more of that chat.
            reply = alice.request("DELETE", f"/api/chats/{uri}/members/{bob.username}/")
            assert reply.status_code == 204, reply.text
            gone = await stream.wait(lambda: stream.of("chat_gone"), "chat_gone")
            assert gone == [{"type": "chat_gone", "uri": uri, "reason": "removed"}]
            count = len(stream.frames)
            alice.post(uri, "not for bob")
            marker = alice.new_chat()  # a later frame of another chat proves the first did not come
            alice.request("PATCH", f"/api/chats/{marker}/", json={"username": bob.username})
            await stream.wait(lambda: stream.of("chat", marker), "the marker chat")
            assert [f for f in stream.frames[count:] if f.get("uri") == uri] == []
    run(scenario())


def test_a_ban_closes_the_member_out_on_the_other_process_when_the_control_notice_is_lost(
        start_server, amqp_url):
    """The ban's control notice never reaches b (the control exchange is made
    anew, without b's binding); the ban's member event, delivered to b, closes
    bob's room socket and takes the chat from his stream there. (A vhost and
    servers of its own: the other tests' processes keep their control bindings.)"""
    default_vhost = urllib.parse.urlunsplit(urllib.parse.urlsplit(amqp_url)._replace(path="/"))
    with scratch_vhost(default_vhost, "lost-notice") as broker_url:
        assert vhost_of(broker_url) != vhost_of(amqp_url)
        a = start_server(broker_url=broker_url)
        b = start_server(mongo_url=a.mongo_url, broker_url=broker_url)
        alice, bob = Api(a.url).signup(), Api(b.url).signup()
        uri = alice.new_chat()
        bob.join(uri)
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        channel = connection.channel()
        channel.exchange_delete("chat.control")
        channel.exchange_declare("chat.control", "fanout", durable=True)
        connection.close()
        run(banned_on_a_closed_on_b(a, b, alice, bob, uri))
        a.kill()
        b.kill()


async def banned_on_a_closed_on_b(a, b, alice: Api, bob: Api, uri: str) -> None:

    socket_url = f"{b.ws_url}/ws/chats/{uri}/?token={bob.token}&since=0"
    async with Stream(bob) as stream, websockets.connect(socket_url) as room_socket:
        while json.loads(await room_socket.recv())["type"] != "ready":
            pass
        started = time.monotonic()
        reply = alice.request("POST", f"/api/chats/{uri}/bans/", json={"username": bob.username})
        assert reply.status_code == 204, reply.text
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(room_socket.recv(), 2)
        assert closed.value.rcvd.code == 1008
        # For the record (pytest -s), not asserted: from the ban's request to the close.
        print(f"ban -> socket closed on the other process: {time.monotonic() - started:.3f} s")
        gone = await stream.wait(lambda: stream.of("chat_gone"), "chat_gone", 2)
        assert gone[0]["reason"] == "banned"
    # And b believes no cached membership: bob is refused there at once.
    assert bob.request("GET", f"/api/chats/{uri}/messages/").status_code == 403
    assert bob.request("POST", f"/api/chats/{uri}/messages/",
                       json={"message": "still here?"}).status_code == 403


def test_a_subscription_gets_exactly_what_is_missing_then_ready_and_signals(pair):
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = alice.new_chat()
    bob.join(uri)
    seqs = [bob.post(uri, f"m{i}")["seq"] for i in range(6)]

    async def scenario():
        async with Stream(alice) as stream:
            await stream.send({"type": "subscribe", "uri": uri, "since": seqs[2]})
            ready = (await stream.wait(lambda: stream.of("ready", uri), "ready"))[0]
            assert ready["seq"] == seqs[-1]
            assert [e["seq"] for e in stream.events(uri)] == seqs[3:]
            presence = await stream.wait(lambda: stream.of("presence", uri), "presence")
            assert alice.username in [u["username"] for u in presence[0]["users"]]
            # Signals come while subscribed: bob types.
            async with Stream(bob) as bobs:
                await bobs.send({"type": "typing", "uri": uri})
                await stream.wait(lambda: any(bob.username in f["users"]
                                              for f in stream.of("typing", uri)), "bob typing")
                await bobs.send({"type": "message", "uri": uri, "message": "via the stream",
                                 "client_id": "c1"})
                await stream.wait(lambda: any(e.get("client_id") == "c1" for e in stream.events(uri)),
                                  "bob's post through his stream")
            await stream.send({"type": "subscribe", "uri": "0" * 15, "since": 0})
            error = (await stream.wait(lambda: stream.of("error"), "an error"))[0]
            assert error["uri"] == "0" * 15 and error["detail"].startswith("uri:")
            await stream.send({"type": "message", "uri": uri})
            error = (await stream.wait(lambda: len(stream.of("error")) > 1, "an error") and
                     stream.of("error")[1])
            assert error["uri"] == uri and "message" in error["detail"]
    run(scenario())


def test_a_read_on_one_device_reaches_the_same_users_stream_on_the_other_process(pair):
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = alice.new_chat()
    bob.join(uri)
    seq = bob.post(uri, "read me")["seq"]

    async def scenario():
        async with Stream(alice, b.url) as laptop:  # alice's stream on b
            assert laptop.snapshot()[uri]["unread"] == 1
            reply = alice.request("PUT", f"/api/chats/{uri}/read/", json={"seq": seq})  # on a
            assert reply.status_code == 204
            read = await laptop.wait(lambda: laptop.of("read", uri), "the read")
            assert read[0]["seq"] == seq and read[0]["user"] == alice.username
        async with Stream(alice) as phone:
            assert phone.snapshot()[uri]["unread"] == 0
    run(scenario())


def test_a_level_set_on_one_process_reaches_the_users_streams_on_both_and_adds_up(pair):
    """verify_action: the snapshot's levels with the `notifications` frames
    applied are a fresh GET /api/chats/'s, on the process that took the PUT
    (told once, its own notice's echo ignored) and on the other; refused PUTs
    and other people's streams get nothing."""
    a, b = pair
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    room = alice.new_chat()
    bob.join(room)
    direct = alice.request("POST", "/api/dms/", json={"username": bob.username}).json()["uri"]

    def put(uri: str, level) -> int:
        return alice.request("PUT", f"/api/chats/{uri}/notifications/",
                             json={"level": level}).status_code

    async def scenario():
        async with Stream(alice) as here, Stream(alice, b.url) as there, Stream(bob, b.url) as other:
            before = {uri: chat["notifications"] for uri, chat in here.snapshot().items()}
            assert before == {room: "mentions", direct: "all"}
            assert put(room, "none") == put(direct, "mentions") == put(room, "all") == 200
            assert put(room, "loud") == 400
            assert put("0" * 15, "none") == 404
            assert put(direct, "none") == 200  # after the refused ones: they would come before it
            for stream in (here, there):
                await stream.wait(lambda s=stream: s.of("notifications", direct)[-1:]
                                  and s.of("notifications", direct)[-1]["level"] == "none",
                                  "the last level")
                frames = stream.of("notifications")
                assert [(f["uri"], f["level"]) for f in frames] == [
                    (room, "none"), (direct, "mentions"), (room, "all"), (direct, "none")]
                levels = dict(before)
                for frame in frames:
                    levels[frame["uri"]] = frame["level"]
                fresh = {c["uri"]: c["notifications"] for c in alice.request("GET", "/api/chats/").json()}
                assert levels == fresh == {room: "all", direct: "none"}
            assert alice.request("GET", f"/api/chats/{direct}/").json()["notifications"] == "none"
            assert other.of("notifications") == []
        async with Stream(alice, b.url) as later:
            assert {u: c["notifications"] for u, c in later.snapshot().items()} == \
                {room: "all", direct: "none"}
    run(scenario())


def test_non_members_never_get_a_frame_of_a_chat(pair):
    a, b = pair
    alice, bob, mallory = Api(a.url).signup(), Api(b.url).signup(), Api(b.url).signup()
    uri = alice.new_chat()
    bob.join(uri)

    async def scenario():
        async with Stream(mallory) as stream:
            bob.post(uri, "private")
            await stream.send({"type": "typing", "uri": uri})
            await stream.send({"type": "message", "uri": uri, "message": "let me in"})
            await stream.send({"type": "read", "uri": uri, "seq": 1})
            await stream.wait(lambda: len(stream.of("error")) == 3, "three refusals")
            assert [f["type"] for f in stream.frames] == ["chats", "error", "error", "error"]
            assert stream.snapshot() == {}
    run(scenario())
    assert [m["message"] for m in alice.history(uri)["messages"]] == ["private"]


def test_two_processes_with_fifty_active_rooms_hold_two_queues(pair, amqp_url):
    a, b = pair
    alice = Api(a.url).signup()
    bob = Api(b.url).signup()
    rooms = [alice.new_chat() for _ in range(50)]
    for uri in rooms:
        bob.join(uri)

    async def scenario():
        async with Stream(alice), Stream(bob):
            listing = rabbitmqctl("list_queues", "-p", vhost_of(amqp_url), "name", "--quiet",
                                  "--no-table-headers")
            queues = [line for line in listing.splitlines() if line.strip()]
            return queues
    queues = run(scenario())
    assert len(queues) == 2, queues


def test_the_user_stream_is_refused_like_room_sockets(pair):
    a, _ = pair
    alice = Api(a.url).signup()

    async def status(url: str, **kwargs) -> int:
        try:
            async with websockets.connect(url, open_timeout=5, **kwargs):
                return 101
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    async def scenario():
        base = a.ws_url
        assert await status(f"{base}/ws/") == 401
        assert await status(f"{base}/ws/?token=bad.to.ken") == 401
        assert await status(f"{base}/ws/?token={alice.token}", origin="http://evil.example") == 403
        assert await status(f"{base}/ws/?token={urllib.parse.quote(alice.token)}") == 101
    run(scenario())


def test_a_password_change_closes_the_users_other_streams_on_both_processes(pair):
    """The stream is counted as its user's socket after the handshake (Tornado's
    on_finish had released it), so a revocation reaches it like a room socket."""
    a, b = pair
    alice = Api(a.url).signup()
    device = Api(a.url, alice.username, alice.password).login()

    async def scenario():
        async with Stream(device) as here, Stream(device, b.url) as there:
            reply = alice.request("POST", "/auth/password/",
                                  json={"old_password": alice.password, "new_password": "a-good-one-1"})
            assert reply.status_code == 204, reply.text
            await here.wait(lambda: here.closed, "the stream on this process closed")
            await there.wait(lambda: there.closed, "the stream on the other process closed")
            assert here.closed == there.closed == 1008
    run(scenario())


def test_the_socket_cap_holds_for_handshakes_made_at_once(pair):
    """Forty streams of one user at once, against max_sockets_per_user 10: each
    handshake is counted before its first await after authentication."""
    a, _ = pair
    alice = Api(a.url).signup()

    async def scenario():
        url = f"{a.ws_url}/ws/?token={alice.token}"

        async def one():
            try:
                return await websockets.connect(url, open_timeout=10)
            except websockets.InvalidStatus as refused:
                return refused.response.status_code

        answers = await asyncio.gather(*(one() for _ in range(40)))
        opened = [ws for ws in answers if not isinstance(ws, int)]
        for ws in opened:
            await ws.close()
        return len(opened), sorted({a for a in answers if isinstance(a, int)})
    assert run(scenario()) == (10, [429])
