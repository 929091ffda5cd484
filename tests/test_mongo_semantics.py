"""What the store relies on that nx-27017 does not do as MongoDB does, proven
on every test MongoDB: SecantusDB behaves like mongod for upserts that insert,
TTL indexes, write concerns, maxTimeMS and concurrent upserts.

Each test here failed on the behaviour it guards against before its fix, or
on a server that lacks it (the note on each says which)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time

import pymongo
import pytest

from chat.limits import Limit
from chat.metrics import Metrics
from chat.sequencer import Sequencer
from chat.store import Store, Unavailable
from tests.test_store import USER, post, run_store

pytestmark = pytest.mark.store_semantics

WINDOW = 60.0


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def admin_command(url: str, command: dict) -> dict:
    with pymongo.MongoClient(url, timeoutMS=5000) as client:
        return client.admin.command(command)


def single_node_replica_set(url: str) -> bool:
    """Whether w: 2 can never be satisfied there: a replica set of one node."""
    hello = admin_command(url, {"hello": 1})
    return bool(hello.get("setName")) and len(hello.get("hosts", [])) == 1


@contextlib.contextmanager
def failing(url: str, mode: dict | str, data: dict):
    """A failCommand failpoint (SecantusDB and mongod with test commands), off afterwards."""
    try:
        admin_command(url, {"configureFailPoint": "failCommand", "mode": mode, "data": data})
    except pymongo.errors.OperationFailure as error:
        pytest.skip(f"this MongoDB has no failCommand failpoint: {error}")
    try:
        yield
    finally:
        admin_command(url, {"configureFailPoint": "failCommand", "mode": "off"})


def test_rate_counters_are_written_with_their_expiry_and_dropped_by_the_ttl_index(fresh_db, mongo_kind):
    """Each counter carries `expires` as a date under a TTL index, so MongoDB
    drops it after its window. It was written by $setOnInsert, which nx-27017
    ignores on upserts: there rate_counts grew forever (this failed on nx).
    After a TTL pass the counter of a window long gone is dropped and the live
    one kept: SecantusDB's secantusAdmin.pruneTtl is the pass mongod's TTL
    monitor makes every minute; nx-27017 hides an expired document at once."""
    day = 86_400.0
    now = time.time()

    async def scenario(store):
        live = Limit(store, "posts", 100, WINDOW, clock=lambda: now)
        assert await live.hit("ann") == 0.0
        docs = await store.rate_counts.find().to_list(None)
        old = Limit(store, "posts", 100, WINDOW, clock=lambda: now - day)
        assert await old.hit("ann") == 0.0
        return docs, await store.rate_counts.index_information()

    docs, indexes = run_store(fresh_db, scenario)
    assert docs == [{"_id": f"posts:{int(now // WINDOW)}:ann", "n": 5, "expires":
                     datetime.datetime.fromtimestamp((int(now // WINDOW) + 2) * WINDOW, datetime.UTC)}]
    # nx-27017 names indexes its own way
    assert [i.get("expireAfterSeconds") for i in indexes.values() if i["key"] == [("expires", 1)]] == [0]

    if mongo_kind == "secantus":
        assert admin_command(fresh_db, {"secantusAdmin.pruneTtl": 1})["pruned"] >= 1
    if mongo_kind != "url":  # mongod's TTL monitor passes within a minute: not waited for
        left = run_store(fresh_db, lambda store: store.rate_counts.find().to_list(None))
        assert [d["_id"] for d in left] == [docs[0]["_id"]]


def test_counters_left_without_expiry_are_dropped_once(fresh_db):
    """Counters nx-27017 stored before the fix have no `expires` and would stay
    forever: preparing the collection drops them and keeps those that expire."""
    expires = datetime.datetime.fromtimestamp(time.time() + 2 * WINDOW, datetime.UTC)

    async def scenario(store):
        await store.rate_counts.insert_many([{"_id": "posts:1:ann", "n": 3},
                                             {"_id": "posts:2:ann", "n": 4, "expires": expires}])
        await store.ensure_indexes()
        return await store.rate_counts.find().to_list(None), await store.count_hit("posts:1:ann", expires)

    left, count = run_store(fresh_db, scenario)
    assert [d["_id"] for d in left] == ["posts:2:ann"]
    assert count == 1


def test_concurrent_first_hits_from_several_processes_all_count(fresh_db):
    """Four processes' first hits on one counter at once: on a server that runs
    upserts concurrently (SecantusDB, mongod) two may both find no document and
    one insert fails as a duplicate; that hit is counted on the winner's
    document, never lost nor failed (it failed on SecantusDB, whose answer to
    such an upsert is no document). Each hit gets a count that includes it
    (exactly its own on mongod; on SecantusDB the count read afterwards).
    nx-27017 runs one command at a time."""
    async def main():
        stores = [Store(fresh_db, database_of(fresh_db)) for _ in range(4)]
        try:
            await stores[0].ensure_indexes()
            expires = datetime.datetime.fromtimestamp(time.time() + 2 * WINDOW, datetime.UTC)
            totals = []
            for round_ in range(5):
                key = f"posts:{round_}:ann"
                answers = await asyncio.gather(*(s.count_hit(key, expires)
                                                 for s in stores for _ in range(5)))
                totals.append((answers, await stores[0].hit_count(key)))
            return totals
        finally:
            for store in stores:
                await store.close()

    for totals, final in asyncio.run(main()):
        assert final == 20
        assert all(1 <= total <= 20 for total in totals) and max(totals) == 20


def test_a_write_the_write_concern_refuses_is_unavailable_on_every_path(fresh_db, mongo_kind):
    """w: 2 on a single-node replica set is never satisfied: every write fails
    as Unavailable (503 with Retry-After), the event insert and the others
    alike. Before the fix only the event insert did; the others raised the
    write-concern error itself (a 500). nx-27017 accepts w: 2 on a standalone."""
    if mongo_kind == "nx" or not single_node_replica_set(fresh_db):
        pytest.skip("needs a single-node replica set: nx-27017 accepts w: 2 on a standalone")
    expires = datetime.datetime.fromtimestamp(time.time() + 2 * WINDOW, datetime.UTC)

    async def main():
        ready = Store(fresh_db, database_of(fresh_db))
        await ready.ensure_indexes()
        await ready.close()
        store = Store(fresh_db, database_of(fresh_db), write_concern="2")
        failures = []
        for write in (lambda: store.create_room(USER["id"]),
                      lambda: store.count_hit("posts:1:ann", expires),
                      lambda: store.save_read_positions({"room": {USER["id"]: 1}}),
                      lambda: post(Sequencer(store, Metrics()), "room", "hello", seen=0)):
            try:
                await write()
                failures.append(None)
            except Exception as error:
                failures.append(type(error).__name__)
        await store.close()
        return failures

    assert asyncio.run(main()) == ["Unavailable"] * 4


def test_a_command_the_server_stops_at_its_max_time_is_unavailable(fresh_db, mongo_kind):
    """MongoDB ends a command that outlives its maxTimeMS (the request's budget,
    sent by pymongo) with MaxTimeMSExpired: the store answers Unavailable, a
    503 that says when to retry, on a read, a write and the event insert.
    nx-27017 never enforces maxTimeMS (the client's own timeout fires instead)."""
    if mongo_kind == "nx":
        pytest.skip("nx-27017 never ends a command at its maxTimeMS")

    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        failures = []
        for command, call in (("find", lambda: store.room(uri)),
                              ("update", lambda: store.set_locked(uri, USER["id"], True)),
                              ("insert", lambda: post(Sequencer(store, Metrics()), uri, "hi", seen=0))):
            with failing(fresh_db, {"times": 1}, {"failCommands": [command], "errorCode": 50}):
                try:
                    await call()
                    failures.append(None)
                except Unavailable:
                    failures.append(command)
        return failures

    assert run_store(fresh_db, scenario) == ["find", "update", "insert"]


def test_a_post_stored_but_not_acknowledged_is_found_again_by_its_client_id(fresh_db, mongo_kind):
    """A primary that stores an insert and then cannot replicate it in time
    answers with a write-concern error: the post fails as Unavailable (it may be
    rolled back), and the client's retry with the same client_id returns the
    event stored, once, rather than storing it twice (the partial unique index
    on client_id, which nx-27017 does not honour as partial).

    SecantusDB (0.7.0b3) does not recognise a retryable write that pymongo
    retries with the same transaction number when it carries maxTimeMS (every
    command of the store does): it runs it again, and the sequencer would
    store the event a second time at the next seq, where mongod answers the
    first result. So this failpoint's error is not labelled retryable."""
    if mongo_kind == "nx":
        pytest.skip("nx-27017 has no failpoints and never fails a write concern")

    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        sequencer = Sequencer(store, Metrics())
        with failing(fresh_db, {"times": 1}, {
                "failCommands": ["insert"],
                "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed",
                                      "errmsg": "waiting for replication timed out"}}), \
                pytest.raises(Unavailable):
            await post(sequencer, uri, "hello", client_id="c1", seen=0)
        again = await post(sequencer, uri, "hello", client_id="c1")
        later = await post(sequencer, uri, "later")
        stored = await store.messages.find({"room": uri}).sort("seq", 1).to_list(None)
        return again, later, stored

    (doc, created), (later, _), stored = run_store(fresh_db, scenario)
    assert not created and doc["seq"] == 1
    assert later["seq"] == 2
    assert [(d["seq"], d["message"]) for d in stored] == [(1, "hello"), (2, "later")]


