"""The per-room sequencer on the test MongoDB: consecutive seqs, ordered
inserts, and races between processes decided by the unique (room, seq) index."""

from __future__ import annotations

import asyncio

import pytest

from chat.metrics import Metrics
from chat.sequencer import Sequencer
from chat.store import ClientIdTaken, NotAttempted, SeqTaken, Store
from tests.test_store import USER, post, run_store

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics


def counted(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"chat_{name}_total") or 0.0


def test_concurrent_posters_in_one_room_cost_one_insert_each(fresh_db):
    """120 posts at once to one room: one insert attempt per post (the old
    store needed thousands), seqs 1..120 each once."""

    async def scenario(store):
        metrics = Metrics()
        sequencer = Sequencer(store, metrics)
        uri = (await store.create_room(USER["id"]))["uri"]
        results = await asyncio.gather(*(post(sequencer, uri, f"m{i}") for i in range(120)))
        return results, await store.messages_after(uri, 0, 500), metrics

    results, docs, metrics = run_store(fresh_db, scenario)
    assert all(created for _, created in results)
    assert [d["seq"] for d in docs] == list(range(1, 121))
    assert sorted(d["message"] for d in docs) == sorted(f"m{i}" for i in range(120))
    assert counted(metrics, "event_inserts") == 120
    assert counted(metrics, "seq_renumbered") == 0


def test_a_post_that_loses_its_seq_is_stored_once_at_the_next_free_seq(fresh_db):
    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        other = Store(fresh_db, fresh_db.rsplit("/", 1)[1])  # another process
        try:
            elsewhere = Sequencer(other, Metrics())
            for i in range(3):
                await post(elsewhere, uri, f"elsewhere {i}")
        finally:
            await other.close()
        metrics = Metrics()
        # This process last saw seq 1: its insert at 2 loses, one read, stored at 4.
        doc, created = await post(Sequencer(store, metrics), uri, "mine", seen=1)
        return doc, created, await store.messages_after(uri, 0, 100), metrics

    doc, created, docs, metrics = run_store(fresh_db, scenario)
    assert created and doc["seq"] == 4
    assert [d["seq"] for d in docs] == [1, 2, 3, 4]
    assert [d["message"] for d in docs].count("mine") == 1
    assert counted(metrics, "event_inserts") == 2
    assert counted(metrics, "seq_renumbered") == 1


def test_two_processes_posting_in_one_room_stay_gap_free_and_duplicate_free(fresh_db):
    """Two stores (two connection pools, as two processes have) x 60 concurrent
    posters each, in one room: every post stored once, seqs 1..120. What a
    lost race costs is counted: one renumbering per lost batch, not per post."""

    async def scenario(store):
        uri = (await store.create_room(USER["id"]))["uri"]
        other = Store(fresh_db, fresh_db.rsplit("/", 1)[1])
        metrics = [Metrics(), Metrics()]
        sequencers = [Sequencer(store, metrics[0]), Sequencer(other, metrics[1])]
        try:
            # Each learns a last seq; the first's (1) is stale once the second posts,
            # so its next batch surely loses a seq.
            for p in (0, 1):
                await post(sequencers[p], uri, f"p{p}-first")
            results = await asyncio.gather(*(
                post(sequencers[p], uri, f"p{p}-{i}", client_id=f"p{p}-{i}")
                for i in range(60) for p in (0, 1)))
        finally:
            await other.close()
        return results, await store.messages_after(uri, 0, 500), metrics

    results, docs, metrics = run_store(fresh_db, scenario)
    assert all(created for _, created in results)
    assert [d["seq"] for d in docs] == list(range(1, 123))
    assert sorted(d["message"] for d in docs) == sorted(
        [f"p{p}-{i}" for i in range(60) for p in (0, 1)] + ["p0-first", "p1-first"])
    attempts = sum(counted(m, "event_inserts") for m in metrics)
    renumbered = sum(counted(m, "seq_renumbered") for m in metrics)
    assert renumbered >= 1
    assert attempts == 122 + renumbered  # every failed attempt was a lost seq, retried once


