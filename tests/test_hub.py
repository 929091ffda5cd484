"""Unit tests of the hub's ordering logic, with an in-memory store and socket fakes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json

import pytest

from chat.broker import MemoryBroker
from chat.hub import Hub, TooManySockets, stored_event
from chat.metrics import Metrics
from chat.store import Banned, NotAttempted, NotMember, SeqTaken, Store, Unavailable, public_event
from tests.helpers import wait_for


class FakeStore:
    """The store's room-event methods over a list; `delay` slows reads down.
    Inserts are ordered and refuse a taken seq like MongoDB's unique index;
    `insert_gate` (an Event) holds them until set, `insert_error` fails them."""

    def __init__(self):
        self.messages: list[dict] = []
        self.delay = 0.0
        self.insert_gate: asyncio.Event | None = None
        self.insert_error: Exception | None = None
        self.touch_error: Exception | None = None
        self.counts: dict[str, int] = {}  # rate limit counters
        self.members = ["u1", "u2"]  # of every room, as room() reads them
        self.banned: list[str] = []
        self.removed: set[str] = set()  # refused by check_member, as after a removal
        self.forgotten_all = 0

    def add(self, uri: str, text: str) -> dict:
        doc = {"_id": f"id{len(self.messages)}", "room": uri, "seq": self.next_seq(uri),
               "user": {"id": "u1", "username": "alice"}, "message": text,
               "created": datetime.datetime.now(datetime.UTC)}
        self.messages.append(doc)
        return doc

    def add_event(self, uri: str, event_type: str, **fields) -> dict:
        """A stored room event other than a message (an edit, a reaction, ...)."""
        alice = {"id": "u1", "username": "alice"}
        # What each type needs to be rendered (chat.store.EVENT_RENDERERS), unless given.
        defaults = {"created": datetime.datetime.now(datetime.UTC), "user": alice, "by": alice,
                    "target_id": "id0", "version": 1, "op": "add"}
        doc = {**defaults, "_id": f"id{len(self.messages)}", "room": uri,
               "seq": self.next_seq(uri), "type": event_type, **fields}
        self.messages.append(doc)
        return doc

    async def count_hit(self, key: str, expires, hits: int = 1) -> int:
        self.counts[key] = self.counts.get(key, 0) + hits
        return self.counts[key]

    async def hit_count(self, key: str) -> int:
        return self.counts.get(key, 0)

    def next_seq(self, uri: str) -> int:
        return 1 + max((m["seq"] for m in self.messages if m["room"] == uri), default=0)

    async def last_seq(self, uri: str) -> int:
        return self.next_seq(uri) - 1

    async def messages_after(self, uri: str, after: int, limit: int) -> list[dict]:
        found = [m for m in self.messages if m["room"] == uri and m["seq"] > after]
        await asyncio.sleep(self.delay)  # the answer is as of when the read began
        return sorted(found, key=lambda m: m["seq"])[:limit]

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + 5

    async def read_positions(self, uri: str) -> dict[str, int]:
        return {}

    def budget(self, deadline: float):
        return contextlib.nullcontext()

    async def member_seq(self, uri: str, user_id: str) -> int | None:
        if user_id == "stranger":
            raise NotMember(uri)
        return None

    async def insert_events(self, docs: list[dict], deadline: float | None = None) -> list:
        if self.insert_gate is not None:
            await self.insert_gate.wait()
        if self.insert_error is not None:
            raise self.insert_error
        results: list = []
        for doc in docs:
            if results and results[-1] is not None:
                results.append(NotAttempted())
            elif doc["seq"] != self.next_seq(doc["room"]):
                results.append(SeqTaken(doc["seq"]))
            else:
                self.messages.append({**doc, "_id": f"id{len(self.messages)}"})
                doc["_id"] = self.messages[-1]["_id"]
                results.append(None)
        return results

    async def event_by_client_id(self, uri: str, user_id: str, client_id: str) -> dict | None:
        return None

    async def room(self, uri: str) -> dict | None:
        return {"uri": uri, "members": self.members, "banned": self.banned}

    def known_member(self, uri: str, user_id: str) -> bool:
        return False  # every check reads, as after a forget

    async def check_member(self, uri: str, user_id: str) -> None:
        if user_id in self.banned:
            raise Banned(uri)
        if user_id in self.removed or user_id == "stranger":
            raise NotMember(uri)

    def forget_member(self, uri: str, user_id: str) -> None:
        pass

    def forget_members(self) -> None:
        self.forgotten_all += 1

    async def touch_room(self, event: dict, deadline: float | None = None) -> None:
        if self.touch_error is not None:
            raise self.touch_error


class FakeSocket:
    def __init__(self, name: str = "s", user_id: str = "u1"):
        self.user = {"id": user_id, "username": name}
        self.token_id = f"t-{name}"
        self.frames: list[dict] = []
        self.raw: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.backlog = False  # frames still waiting in its outgoing buffer

    def send_frame(self, frame: bytes) -> bool:
        """One write, of one frame or several back to back."""
        if self.closed:
            return False
        self.raw.append(frame)
        while frame:
            assert frame[0] == 0x81  # a final text frame
            length = frame[1] & 0x7F
            offset = 2 if length < 126 else 4 if length == 126 else 10
            if length >= 126:
                length = int.from_bytes(frame[2:offset])
            self.frames.append(json.loads(frame[offset:offset + length]))
            frame = frame[offset + length:]
        return True

    async def drain(self) -> bool:
        return not self.closed

    def backlogged(self) -> bool:
        return self.backlog

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f["type"] == "message"]

    @property
    def events(self) -> list[tuple[str, int]]:
        return [(f["type"], f["seq"]) for f in self.frames if "seq" in f]


def payload(doc: dict) -> bytes:
    return stored_event(doc)[1]


@pytest.fixture
def hub_and_store():
    store = FakeStore()
    broker = MemoryBroker()
    return Hub(store, broker, Metrics()), store, broker


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_deliveries_out_of_order_are_repaired_from_the_store(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        docs = [store.add("room", f"m{i}") for i in range(1, 5)]
        # the broker hands over 3 and 4 before 1 and 2, and 2 twice
        for doc in (docs[2], docs[3], docs[0], docs[1], docs[1]):
            hub.on_message("room", payload(doc))
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3, 4]


def test_a_lost_delivery_is_filled_in_when_the_next_one_arrives(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        first, _lost, third = (store.add("room", t) for t in ("a", "b", "c"))
        hub.on_message("room", payload(first))
        hub.on_message("room", payload(third))  # "b" never comes through the broker
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3]
    assert [f["message"] for f in sock.frames] == ["a", "b", "c"]


def test_a_gap_repair_reads_only_the_missing_range():
    """Seqs 2-4 skipped, 5 arrived: MongoDB is asked for 2-4, not for 5 and
    what follows (they are on their way, or waiting here already)."""
    store, broker = FakeStore(), MemoryBroker()
    metrics = Metrics()
    hub = Hub(store, broker, metrics)

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        docs = [store.add("room", f"m{i}") for i in range(1, 8)]
        hub.on_message("room", payload(docs[0]))
        hub.on_message("room", payload(docs[4]))
        await settle()
        for doc in docs[5:]:
            hub.on_message("room", payload(doc))
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3, 4, 5, 6, 7]
    assert metrics.registry.get_sample_value("chat_messages_backfilled_total") == 3


def test_after_a_broker_outage_the_room_is_backfilled(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        for text in ("while", "the broker", "was down"):
            store.add("room", text)
        hub.on_recovered(["room"])
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3]


def test_after_a_broker_outage_members_who_left_meanwhile_are_closed_out(hub_and_store):
    """Their "expel" notices were sent while this process could not hear them:
    the hub forgets every cached membership and rechecks its rooms' sockets."""
    hub, store, _ = hub_and_store

    async def scenario():
        staying, banned, removed = FakeSocket("a", "u1"), FakeSocket("b", "u2"), FakeSocket("c", "u3")
        for sock in (staying, banned, removed):
            await hub.join(sock, "room", 0)
        store.members, store.banned = ["u1"], ["u2"]
        hub.on_recovered(["room"])
        await settle()
        return staying, banned, removed

    staying, banned, removed = asyncio.run(scenario())
    assert staying.closed is None
    assert banned.closed == (1008, "banned from the chat")
    assert removed.closed == (1008, "removed from the chat")
    assert store.forgotten_all == 1


