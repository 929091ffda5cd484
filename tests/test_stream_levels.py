"""A level changed while a user stream is being opened, or while a chat joined
live is not yet announced, reaches the client after what it would undo (the
snapshot, the `chat` frame), not before it and not never. In one process with
the hub's fakes: the snapshot's read is held by hand."""

from __future__ import annotations

import asyncio

from chat.broker import MemoryBroker
from chat.hub import Hub
from chat.metrics import Metrics
from chat.streams import Streams
from tests.test_hub import FakeSocket, FakeStore, settle


class ChatsStore(FakeStore):
    """FakeStore with a chat list whose read waits for `gate`: the level it
    shows is the one stored when the read began."""

    def __init__(self):
        super().__init__()
        self.uris = ["room"]
        self.level = "mentions"
        self.gate = asyncio.Event()

    async def member_uris(self, user_id: str) -> list[str]:
        return list(self.uris)

    async def chat_list(self, user_id, known, *, current, username="", uri=None, **_):
        shown = [{"uri": u, "last_seq": 0, "notifications": self.level}
                 for u in self.uris if uri is None or u == uri]
        await self.gate.wait()
        return shown, False


def test_a_level_changed_while_the_snapshot_is_read_follows_the_snapshot():
    async def scenario():
        store = ChatsStore()
        hub = Hub(store, MemoryBroker(), Metrics())
        streams = Streams(hub, store, current=None)
        sock = FakeSocket("alice", "u1")
        stream = streams.stream(sock)
        opening = asyncio.ensure_future(streams.open(stream))
        await settle()  # registered, the snapshot's read under way
        store.level = "none"
        streams.level_changed("u1", "room", "none")
        assert sock.frames == []
        store.gate.set()
        await opening
        await settle()
        return sock.frames

    frames = asyncio.run(scenario())
    assert [f["type"] for f in frames] == ["chats", "notifications"]
    assert frames[0]["chats"][0]["notifications"] == "mentions"  # read before the change
    assert frames[1] == {"type": "notifications", "uri": "room", "level": "none"}


def test_a_level_of_a_chat_joined_live_follows_its_chat_frame_and_a_live_one_goes_once():
    async def scenario():
        store = ChatsStore()
        store.gate.set()
        hub = Hub(store, MemoryBroker(), Metrics())
        streams = Streams(hub, store, current=None)
        sock = FakeSocket("alice", "u1")
        stream = streams.stream(sock)
        await streams.open(stream)
        store.uris.append("new")
        store.gate.clear()
        streams.joined("new", "u1", 0)  # its `chat` frame waits for the held read
        await settle()
        streams.level_changed("u1", "new", "all")
        streams.level_changed("u1", "room", "none")  # a chat the client has: at once
        await settle()  # the notice's copy through the broker is not sent again
        store.gate.set()
        await settle()
        return sock.frames

    frames = asyncio.run(scenario())
    assert [(f["type"], f.get("uri")) for f in frames] == [
        ("chats", None), ("notifications", "room"), ("chat", "new"), ("notifications", "new")]
    assert frames[3]["level"] == "all"
