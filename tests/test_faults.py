"""Several processes and faults: broker restarts, killed servers, MongoDB down, SIGTERM.

Everything runs on loopback, every wait is bounded, and each test stops what
it started. The shared RabbitMQ node is never stopped: its faults are cut
connections in the test's own vhost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
import uuid

import httpx
import pytest
import websockets

from tests.conftest import MongoServer
from tests.helpers import (
    FIRST_MESSAGE,
    Api,
    Listener,
    local_rabbit,
    metric,
    probe_joined,
    rabbitmqctl,
    vhost_of,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.slow


def post_many(apis: list[Api], uris: list[str], count: int, threads: int = 8,
              pause: float = 0.0) -> None:
    """Post `count` messages round-robin over rooms and servers, concurrently."""
    def post(i: int) -> None:
        api = apis[i % len(apis)]
        uri = uris[i % len(uris)]
        for _ in range(50):  # a 503 or a restarting server: retried, idempotent by client_id
            try:
                api.post(uri, f"m{i}", client_id=f"c{i}")
                break
            except (AssertionError, httpx.HTTPError):
                time.sleep(0.2)
        else:
            raise AssertionError(f"message {i} could not be posted")
        if pause:
            time.sleep(pause)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, range(count)))


def assert_complete(listeners: list[Listener], expected: dict[str, int]) -> None:
    for listener in listeners:  # every room of make_rooms has the guest's join at seq 1
        assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + expected[listener.uri])), (
            f"socket on {listener.uri}: {len(listener.seqs)} seqs, "
            f"{len(set(listener.seqs))} distinct, expected {expected[listener.uri]}")


def room_sizes(api: Api, uris: list[str]) -> dict[str, int]:
    return {uri: len(api.all_seqs(uri)) for uri in uris}


def make_rooms(first, second, count: int) -> tuple[list[Api], list[Api], list[str]]:
    """Members of `count` rooms, each user with an Api on both servers."""
    owner = Api(first.url).signup()
    guest = Api(first.url).signup()
    uris = [owner.new_chat() for _ in range(count)]
    for uri in uris:
        guest.join(uri)
    on_second = [Api(second.url, owner.username).login(), Api(second.url, guest.username).login()]
    return [owner, guest], on_second, uris


def test_two_processes_deliver_every_message_to_every_socket(two_servers):
    first, second = two_servers
    on_first, on_second, uris = make_rooms(first, second, 5)

    async def scenario():
        listeners = []
        for i in range(20):  # 20 sockets over 5 rooms, half on each process
            api = (on_first if i % 2 == 0 else on_second)[i % 2]
            listeners.append(Listener(api, uris[i % 5]).start(since=None))
        await wait_for(lambda: all(lst.ready.is_set() for lst in listeners), 15, "ready")
        await asyncio.to_thread(post_many, [on_first[0], on_second[1]], uris, 2000)
        await wait_for(lambda: all(len(lst.seqs) >= 400 for lst in listeners), 30, "2,000 messages")
        await asyncio.sleep(0.5)  # a duplicate would arrive by now
        for listener in listeners:
            await listener.stop()
        return listeners

    listeners = asyncio.run(scenario())
    assert_complete(listeners, {uri: 400 for uri in uris})


@local_rabbit
def test_a_broker_outage_mid_stream_loses_and_doubles_nothing(two_servers, amqp_url):
    """Every connection of the test's vhost cut at once (a whole-node restart of
    a broker of the test's own is in test_failover.py: the shared node stays up)."""
    first, second = two_servers
    on_first, on_second, uris = make_rooms(first, second, 2)

    async def scenario():
        listeners = [Listener((on_first, on_second)[i % 2][i // 2 % 2], uris[i % 2]).start(since=None)
                     for i in range(8)]
        await wait_for(lambda: all(lst.ready.is_set() for lst in listeners), 15, "ready")
        posting = asyncio.ensure_future(asyncio.to_thread(
            post_many, [on_first[0], on_second[1]], uris, 1000, 4, 0.01))
        await wait_for(lambda: min(len(lst.seqs) for lst in listeners) >= 50, 20, "the stream")
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "--vhost",
                                vhost_of(amqp_url), "fault test")
        outage_over = time.monotonic()
        for server in (first, second):
            await asyncio.to_thread(wait_until, lambda s=server: httpx.get(
                f"{s.url}/healthz").json()["broker"] == "ok", 15, "the broker reconnect")
        reconnected_in = time.monotonic() - outage_over
        reconnects = [metric((await asyncio.to_thread(httpx.get, f"{s.url}/metrics")).text,
                             "chat_broker_reconnects_total") for s in (first, second)]
        await posting
        expected = await asyncio.to_thread(room_sizes, on_first[0], uris)
        await wait_for(lambda: all(len(lst.seqs) >= expected[lst.uri] for lst in listeners), 30,
                       "every message after the outage")
        await asyncio.sleep(0.5)
        for listener in listeners:
            await listener.stop()
        return listeners, expected, reconnected_in, reconnects

    listeners, expected, reconnected_in, reconnects = asyncio.run(scenario())
    assert reconnects == [1, 1]  # the outage really happened, on both processes
    assert sum(expected.values()) == 1000
    assert_complete(listeners, expected)
    assert reconnected_in < 15


def test_a_killed_server_restarts_and_its_clients_miss_nothing(two_servers):
    first, second = two_servers
    on_first, on_second, uris = make_rooms(first, second, 1)
    uri = uris[0]

    async def scenario():
        victims = [Listener(on_first[i % 2], uri).start(reconnect=True, since=0) for i in range(4)]
        others = [Listener(on_second[i % 2], uri).start(reconnect=True, since=0) for i in range(2)]
        everyone = victims + others
        await wait_for(lambda: all(lst.ready.is_set() for lst in everyone), 15, "ready")
        posting = asyncio.ensure_future(asyncio.to_thread(post_many, [on_second[0]], [uri], 600, 2, 0.005))
        await wait_for(lambda: len(victims[0].seqs) >= 100, 20, "the stream")
        first.kill()
        await asyncio.sleep(1)
        await asyncio.to_thread(first.start)  # same port, same database
        await posting
        await wait_for(lambda: all(len(lst.seqs) >= 600 for lst in everyone), 30, "all 600")
        await asyncio.sleep(0.5)
        for listener in everyone:
            await listener.stop()
        return victims, others

    victims, others = asyncio.run(scenario())
    assert_complete(victims + others, {uri: 600})
    assert all(len(v.closes) >= 2 for v in victims)  # they really reconnected


def test_mongodb_down_gives_503_quickly_and_sockets_stay_open(start_server, tmp_path):
    mongo = MongoServer(tmp_path / "mongo")
    mongo.start()
    try:
        server = start_server(mongo_url=f"{mongo.url}/faults")
        alice = Api(server.url).signup()
        uri = alice.new_chat()
        alice.post(uri, "before")

        async def scenario():
            listener = Listener(alice, uri).start(since=0)
            await wait_for(lambda: listener.ready.is_set(), 10, "ready")
            await asyncio.to_thread(mongo.stop)
            started = time.monotonic()
            reply = await asyncio.to_thread(
                alice.request, "POST", f"/api/chats/{uri}/messages/", json={"message": "during"})
            took = time.monotonic() - started
            health = await asyncio.to_thread(httpx.get, f"{server.url}/healthz")
            await asyncio.sleep(1)
            still_open = listener.task is not None and not listener.task.done()
            await asyncio.to_thread(mongo.start)  # same port, same data
            await asyncio.to_thread(wait_until, lambda: httpx.get(f"{server.url}/healthz").status_code == 200,
                                    30, "MongoDB to be back")
            after = await asyncio.to_thread(alice.post, uri, "after")
            await wait_for(lambda: after["seq"] in listener.seqs, 10, "the message after")
            await listener.stop()
            return reply, took, health, still_open, listener

        reply, took, health, still_open, listener = asyncio.run(scenario())
        assert reply.status_code == 503 and reply.headers["Retry-After"]
        assert took < 3
        assert health.status_code == 503 and health.json()["mongo"] == "down"
        assert still_open
        assert listener.seqs == [1, 2]
        assert listener.closes == [None]  # one connection, closed by us
    finally:
        mongo.stop()


def test_sigterm_closes_every_socket_with_1001_and_exits_quickly(start_server):
    server = start_server()
    alice = Api(server.url).signup()
    uris = [alice.new_chat() for _ in range(3)]

    async def scenario():
        sockets = [await websockets.connect(alice.ws_url(uris[i % 3])) for i in range(9)]
        for ws in sockets:
            await probe_joined(ws)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        codes = []
        for ws in sockets:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed:
                pass
            codes.append(ws.close_code)
        exit_code = await asyncio.to_thread(server.process.wait, 10)
        return codes, exit_code, time.monotonic() - started

    codes, exit_code, took = asyncio.run(scenario())
    assert codes == [1001] * 9
    assert exit_code == 0
    assert took < 10


def test_a_hung_mongodb_gives_503_within_the_timeout_for_every_request(start_server, tmp_path):
    """nx-27017 stopped with SIGSTOP (connections hang rather than refuse) while
    10 posters keep posting: every request answers 503 within mongo_timeout_ms
    plus a margin, queue time behind a group commit included."""
    timeout_ms = 1500
    mongo = MongoServer(tmp_path / "mongo")
    mongo.start()
    try:
        server = start_server(mongo_url=f"{mongo.url}/hung", mongo_timeout_ms=timeout_ms)
        posters = [Api(server.url).signup() for _ in range(10)]
        uri = posters[0].new_chat()
        for api in posters[1:]:
            api.join(uri)
        for api in posters:
            api.post(uri, "before")
        answers: list[tuple[int, float]] = []

        def keep_posting(api: Api, until: float) -> None:
            i = 0
            while time.monotonic() < until:
                started = time.monotonic()
                reply = api.request("POST", f"/api/chats/{uri}/messages/",
                                    json={"message": f"during {i}", "client_id": uuid.uuid4().hex})
                answers.append((reply.status_code, time.monotonic() - started))
                i += 1

        mongo.process.send_signal(signal.SIGSTOP)
        try:
            until = time.monotonic() + 4 * timeout_ms / 1000
            with concurrent.futures.ThreadPoolExecutor(len(posters)) as pool:
                list(pool.map(keep_posting, posters, [until] * len(posters)))
        finally:
            mongo.process.send_signal(signal.SIGCONT)
        wait_until(lambda: httpx.post(
            f"{server.url}/api/chats/{uri}/messages/", headers=posters[0].auth,
            json={"message": "after"}).status_code == 200, 30, "posting to work again")
    finally:
        mongo.stop()
    statuses = {status for status, _ in answers}
    slowest = max(took for _, took in answers)
    print(f"hung MongoDB: {len(answers)} requests, statuses {statuses}, slowest {slowest:.2f} s")
    assert statuses == {503}
    assert len(answers) >= 20  # later requests too, not only the first wave
    assert slowest < timeout_ms / 1000 + 1.0


def test_a_process_killed_mid_batch_in_a_hot_room_leaves_no_gap(two_servers):
    """Two processes, 16 posters each into one room; one process is SIGKILLed
    mid-stream. Its posters go on through the other with the same client_ids:
    the room holds seqs 1..N with no gap and each client_id once."""
    first, second = two_servers
    owner = Api(first.url).signup()
    uri = owner.new_chat()
    on_first = [owner] + [Api(first.url).signup() for _ in range(15)]
    for api in on_first[1:]:
        api.join(uri)
    on_second = [Api(second.url, api.username).login() for api in on_first]
    per_poster = 30
    killed = threading.Event()

    def poster(index: int) -> None:
        for i in range(per_poster):
            client_id = f"p{index}-{i}"
            for _ in range(100):
                api = (on_first if index % 2 == 0 and not killed.is_set() else on_second)[index // 2]
                try:
                    reply = api.request("POST", f"/api/chats/{uri}/messages/",
                                        json={"message": client_id, "client_id": client_id})
                    if reply.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            else:
                raise AssertionError(f"{client_id} could not be posted")

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        done = [pool.submit(poster, index) for index in range(32)]
        wait_until(lambda: len(owner.history(uri, limit=200)["messages"]) >= 100, 30,
                   "the room to fill")
        first.kill()
        killed.set()
        for future in done:
            future.result()
    history = []
    page = {"messages": [], "has_more": True}
    while page["has_more"]:
        page = on_second[0].history(uri, after=history[-1]["seq"] if history else 0, limit=200,
                                    events=1)
        history += page["messages"]
    seqs = [m["seq"] for m in history]  # the 15 joins, then the posts
    assert seqs == list(range(1, len(seqs) + 1))
    client_ids = [m["client_id"] for m in history if m["type"] == "message"]
    assert len(client_ids) == len(set(client_ids)) == 32 * per_poster