def test_a_broker_outage_during_a_gap_repair_is_backfilled_too(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        store.delay = 0.05
        store.add("room", "1")
        hub.on_message("room", payload(store.add("room", "2")))  # 1 is missing: repair
        await asyncio.sleep(0.01)  # the repair's read has begun
        store.add("room", "3")  # stored while the broker was down: never delivered
        hub.on_recovered(["room"])
        # Until the repair and the members' recheck are over: 3 comes from the
        # backfill or not at all, and nothing after it may repeat what was sent.
        await wait_for(lambda: not hub.tasks, 5, "the repair to finish")
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3]


def test_a_catch_up_racing_live_deliveries_sends_each_seq_once(hub_and_store):
    hub, store, _ = hub_and_store
    store.delay = 0.02

    async def scenario():
        for i in range(250):
            store.add("room", f"old{i}")
        early = FakeSocket("early")
        await hub.join(early, "room", None)
        late = FakeSocket("late")
        joining = asyncio.ensure_future(hub.join(late, "room", 0))
        for i in range(30):  # arrive while `late` reads its pages
            hub.on_message("room", payload(store.add("room", f"new{i}")))
            await asyncio.sleep(0.005)
        ready_seq = await joining
        for i in range(5):
            hub.on_message("room", payload(store.add("room", f"after{i}")))
        await settle()
        return early, late, ready_seq

    early, late, ready_seq = asyncio.run(scenario())
    assert late.seqs == list(range(1, 286))
    assert ready_seq >= 250
    assert early.seqs == list(range(251, 286))


