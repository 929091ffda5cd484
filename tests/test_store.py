"""The store's group commit: its logic with a fake command, then posts through
the real Store on the test MongoDB."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from pymongo import monitoring
from pymongo.errors import BulkWriteError

from chat.metrics import Metrics
from chat.sequencer import Sequencer
from chat.store import (
    REQUEST_DEADLINE,
    GroupCommit,
    NotMember,
    Store,
    Unavailable,
    live_token_user,
    now,
    public_user,
)

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics


class FakeCommand:
    """Records each batch; waits for `release` before answering, so a test
    decides what queues up behind a command in flight."""

    def __init__(self, fail_item=None, fail_batch: Exception | None = None):
        self.batches: list[list] = []
        self.release = asyncio.Event()
        self.fail_item = fail_item
        self.fail_batch = fail_batch

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_batch is not None:
            raise self.fail_batch
        return [ValueError(item) if item == self.fail_item else item * 10 for item in items]


async def started(*coroutines) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(c) for c in coroutines]
    await asyncio.sleep(0)
    return tasks


def test_writes_arriving_while_one_is_in_flight_go_out_together():
    async def scenario():
        command = FakeCommand()
        commit = GroupCommit(command, 5.0)
        first = await started(commit.submit(1))
        rest = await started(*(commit.submit(i) for i in range(2, 6)))
        command.release.set()
        return command.batches, await asyncio.gather(*first, *rest)

    batches, results = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4, 5]]
    assert results == [10, 20, 30, 40, 50]


def test_an_item_that_fails_fails_alone():
    async def scenario():
        command = FakeCommand(fail_item=2)
        commit = GroupCommit(command, 5.0)
        command.release.set()
        return await asyncio.gather(*(commit.submit(i) for i in (1, 2, 3)),
                                    return_exceptions=True)

    one, two, three = asyncio.run(scenario())
    assert (one, three) == (10, 30)
    assert isinstance(two, ValueError) and two.args == (2,)


def test_a_failed_command_fails_what_waited_behind_it_at_once():
    async def scenario():
        command = FakeCommand(fail_batch=ConnectionError("down"))
        commit = GroupCommit(command, 5.0)
        tasks = await started(commit.submit(1))
        tasks += await started(commit.submit(2), commit.submit(3))
        command.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return command.batches, results, commit

    batches, results, commit = asyncio.run(scenario())
    assert batches == [[1]]  # 2 and 3 were not sent to a server that did not answer
    assert all(isinstance(r, ConnectionError) for r in results)
    assert commit.flushing is None and not commit.queue


def test_it_works_again_after_a_failed_command():
    async def scenario():
        command = FakeCommand(fail_batch=ConnectionError("down"))
        commit = GroupCommit(command, 5.0)
        command.release.set()
        with pytest.raises(ConnectionError):
            await commit.submit(1)
        command.fail_batch = None
        return await commit.submit(2)

    assert asyncio.run(scenario()) == 20


def test_cancelling_the_flush_mid_command_cancels_its_waiters():
    async def scenario():
        command = FakeCommand()
        commit = GroupCommit(command, 5.0)
        tasks = await started(commit.submit(1), commit.submit(2))
        await asyncio.sleep(0)  # the flush has sent [1, 2] and waits for the answer
        commit.flushing.cancel()
        return command.batches, await asyncio.gather(*tasks, return_exceptions=True), commit

    batches, results, commit = asyncio.run(scenario())
    assert batches == [[1, 2]]
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert commit.flushing is None


USER = {"id": "u1", "username": "ann", "email": "", "first_name": "", "last_name": ""}


def run_store(url: str, scenario, **options):
    async def main():
        store = Store(url, url.rsplit("/", 1)[1].split("?")[0], **options)
        try:
            await store.ensure_indexes()
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def post(sequencer: Sequencer, uri: str, text: str, client_id: str | None = None,
         seen: int | None = None, user: dict = USER):
    """What Hub.post asks of the sequencer: (stored document, created)."""
    event = {"user_id": user["id"], "user": user, "message": text}
    if client_id:
        event["client_id"] = client_id
    return sequencer.append(uri, event, seen)


def test_concurrent_posts_to_many_rooms_are_stored_gap_free(fresh_db):
    """Posts to 20 rooms at once, 10 each: every room ends with seqs 1..10,
    each text once, and its room's seq at 10."""

    async def scenario(store):
        sequencer = Sequencer(store, Metrics())
        uris = [(await store.create_room(USER["id"]))["uri"] for _ in range(20)]

        async def post_and_touch(uri, i):
            message, created = await post(sequencer, uri, f"{uri}-{i}")
            await store.touch_room(message)
            return created

        created = await asyncio.gather(*(post_and_touch(uri, i) for uri in uris for i in range(10)))
        stored = {uri: await store.messages_after(uri, 0, 100) for uri in uris}
        rooms = {uri: await store.room(uri) for uri in uris}
        return created, stored, rooms

    created, stored, rooms = run_store(fresh_db, scenario)
    assert all(created)
    for uri, docs in stored.items():
        assert [d["seq"] for d in docs] == list(range(1, 11))
        assert sorted(d["message"] for d in docs) == sorted(f"{uri}-{i}" for i in range(10))
        assert rooms[uri]["seq"] == 10


