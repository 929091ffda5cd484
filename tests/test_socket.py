"""The room's WebSocket on one real server process (RabbitMQ and the MongoDB wire server)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.helpers import (
    FIRST_MESSAGE,
    PROBE,
    Api,
    Listener,
    catch_up,
    metric,
    next_frame,
    probe_answer,
    probe_joined,
    refused_status,
    server_in_thread,
    two_members,
    wait_for,
)


def test_two_members_see_each_others_messages_in_order_exactly_once(room):
    alice, bob, uri = room

    async def scenario():
        received: dict[str, list[dict]] = {"alice": [], "bob": []}
        async with websockets.connect(alice.ws_url(uri)) as a, \
                websockets.connect(bob.ws_url(uri)) as b:
            await probe_joined(a)
            await probe_joined(b)
            for i in range(10):
                sender = a if i % 2 == 0 else b
                await sender.send(json.dumps({"type": "message", "message": f"m{i}",
                                              "client_id": f"c{i}"}))
                for name, ws in (("alice", a), ("bob", b)):
                    received[name].append(await next_frame(ws, "message"))
            for ws in (a, b):
                with pytest.raises(asyncio.TimeoutError):
                    await next_frame(ws, "message", wait=0.5)
        return received

    received = asyncio.run(scenario())
    for frames in received.values():
        assert [f["seq"] for f in frames] == list(range(FIRST_MESSAGE, FIRST_MESSAGE + 10))
        assert [f["message"] for f in frames] == [f"m{i}" for i in range(10)]
        assert [f["user"]["username"] for f in frames] == [
            (alice if i % 2 == 0 else bob).username for i in range(10)]


def test_every_socket_gets_every_message_once_in_seq_order(room):
    alice, bob, uri = room

    async def scenario():
        listeners = [Listener(alice, uri).start(since=None), Listener(bob, uri).start(since=None),
                     Listener(bob, uri).start(since=None)]
        await wait_for(lambda: all(lst.ready.is_set() for lst in listeners), 10, "ready frames")
        async with websockets.connect(alice.ws_url(uri)) as a:
            await probe_joined(a)
            for i in range(50):
                await a.send(json.dumps({"type": "message", "message": f"m{i}", "client_id": f"c{i}"}))
            await wait_for(lambda: all(len(lst.seqs) >= 50 for lst in listeners), 15, "50 messages")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive by now
        for listener in listeners:
            await listener.stop()
        return listeners

    listeners = asyncio.run(scenario())
    for listener in listeners:
        assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + 50))
        texts = [f["message"] for f in listener.frames if f["type"] == "message"]
        assert texts == [f"m{i}" for i in range(50)]
        message = next(f for f in listener.frames if f["type"] == "message")
        assert set(message) >= {"type", "seq", "id", "uri", "user", "message", "created", "client_id"}


def test_http_posts_reach_the_socket(room):
    alice, bob, uri = room

    async def scenario():
        async with websockets.connect(bob.ws_url(uri)) as b:
            await probe_joined(b)
            posted = await asyncio.to_thread(alice.post, uri, "over http")
            frame = await next_frame(b, "message")
            assert frame["seq"] == posted["seq"] and frame["message"] == "over http"
            assert frame["user"]["username"] == alice.username

    asyncio.run(scenario())


def test_since_sends_what_was_missed_then_ready_then_live(room):
    alice, bob, uri = room
    for i in range(FIRST_MESSAGE, 8):
        alice.post(uri, f"old{i}")

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=3)) as b:
            frames = [await next_frame(b) for _ in range(5)]
            assert [f["seq"] for f in frames[:4]] == [4, 5, 6, 7]
            assert frames[4] == {"type": "ready", "seq": 7}
            await asyncio.to_thread(alice.post, uri, "new")
            assert (await next_frame(b, "message"))["seq"] == 8

    asyncio.run(scenario())


def test_without_since_the_socket_gets_live_messages_only_and_no_ready(room):
    # chatire's client renders every frame as a message: a ready frame crashed it.
    alice, bob, uri = room
    for i in range(3):
        alice.post(uri, f"old{i}")

    async def scenario():
        async with websockets.connect(bob.ws_url(uri)) as b:
            await b.send(PROBE)  # answered once the socket is in the room
            first = await next_frame(b)
            assert probe_answer(first), first  # no ready before it, and no history
            await asyncio.to_thread(alice.post, uri, "live")
            assert (await next_frame(b))["seq"] == FIRST_MESSAGE + 3
            with pytest.raises(TimeoutError):
                await next_frame(b, wait=0.5)

    asyncio.run(scenario())


def test_a_long_catch_up_is_complete_and_in_order(room):
    alice, bob, uri = room
    for i in range(1, 1201):
        alice.post(uri, f"m{i}")

    assert catch_up(bob, uri).seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + 1200))


def test_messages_racing_a_catch_up_are_kept_once(room):
    """Posts land while a socket reads its history: none lost, none doubled."""
    alice, bob, uri = room
    for i in range(600):
        alice.post(uri, f"before{i}")

    async def scenario():
        async def post_more():
            for i in range(100):
                await asyncio.to_thread(alice.post, uri, f"during{i}")
        posting = asyncio.ensure_future(post_more())
        listener = Listener(bob, uri).start(since=0)
        await posting
        await wait_for(lambda: len(listener.seqs) >= 700, 20, "700 messages")
        await asyncio.sleep(0.3)
        await listener.stop()
        return listener

    listener = asyncio.run(scenario())
    assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + 700))


def test_socket_posts_take_the_http_path_with_idempotency(room):
    alice, _bob, uri = room

    async def scenario():
        async with websockets.connect(alice.ws_url(uri)) as a:
            await probe_joined(a)
            for _ in range(2):
                await a.send(json.dumps({"type": "message", "message": "once", "client_id": "same"}))
            first = await next_frame(a, "message")
            assert first["client_id"] == "same"
            with pytest.raises(asyncio.TimeoutError):
                await next_frame(a, "message", wait=0.7)
        reply = alice.request("POST", f"/api/chats/{uri}/messages/",
                              json={"message": "once", "client_id": "same"}).json()
        assert reply["seq"] == first["seq"]

    asyncio.run(scenario())
    assert alice.all_seqs(uri) == [FIRST_MESSAGE]


@pytest.mark.parametrize("frame, expected", [
    ("not json", "invalid"),
    (json.dumps([1, 2]), "invalid"),
    (json.dumps({"type": "shout", "message": "x"}), "invalid"),
    (json.dumps({"type": "message", "message": ""}), "invalid"),
    (json.dumps({"type": "message", "message": "x" * 2001}), "invalid"),
    (json.dumps({"type": "message", "message": 42}), "invalid"),
    (json.dumps({"type": "message", "message": "ok", "client_id": 5}), "invalid"),
])
def test_bad_frames_get_an_error_frame_and_store_nothing(room, frame, expected):
    alice, _, uri = room

    async def scenario():
        async with websockets.connect(alice.ws_url(uri)) as a:
            await probe_joined(a)
            await a.send(frame)
            error = await next_frame(a)
            assert error["type"] == "error" and error["code"] == expected and error["detail"]
            # the socket stays usable
            await a.send(json.dumps({"type": "message", "message": "fine", "client_id": "ok"}))
            assert (await next_frame(a, "message"))["message"] == "fine"

    asyncio.run(scenario())
    assert alice.all_seqs(uri) == [FIRST_MESSAGE]


def test_a_frame_over_64_kib_closes_with_1009(room):
    alice, _, uri = room

    async def scenario():
        async with websockets.connect(alice.ws_url(uri), max_size=None) as a:
            await probe_joined(a)
            await a.send("x" * (64 * 1024 + 10))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(a.recv(), 5)
            return a.close_code

    assert asyncio.run(scenario()) == 1009


def test_the_user_rate_limit_answers_with_an_error_frame(start_server):
    server = start_server(user_messages_per_minute=5)
    alice = Api(server.url).signup()
    uri = alice.new_chat()

    async def scenario():
        async with websockets.connect(alice.ws_url(uri)) as a:
            await probe_joined(a)
            for i in range(6):
                await a.send(json.dumps({"type": "message", "message": f"m{i}", "client_id": f"c{i}"}))
            frames = [await next_frame(a) for _ in range(6)]
            errors = [f for f in frames if f["type"] == "error"]
            assert len(errors) == 1 and errors[0]["code"] == "rate_limited"
            assert errors[0]["client_id"] == "c5"

    asyncio.run(scenario())
    reply = alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": "http too"})
    assert reply.status_code == 429 and int(reply.headers["Retry-After"]) > 0


def test_refused_handshakes(server, room):
    alice, bob, uri = room
    stranger = Api(server.url).signup()

    async def scenario():
        assert await refused_status(stranger.ws_url(uri)) == 403
        assert await refused_status(alice.ws_url(uri).replace(alice.token, "bad.to.ken")) == 401
        no_token = f"{server.ws_url}/ws/chats/{uri}/"
        assert await refused_status(no_token) == 401
        assert await refused_status(alice.ws_url("0123456789abcde")) == 404
        for since in ("-4", "1.5", "²", str(2**63), "9" * 5000):
            assert await refused_status(alice.ws_url(uri) + f"&since={since}") == 400, since
        assert await refused_status(alice.ws_url(uri), origin="http://evil.example") == 403
        # the server's own origin and the Authorization header are fine
        async with websockets.connect(f"{server.ws_url}/ws/chats/{uri}/",
                                      additional_headers={"Authorization": f"Bearer {bob.token}"},
                                      origin=server.url) as b:
            await probe_joined(b)

    asyncio.run(scenario())


def test_allowed_origins_are_configurable(start_server):
    server = start_server(allowed_origins="https://chat.example")
    alice = Api(server.url).signup()
    uri = alice.new_chat()

    async def scenario():
        async with websockets.connect(alice.ws_url(uri), origin="https://chat.example") as a:
            await probe_joined(a)
        assert await refused_status(alice.ws_url(uri), origin="https://other.example") == 403

    asyncio.run(scenario())


def small_buffer_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive buffer, so backpressure comes soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def test_a_client_that_stops_reading_is_closed_with_4008_others_keep_going(start_server):
    server = start_server(ws_send_buffer_bytes=262144, max_message_chars=60000)
    alice, bob, uri = two_members(server.url)
    text = "y" * 60000
    count = 150  # 9 MB: more than the kernel's socket buffers and the server's 256 KiB

    async def scenario():
        # The stalled client's library stops reading once its one-frame queue is full.
        stalled = await websockets.connect(bob.ws_url(uri), max_queue=1, max_size=None,
                                           sock=small_buffer_socket(server.port))
        healthy = Listener(alice, uri).start(since=None)
        await wait_for(lambda: healthy.ready.is_set(), 10, "ready")
        def metrics() -> str:
            return alice.http.get("/metrics").text

        async def post_all():
            for i in range(count):
                await asyncio.to_thread(alice.post, uri, text, f"c{i}")
        posting = asyncio.ensure_future(post_all())
        deadline = asyncio.get_running_loop().time() + 60
        while not metric(await asyncio.to_thread(metrics), "chat_slow_consumer_closes_total"):
            assert asyncio.get_running_loop().time() < deadline, "no slow-consumer close"
            await asyncio.sleep(0.1)
        # Reading again (within the server's 5 s close handshake), the stalled
        # client finds the 4008 after what was already buffered for it.
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(stalled.recv(), 10)
        await posting
        await wait_for(lambda: len(healthy.seqs) >= count, 60, "the healthy socket's messages")
        await asyncio.sleep(0.3)
        await healthy.stop()
        return stalled.close_code, healthy.seqs, await asyncio.to_thread(metrics)

    close_code, seqs, metrics = asyncio.run(scenario())
    assert close_code == 4008
    assert seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + count))
    assert metric(metrics, "chat_slow_consumer_closes_total") == 1
    assert metric(metrics, "chat_open_sockets") == 0


def test_a_catch_up_larger_than_the_send_buffer_completes(start_server):
    """History is sent a page at a time as the client reads it, not all at once."""
    server = start_server(ws_send_buffer_bytes=262144)
    alice, bob, uri = two_members(server.url)
    for i in range(600):
        alice.post(uri, f"{i:04d}" + "z" * 1990)  # 1.2 MB of history

    listener = catch_up(bob, uri)
    assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + 600))
    assert listener.closes == [None]  # one connection, closed by us, never as slow


def test_a_socket_whose_room_cannot_start_is_closed_with_1011_and_can_come_back(fresh_db):
    """The broker's subscribe raises (as pika does on a closing channel) until
    it is allowed to work: the waiting socket is closed at its ready bound, and
    the room, retried meanwhile, serves the client's next socket."""
    broken = {"subscribe": True}

    def break_subscribe(server):
        subscribe = server.broker.subscribe

        async def failing_subscribe(uri):
            if broken["subscribe"]:
                raise RuntimeError("Channel is closed.")
            await subscribe(uri)
        server.broker.subscribe = failing_subscribe

    with server_in_thread(fresh_db, break_subscribe, ws_ready_timeout=1.0) as (server, url):
        alice, _bob, uri = two_members(url)

        async def scenario():
            for since in (0, None):
                async with websockets.connect(alice.ws_url(uri, since)) as ws:
                    with pytest.raises(ConnectionClosed):
                        await next_frame(ws, wait=10)
                    assert ws.close_code == 1011, since
            await wait_for(lambda: not server.hub.rooms, 5, "the room to go")
            broken["subscribe"] = False
            async with websockets.connect(alice.ws_url(uri, 0)) as ws:
                assert (await next_frame(ws, "ready"))["seq"] == 1  # bob's join
                alice.post(uri, "it works")
                assert (await next_frame(ws, "message"))["message"] == "it works"

        asyncio.run(scenario())
        assert metric(server.metrics.render().decode(), 'chat_room_failures_total{step="start"}') >= 2


def test_a_join_whose_catch_up_read_raises_is_closed_with_1011(fresh_db):
    """Not Unavailable but anything (a killed cursor, a bug): 1011, not a dropped
    connection, and the client's next socket catches up."""
    failures = {"left": 1}

    def break_reads(server):
        messages_after = server.store.messages_after

        async def failing_messages_after(*args):
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("cursor killed")
            return await messages_after(*args)
        server.store.messages_after = failing_messages_after

    with server_in_thread(fresh_db, break_reads) as (_server, url):
        alice, _bob, uri = two_members(url)
        alice.post(uri, "stored")

        async def scenario():
            async with websockets.connect(alice.ws_url(uri, 0)) as ws:
                with pytest.raises(ConnectionClosed):
                    await next_frame(ws, wait=10)
                assert ws.close_code == 1011
            async with websockets.connect(alice.ws_url(uri, 0)) as ws:
                assert (await next_frame(ws))["type"] == "member"  # bob's join
                assert (await next_frame(ws))["message"] == "stored"
                assert (await next_frame(ws))["type"] == "ready"

        asyncio.run(scenario())