def test_the_last_socket_leaving_unsubscribes_the_room(hub_and_store):
    hub, _store, broker = hub_and_store

    async def scenario():
        a, b = FakeSocket("a"), FakeSocket("b", "u2")
        await hub.join(a, "room", None)
        await hub.join(b, "room", None)
        hub.leave(a, "room")
        await settle()
        assert broker.rooms == {"room"}
        hub.leave(b, "room")
        await settle()
        assert broker.rooms == set() and hub.rooms == {}
        assert hub.no_sockets.is_set()

    asyncio.run(scenario())


def test_logout_notice_closes_only_that_tokens_sockets(hub_and_store):
    hub, _, _ = hub_and_store

    async def scenario():
        a, b = FakeSocket("a"), FakeSocket("b", "u2")
        await hub.join(a, "room", None)
        await hub.join(b, "room", None)
        hub.revoke_token(a.user["id"], a.token_id)
        await settle()
        return a, b

    a, b = asyncio.run(scenario())
    assert a.closed == (1008, "logged out") and b.closed is None


class TokenCache:
    """What the hub asks of chat.tokens.Tokens: forget one, forget all."""

    def __init__(self):
        self.forgotten: list[str | None] = []

    def forget(self, token_id: str) -> None:
        self.forgotten.append(token_id)

    def forget_all(self) -> None:
        self.forgotten.append(None)


def test_logout_refresh_and_a_broker_outage_reach_the_token_cache():
    """Logout and refresh notices drop the token from this process's cache (a
    refresh leaves its sockets open); after a broker outage, notices may have
    been lost, so every cached token is dropped."""
    tokens = TokenCache()
    hub = Hub(FakeStore(), MemoryBroker(), Metrics(), tokens=tokens)

    async def scenario():
        sock = FakeSocket("a")
        await hub.join(sock, "room", None)
        hub.revoke_token(sock.user["id"], "rotated", close_sockets=False)
        hub.revoke_token(sock.user["id"], sock.token_id)
        hub.on_recovered(["room"])
        await settle()
        return sock

    sock = asyncio.run(scenario())
    # At once here; then the broker hands the notices back, as RabbitMQ does.
    assert tokens.forgotten[:3] == ["rotated", "t-a", None]
    assert set(tokens.forgotten[3:]) <= {"rotated", "t-a"}
    assert sock.closed == (1008, "logged out")


def test_a_control_notice_is_acted_on_once_by_its_sender_and_its_echo_dropped():
    """Hub.notify acts here at once; the exchange hands the notice back to its
    sender too (MemoryBroker as RabbitMQ does), which must not act on it again:
    a late echo of an earlier notice would undo a later one (a level, a focus)."""
    hub = Hub(FakeStore(), MemoryBroker(), Metrics())
    seen: list[str] = []
    hub.handle_notices("probe", lambda notice: seen.append(notice["value"]))

    async def scenario():
        hub.notify({"type": "probe", "value": "first"})
        hub.notify({"type": "probe", "value": "second"})
        assert seen == ["first", "second"]  # at once, before any echo
        await settle()
        # Another process's notice is acted on.
        hub.on_control(b'{"type": "probe", "value": "theirs", "from": "elsewhere"}')

    asyncio.run(scenario())
    assert seen == ["first", "second", "theirs"]


def test_post_validates_the_text(hub_and_store):
    hub, _, _ = hub_and_store
    user = {"id": "u1", "username": "alice"}

    async def scenario():
        for bad in ("", "   ", None, 3, "x" * 2001):
            with pytest.raises(ValueError):
                await hub.post(user, "room", bad)
        message = await hub.post(user, "room", "fine")
        assert message["seq"] == 1

    asyncio.run(scenario())


