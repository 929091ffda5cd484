"""User streams: one socket per client for every room of its user (DESIGN.md, "User stream").

A stream is a reader of each room its user is a member of, held by the room
like any socket (through a `StreamEntry`), so a room event costs a stream no
extra encoding: it gets the room's own bytes, which carry `uri`. It is on the
room's quiet stream (every event, no signals) unless the client subscribed to
the room, which puts it on the full stream (signals) after a catch-up from
the client's `since`.

Opening: the stream is registered in every room first, then the chat list is
read and sent as the `chats` snapshot, then each room's events after what the
snapshot shows are sent (from the buffer of what raced in, or from MongoDB
for what was delivered here before it registered). Membership follows the
rooms' `member` events on every process: a join gives the user's streams the
room (`chat`, then its events), an event that ends a membership takes it away
(`chat_gone`, then nothing more of it), checked with MongoDB as the hub does.

The user's own notification level of a chat, set on any device, reaches
every stream of theirs as a `notifications` frame (a control notice to the
other processes). A stream holds it back until its client has the chat (the
snapshot, or the `chat` frame of a chat joined live): sent earlier, a
snapshot read before the change would undo it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from chat.frames import encode, text_frame
from chat.hub import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    ENDED_BY,
    CatchUp,
    Hub,
    InvalidMessage,
    Room,
    Socket,
)
from chat.signals import read_payload
from chat.store import CHAT_PAGE, Store
from chat.store.notifications import LEVELS

log = logging.getLogger("chat.streams")

# What `chat_gone` says, by the reason the hub closes a reader with.
GONE_REASONS = {ENDED_BY["leave"]: "left", ENDED_BY["remove"]: "removed",
                ENDED_BY["ban"]: "banned"}


# Streams whose snapshot is read at once (a connect storm queues behind them).
SNAPSHOTS_AT_ONCE = 16

# The control notice of a changed level (to the other processes).
LEVEL_NOTICE = "own_level"


class NotSubscribable(InvalidMessage):
    def __init__(self, message: str):
        super().__init__(message, "uri")


class StreamEntry:
    """A user stream's place in one room: what the room's reader sets hold."""

    __slots__ = ("announced", "held_level", "stream", "task", "uri")

    def __init__(self, stream: UserStream, uri: str):
        self.stream = stream
        self.uri = uri
        self.task: asyncio.Task | None = None  # its catch-up, while one runs
        # Whether the client has the chat (snapshot or `chat` frame); until then
        # a level changed meanwhile waits in held_level.
        self.announced = False
        self.held_level: str | None = None

    @property
    def user(self) -> dict:
        return self.stream.socket.user

    def send_frame(self, frame: bytes) -> bool:
        return self.stream.socket.send_frame(frame)

    def backlogged(self) -> bool:
        return self.stream.socket.backlogged()

    async def drain(self) -> bool:
        return await self.stream.socket.drain()

    def close_with(self, code: int, reason: str) -> None:
        if code == CLOSE_POLICY:  # no longer a member: the room goes, the socket stays
            self.stream.streams.gone(self.stream, self.uri, GONE_REASONS.get(reason, "removed"))
        else:  # a slow consumer, say: the whole socket
            self.stream.socket.close_with(code, reason)


class UserStream:
    """One client's stream: its rooms and subscriptions."""

    def __init__(self, socket: Socket, streams: Streams):
        self.socket = socket
        self.streams = streams
        self.entries: dict[str, StreamEntry] = {}
        self.subscribed: set[str] = set()
        # Until the snapshot is sent, rooms joined wait here to be caught up
        # from what it shows: (entry, room, catch-up).
        self.pending: list[tuple[StreamEntry, Room, CatchUp]] = []
        self.live = False
        self.closed = False
        # The chat this client shows, visible (its `focus` frame): no pushes for it.
        self.focus: str | None = None

    @property
    def user(self) -> dict:
        return self.socket.user

    def send(self, frame: dict[str, Any]) -> bool:
        return self.socket.send_frame(text_frame(encode(frame)))