def test_an_ordered_insert_stops_one_room_at_its_failure_and_not_the_others(fresh_db):
    """One command for two rooms: room a's batch hits a taken seq and stops
    there (no hole after it); room b's batch behind it is still stored."""

    async def scenario(store):
        await store.insert_events([{"room": "a", "seq": 2, "message": "taken"}])
        a = [{"room": "a", "seq": s, "message": f"a{s}"} for s in (1, 2, 3)]
        a.append({"room": "a", "seq": 4, "message": "dup", "user_id": "u", "client_id": "c"})
        b = [{"room": "b", "seq": s, "message": f"b{s}"} for s in (1, 2)]
        results = await store.insert_batches([a, b])
        stored = {room: [d["seq"] for d in await store.messages_after(room, 0, 10)]
                  for room in "ab"}
        await store.insert_events([{"room": "c", "seq": 1, "user_id": "u", "client_id": "c"}])
        repeat = await store.insert_events([{"room": "c", "seq": 2, "user_id": "u",
                                             "client_id": "c"}])
        return results, stored, repeat

    results, stored, repeat = run_store(fresh_db, scenario)
    assert results[0][0] is None
    assert isinstance(results[0][1], SeqTaken)
    assert all(isinstance(r, NotAttempted) for r in results[0][2:])
    assert results[1] == [None, None]
    assert stored == {"a": [1, 2], "b": [1, 2]}
    assert isinstance(repeat[0], ClientIdTaken)


class GatedStore:
    """The sequencer's store methods over a list; inserts wait for `gate`."""

    def __init__(self):
        self.docs: list[dict] = []
        self.gate = asyncio.Event()

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + 5

    async def last_seq(self, uri: str) -> int:
        return max((d["seq"] for d in self.docs if d["room"] == uri), default=0)

    async def insert_events(self, docs: list[dict], deadline: float | None = None) -> list:
        await self.gate.wait()
        results = []
        for doc in docs:
            if results and results[-1] is not None:
                results.append(NotAttempted())
            elif doc["seq"] != await self.last_seq(doc["room"]) + 1:
                results.append(SeqTaken(doc["seq"]))
            else:
                self.docs.append(doc)
                results.append(None)
        return results


def test_a_caller_that_gives_up_mid_insert_does_not_break_the_room():
    """A post whose caller is cancelled while its insert is in flight is still
    stored (it was sent); the others of its batch and later ones are answered."""

    async def scenario():
        store = GatedStore()
        sequencer = Sequencer(store, Metrics())
        posts = [asyncio.create_task(post(sequencer, "room", f"m{i}", seen=0)) for i in range(3)]
        await asyncio.sleep(0.01)
        posts[0].cancel()
        store.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*posts, return_exceptions=True), 5)
        later = await asyncio.wait_for(post(sequencer, "room", "later"), 5)
        return results, later, [d["seq"] for d in store.docs]

    results, later, seqs = asyncio.run(scenario())
    assert isinstance(results[0], asyncio.CancelledError)
    assert [doc["seq"] for doc, _ in results[1:]] == [2, 3]
    assert later[0]["seq"] == 4 and seqs == [1, 2, 3, 4]


def test_a_duplicate_on_another_unique_index_fails_the_event_without_renumbering(fresh_db):
    """Only a taken seq is worth renumbering for; any other unique index that
    refuses an event fails it at once (no retry loop until the deadline)."""

    async def scenario(store):
        await store.messages.create_index("tag", unique=True, name="tag",
                                          partialFilterExpression={"tag": {"$type": "string"}})
        metrics = Metrics()
        sequencer = Sequencer(store, metrics)
        first = await sequencer.append("room", {"tag": "t", "message": "a"}, 0)
        with pytest.raises(Exception) as refused:
            await sequencer.append("room", {"tag": "t", "message": "b"}, 0)
        after = await sequencer.append("room", {"message": "c"}, 0)
        return first, refused.value, after, metrics

    first, refused, after, metrics = run_store(fresh_db, scenario)
    assert first[0]["seq"] == 1 and after[0]["seq"] == 2
    assert "tag" in str(refused) and not isinstance(refused, (SeqTaken, ClientIdTaken))
    assert counted(metrics, "seq_renumbered") == 0