def test_a_client_id_repeated_within_one_batch_is_stored_once(fresh_db):
    async def scenario(store):
        sequencer = Sequencer(store, Metrics())
        uri = (await store.create_room(USER["id"]))["uri"]
        first, again, other = await asyncio.gather(
            post(sequencer, uri, "hello", client_id="c1"),
            post(sequencer, uri, "hello", client_id="c1"),
            post(sequencer, uri, "other", client_id="c2"))
        later = await post(sequencer, uri, "hello", client_id="c1")
        return first, again, other, later, await store.messages_after(uri, 0, 100)

    first, again, other, later, docs = run_store(fresh_db, scenario)
    assert sorted([first[1], again[1]]) == [False, True]
    assert first[0]["seq"] == again[0]["seq"] == later[0]["seq"] and later[1] is False
    assert other[1] is True
    assert sorted(d["client_id"] for d in docs) == ["c1", "c2"]
    assert [d["seq"] for d in docs] == [1, 2]


def test_posts_fail_as_unavailable_when_mongodb_does_not_answer():
    """Port 9 on loopback: nothing listens, the batch fails at once as 503 material."""

    async def scenario():
        store = Store("mongodb://127.0.0.1:9/chat", "chat", timeout_ms=300)
        sequencer = Sequencer(store, Metrics())
        try:
            return await asyncio.gather(*(post(sequencer, "r", f"m{i}", seen=1) for i in range(3)),
                                        return_exceptions=True)
        finally:
            await store.close()

    assert all(isinstance(r, Unavailable) for r in asyncio.run(scenario()))


def test_a_room_this_process_never_read_is_touched_by_its_uri(fresh_db):
    """Rooms are updated by _id when the process knows it, else by uri: both land."""

    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        other = Store(fresh_db, fresh_db.rsplit("/", 1)[1])  # another process: no ids known
        try:
            message, _ = await post(Sequencer(other, Metrics()), uri, "hi")
            other.room_ids.clear()
            await other.touch_room(message)
        finally:
            await other.close()
        by_uri = (await store.room(uri))["seq"]
        message, _ = await post(Sequencer(store, Metrics()), uri, "again", seen=1)
        await store.touch_room(message)
        return by_uri, (await store.room(uri))["seq"], uri in store.room_ids

    assert run_store(fresh_db, scenario) == (1, 2, True)


def test_a_write_whose_deadline_passed_in_the_queue_is_failed_unsent():
    """Queue time counts: behind a command that hangs, a write whose deadline
    passes is failed at once rather than sent late, and the hung command gets
    only the time its own writes have left."""

    async def scenario():
        command = FakeCommand()
        commit = GroupCommit(command, 5.0)
        loop = asyncio.get_running_loop()
        first = await started(commit.submit(1))
        late = await started(commit.submit(2, loop.time() + 0.05))
        await asyncio.sleep(0.1)
        command.release.set()
        return command.batches, await asyncio.gather(*first, *late, return_exceptions=True)

    batches, (first, late) = asyncio.run(scenario())
    assert batches == [[1]] and first == 10
    assert isinstance(late, Unavailable)


def test_a_flush_does_not_inherit_the_request_deadline_of_who_began_it():
    """The flush (like every store.background task) runs in a context of its
    own: it serves later submitters too, so the first one's request deadline
    must not bound it."""

    async def scenario():
        seen = []

        async def command(items: list) -> list:
            seen.append(REQUEST_DEADLINE.get())
            return items

        commit = GroupCommit(command, 5.0)
        REQUEST_DEADLINE.set(asyncio.get_running_loop().time() + 1.0)
        await commit.submit(1)
        return seen

    assert asyncio.run(scenario()) == [None]


