"""Test helpers: real server processes, HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from deploy.rabbit import free_port

__all__ = ["free_port"]  # tests import it from here

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789abcdef"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen | None, seconds: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `seconds`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ServerProcess:
    """`python server.py --port P` with test settings; stop() or kill() it."""

    def __init__(self, mongo_url: str, broker_url: str, port: int | None = None,
                 log_dir: Path | None = None, **settings):
        self.port = port or free_port()
        self.mongo_url = mongo_url
        self.broker_url = broker_url
        self.settings = settings
        self.log_path = (log_dir or Path("/tmp")) / f"server-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update({
            "CHAT_MONGO_URL": self.mongo_url,
            "CHAT_BROKER_URL": self.broker_url,
            "CHAT_SECRET": SECRET,
            "CHAT_BCRYPT_ROUNDS": "4",
            "CHAT_SIGNUP_PER_IP_PER_MINUTE": "100000",
            "CHAT_LOGIN_PER_IP_PER_MINUTE": "100000",
            "CHAT_USER_MESSAGES_PER_MINUTE": "100000",
            "CHAT_USER_ROOMS_PER_HOUR": "100000",
            "CHAT_USER_MEMBER_CHANGES_PER_MINUTE": "100000",
            "CHAT_USER_SIGNALS_PER_MINUTE": "100000",
            "CHAT_MONGO_TIMEOUT_MS": "2000",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"CHAT_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    def start(self, wait: bool = True) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), "--port", str(self.port)],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, timeout, f"server on port {self.port}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 15) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def server_in_thread(mongo_url: str, prepare=None, **settings) -> Iterator[tuple]:
    """(server, base url): server.py's ChatServer on a thread of this process,
    with the memory broker, so a test can hand it fakes that fail: prepare(server)
    runs before it starts. For what a separate process cannot be made to do."""
    import server as chat_server  # the entry point, imported only by the tests that need it
    from chat import config as chat_config

    port = free_port()
    config = chat_config.Config(port=port, mongo_url=mongo_url, broker_url=("memory://",),
                                secret=SECRET, bcrypt_rounds=4, **settings).validate()
    started = threading.Event()
    state: dict = {}

    async def run() -> None:
        server = chat_server.ChatServer(config)
        if prepare is not None:
            prepare(server)
        state["loop"], state["stop"], state["server"] = asyncio.get_running_loop(), asyncio.Event(), server
        try:
            await server.start()
        finally:
            started.set()
        await state["stop"].wait()
        await server.stop()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(30), "the in-process server did not start"
    try:
        yield state["server"], f"http://127.0.0.1:{port}"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


class Api:
    """A signed-up user talking to one server."""

    def __init__(self, base_url: str, username: str | None = None, password: str = "pass-word-1"):
        self.base_url = base_url
        self.username = username or f"u{uuid.uuid4().hex[:12]}"
        self.password = password
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.token: str | None = None
        self.user: dict | None = None

    def signup(self) -> Api:
        reply = self.http.post("/auth/users/create/",
                               json={"username": self.username, "password": self.password})
        assert reply.status_code == 201, reply.text
        self.user = reply.json()
        return self.login()

    def login(self) -> Api:
        reply = self.http.post("/auth/jwt/create/",
                               json={"username": self.username, "password": self.password})
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["token"]
        self.http.cookies.clear()  # authenticate by header, like the tutorial's client
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"JWT {self.token}"}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def new_chat(self) -> str:
        reply = self.request("POST", "/api/chats/")
        assert reply.status_code == 200, reply.text
        return reply.json()["uri"]

    def join(self, uri: str) -> dict:
        reply = self.request("PATCH", f"/api/chats/{uri}/")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def post(self, uri: str, text: str, client_id: str | None = None) -> dict:
        body = {"message": text}
        if client_id:
            body["client_id"] = client_id
        reply = self.request("POST", f"/api/chats/{uri}/messages/", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def history(self, uri: str, **params) -> dict:
        reply = self.request("GET", f"/api/chats/{uri}/messages/", params=params)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def all_seqs(self, uri: str) -> list[int]:
        seqs, after = [], 0
        while True:
            page = self.history(uri, after=after, limit=200)
            seqs += [m["seq"] for m in page["messages"]]
            if not page["has_more"]:
                return seqs
            after = seqs[-1]

    def ws_url(self, uri: str, since: int | None = None, base_url: str | None = None) -> str:
        """The room's socket URL, on this user's server unless base_url names another."""
        base = (base_url or self.base_url).replace("http://", "ws://")
        url = f"{base}/ws/chats/{uri}/?token={self.token}"
        return url if since is None else f"{url}&since={since}"


async def next_frame(ws, kind: str | None = None, wait: float = 5) -> dict:
    """The socket's next frame (of `kind`, when given), within `wait` seconds."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), wait))
        if kind is None or frame["type"] == kind:
            return frame


