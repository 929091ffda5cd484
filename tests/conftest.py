"""Fixtures: a real MongoDB wire server and RabbitMQ, and server processes."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from chat.embedded import wire_server_command
from deploy.cluster import port_open, wait_for_port
from tests.helpers import ServerProcess, free_port, scratch_vhost, stop_process, two_members

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class MongoServer:
    """nx-27017 on a free loopback port with a temporary data folder."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(wire_server_command(self.port, self.data_dir),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, "nx-27017")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """The wire server, or None when CHAT_TEST_MONGO_URL names a MongoDB."""
    if os.environ.get("CHAT_TEST_MONGO_URL"):
        yield None
        return
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_base(mongo_server) -> str:
    return os.environ.get("CHAT_TEST_MONGO_URL") or mongo_server.url


@pytest.fixture(scope="session")
def amqp_url():
    """The test broker; on the local one, a vhost of the session's own."""
    url = os.environ.get("CHAT_TEST_AMQP_URL", AMQP_URL)
    if "127.0.0.1:5672" in url:
        assert port_open(5672), \
            "RabbitMQ is not running on 127.0.0.1:5672: `make test` starts it (rabbitmq-server -detached)"
    with scratch_vhost(url, "chat-test") as session_url:
        yield session_url


def database_url(base: str) -> str:
    """A fresh database name on the test MongoDB, so tests never share data."""
    base = base.rstrip("/")
    query = ""
    if "?" in base:
        base, query = base.split("?", 1)
        query = "?" + query
    host_part = base.split("://", 1)[1]
    if "/" in host_part:
        base = base.rsplit("/", 1)[0]
    return f"{base}/t{uuid.uuid4().hex[:10]}{query}"


@pytest.fixture
def fresh_db(mongo_base) -> str:
    return database_url(mongo_base)


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, tmp_path_factory):
    """One server process on RabbitMQ and its own database, for a test module."""
    process = ServerProcess(database_url(mongo_base), amqp_url,
                            log_dir=tmp_path_factory.mktemp("logs")).start()
    yield process
    process.stop()


@pytest.fixture
def room(server):
    """(alice, bob, uri): two members of a new chat on the module's server."""
    return two_members(server.url)


@pytest.fixture
def start_server(mongo_base, amqp_url, tmp_path):
    """Start extra server processes for one test; all are stopped afterwards."""
    started: list[ServerProcess] = []

    def start(mongo_url: str | None = None, broker_url: str | None = None, wait: bool = True,
              **settings) -> ServerProcess:
        process = ServerProcess(mongo_url or database_url(mongo_base), broker_url or amqp_url,
                                log_dir=tmp_path, **settings)
        started.append(process)
        return process.start(wait=wait)

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def two_servers(start_server):
    """Two server processes on one database and broker (tests may override it)."""
    first = start_server()
    second = start_server(mongo_url=first.mongo_url)
    return first, second