def test_a_since_beyond_the_stored_seq_withholds_nothing(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        store.add("room", "1")
        sock = FakeSocket()
        ready = await hub.join(sock, "room", 1000)
        for text in ("2", "3"):
            hub.on_message("room", payload(store.add("room", text)))
        await settle()
        return sock, ready

    sock, ready = asyncio.run(scenario())
    assert ready == 1
    assert sock.seqs == [2, 3]


class HeldBroker(MemoryBroker):
    """Keeps what is published until the test hands it over."""

    def __init__(self):
        super().__init__()
        self.held: list[tuple[str, bytes]] = []

    def publish(self, uri: str, body: bytes) -> None:
        self.held.append((uri, body))


def test_a_post_reaches_this_process_sockets_before_the_brokers_copy():
    store, broker = FakeStore(), HeldBroker()
    hub = Hub(store, broker, Metrics())

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        await hub.post(sock.user, "room", "hello")
        await asyncio.sleep(0)  # the turn in which the room writes out what it delivered
        before_broker = list(sock.seqs)
        assert len(broker.held) == 1
        for uri, body in broker.held:  # the broker's copy is a repeat
            hub.on_message(uri, body)
        await settle()
        return before_broker, sock.seqs

    assert asyncio.run(scenario()) == ([1], [1])


def test_a_post_ahead_of_an_undelivered_message_waits_for_it():
    """Another process stored seq 1, its delivery is still on the way: our seq 2
    must not overtake it, so it goes the broker's way and arrives after 1."""
    store, broker = FakeStore(), HeldBroker()
    hub = Hub(store, broker, Metrics())

    async def scenario():
        sock = FakeSocket()
        await hub.join(sock, "room", None)
        elsewhere = store.add("room", "from another process")
        await hub.post(sock.user, "room", "mine")
        before_broker = list(sock.seqs)
        hub.on_message("room", payload(elsewhere))
        for uri, body in broker.held:
            hub.on_message(uri, body)
        await settle()
        return before_broker, sock.seqs

    assert asyncio.run(scenario()) == ([], [1, 2])


# The two streams: full (joined with since) and plain (no since) -------------

def test_a_plain_socket_gets_messages_only_and_a_full_one_every_event(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        plain, full = FakeSocket("plain"), FakeSocket("full", "u2")
        plain2, full2 = FakeSocket("plain2"), FakeSocket("full2", "u2")
        for sock in (plain, plain2):
            await hub.join(sock, "room", None)
        for sock in (full, full2):
            await hub.join(sock, "room", 0)
        docs = [store.add("room", "hi"), store.add_event("room", "edit", target_seq=1, message="hey"),
                store.add_event("room", "reaction", target_seq=1, emoji="x", op="add"),
                store.add("room", "there"), store.add_event("room", "delete", target_seq=4)]
        for doc in docs:  # all in one turn of the event loop
            hub.on_message("room", payload(doc))
        await settle()
        return plain, full, plain2, full2

    plain, full, plain2, full2 = asyncio.run(scenario())
    for sock in (plain, plain2):
        assert sock.events == [("message", 1), ("message", 4)]
    for sock in (full, full2):
        assert sock.events == [("message", 1), ("edit", 2), ("reaction", 3), ("message", 4),
                               ("delete", 5)]
    # one write per socket for the turn's five events, the same bytes for every
    # socket of a stream (joined once, not once per socket)
    assert len(plain.raw) == len(full.raw) == 1
    assert plain.raw[0] is plain2.raw[0] and full.raw[0] is full2.raw[0]
    assert hub.metrics.registry.get_sample_value("chat_messages_delivered_total") == 2 * 2 + 2 * 5


def test_events_of_one_turn_go_out_in_one_write_per_socket_and_one_alone_at_once(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        socks = [FakeSocket(f"s{i}", f"u{i}") for i in range(3)]
        for sock in socks:
            await hub.join(sock, "room", 0)
        for i in range(10):  # a burst: a group commit's posts, a read of broker deliveries
            hub.on_message("room", payload(store.add("room", f"burst{i}")))
        newcomer = FakeSocket("newcomer", "u9")
        await hub.join(newcomer, "room", None)  # in the same turn: the burst came before it
        await asyncio.sleep(0)  # one turn: the room's flush
        after_burst = [len(sock.raw) for sock in socks]
        hub.on_message("room", payload(store.add("room", "alone")))
        await asyncio.sleep(0)
        after_one = [len(sock.raw) for sock in socks]
        return socks, newcomer, after_burst, after_one

    socks, newcomer, after_burst, after_one = asyncio.run(scenario())
    assert after_burst == [1, 1, 1] and after_one == [2, 2, 2]
    for sock in socks:
        assert sock.seqs == list(range(1, 12))
    assert newcomer.seqs == [11]
    assert hub.metrics.registry.get_sample_value("chat_messages_delivered_total") == 3 * 11 + 1
    assert hub.metrics.registry.get_sample_value("chat_delivery_seconds_count") == 11


def test_a_signal_after_events_of_the_same_turn_does_not_overtake_them(hub_and_store):
    hub, store, _ = hub_and_store
    signal = json.dumps({"type": "typing", "users": []}).encode()

    async def scenario():
        sock = FakeSocket("full")
        await hub.join(sock, "room", 0)
        hub.on_message("room", payload(store.add("room", "one")))
        hub.signal("room", signal)
        hub.on_message("room", payload(store.add("room", "two")))
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert [f["type"] for f in sock.frames] == ["message", "typing", "message"]
    assert sock.seqs == [1, 2]


def test_a_socket_going_live_while_events_are_queued_gets_each_seq_once(hub_and_store):
    """A client that saw further than the room has delivered here (on another
    process, say) goes live on the first delivery past what it saw, while the
    turn's earlier ones are queued: it must not get those again."""
    hub, store, _ = hub_and_store

    async def scenario():
        early = FakeSocket("early")
        await hub.join(early, "room", 0)
        docs = [store.add("room", f"m{i}") for i in range(3)]  # stored, not yet delivered
        late = FakeSocket("late", "u2")
        assert await hub.join(late, "room", 3) == 3  # has seen 1-3
        docs.append(store.add("room", "m3"))
        for doc in docs:  # one turn: 1-3 are queued when 4 takes `late` live
            hub.on_message("room", payload(doc))
        await settle()
        return early, late

    early, late = asyncio.run(scenario())
    assert late.seqs == [4]
    assert early.seqs == [1, 2, 3, 4]


class GatedReads(FakeStore):
    """Reads answer as of when they began, but only once `gate` is set."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()

    async def messages_after(self, uri: str, after: int, limit: int) -> list[dict]:
        found = [m for m in self.messages if m["room"] == uri and m["seq"] > after]
        await self.gate.wait()
        return sorted(found, key=lambda m: m["seq"])[:limit]


def test_a_catch_up_finishing_while_events_are_queued_gets_each_seq_once():
    """The catch-up's buffer has the turn's queued event already: the socket
    must not get it again from the room's flush."""

    async def scenario():
        store = GatedReads()
        hub = Hub(store, MemoryBroker(), Metrics())
        for i in range(3):
            store.add("room", f"old{i}")
        early = FakeSocket("early")
        await hub.join(early, "room", None)
        late = FakeSocket("late", "u2")
        joining = asyncio.ensure_future(hub.join(late, "room", 0))
        await asyncio.sleep(0.01)  # reading 1-3, held at the gate
        store.gate.set()  # the read ends in the next turn ...
        hub.on_message("room", payload(store.add("room", "new")))  # ... 4 queued before it
        assert await joining == 4
        await settle()
        return early, late

    early, late = asyncio.run(scenario())
    assert late.seqs == [1, 2, 3, 4]
    assert early.seqs == [4]


def test_catch_up_replays_every_event_type_and_gap_repair_keeps_the_streams(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        store.add("room", "before")
        store.add_event("room", "member", op="join", user={"id": "u2", "username": "bob"})
        plain, full = FakeSocket("plain"), FakeSocket("full", "u2")
        await hub.join(plain, "room", None)
        ready = await hub.join(full, "room", 0)
        # a lost delivery of an edit: repaired from the store, to the full stream only
        store.add_event("room", "edit", target_seq=1, message="changed")
        hub.on_message("room", payload(store.add("room", "after")))
        await settle()
        return plain, full, ready

    plain, full, ready = asyncio.run(scenario())
    assert ready == 2
    assert full.events == [("message", 1), ("member", 2), ("edit", 3), ("message", 4)]
    assert full.frames[1]["user"]["username"] == "bob" and full.frames[1]["uri"] == "room"
    assert plain.events == [("message", 4)]


def test_signals_reach_the_full_stream_only_and_spare_a_backlogged_socket(hub_and_store):
    hub, store, _ = hub_and_store
    signal = json.dumps({"type": "typing", "users": ["alice"]}).encode()

    async def scenario():
        plain = FakeSocket("plain", "u1")
        alice, bob, slow = FakeSocket("alice", "u1"), FakeSocket("bob", "u2"), FakeSocket("carol", "u3")
        await hub.join(plain, "room", None)
        for sock in (alice, bob, slow):
            await hub.join(sock, "room", 0)
        slow.backlog = True
        counts = [hub.signal("room", signal), hub.signal("room", signal, spare_slow=False),
                  hub.signal("elsewhere", signal)]
        # a signal has no seq: the room's order is untouched and nothing replays it
        hub.on_message("room", payload(store.add("room", "next")))
        late = FakeSocket("late", "u4")
        await hub.join(late, "room", 0)
        await settle()
        return counts, plain, alice, bob, slow, late

    counts, plain, alice, bob, slow, late = asyncio.run(scenario())
    assert counts == [2, 3, 0]
    assert [f["type"] for f in alice.frames] == ["typing", "typing", "message"]
    assert [f["type"] for f in bob.frames] == ["typing", "typing", "message"]
    assert [f["type"] for f in slow.frames] == ["typing", "message"]  # not spared: a presence diff
    assert [f["type"] for f in plain.frames] == ["message"]
    assert late.events == [("message", 1)] and len(late.frames) == 1


# Rooms that cannot start or repair, and joins that must not wait forever ----

class ChannelWrongStateError(Exception):
    """What pika raises for an operation on a closing channel."""


class FailingBroker(MemoryBroker):
    """subscribe raises, as pika does on a closing channel, `failures` times (-1: always)."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def subscribe(self, uri: str) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ChannelWrongStateError("Channel is closed.")
        await super().subscribe(uri)


class FailingStore(FakeStore):
    """Reads raise (not Unavailable: anything) while `failing` counts down; counts reads."""

    def __init__(self):
        super().__init__()
        self.last_seq_failures = 0
        self.read_failures = 0
        self.reads = 0

    async def last_seq(self, uri: str) -> int:
        if self.last_seq_failures:
            self.last_seq_failures -= 1
            raise RuntimeError("operation failed")
        return await super().last_seq(uri)

    async def messages_after(self, uri: str, after: int, limit: int) -> list[dict]:
        self.reads += 1
        if self.read_failures:
            self.read_failures -= 1
            raise RuntimeError("cursor killed")
        return await super().messages_after(uri, after, limit)


def quick_retries(hub: Hub) -> Hub:
    hub.retry_first = 0.01
    hub.retry_max = 0.05
    return hub


async def within(awaitable, seconds: float = 5):
    return await asyncio.wait_for(awaitable, seconds)


@pytest.mark.parametrize("since", [None, 0])
def test_a_room_whose_subscribe_raises_starts_on_a_retry(since):
    store, broker = FakeStore(), FailingBroker(failures=2)
    hub = quick_retries(Hub(store, broker, Metrics()))

    async def scenario():
        sock = FakeSocket()
        await within(hub.join(sock, "room", since))
        later = FakeSocket("later", "u2")
        await within(hub.join(later, "room", since))
        hub.on_message("room", payload(store.add("room", "hello")))
        await settle()
        return sock, later

    sock, later = asyncio.run(scenario())
    assert broker.calls == 3 and broker.rooms == {"room"}
    assert sock.seqs == [1] and later.seqs == [1]
    assert hub.metrics.room_failures.labels("start")._value.get() == 2


def test_a_room_whose_store_raises_on_start_starts_on_a_retry():
    store = FailingStore()
    store.add("room", "stored before")
    store.last_seq_failures = 2
    hub = quick_retries(Hub(store, MemoryBroker(), Metrics()))

    async def scenario():
        sock = FakeSocket()
        ready = await within(hub.join(sock, "room", None))
        hub.on_message("room", payload(store.add("room", "after")))
        await settle()
        return sock, ready

    sock, ready = asyncio.run(scenario())
    assert ready == 1 and sock.seqs == [2]


def test_a_room_that_never_starts_stops_trying_when_its_sockets_leave():
    broker = FailingBroker(failures=-1)
    hub = quick_retries(Hub(FakeStore(), broker, Metrics()))

    async def scenario():
        sock = FakeSocket()
        joining = asyncio.ensure_future(hub.join(sock, "room", 0))
        await settle()
        assert not joining.done() and broker.calls > 1
        hub.leave(sock, "room")  # the socket's ready timeout closed it
        await within(joining)
        await settle()
        calls = broker.calls
        await settle()
        return calls

    calls = asyncio.run(scenario())
    assert broker.calls == calls and hub.rooms == {} and not hub.tasks


def test_a_repair_whose_read_raises_is_retried():
    store = FailingStore()
    hub = quick_retries(Hub(store, MemoryBroker(), Metrics()))

    async def scenario():
        sock = FakeSocket()
        await within(hub.join(sock, "room", None))
        store.read_failures = 2
        store.add("room", "lost on the way")
        hub.on_message("room", payload(store.add("room", "arrives first")))  # a gap: repair
        await settle()
        hub.on_message("room", payload(store.add("room", "later")))
        await settle()
        return sock

    sock = asyncio.run(scenario())
    assert sock.seqs == [1, 2, 3]
    assert hub.metrics.room_failures.labels("repair")._value.get() == 2


def test_a_plain_join_while_the_room_starts_survives_the_other_socket_leaving():
    store, broker = FakeStore(), FailingBroker(failures=1)
    hub = quick_retries(Hub(store, broker, Metrics()))

    async def scenario():
        catching, plain = FakeSocket("catching"), FakeSocket("plain", "u2")
        first = asyncio.ensure_future(hub.join(catching, "room", 0))
        second = asyncio.ensure_future(hub.join(plain, "room", None))
        await asyncio.sleep(0)
        hub.leave(catching, "room")  # the only other socket leaves while the room starts
        await within(asyncio.gather(first, second))
        hub.on_message("room", payload(store.add("room", "hello")))
        await settle()
        return plain

    plain = asyncio.run(scenario())
    assert plain.seqs == [1]
    assert set(hub.rooms) == {"room"} and broker.rooms == {"room"}


def test_repair_backs_off_and_drops_a_delivery_mongodb_never_has():
    store = FailingStore()
    hub = quick_retries(Hub(store, MemoryBroker(), Metrics()))
    hub.repair_attempts = 4

    async def scenario():
        sock = FakeSocket()
        await within(hub.join(sock, "room", None))
        store.add("room", "1")
        phantom = {**store.add("room", "2"), "seq": 5}  # seq 5 (and 3, 4) never stored
        store.messages.pop()
        reads_before = store.reads
        hub.on_message("room", payload(phantom))
        deadline = asyncio.get_running_loop().time() + 5
        await asyncio.sleep(0)
        while hub.rooms["room"].busy:
            assert asyncio.get_running_loop().time() < deadline, \
                f"the repair never gave up ({store.reads - reads_before} reads)"
            await asyncio.sleep(0.01)
        reads = store.reads - reads_before
        hub.on_message("room", payload(store.add("room", "real 2")))  # the room moves on
        await settle()
        return sock, reads

    sock, reads = asyncio.run(scenario())
    assert reads == 4  # one read per attempt, with a pause between: no spinning
    assert sock.seqs == [1, 2]
    assert [f["message"] for f in sock.frames] == ["1", "real 2"]
    assert hub.metrics.repair_dropped._value.get() == 1


def test_a_post_is_answered_and_published_only_once_stored():
    store, broker = FakeStore(), HeldBroker()
    hub = Hub(store, broker, Metrics())
    user = {"id": "u1", "username": "alice"}

    async def scenario():
        store.insert_gate = asyncio.Event()
        post = asyncio.create_task(hub.post(user, "room", "hello"))
        await settle()
        waiting = (post.done(), list(broker.held), list(store.messages))
        store.insert_gate.set()
        return waiting, await post

    (done, published, stored), message = asyncio.run(scenario())
    assert (done, published, stored) == (False, [], [])
    assert message["seq"] == 1 and message["type"] == "message"
    assert [doc["message"] for doc in store.messages] == ["hello"]


def test_a_post_is_rendered_for_clients_once(monkeypatch):
    """Per-message work happens once: the answer to the poster is the event
    that was published, not a second rendering of the stored document."""
    store, broker = FakeStore(), HeldBroker()
    hub = Hub(store, broker, Metrics())
    rendered = []

    def counting_public_event(doc):
        rendered.append(doc["seq"])
        return public_event(doc)

    monkeypatch.setattr("chat.hub.public_event", counting_public_event)
    message = asyncio.run(hub.post({"id": "u1", "username": "alice"}, "room", "hello"))
    assert rendered == [1]
    assert json.loads(broker.held[0][1]) == message


def test_a_post_that_is_not_stored_fails_and_publishes_nothing():
    store, broker = FakeStore(), HeldBroker()
    hub = Hub(store, broker, Metrics())
    store.insert_error = Unavailable("down")

    async def scenario():
        with pytest.raises(Unavailable):
            await hub.post({"id": "u1", "username": "alice"}, "room", "hello")

    asyncio.run(scenario())
    assert broker.held == []


def test_a_failed_room_update_after_a_stored_post_does_not_fail_it():
    """The post is stored and published: failing it now would make a client
    without client_id store it twice."""
    store, broker = FakeStore(), HeldBroker()
    metrics = Metrics()
    hub = Hub(store, broker, metrics)
    store.touch_error = Unavailable("MongoDB went away after the insert")

    async def scenario():
        return await hub.post({"id": "u1", "username": "alice"}, "room", "hello")

    message = asyncio.run(scenario())
    assert message["seq"] == 1 and len(broker.held) == 1
    assert metrics.registry.get_sample_value("chat_room_update_failures_total") == 1


# Membership fails closed ------------------------------------------------------

BOB = {"id": "u2", "username": "bob"}


def test_a_member_event_that_ends_a_membership_closes_the_members_readers_however_it_arrives(
        hub_and_store):
    """No expel notice at all: the ban event, handed over by the broker after a
    gap, is read back by repair and closes bob's socket; alice's stays."""
    hub, store, _ = hub_and_store

    async def scenario():
        alice, bob = FakeSocket("alice", "u1"), FakeSocket("bob", "u2")
        await hub.join(alice, "room", 0)
        await hub.join(bob, "room", 0)
        store.banned.append("u2")
        ban = store.add_event("room", "member", op="ban", user=BOB)
        later = store.add("room", "after the ban")
        hub.on_message("room", payload(later))  # the ban's own delivery was lost
        await settle()
        return alice, bob, ban

    alice, bob, ban = asyncio.run(scenario())
    assert bob.closed == (1008, "banned from the chat")
    assert alice.closed is None and ("member", ban["seq"]) in alice.events


def test_a_member_who_rejoined_before_the_old_event_arrived_is_not_closed(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        bob = FakeSocket("bob", "u2")
        await hub.join(bob, "room", 0)
        asked = []
        check_member = store.check_member

        async def counted(uri, user_id):
            asked.append(user_id)
            await check_member(uri, user_id)
        store.check_member = counted
        removal = store.add_event("room", "member", op="remove", user=BOB)
        hub.on_message("room", payload(removal))  # MongoDB: a member again by now
        await wait_for(lambda: asked, 2, "the membership asked again")
        await settle()
        return bob, removal, asked

    bob, removal, asked = asyncio.run(scenario())
    assert asked == ["u2"] and ("member", removal["seq"]) in bob.events
    assert bob.closed is None


def test_a_removed_member_is_closed_when_mongodb_confirms_it(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        bob = FakeSocket("bob", "u2")
        await hub.join(bob, "room", None)
        store.removed.add("u2")
        hub.on_message("room", payload(store.add_event("room", "member", op="remove", user=BOB)))
        await wait_for(lambda: bob.closed, 2, "bob closed")
        return bob

    assert asyncio.run(scenario()).closed == (1008, "removed from the chat")


def test_when_mongodb_cannot_say_the_reader_is_closed(hub_and_store):
    hub, store, _ = hub_and_store

    async def scenario():
        bob = FakeSocket("bob", "u2")
        await hub.join(bob, "room", None)

        async def unavailable(uri, user_id):
            raise Unavailable("down")
        store.check_member = unavailable
        hub.on_message("room", payload(store.add_event("room", "member", op="leave", user=BOB)))
        await settle()
        return bob

    assert asyncio.run(scenario()).closed == (1008, "left the chat")


def test_the_membership_is_checked_before_anything_is_sent(hub_and_store):
    """Banned between the handshake and the join: no catch-up, no presence."""
    hub, store, _ = hub_and_store

    async def scenario():
        for i in range(3):
            store.add("room", f"m{i}")
        store.banned.append("u2")
        bob = FakeSocket("bob", "u2")
        with pytest.raises(NotMember):
            await hub.join(bob, "room", 0)
        return bob

    bob = asyncio.run(scenario())
    assert bob.frames == []
    assert hub.signals.online("room") == []
    assert len(hub.sockets_by_user["u2"]) == 1  # released by the socket's close, not here


def test_a_membership_cached_for_a_room_this_process_does_not_follow_is_read_again():
    """The hub tells the store which rooms it follows: a cache entry for any
    other room is not believed (the event that would drop it never comes here)."""
    async def scenario():
        store = Store("mongodb://127.0.0.1:9", "unused")
        hub = Hub(store, MemoryBroker(), Metrics())
        store.remember_member("room", "u1")
        assert not store.known_member("room", "u1")  # no reader here
        sock = FakeSocket()
        room, _ = hub.register(sock, "room", None, signals=False)
        room.started.set_result(None)
        assert store.known_member("room", "u1")
        room.stale = True  # the broker was away: events may be missing
        assert not store.known_member("room", "u1")
        await store.close()

    asyncio.run(scenario())


def test_recheck_after_an_outage_retries_while_mongodb_is_unavailable(hub_and_store):
    hub, store, _ = hub_and_store
    hub.retry_first = hub.retry_max = 0.01

    async def scenario():
        bob = FakeSocket("bob", "u2")
        await hub.join(bob, "room", None)
        answers = [Unavailable("down"), Unavailable("still down")]
        real_room = store.room

        async def flaky(uri):
            if answers:
                raise answers.pop(0)
            return await real_room(uri)
        store.room = flaky
        store.members = ["u1"]  # bob was removed while this process could not hear
        hub.on_recovered(["room"])
        await wait_for(lambda: bob.closed, 2, "bob closed")
        return bob, answers

    bob, answers = asyncio.run(scenario())
    assert answers == [] and bob.closed == (1008, "removed from the chat")


def test_the_socket_cap_holds_for_sockets_admitted_together():
    hub = Hub(FakeStore(), MemoryBroker(), Metrics(), max_sockets_per_user=10)
    admitted = 0
    for i in range(40):
        try:
            hub.admit(FakeSocket(f"s{i}"))
            admitted += 1
        except TooManySockets:
            pass
    assert admitted == 10


def test_revocations_are_sent_again_after_a_reconnect():
    """A logout published into a connection that was dead before anyone knew is
    lost without an error: the hub sends its recent ones again once reconnected."""
    broker = MemoryBroker()
    sent: list[bytes] = []
    broker.publish_control = sent.append
    hub = Hub(FakeStore(), broker, Metrics())

    async def scenario():
        hub.revoke_token("u1", "t1")
        hub.on_recovered([])

    asyncio.run(scenario())
    assert len(sent) == 2 and sent[0] == sent[1] and b"t1" in sent[0]