class UnacknowledgedInserts:
    """What pymongo raises for an insert the write concern did not acknowledge
    (on a replica set: the primary has it, the majority may not)."""

    def __init__(self):
        self.calls = 0

    async def insert_many(self, docs: list[dict], ordered: bool = True) -> None:
        self.calls += 1
        raise BulkWriteError({"writeErrors": [], "nInserted": len(docs), "nUpserted": 0,
                              "nMatched": 0, "nModified": 0, "nRemoved": 0, "upserted": [],
                              "writeConcernErrors": [{"code": 64, "codeName": "WriteConcernFailed",
                                                      "errmsg": "waiting for replication timed out"}]})


def test_an_insert_with_a_write_concern_error_is_not_reported_stored(fresh_db):
    async def scenario(store):
        store.messages = UnacknowledgedInserts()
        with pytest.raises(Unavailable):
            await post(Sequencer(store, Metrics()), "room", "hello", seen=5)
        return store.messages.calls

    assert run_store(fresh_db, scenario) == 1


class CommandLog(monitoring.CommandListener):
    """The commands the client sent (by name) and those the server refused."""

    def __init__(self):
        self.sent: dict[str, list[dict]] = {}
        self.refused: list[str] = []

    def started(self, event):
        self.sent.setdefault(event.command_name, []).append(event.command)

    def succeeded(self, event):
        pass

    def failed(self, event):
        self.refused.append(f"{event.command_name}: {event.failure}")


@pytest.mark.parametrize("write_concern, expected", [("majority", {"w": "majority"}),
                                                     ("1", {"w": 1})])
def test_writes_that_matter_are_sent_with_the_configured_write_concern(fresh_db, write_concern,
                                                                        expected):
    """On a replica set these make a post survive a failover; here the test
    proves they are sent, and that the test MongoDB accepts them."""
    commands = CommandLog()

    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        await post(Sequencer(store, Metrics()), uri, "hello")
        user = await store.create_user("ann", "", b"hash")
        await store.add_token("t1", public_user(user), now() + datetime.timedelta(days=1))
        history = await store.messages_before(uri, None, 10)
        return history

    history = run_store(fresh_db, scenario, write_concern=write_concern, event_listeners=[commands])
    assert [m["message"] for m in history] == ["hello"]
    # (SecantusDB keeps no text index: search is off there, nothing else refused)
    assert [r for r in commands.refused if "text indexes are not supported" not in r] == []
    inserts = commands.sent["insert"]
    assert {c["insert"] for c in inserts} >= {"rooms", "messages", "users", "tokens"}
    assert all(c["writeConcern"] == expected for c in inserts)
    assert all(c["readConcern"] == {"level": "majority"} for c in commands.sent["find"])


def test_an_expired_token_is_refused_before_mongodb_removes_it():
    """MongoDB's TTL monitor removes an expired token up to a minute later (the
    test server hides it at once, so this checks the documents themselves):
    until then neither token_user nor take_token takes it for live."""
    day = datetime.timedelta(days=1)
    assert live_token_user({"user": USER, "expires": now() - day}) is None
    assert live_token_user(None) is None
    assert live_token_user({"user": USER, "expires": now() + day}) == USER


def test_a_cached_membership_is_read_again_after_its_recheck_or_a_forget(fresh_db):
    """A member removed behind this process's back (its "expel" notice lost) is
    refused once the membership's recheck time has passed, or at once after
    forget_members (what the hub does after a broker outage)."""
    async def scenario(store):
        room = await store.create_room("owner")
        uri = room["uri"]
        await store.add_member(uri, "u2")
        await store.check_member(uri, "u2")  # remembered
        await store.rooms.update_one({"uri": uri}, {"$pull": {"members": "u2"}})  # elsewhere
        await store.check_member(uri, "u2")  # still believed: no read
        store.forget_members()
        with pytest.raises(NotMember):
            await store.check_member(uri, "u2")
        store.member_recheck = 0.0
        await store.add_member(uri, "u2")
        await store.rooms.update_one({"uri": uri}, {"$pull": {"members": "u2"}})
        with pytest.raises(NotMember):
            await store.check_member(uri, "u2")  # remembered, but not believed past its recheck

    run_store(fresh_db, scenario)