class Streams:
    def __init__(self, hub: Hub, store: Store, current: Callable[[list[dict]], Awaitable[list[dict]]],
                 max_subscriptions: int = 10):
        self.hub = hub
        self.store = store
        self.current = current  # RoomEvents.current: the chat list's previews, folded
        self.max_subscriptions = max_subscriptions
        self.by_user: dict[str, set[UserStream]] = {}
        # Snapshots read at once: in a connect storm the rest wait their turn
        # (within the ready timeout) rather than all time out together.
        self.reading = asyncio.Semaphore(SNAPSHOTS_AT_ONCE)
        hub.on_joined = self.joined
        hub.signals.own_read = self.own_read
        hub.handle_notices(LEVEL_NOTICE, self.on_level_notice)

    def stream(self, socket: Socket) -> UserStream:
        return UserStream(socket, self)

    async def open(self, stream: UserStream) -> None:
        """Register in every room of the user, send the snapshot, then go live."""
        user_id = stream.user["id"]
        self.by_user.setdefault(user_id, set()).add(stream)
        async with self.reading:
            for uri in await self.store.member_uris(user_id):
                if uri not in stream.entries:  # a join event may have brought it already
                    self.enter(stream, uri, 0)
            await asyncio.gather(*(asyncio.shield(room.started) for _, room, _ in stream.pending))
            known = self.hub.signals.reads_of(user_id)
            chats, more = await self.store.chat_list(user_id, known, current=self.current,
                                                     username=stream.user["username"])
        if stream.closed:
            return
        stream.send({"type": "chats", "chats": chats, "has_more": more})
        stream.live = True
        shown = {chat["uri"]: chat["last_seq"] for chat in chats}
        pending, stream.pending = stream.pending, []
        for entry, room, catch_up in pending:
            if stream.entries.get(entry.uri) is not entry:
                continue  # gone meanwhile
            if entry.uri in shown:
                catch_up.sent = shown[entry.uri]
            elif len(chats) < CHAT_PAGE:
                # Not in a snapshot that holds all of the user's chats: no longer a member.
                self.drop(stream, entry.uri)
                continue
            else:  # beyond the snapshot's page: live from what raced in
                buffered = catch_up.buffer
                catch_up.sent = buffered[0][0] - 1 if buffered else room.last_seq
            self.catch_up(entry, room, catch_up)
        for entry in list(stream.entries.values()):
            if not entry.announced:  # beyond the page too: the client pages them in
                self.announce(entry)

    def enter(self, stream: UserStream, uri: str, since: int) -> tuple[StreamEntry, Room, CatchUp]:
        entry = stream.entries[uri] = StreamEntry(stream, uri)
        room, catch_up = self.hub.register(entry, uri, since, signals=False)
        assert catch_up is not None
        if not stream.live:
            stream.pending.append((entry, room, catch_up))
        return entry, room, catch_up

    def catch_up(self, entry: StreamEntry, room: Room, catch_up: CatchUp) -> None:
        self.run(entry, self.hub.catch_up(entry, room, catch_up))

    def run(self, entry: StreamEntry, coroutine) -> None:
        """Run an entry's catch-up; when it fails (MongoDB unavailable, say), the
        client reconnects and starts from a fresh snapshot."""
        entry.task = asyncio.ensure_future(coroutine)

        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.warning("a user stream's catch-up of %s failed (%s: %s); closing it",
                            entry.uri, type(error).__name__, error)
                entry.stream.socket.close_with(CLOSE_INTERNAL_ERROR, "catch-up failed; reconnect")

        entry.task.add_done_callback(done)

    def close(self, stream: UserStream) -> None:
        stream.closed = True
        streams = self.by_user.get(stream.user["id"])
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self.by_user[stream.user["id"]]
        for uri in list(stream.entries):
            self.drop(stream, uri)

    def drop(self, stream: UserStream, uri: str) -> None:
        entry = stream.entries.pop(uri, None)
        stream.subscribed.discard(uri)
        if entry is not None:
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
            self.hub.detach(entry, uri)

    def gone(self, stream: UserStream, uri: str, reason: str) -> None:
        """The user is no longer a member of uri: nothing more of it reaches this stream."""
        if uri not in stream.entries:
            return
        self.drop(stream, uri)
        if stream.live and not stream.closed:
            stream.send({"type": "chat_gone", "uri": uri, "reason": reason})

    # Membership, from the rooms' events -----------------------------------

    def joined(self, uri: str, user_id: str, seq: int) -> None:
        """user_id joined uri at seq (its member event, or the notice for processes
        that do not follow the room): their streams here get it. Leaving is the
        hub's: it closes every reader of a member who left, streams' entries too."""
        for stream in list(self.by_user.get(user_id, ())):
            if uri not in stream.entries and not stream.closed:
                entry, room, catch_up = self.enter(stream, uri, seq)
                if stream.live:
                    self.run(entry, self.added(entry, room, catch_up))

    async def added(self, entry: StreamEntry, room: Room, catch_up: CatchUp) -> None:
        """A room joined while the stream is live: its `chat`, then its events after what that shows."""
        stream = entry.stream
        await asyncio.shield(room.started)
        known = self.hub.signals.reads_of(stream.user["id"])
        chats, _ = await self.store.chat_list(stream.user["id"], known, current=self.current,
                                              username=stream.user["username"], uri=entry.uri)
        if stream.entries.get(entry.uri) is not entry or stream.closed:
            return
        if not chats:  # left again before we could look
            self.drop(stream, entry.uri)
            return
        stream.send({"type": "chat", "uri": entry.uri, "chat": chats[0]})
        self.announce(entry)
        catch_up.sent = max(catch_up.sent, chats[0]["last_seq"])
        await self.hub.catch_up(entry, room, catch_up)

    # Subscriptions ------------------------------------------------------------

    async def subscribe(self, stream: UserStream, uri: str, since: int) -> int:
        """The room's events after since, then its signals: returns the seq of `ready`."""
        entry = stream.entries.get(uri)
        if entry is None:
            raise NotSubscribable("not a chat of yours.")
        if uri not in stream.subscribed and len(stream.subscribed) >= self.max_subscriptions:
            raise NotSubscribable(f"at most {self.max_subscriptions} subscriptions "
                                  "per socket; unsubscribe from another first.")
        if entry.task is not None and not entry.task.done():
            await asyncio.shield(entry.task)  # its first catch-up goes first
        if stream.entries.get(uri) is not entry:
            raise NotSubscribable("not a chat of yours.")
        if uri not in stream.subscribed:
            stream.subscribed.add(uri)
            self.hub.mark_present(entry, uri)
        return await self.hub.recatch(entry, uri, since, signals=True)

    def unsubscribe(self, stream: UserStream, uri: str) -> None:
        entry = stream.entries.get(uri)
        if entry is None or uri not in stream.subscribed:
            return
        stream.subscribed.discard(uri)
        self.hub.set_signals(entry, uri, False)
        self.hub.mark_absent(entry, uri)

    def member(self, stream: UserStream, uri: str) -> None:
        """Refuse an action in a room the stream is not in."""
        if uri not in stream.entries:
            raise NotSubscribable("not a chat of yours.")

    # Signals about the user -----------------------------------------------------

    def own_read(self, uri: str, user_id: str, username: str, seq: int) -> None:
        """The user read uri up to seq on some device: their streams here hear of
        it (a subscribed one gets the room's own read signal)."""
        streams = self.by_user.get(user_id)
        if not streams:
            return
        frame = text_frame(read_payload(uri, user_id, username, seq))
        for stream in streams:
            if uri in stream.entries and uri not in stream.subscribed and stream.live:
                stream.socket.send_frame(frame)

    # The user's notification levels ------------------------------------------

    def level_changed(self, user_id: str, uri: str, level: str) -> None:
        """user_id set their level in uri (stored): their streams on every
        process (here at once: Hub.notify)."""
        self.hub.notify({"type": LEVEL_NOTICE, "user_id": user_id, "uri": uri, "level": level})

    def on_level_notice(self, notice: dict[str, Any]) -> None:
        user_id, uri, level = notice.get("user_id"), notice.get("uri"), notice.get("level")
        if isinstance(user_id, str) and isinstance(uri, str) and level in LEVELS:
            self.tell_level(user_id, uri, level)

    def tell_level(self, user_id: str, uri: str, level: str) -> None:
        for stream in self.by_user.get(user_id, ()):
            entry = stream.entries.get(uri)
            if entry is None or stream.closed:
                continue
            if entry.announced:
                stream.send(level_frame(uri, level))
            else:
                entry.held_level = level

    def announce(self, entry: StreamEntry) -> None:
        """The client has entry's chat now: a level held back for it follows."""
        entry.announced = True
        if entry.held_level is not None:
            level, entry.held_level = entry.held_level, None
            entry.stream.send(level_frame(entry.uri, level))


def level_frame(uri: str, level: str) -> dict[str, Any]:
    return {"type": "notifications", "uri": uri, "level": level}
