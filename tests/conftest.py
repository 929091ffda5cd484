"""Fixtures: a real MongoDB wire server and RabbitMQ, and server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pymongo
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


class SecantusServer(MongoServer):
    """SecantusDB on a free loopback port with a temporary data folder: a MongoDB
    wire server on WiredTiger that behaves like mongod where nx-27017 does not
    ($setOnInsert, partial indexes, write concerns, maxTimeMS, concurrent
    upserts). It advertises a single-node replica set named "secantus". A test
    dependency only (GPL-2.0): run as a program, never imported."""

    def start(self) -> None:
        program = shutil.which("secantusd-py", path=os.path.dirname(sys.executable))
        assert program, "SecantusDB is not installed: `make .venv/.installed-test` installs it"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # An empty config of its own, so no secantusd.toml of the machine is read.
        config = self.data_dir / "secantusd.toml"
        config.touch()
        self.process = subprocess.Popen(
            [program, "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(self.data_dir / "data"), "--config", str(config),
             "--log-level", "WARNING", "--enable-test-commands"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, "SecantusDB")


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
def secantus_server(tmp_path_factory):
    """SecantusDB, started for the first test that runs on it."""
    server = SecantusServer(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


# The MongoDB servers a test marked `store_semantics` runs on, by test id: the
# default one (nx-27017, or the MongoDB named by CHAT_TEST_MONGO_URL) and SecantusDB.
MONGO_SERVERS = ("url" if os.environ.get("CHAT_TEST_MONGO_URL") else "nx", "secantus")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "store_semantics: runs once per MongoDB server of MONGO_SERVERS "
        "(nx-27017 and SecantusDB); store_semantics(False) on a test opts it out")


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("store_semantics")
    if marker and marker.args != (False,) and "mongo_base" in metafunc.fixturenames:
        # Module scope: a module's tests run on one server, then on the next,
        # so a module-scoped server process is started once per MongoDB.
        metafunc.parametrize("mongo_base", MONGO_SERVERS, indirect=True, scope="module")


@pytest.fixture(scope="session")
def mongo_base(request) -> str:
    """The test MongoDB's URL: nx-27017's unless a test runs on another (`store_semantics`)."""
    if getattr(request, "param", None) == "secantus":
        return request.getfixturevalue("secantus_server").url
    return os.environ.get("CHAT_TEST_MONGO_URL") or request.getfixturevalue("mongo_server").url


@pytest.fixture
def mongo_kind(request, mongo_base) -> str:
    """Which MongoDB the test runs on: "nx", "secantus" or "url" (CHAT_TEST_MONGO_URL)."""
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("mongo_base", MONGO_SERVERS[0]) if callspec else MONGO_SERVERS[0]


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


def serve(mongo_base: str, amqp_url: str, tmp_path_factory, **settings):
    """A server process on RabbitMQ and a database of its own, with settings,
    stopped after: what a module's server fixture yields from."""
    process = ServerProcess(database_url(mongo_base), amqp_url,
                            log_dir=tmp_path_factory.mktemp("logs"), **settings).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, tmp_path_factory):
    """One server process on RabbitMQ and its own database, for a test module."""
    yield from serve(mongo_base, amqp_url, tmp_path_factory)


@pytest.fixture(scope="module")
def db(server):
    """The module's server's database, read directly (pymongo)."""
    client = pymongo.MongoClient(server.mongo_url)
    yield client.get_default_database()
    client.close()


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
