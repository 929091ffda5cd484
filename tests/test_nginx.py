"""Two server processes behind nginx (deploy/nginx.conf), on one RabbitMQ and one MongoDB."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from chat.config import Config
from deploy.cluster import SITE, Nginx, port_open
from tests.helpers import (
    FIRST_MESSAGE,
    Api,
    Listener,
    free_port,
    metric,
    next_frame,
    probe_joined,
    two_members,
    wait_for,
    wait_until,
)


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
        assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + posts))
    assert alice.all_seqs(uri) == list(range(FIRST_MESSAGE, FIRST_MESSAGE + posts))


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
        assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + posts))
    assert alice.all_seqs(uri) == list(range(FIRST_MESSAGE, FIRST_MESSAGE + posts))
    # Failed upstreams made nginx log, and the sockets' URLs carried ?token=.
    logs = nginx.access_log.read_text() + nginx.error_log.read_text()
    assert "/ws/chats/" in logs
    assert "token=" not in logs and alice.token not in logs and bob.token not in logs


class Traffic:
    """Clients posting and reading through nginx without pause, each in its own
    thread; every answer's status is counted, and a dropped connection too."""

    def __init__(self, apis: list[Api], uri: str, readers: int = 2, logins: int = 2):
        self.apis = apis
        self.uri = uri
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []  # transport errors: the proxy dropped a request
        self.posted = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.post, args=(api,), daemon=True) for api in apis]
        self.threads += [threading.Thread(target=self.read, args=(apis[i % len(apis)],), daemon=True)
                         for i in range(readers)]
        self.threads += [threading.Thread(target=self.login, args=(apis[i % len(apis)],), daemon=True)
                         for i in range(logins)]
        self.lock = threading.Lock()

    def count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def call(self, api: Api, method: str, path: str, **kwargs) -> httpx.Response | None:
        try:
            reply = api.request(method, path, **kwargs)
        except httpx.TransportError as error:
            self.errors.append(f"{method} {path}: {error!r}")
            return None
        self.count(reply.status_code)
        return reply

    def post(self, api: Api) -> None:
        n = 0
        while not self.stopping.is_set():
            client_id = f"{api.username}-{n}"
            reply = self.call(api, "POST", f"/api/chats/{self.uri}/messages/",
                              json={"message": client_id, "client_id": client_id})
            if reply is not None and reply.status_code == 200:
                n += 1
                with self.lock:
                    self.posted += 1
            time.sleep(0.01)

    def login(self, api: Api) -> None:
        """Logins hash with bcrypt: a request that is in flight for a while."""
        while not self.stopping.is_set():
            self.call(api, "POST", "/auth/jwt/create/",
                      json={"username": api.username, "password": api.password})

    def read(self, api: Api) -> None:
        while not self.stopping.is_set():
            self.call(api, "GET", f"/api/chats/{self.uri}/messages/", params={"limit": 20})
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)


@pytest.mark.slow
def test_a_rolling_restart_behind_nginx_answers_no_5xx_and_sockets_resume(start_server, fresh_db):
    """SIGTERM one process at a time, start it again, then the next: clients
    posting, reading and logging in through nginx meanwhile never see a 5xx."""
    # bcrypt at 10 rounds: a login is in flight for tens of milliseconds.
    servers = [start_server(mongo_url=fresh_db, behind_proxy=True, bcrypt_rounds=10)
               for _ in range(2)]
    nginx = Nginx(free_port(), [s.port for s in servers]).start()
    try:
        rolling_restart(nginx, servers)
    finally:
        nginx.stop()


def rolling_restart(nginx: Nginx, servers) -> None:
    alice, bob, uri = two_members(nginx.url)

    async def scenario():
        listeners = await spread_listeners([alice, bob], uri, servers, reconnect=True)
        with Traffic([alice, bob], uri) as traffic:
            await wait_for(lambda: traffic.posted >= 20, 15, "traffic")
            for server in servers:
                exit_code = await asyncio.to_thread(server.stop)
                assert exit_code == 0, server.log()
                logged = server.log_path.stat().st_size
                await asyncio.to_thread(server.start)  # same port, same database
                # The next one only once nginx sends to this one again (after the
                # upstream's fail_timeout): else nginx has no live upstream.
                await wait_for(lambda s=server, n=logged: "messages/ 200" in
                               s.log_path.read_text(errors="replace")[n:], 15,
                               "nginx to send requests to the restarted process")
        total = traffic.posted
        await wait_for(lambda: all(len(lst.seqs) >= total for lst in listeners), 30,
                       "every message on every socket")
        await asyncio.sleep(0.3)
        for listener in listeners:
            await listener.stop()
        return listeners, traffic, total

    listeners, traffic, total = asyncio.run(scenario())
    print(f"\nrolling restart through nginx: {dict(sorted(traffic.statuses.items()))}, "
          f"{len(traffic.errors)} dropped, {total} posted")
    assert sum(n for status, n in traffic.statuses.items() if status >= 500) == 0, traffic.statuses
    assert traffic.errors == []
    assert sum(traffic.statuses.values()) > 100
    assert alice.all_seqs(uri) == list(range(FIRST_MESSAGE, FIRST_MESSAGE + total))
    for listener in listeners:
        assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + total))
    assert any(1001 in lst.closes for lst in listeners)  # sockets were moved, and resumed
    for server in servers:  # every request, socket handshakes included, was seen to its end
        assert "HTTP requests still running at shutdown" not in server.log_path.read_text()


def test_the_readmes_snippet_serves_chatires_old_socket_url(server):
    """README "Coming from chatire": ws://host:8081/<uri>?token= reaches the room."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Coming from chatire", 1)[1]
    snippet = section.split("```nginx", 1)[1].split("```", 1)[0]
    old_port = free_port()

    class WithChatire(Nginx):
        def write_config(self) -> Path:
            conf = super().write_config()
            with open(self.dir / "site.conf", "a") as site:
                site.write(snippet.replace("listen 8081;", f"listen 127.0.0.1:{old_port};"))
            return conf

    nginx = WithChatire(free_port(), [server.port]).start()
    try:
        wait_until(lambda: port_open(old_port), 10, "nginx on chatire's port")
        alice = Api(server.url).signup()
        uri = alice.new_chat()

        async def scenario() -> dict:
            url = f"ws://127.0.0.1:{old_port}/{uri}?token={alice.token}"
            async with websockets.connect(url, open_timeout=5) as ws:
                await probe_joined(ws)
                await asyncio.to_thread(alice.post, uri, "through the old URL")
                return await next_frame(ws, "message")

        frame = asyncio.run(scenario())
        assert frame["message"] == "through the old URL" and frame["uri"] == uri
    finally:
        nginx.stop()
