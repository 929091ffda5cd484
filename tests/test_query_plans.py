"""The queries the server sends use an index on nx-27017, the embedded store.

nx-27017 (0.8) turns MongoDB filters into SQLite. An equality on a field is
matched as "equal, or an array holding it" through json_each, which no index
serves, unless an index on that field alone exists; an `$or` is evaluated in
Python over every document. Either is a full scan whatever the filter's other
fields: at 1,000,000 messages a history page took 0.9 s and the sweeper's
query 15 s, every 10 s, so every request waited (bench/search.py, full mode).

Every find (and the filter of every update, delete, findAndModify and an
aggregate's first $match) the
server sends in a scenario of every kind of traffic is explained on nx-27017
here; a full scan of a collection that grows with the traffic fails.
"""

from __future__ import annotations

import json

import httpx
import pymongo
import pymongo.monitoring
import pytest
import websockets

from tests.helpers import next_frame
from tests.test_commands import in_process, sign_up

__all__ = ["in_process"]

# Collections that grow with messages, people or time; small ones (rooms'
# membership lists, settings) may be scanned.
GROWING = {"messages", "notifications", "tokens", "rate_counts", "files", "fs.chunks",
           "audit", "login_failures", "link_previews", "file_usage"}
FILTER_OF = {"find": "filter", "count": "query", "findAndModify": "query"}


class Queries(pymongo.monitoring.CommandListener):
    """(collection, filter, sort) of every read and write the server sends."""

    def __init__(self, database: str):
        self.database = database
        self.seen: dict[str, tuple[str, dict, dict | None]] = {}

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        if event.database_name != self.database:
            return
        command, name = event.command, event.command_name
        if name in FILTER_OF:
            self.add(command[name], command.get(FILTER_OF[name]) or {}, command.get("sort"))
        elif name == "aggregate" and command["pipeline"] and "$match" in command["pipeline"][0]:
            self.add(command[name], command["pipeline"][0]["$match"], None)
        elif name in ("update", "delete"):
            for statement in command.get("updates" if name == "update" else "deletes", ()):
                self.add(command[name], statement.get("q") or {}, None)

    def add(self, collection: str, query: dict, sort: dict | None) -> None:
        key = json.dumps([collection, shape(query), shape(sort)], sort_keys=True, default=str)
        self.seen.setdefault(key, (collection, query, sort))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def shape(value):
    """The query with its values left out: one explain per kind of query."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


# The chat list's unread counts and latest messages: one aggregate with an $or
# of (room, seq range) for a page of chats, which MongoDB serves from (room, seq)
# by branch. On nx-27017 an aggregate on messages is a scan whatever its $match
# (14 s for 50 chats at 1,000,000 messages, docs/scaling.md): known, not fixed.
CHAT_LIST = ({"$or", "user_id", "type", "deleted"}, {"$or", "type", "deleted"})


def full_scans(database, queries: Queries) -> list[str]:
    found = []
    for collection, query, sort in queries.seen.values():
        if collection not in GROWING or "$text" in query:  # $text: FTS5 drives it
            continue
        if collection == "messages" and set(query) in CHAT_LIST:
            continue
        command = {"find": collection, "filter": query}
        if sort:
            command["sort"] = sort
        plan = database.command("explain", command)["queryPlanner"]["winningPlan"]
        details = [step.get("detail", "") for step in plan]
        if any(detail == f"SCAN {collection}" or detail.startswith(f"SCAN {collection} ")
               for detail in details) or not details:
            found.append(f"{collection} {json.dumps(shape(query))} sort={sort}: {details}")
    return found


@pytest.fixture
def nx_only(mongo_kind):
    if mongo_kind != "nx":
        pytest.skip("query plans are nx-27017's (SQLite EXPLAIN)")


def test_every_query_of_the_traffic_uses_an_index(in_process, fresh_db, nx_only):
    queries = Queries(pymongo.uri_parser.parse_uri(fresh_db)["database"])

    async def scenario(server, base, _commands):
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await sign_up(http, "ann")
            _, bob_token = await sign_up(http, "bob")
            ann = {"Authorization": f"JWT {token}"}
            bob = {"Authorization": f"JWT {bob_token}"}
            uri = (await http.post("/api/chats/", headers=ann)).json()["uri"]
            assert (await http.patch(f"/api/chats/{uri}/", headers=bob,
                                     json={"username": "bob"})).status_code == 200
            ws_url = f"{base.replace('http', 'ws')}/ws/chats/{uri}/?token={bob_token}&since=0"
            async with websockets.connect(ws_url) as ws:
                await next_frame(ws, "ready")
                posts = []
                for i in range(3):
                    reply = await http.post(f"/api/chats/{uri}/messages/", headers=ann,
                                            json={"message": f"hello @bob {i}", "client_id": f"c{i}"})
                    assert reply.status_code == 200, reply.text
                    posts.append(reply.json())
                message = f"/api/chats/{uri}/messages/{posts[0]['id']}/"
                assert (await http.patch(message, headers=ann,
                                         json={"message": "edited"})).status_code == 200
                assert (await http.put(f"{message}reactions/%F0%9F%91%8D/",
                                       headers=bob)).status_code in (200, 204)
                assert (await http.delete(f"/api/chats/{uri}/messages/{posts[1]['id']}/",
                                          headers=ann)).status_code == 204
                await ws.send(json.dumps({"type": "read", "seq": posts[2]["seq"]}))
            for params in ({}, {"after": 1}, {"before": 4}, {"around": 2}, {"events": 1}):
                reply = await http.get(f"/api/chats/{uri}/messages/", headers=bob, params=params)
                assert reply.status_code == 200, reply.text
            assert (await http.get("/api/chats/", headers=bob)).status_code == 200
            assert (await http.get(f"/api/chats/{uri}/", headers=bob)).status_code == 200
            assert (await http.get("/api/search/", headers=bob,
                                   params={"q": "hello", "from": "ann"})).status_code == 200
            await server.sweeper.sweep()
            await server.store.claim(60)  # the notifier's dispatcher, once
            await server.store.recent_messages({uri: 5}, 50)  # a partial search's window
            # A history page with a change in flight reads its unsaved events.
            docs = await server.store.messages_before(uri, None, 10)
            await server.store.unsaved_events([{**doc, "changing": 1} for doc in docs
                                              if doc.get("type") is None])
            # The stream: the chat list's snapshot and a catch-up.
            stream = f"{base.replace('http', 'ws')}/ws/?token={bob_token}"
            async with websockets.connect(stream) as ws:
                await next_frame(ws, "chats")
            assert (await http.put(f"/api/chats/{uri}/read/", headers=ann,
                                   json={"seq": posts[2]["seq"]})).status_code in (200, 204)
            assert (await http.post("/auth/logout/", headers=ann)).status_code in (200, 204)

    in_process(scenario, listeners=[queries])
    database = pymongo.MongoClient(fresh_db).get_default_database()
    scans = full_scans(database, queries)
    assert not scans, "full scans on nx-27017:\n" + "\n".join(scans)
