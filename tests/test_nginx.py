"""Two server processes behind nginx (deploy/nginx.conf), on one RabbitMQ and one MongoDB."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from chat.config import Config
from deploy.cluster import SITE, Nginx
from tests.helpers import Api, Listener, free_port, metric, probe_joined, two_members, wait_for


@pytest.fixture
def cluster(start_server, fresh_db):
    """(nginx, [server, server]): both processes share the database and RabbitMQ."""
    servers = [start_server(mongo_url=fresh_db, behind_proxy=True) for _ in range(2)]
    nginx = Nginx(free_port(), [s.port for s in servers]).start()
    yield nginx, servers
    nginx.stop()


def test_the_config_outlives_pings_and_passes_the_servers_own_body_limit():
    site = SITE.read_text()
    timeouts = {int(t) for t in re.findall(r"proxy_read_timeout (\d+)s;", site)}
    assert timeouts and min(timeouts) > 2 * Config().ws_ping_interval
    size = re.search(r"client_max_body_size (\d+)m;", site)
    assert size and int(size.group(1)) * 1024 * 1024 > Config().max_body_bytes


def open_sockets(server) -> float:
    return metric(httpx.get(f"{server.url}/metrics", timeout=5).text, "chat_open_sockets")


async def spread_listeners(users: list[Api], uri: str, servers, reconnect: bool = False,
                           count: int = 6) -> list[Listener]:
    """Listeners through nginx until each process has some (nginx takes turns)."""
    listeners: list[Listener] = []
    while len(listeners) < count or not all(open_sockets(s) for s in servers):
        assert len(listeners) < 4 * count, "nginx sent every socket to one process"
        listener = Listener(users[len(listeners) % len(users)], uri).start(reconnect=reconnect)
        listeners.append(listener)
        await wait_for(listener.ready.is_set, 10, "a socket through nginx")
    return listeners


def post_until_stored(api: Api, uri: str, text: str, client_id: str, seconds: float = 20) -> dict:
    """Post; on a proxy error or a dropped connection, repeat with the same client_id."""
    stop = time.monotonic() + seconds
    while True:
        try:
            reply = api.request("POST", f"/api/chats/{uri}/messages/",
                                json={"message": text, "client_id": client_id})
            if reply.status_code == 200:
                return reply.json()
            assert reply.status_code in (502, 503, 504), reply.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < stop, f"{client_id} was never stored"
        time.sleep(0.1)


@pytest.mark.slow
def test_sockets_through_nginx_on_both_processes_get_every_message(cluster):
    nginx, servers = cluster
    alice, bob, uri = two_members(nginx.url)
    posts = 40

    async def scenario():
        listeners = await spread_listeners([alice, bob], uri, servers)
        for n in range(posts):
            await asyncio.to_thread((alice, bob)[n % 2].post, uri, f"m{n}", f"c{n}")
        await wait_for(lambda: all(len(lst.seqs) >= posts for lst in listeners), 15,
                       "every message on every socket")
        await asyncio.sleep(0.3)  # nothing more may arrive
        for listener in listeners:
            await listener.stop()
        return listeners

    for listener in asyncio.run(scenario()):
        assert listener.seqs == list(range(1, posts + 1))
    assert alice.all_seqs(uri) == list(range(1, posts + 1))


@pytest.mark.slow
def test_nginx_forwards_host_client_address_and_limits(cluster):
    nginx, servers = cluster
    alice = Api(nginx.url).signup()
    uri = alice.new_chat()
    ws_url = alice.ws_url(uri)

    async def scenario():
        # Host is forwarded, so the page's own origin passes the server's origin check.
        async with websockets.connect(ws_url, origin=nginx.url, open_timeout=5) as ws:
            await probe_joined(ws)
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url, origin="https://evil.example", open_timeout=5):
                pass
        assert refused.value.response.status_code == 403

    asyncio.run(scenario())
    # nginx replaces X-Real-IP with the real peer: a forged one changes nothing.
    assert httpx.get(f"{nginx.url}/metrics", headers={"X-Real-IP": "203.0.113.7"}).status_code == 200
    forged = httpx.get(f"{servers[0].url}/metrics", headers={"X-Real-IP": "203.0.113.7"})
    assert forged.status_code == 403  # the same header straight to a process is believed
    # Bodies: the server's own 413 below nginx's client_max_body_size, nginx's above it.
    big = alice.request("POST", f"/api/chats/{uri}/messages/", content=b"x" * 100_000,
                        headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "detail" in big.json()
    huge = alice.request("POST", f"/api/chats/{uri}/messages/", content=b"x" * 2_000_000,
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.headers["server"].startswith("nginx")
    access_log = nginx.access_log.read_text()
    assert "/ws/chats/" in access_log and "token=" not in access_log


@pytest.mark.slow
def test_clients_of_a_killed_process_reconnect_through_nginx_and_miss_nothing(cluster):
    nginx, servers = cluster
    alice, bob, uri = two_members(nginx.url)
    posts, kill_at = 60, 20
    run = uuid.uuid4().hex[:6]

    async def scenario():
        listeners = await spread_listeners([alice, bob], uri, servers, reconnect=True)
        victims = open_sockets(servers[0])
        for n in range(posts):
            if n == kill_at:
                servers[0].kill()
            await asyncio.to_thread(post_until_stored, (alice, bob)[n % 2], uri, f"m{n}",
                                    f"{run}-{n}")
            await asyncio.sleep(0.02)
        await wait_for(lambda: all(len(lst.seqs) >= posts for lst in listeners), 30,
                       "every message on every socket after the kill")
        await asyncio.sleep(0.3)
        for listener in listeners:
            await listener.stop()
        return listeners, victims

    listeners, victims = asyncio.run(scenario())
    assert victims > 0
    # a socket's close is recorded when it ends: the killed ones closed twice
    reconnected = [lst for lst in listeners if len(lst.closes) >= 2]
    assert len(reconnected) >= victims, "the killed process's sockets reconnected"
    for listener in listeners:
        assert listener.seqs == list(range(1, posts + 1))
    assert alice.all_seqs(uri) == list(range(1, posts + 1))
    # Failed upstreams made nginx log, and the sockets' URLs carried ?token=.
    logs = nginx.access_log.read_text() + nginx.error_log.read_text()
    assert "/ws/chats/" in logs
    assert "token=" not in logs and alice.token not in logs and bob.token not in logs