def test_unique_indexes_over_optional_fields_are_partial(fresh_db, mongo_kind):
    """The unique (room, user_id, client_id) and username_key indexes hold only
    documents that have the field as a string. On MongoDB a unique index without
    that filter refuses a second document without the field (a missing field
    is null, and null equals null): a user's second post without a client_id,
    or a second account from before username_key. nx-27017 drops the filter
    (and never compares nulls), so SecantusDB is where the filter is proven."""
    async def scenario(store):
        sequencer = Sequencer(store, Metrics())
        uri = (await store.create_room(USER["id"]))["uri"]
        stored = [(await post(sequencer, uri, text, client_id))[1]
                  for text, client_id in (("a", None), ("b", None), ("c", "c1"), ("c", "c1"))]
        await store.users.insert_many([{"username": "Old"}, {"username": "older"}])
        messages = {info["name"]: info async for info in await store.messages.list_indexes()}
        users = {info["name"]: info async for info in await store.users.list_indexes()}
        return stored, messages, users

    stored, messages, users = run_store(fresh_db, scenario)
    assert stored == [True, True, True, False]
    if mongo_kind != "nx":
        assert messages["room_user_client_id"]["partialFilterExpression"] == {
            "client_id": {"$type": "string"}}
        assert users["username_key"]["partialFilterExpression"] == {
            "username_key": {"$type": "string"}}
