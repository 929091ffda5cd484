"""Every write has a per-user limit across processes: rooms created,
membership changes, typing and read signals, logouts (messages, edits,
reactions and deletes share the message limit: tests/test_limits.py). Two
server processes on one database, with low limits."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import database_url
from tests.helpers import Api, ServerProcess, next_frame

LOW = {"user_rooms_per_hour": 6, "user_member_changes_per_minute": 20,
       "user_signals_per_minute": 20, "user_logouts_per_minute": 4}


@pytest.fixture(scope="module")
def servers(mongo_base, amqp_url, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    first = ServerProcess(database_url(mongo_base), amqp_url, log_dir=logs, **LOW).start()
    second = ServerProcess(first.mongo_url, amqp_url, log_dir=logs, **LOW).start()
    yield first, second
    first.stop()
    second.stop()


def refused(reply) -> None:
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert "retry" in reply.json()["detail"]


def test_rooms_created_are_limited_per_user_across_processes(servers):
    first, second = servers
    alice = Api(first.url).signup()
    on_second = Api(second.url, alice.username).login()
    created = [api.request("POST", "/api/chats/") for api in (alice, on_second) * 3]
    assert [reply.status_code for reply in created] == [200] * 6
    refused(on_second.request("POST", "/api/chats/"))
    refused(alice.request("POST", "/api/chats/"))
    assert Api(first.url).signup().request("POST", "/api/chats/").status_code == 200  # others may


def test_membership_changes_are_limited_per_user_across_processes(servers):
    first, second = servers
    owner = Api(first.url).signup()
    uri = owner.new_chat()
    joiner = Api(first.url).signup()
    on_second = Api(second.url, joiner.username).login()
    statuses = []
    for i in range(30):
        api = joiner if i // 2 % 2 == 0 else on_second  # a join and a leave on each, in turn
        reply = (api.request("PATCH", f"/api/chats/{uri}/") if i % 2 == 0 else
                 api.request("DELETE", f"/api/chats/{uri}/members/{joiner.username}/"))
        statuses.append(reply.status_code)
        if reply.status_code == 429:
            refused(reply)
    # The limit is reached a little early at most (a share reserved per process).
    allowed = statuses.index(429)
    assert 20 - 2 * 1 <= allowed <= 20 and set(statuses[allowed:]) == {429}, statuses
    events = owner.history(uri, events=1, limit=200)["messages"]
    assert len([e for e in events if e["type"] == "member"]) == allowed
    # The owner's own changes count for the owner only.
    reply = owner.request("PATCH", f"/api/chats/{uri}/", json={"locked": True})
    assert reply.status_code == 200, reply.text


def test_typing_and_read_frames_over_the_limit_get_an_error_frame(servers):
    first, _second = servers
    alice = Api(first.url).signup()
    uri = alice.new_chat()
    seq = alice.post(uri, "hello")["seq"]

    async def scenario():
        async with websockets.connect(alice.ws_url(uri, 0)) as ws:
            await next_frame(ws, "ready")
            for i in range(25):
                await ws.send(json.dumps({"type": "typing", "stop": i % 2 == 1}))
            error = await next_frame(ws, "error")
            assert error["code"] == "rate_limited" and "signals" in error["detail"], error
            await ws.send(json.dumps({"type": "read", "seq": seq}))
            error = await next_frame(ws, "error")
            assert error["code"] == "rate_limited", error

    asyncio.run(scenario())
    refused(alice.request("PUT", f"/api/chats/{uri}/read/", json={"seq": seq}))


def test_logouts_are_limited_per_user(servers):
    first, _second = servers
    alice = Api(first.url).signup()
    statuses = []
    for _ in range(6):
        statuses.append(alice.login().request("POST", "/auth/logout/").status_code)
    assert statuses[:4] == [204] * 4 and statuses[-1] == 429, statuses