async def refused_status(url: str, **kwargs) -> int:
    """The HTTP status of a refused WebSocket handshake; an accepted one fails."""
    try:
        async with websockets.connect(url, open_timeout=5, **kwargs):
            pass
    except websockets.InvalidStatus as refused:
        return refused.response.status_code
    raise AssertionError(f"the handshake to {url} was accepted")


# two_members' join of bob is its room's first event (seq 1): messages start at 2.
FIRST_MESSAGE = 2


def two_members(base_url: str, bob_url: str | None = None) -> tuple[Api, Api, str]:
    """(alice, bob, uri): two new users, members of alice's new chat; bob may
    talk to another server of the same database. Bob's join is seq 1."""
    alice, bob = Api(base_url).signup(), Api(bob_url or base_url).signup()
    uri = alice.new_chat()
    bob.join(uri)
    return alice, bob, uri


class Listener:
    """A socket that records every message frame; reconnects with since when asked."""

    def __init__(self, api: Api, uri: str, base_url: str | None = None):
        self.api = api
        self.uri = uri
        self.base_url = base_url or api.base_url
        self.seqs: list[int] = []
        self.arrivals: list[float] = []  # time.monotonic() of each seq in seqs
        self.frames: list[dict] = []
        self.closes: list[int | None] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.stopped = False

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def run_once(self, since: int | None) -> None:
        """`ready` is set by the ready frame, or for a plain socket (no since) by
        the answer to a probe (see probe_joined)."""
        url = self.api.ws_url(self.uri, since, self.base_url)
        async with websockets.connect(url, max_queue=None, open_timeout=5) as ws:
            if since is None:
                await ws.send(PROBE)
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    self.frames.append(frame)
                    if frame["type"] == "message":
                        self.seqs.append(frame["seq"])
                        self.arrivals.append(time.monotonic())
                    elif frame["type"] == "ready" or probe_answer(frame):
                        self.ready.set()
            finally:
                self.closes.append(ws.close_code)

    async def run(self, reconnect: bool, since: int | None = 0) -> None:
        first = True
        while not self.stopped:
            try:
                await self.run_once(since if first else self.last)
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            first = False
            if not reconnect or self.stopped:
                return
            await asyncio.sleep(0.2)

    def start(self, reconnect: bool = False, since: int | None = 0) -> Listener:
        self.task = asyncio.ensure_future(self.run(reconnect, since))
        return self

    async def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# A frame of no known type: the server answers it with an error frame.
PROBE = json.dumps({"type": "probe"})


def probe_answer(frame: dict) -> bool:
    return frame["type"] == "error" and frame["detail"].startswith("Unknown frame type")


async def probe_joined(ws, wait: float = 5) -> None:
    """Wait until a plain socket (no since, so no ready frame) is in its room.
    Tornado calls on_message only after open() has returned, so the answer to
    a probe frame proves the join has finished; frames before it are skipped."""
    await ws.send(PROBE)
    while not probe_answer(await next_frame(ws, "error", wait)):
        pass


def catch_up(api: Api, uri: str, seconds: float = 30) -> Listener:
    """Open a socket with since=0, read until its ready frame, close it."""
    async def scenario() -> Listener:
        listener = Listener(api, uri).start(since=0)
        await wait_for(lambda: listener.ready.is_set(), seconds, "the catch-up")
        await listener.stop()
        return listener
    return asyncio.run(scenario())


async def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


def metric(text: str, name: str) -> float:
    """A sample's value from the Prometheus text format. A missing one is an
    error, not 0: a renamed metric must fail the tests that read it."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise LookupError(f"no {name} in the metrics")


RABBITMQCTL = shutil.which("rabbitmqctl")
local_rabbit = pytest.mark.skipif(
    RABBITMQCTL is None or "127.0.0.1" not in os.environ.get("CHAT_TEST_AMQP_URL", "127.0.0.1"),
    reason="needs the local RabbitMQ and rabbitmqctl to inject broker faults")


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """rabbitmqctl on the local node; only ever with -p <a test's own vhost> for faults."""
    return subprocess.run([RABBITMQCTL, "-q", *args], check=True, timeout=timeout,
                          capture_output=True, text=True).stdout


def vhost_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path[1:]) or "/"


@contextlib.contextmanager
def scratch_vhost(url: str, prefix: str) -> Iterator[str]:
    """url on a RabbitMQ vhost of its own, deleted afterwards with everything in it.

    Rooms' exchanges are durable and never deleted by the server (rooms are
    forever), so the thousands of rooms that tests and benchmarks make would
    otherwise pile up in the broker's default vhost. Only for the local broker,
    where rabbitmqctl can make one; any other url is used as it is.
    """
    ctl = shutil.which("rabbitmqctl")
    parts = urllib.parse.urlsplit(url)
    if ctl is None or parts.hostname != "127.0.0.1" or parts.path not in ("", "/", "/%2F"):
        yield url
        return
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"

    def rabbitmqctl(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, timeout=120, capture_output=True)

    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urllib.parse.urlunsplit(parts._replace(path="/" + vhost))
    finally:
        rabbitmqctl("delete_vhost", vhost)
