"""Rooms of local sockets: post, subscribe then backfill, fan-out, gap repair.

Order and exactly-once come from the per-room seq: a room remembers the last
seq it delivered and only ever writes last + 1. A delivery that skips ahead
makes the room read the missing range from MongoDB first; a repeat is
dropped. Since an event is stored before it is published, and seq N is
stored only after N - 1 (see chat/sequencer.py), MongoDB always has
everything a delivery implies.

Each event is JSON-encoded once where it is stored, and framed once per
process; every socket of the room gets the same bytes. The events a room
delivers in one turn of the event loop go to each socket as one write.

A room's readers (DESIGN.md, "WebSocket protocol"): a room socket that joined
with `since` is on the full stream and gets every room event and the room's
ephemeral signals; a plain socket (no `since`) gets `message` events only; a
user stream (chat/streams.py) is in every room of its user, on the quiet
stream (every room event, no signals) or, for the rooms it subscribed to, on
the full stream.

Membership fails closed (DESIGN.md): a `member` event that ends a membership
closes that user's readers of the room on every process when it is
delivered, backfilled or repaired, and a cached membership is believed only
for a room whose events this process follows.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from chat.broker import AmqpBroker, MemoryBroker, backoff_delay
from chat.frames import encode, text_frame
from chat.limits import Limit
from chat.metrics import Metrics
from chat.sequencer import Sequencer
from chat.signals import NOTICE_PREFIX, Signals
from chat.store import NotFound, NotMember, Store, Unavailable, budget, now, public_event
from chat.tokens import Tokens

log = logging.getLogger("chat.hub")

BACKFILL_PAGE = 500
# A socket's catch-up is sent a page at a time, each written out before the
# next is read, so a long history does not trip the slow-consumer limit.
CATCH_UP_PAGE = 100
# Live frames a catching-up socket may queue while its history is read.
CATCH_UP_BUFFER = 10_000
# A room's start or repair that fails is retried after a pause that doubles,
# with jitter, up to the maximum: rooms that failed together spread out.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0
# Reads in a row that do not reach a waiting delivery before gap repair gives
# up on it (about 20 s with the pauses above).
REPAIR_ATTEMPTS = 8

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011  # could not join: the client reconnects
CLOSE_SLOW_CONSUMER = 4008


class InvalidMessage(ValueError):
    """A client's action refused: 400 or an error frame naming `field`."""

    def __init__(self, message: str, field: str = "message"):
        super().__init__(message)
        self.field = field


class TooManySockets(Exception):
    """The user has as many sockets open as allowed."""


class RateLimited(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"too many messages; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


MESSAGE = "message"  # the one event type a plain socket gets
MEMBER = "member"
# Member events that end a membership, and what the member's readers are told.
ENDED_BY = {"leave": "left the chat", "remove": "removed from the chat",
            "ban": "banned from the chat"}
# Logout and revocation notices are kept this long and sent again after a broker
# reconnect: a notice published into a connection that was dead but not yet
# noticed is lost without an error, and nothing durable repeats it.
REVOCATION_KEEP_SECONDS = 120.0
REVOCATIONS = ("logout", "token_revoked", "logout_user", "user_changed")


class Socket(Protocol):
    user: dict
    token_id: str

    def send_frame(self, frame: bytes) -> bool:
        """Write a ready-made frame; False when the socket is closed or was closed for it."""

    def backlogged(self) -> bool:
        """True while earlier frames still wait to be written: signals skip it."""

    async def drain(self) -> bool:
        """Wait until what was written has reached the kernel; False when closed."""

    def close_with(self, code: int, reason: str) -> None: ...


def stored_event(doc: dict[str, Any]) -> tuple[str, bytes]:
    """A stored event's type and wire JSON (store.public_event, encoded once)."""
    return doc.get("type", MESSAGE), encode(public_event(doc))


class CatchUp:
    """A reader catching up on history: live frames wait in `buffer` until it is
    done; then it goes live on the full stream (with signals) or the quiet one."""

    __slots__ = ("buffer", "sent", "signals")

    def __init__(self, sent: int, signals: bool = True):
        self.sent = sent
        self.signals = signals
        self.buffer: list[tuple[int, bytes]] | None = []


class Room:
    def __init__(self, uri: str):
        self.uri = uri
        # Live sockets by stream, insertion-ordered sets.
        self.plain: dict[Socket, None] = {}  # message events only
        self.full: dict[Socket, None] = {}  # every room event and signals
        self.quiet: dict[Socket, None] = {}  # every room event, no signals
        self.catching: dict[Socket, CatchUp] = {}  # reading history
        self.last_seq = 0
        # Frames delivered this turn of the event loop, written out together by
        # Hub.flush: (seq, frame, a message?, created).
        self.outgoing: list[tuple[int, bytes, bool, str | None]] = []
        self.flush_scheduled = False
        # Deliveries that arrive while the room starts or repairs a gap:
        # (seq, body, created, event type).
        self.pending: list[tuple[int, bytes, str | None, str]] = []
        self.busy = True  # starting or repairing: deliveries wait in pending
        self.stale = False  # messages may be missing (after a broker outage)
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self.plain) + len(self.full) + len(self.quiet) + len(self.catching)

    def sockets(self) -> list[Socket]:
        """Every reader of the room, whatever its stream (a copy: closing one changes the room)."""
        return [*self.plain, *self.full, *self.quiet, *self.catching]

    def remove(self, reader: Socket) -> None:
        self.plain.pop(reader, None)
        self.full.pop(reader, None)
        self.quiet.pop(reader, None)
        self.catching.pop(reader, None)

    def go_live(self, reader: Socket, catch_up: CatchUp) -> None:
        del self.catching[reader]
        (self.full if catch_up.signals else self.quiet)[reader] = None


class Hub:
    def __init__(self, store: Store, broker: AmqpBroker | MemoryBroker, metrics: Metrics,
                 max_message_chars: int = 2000, user_messages_per_minute: int = 100,
                 signals: Signals | None = None, tokens: Tokens | None = None,
                 max_sockets_per_user: int = 1_000_000):
        self.store = store
        self.broker = broker
        self.metrics = metrics
        # server.py passes the configured signals; without, presence stays quiet.
        self.signals = signals or Signals(store, broker.publish_control, presence=False)
        self.signals.send = self.signal
        self.max_message_chars = max_message_chars
        self.user_limit = Limit(store, "messages", user_messages_per_minute, 60.0)
        self.sequencer = Sequencer(store, metrics)
        # chat.compose.Composer.prepare, set by server.py: a post's html and
        # mentions, made once before it is stored (the DM and @room rules too).
        self.compose = None
        # The process's cache of live tokens, told of logouts and refreshes.
        self.tokens = tokens
        # Control notices of other modules' own types: type -> what acts on one.
        self.notice_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.rooms: dict[str, Room] = {}
        # Every socket of a user here, room sockets and user streams alike
        # (admitted before its first await, so the cap holds under a storm).
        self.sockets_by_user: dict[str, set[Socket]] = {}
        self.max_sockets_per_user = max_sockets_per_user
        # Readers counted present in a room (room sockets that joined, user
        # streams' subscriptions): (id of the reader, uri).
        self.present: set[tuple[int, str]] = set()
        # Logout and revocation notices of the last REVOCATION_KEEP_SECONDS: (when, body).
        self.revocations: list[tuple[float, bytes]] = []
        # User streams (chat/streams.py) set this to hear that a user joined a
        # room: (uri, user id, seq of the join event).
        self.on_joined: Callable[[str, str, int], None] | None = None
        # chat.notifications.Notifier sets these: a new post (uri, user, event)
        # and a read here (user, uri, seq).
        self.on_posted: Callable[[str, dict, dict], None] | None = None
        self.on_read: Callable[[dict, str, int], None] | None = None
        self.tasks: set[asyncio.Task] = set()
        self.no_sockets = asyncio.Event()
        self.no_sockets.set()
        self.retry_first = RETRY_FIRST_SECONDS
        self.retry_max = RETRY_MAX_SECONDS
        self.repair_attempts = REPAIR_ATTEMPTS
        broker.on_message = self.on_message
        broker.on_recovered = self.on_recovered
        broker.on_control = self.on_control
        store.following = self.following

    # Posting -----------------------------------------------------------

    def check_text(self, text: Any) -> str:
        if not isinstance(text, str):
            raise InvalidMessage("Not a valid string.")
        if not text.strip():
            raise InvalidMessage("This field may not be blank.")
        if len(text) > self.max_message_chars:
            raise InvalidMessage(
                f"Ensure this field has no more than {self.max_message_chars} characters.")
        return text

    async def check_rate(self, user: dict) -> None:
        """Count one of the user's room actions against their limit (messages,
        edits and reactions share it)."""
        retry_after = await self.user_limit.hit(user["id"])
        if retry_after:
            raise RateLimited(retry_after)

    async def post(self, user: dict, uri: str, text: Any, client_id: str | None = None,
                   attachments: list[dict] | None = None) -> dict[str, Any]:
        """Store a message and publish it: the path of both HTTP and socket posts.
        `attachments`: its files (chat/files.py checked and claimed them); the
        text may then be empty."""
        text = "" if attachments and not (text or "").strip() else self.check_text(text)
        deadline = self.store.deadline()
        with budget(deadline):
            await self.check_rate(user)
            recorded = await self.store.member_seq(uri, user["id"])
            prepared = {} if self.compose is None else await self.compose(user, uri, text)
        event = {"user_id": user["id"], "user": user, "message": text, **prepared}
        if client_id:
            event["client_id"] = client_id
        if attachments:
            event["attachments"] = attachments
        public, created = await self.append_event(uri, event, recorded, deadline)
        if created:
            self.metrics.posted.inc()
            if self.on_posted is not None:
                self.on_posted(uri, user, public)
        self.signals.stop_typing(uri, user)
        self.signals.posted(uri, user, public["seq"])
        return public

    async def append_event(self, uri: str, event: dict[str, Any], seen: int | None = None,
                           deadline: float | None = None) -> tuple[dict[str, Any], bool]:
        """Append a room event (any type; the caller has authorised it) to the
        room's log: stored at the next seq, published, delivered to this
        process's sockets, recorded on the room. The one way events enter a room.

        `event` holds the fields of its type (a `type` other than "message",
        `user_id`, `client_id` when the client gave one, ...); room, seq and
        created are added here. Returns (the event as clients see it, rendered
        once by store.public_event; True when new); a repeated client_id returns
        the event stored under it and False.
        `seen` is a seq the caller knows is stored (saves a read when current).
        Raises Unavailable when MongoDB does not store it by `deadline` (loop
        time; the store's timeout from now by default).
        """
        room = self.rooms.get(uri)
        if room is not None and room.started.done():
            seen = max(seen or 0, room.last_seq)
        doc, created = await self.sequencer.append(uri, event, seen, deadline)
        # After the insert: a lost publish is repaired from MongoDB, never a lost
        # event. A repeated client_id is published again as well, since its first
        # poster may have died in between; receivers drop the repeat by seq.
        public = public_event(doc)
        payload = encode(public)
        self.broker.publish(uri, payload)
        self.metrics.published.inc()
        # This process's own sockets need not wait for the broker's round trip:
        # delivered now when it is next in order; the broker's copy is then a
        # repeat and dropped. Out of order, the broker's copy takes the usual way.
        room = self.rooms.get(uri)
        if (room is not None and room.started.done() and not room.busy
                and doc["seq"] == room.last_seq + 1):
            self.deliver(room, doc["seq"], payload, public["created"], public["type"])
        if created and public["type"] == MEMBER and public["op"] == "join":
            # The joiner's user streams on processes that do not follow the room
            # yet: only a notice can tell them (one that is lost costs the client
            # the chat until it reconnects; nothing of the room leaks).
            self.notify({"type": "joined", "uri": uri, "user_id": public["user"]["id"],
                         "seq": public["seq"]})
        if created:
            await self.record_on_room(doc, deadline)
        return public, created

    async def record_on_room(self, doc: dict[str, Any], deadline: float | None) -> None:
        """Note the room's seq and activity: best effort, since the event is
        stored and published already and failing now would make clients store it again."""
        try:
            await self.store.touch_room(doc, deadline)
        except Exception:
            self.metrics.room_update_failures.inc()
            log.warning("room %s: recording seq %d failed; the event is stored",
                        doc["room"], doc["seq"], exc_info=True)

    # Joining and leaving -----------------------------------------------

    async def mark_read(self, user: dict, uri: str, seq: int) -> None:
        """user (a member) has read uri up to seq: stored, and told to the room."""
        room = self.rooms.get(uri)
        last_seq = room.last_seq if room is not None and room.started.done() else 0
        if seq > last_seq:  # this process may not have the room, or lag a delivery behind
            last_seq = await self.store.last_seq(uri)
        if seq > last_seq:
            raise InvalidMessage(f"the room's last event is {last_seq}.", "seq")
        self.signals.read(uri, user, seq)
        if self.on_read is not None:
            self.on_read(user, uri, seq)

    def admit(self, sock: Socket) -> None:
        """Count a new socket of its user (before any await of its handshake, so
        concurrent handshakes see each other); TooManySockets past the cap."""
        sockets = self.sockets_by_user.setdefault(sock.user["id"], set())
        if sock in sockets:
            return
        if len(sockets) >= self.max_sockets_per_user:
            if not sockets:
                del self.sockets_by_user[sock.user["id"]]
            raise TooManySockets()
        sockets.add(sock)
        self.no_sockets.clear()
        self.metrics.open_sockets.inc()

    def release(self, sock: Socket) -> None:
        """The socket is gone (closed, or refused after admit)."""
        user_sockets = self.sockets_by_user.get(sock.user.get("id"))
        if user_sockets is None or sock not in user_sockets:
            return  # never admitted (refused before), or released already
        user_sockets.discard(sock)
        self.metrics.open_sockets.dec()
        if not user_sockets:
            del self.sockets_by_user[sock.user["id"]]
            if not self.sockets_by_user:
                self.no_sockets.set()

    async def join(self, sock: Socket, uri: str, since: int | None) -> int:
        """A room socket (admitted): in the room, sent what it missed after
        `since`; returns its seq. NotFound, NotMember, Banned or Unavailable when
        its membership does not hold once it is registered."""
        if sock not in self.sockets_by_user.get(sock.user["id"], ()):
            self.admit(sock)
        return await self.attach(sock, uri, since, signals=since is not None, present=True)

    def leave(self, sock: Socket, uri: str) -> None:
        self.release(sock)
        self.detach(sock, uri)

    def following(self, uri: str) -> bool:
        """True while every event of uri reaches this process as it is stored: a
        membership cached here is then dropped by the event that ends it."""
        room = self.rooms.get(uri)
        return (room is not None and room.started.done() and not room.stale
                and self.broker.healthy)

    async def check_reader(self, uri: str, user_id: str) -> None:
        """The membership of a reader just registered in the room: read again
        unless cached, so that a removal that landed before it registered (its
        notice and event found nobody to close) is not missed."""
        if not self.store.known_member(uri, user_id):
            await self.store.check_member(uri, user_id)

    async def attach(self, reader: Socket, uri: str, since: int | None, *, signals: bool,
                     present: bool = False) -> int:
        """Put a reader in the room: live messages only (since None), or what it
        missed after `since` and then every event (with the room's signals, or
        quiet). The membership is checked after it is registered and before
        anything is sent; when it fails the reader is detached and the error
        raised. `present`: the reader makes its user
        present in the room. Returns the seq the reader is at."""
        room, catch_up = self.register(reader, uri, since, signals)
        await asyncio.shield(room.started)
        try:
            await self.check_reader(uri, reader.user["id"])
        except Exception:
            self.detach(reader, uri)
            raise
        if self.rooms.get(uri) is not room or (reader not in room.catching
                                               and reader not in room.plain):
            return since or 0  # closed (or removed) meanwhile
        if present:
            self.mark_present(reader, uri)
        if catch_up is None:
            return room.last_seq
        return await self.catch_up(reader, room, catch_up)

    def register(self, reader: Socket, uri: str, since: int | None,
                 signals: bool) -> tuple[Room, CatchUp | None]:
        """The first step of attach: the reader is in the room (starting it if
        new) at once, so that it is never left empty (and dropped) while the
        reader waits; deliveries wait in its catch-up's buffer, or in the
        room's pending until it starts."""
        room = self.rooms.get(uri)
        if room is None:
            room = self.rooms[uri] = Room(uri)
            self.metrics.active_rooms.set(len(self.rooms))
            self.spawn(self.start_room(room))
        if since is None:
            self.flush(room)  # what was delivered before it joined is not for it
            room.plain[reader] = None
            return room, None
        catch_up = room.catching[reader] = CatchUp(since, signals)
        return room, catch_up

    async def catch_up(self, reader: Socket, room: Room, catch_up: CatchUp) -> int:
        """Send a registered reader the events after catch_up.sent (from MongoDB
        up to what the room delivered since it registered, then those), then
        put it live. Returns its seq."""
        uri = room.uri
        if room.catching.get(reader) is not catch_up:
            return catch_up.sent  # left (or was closed) before it began
        if catch_up.sent > room.last_seq:
            # Nobody has seen past what is stored: a bigger since would withhold
            # the next events from this reader.
            catch_up.sent = min(catch_up.sent, await self.store.last_seq(uri))
        # What the room delivered before this reader registered is read back;
        # the rest is in its buffer. A client that saw the room's last seq (a
        # page reconnecting) costs no read at all.
        while True:
            buffered = catch_up.buffer
            upto = buffered[0][0] - 1 if buffered else room.last_seq
            if catch_up.sent >= upto:
                break
            docs = await self.store.messages_after(uri, catch_up.sent,
                                                   min(CATCH_UP_PAGE, upto - catch_up.sent))
            for doc in docs:
                if not reader.send_frame(text_frame(stored_event(doc)[1])):
                    return catch_up.sent
                catch_up.sent = doc["seq"]
            self.metrics.backfilled.inc(len(docs))
            if not docs:
                break
            if not await reader.drain():
                return catch_up.sent
            if room.catching.get(reader) is not catch_up:
                return catch_up.sent  # left (or was closed) while reading
        if room.catching.get(reader) is not catch_up:
            return catch_up.sent
        buffered, catch_up.buffer = catch_up.buffer, None
        for seq, frame in buffered:
            if seq > catch_up.sent:
                if not reader.send_frame(frame):
                    return catch_up.sent
                catch_up.sent = seq
        if catch_up.sent <= room.last_seq:
            self.flush(room)  # it has all that is queued: sent above, or read
            room.go_live(reader, catch_up)
        return max(catch_up.sent, room.last_seq)

    async def recatch(self, reader: Socket, uri: str, since: int, signals: bool) -> int:
        """A live reader of the room asks again from `since` (a user stream's
        subscribe): what it has is sent again from MongoDB, then live as before."""
        room = self.rooms[uri]
        self.flush(room)
        room.remove(reader)
        catch_up = room.catching[reader] = CatchUp(since, signals)
        return await self.catch_up(reader, room, catch_up)

    def set_signals(self, reader: Socket, uri: str, signals: bool) -> None:
        """Move a live reader between the full and the quiet stream."""
        room = self.rooms.get(uri)
        if room is None:
            return
        catch_up = room.catching.get(reader)
        if catch_up is not None:
            catch_up.signals = signals
        elif reader in room.full or reader in room.quiet:
            self.flush(room)
            room.remove(reader)
            (room.full if signals else room.quiet)[reader] = None

    def detach(self, reader: Socket, uri: str) -> None:
        room = self.rooms.get(uri)
        if room is not None:
            room.remove(reader)
            if not room:
                del self.rooms[uri]
                self.metrics.active_rooms.set(len(self.rooms))
                self.spawn(self.broker.unsubscribe(uri))
        self.mark_absent(reader, uri)

    def mark_present(self, reader: Socket, uri: str) -> None:
        """The reader makes its user present in the room (a room socket, a subscription)."""
        key = (id(reader), uri)
        if key not in self.present:
            self.present.add(key)
            self.signals.joined(uri, reader.user)

    def mark_absent(self, reader: Socket, uri: str) -> None:
        key = (id(reader), uri)
        if key in self.present:
            self.present.discard(key)
            self.signals.left(uri, reader.user, uri not in self.rooms)

    async def start_room(self, room: Room) -> None:
        """Bind first, then read where the room is: nothing falls between the two.

        Any failure (a closing channel, MongoDB trouble, anything) is retried
        while the room has sockets, so no join waits on a start that gave up.
        """
        failures = 0
        while self.rooms.get(room.uri) is room:
            try:
                await self.broker.subscribe(room.uri)
                room.last_seq = await self.store.last_seq(room.uri)
                break
            except Exception as error:
                failures += 1
                self.metrics.room_failures.labels("start").inc()
                log.warning("room %s: start failed (%s: %s); retrying", room.uri,
                            type(error).__name__, error)
                await asyncio.sleep(self.retry_delay(failures))
        room.started.set_result(None)
        await self.repair(room)

    def retry_delay(self, failures: int) -> float:
        return backoff_delay(failures, self.retry_first, self.retry_max)

    # Delivery ----------------------------------------------------------

    def on_message(self, uri: str, body: bytes) -> None:
        room = self.rooms.get(uri)
        if room is None:
            return
        try:
            event = json.loads(body)
            seq = event["seq"]
            event_type = event.get("type", MESSAGE)
            created = event.get("created")
            if not isinstance(created, str):
                created = None
            if type(seq) is not int or not isinstance(event_type, str):
                raise TypeError("seq must be an integer, type a string")
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("dropping a malformed delivery for room %s", uri)
            return
        if room.busy:
            room.pending.append((seq, body, created, event_type))
        elif seq == room.last_seq + 1:
            self.deliver(room, seq, body, created, event_type)
        elif seq > room.last_seq:
            self.metrics.gaps.inc()
            room.pending.append((seq, body, created, event_type))
            self.start_repair(room)

    def deliver(self, room: Room, seq: int, body: bytes, created: str | None,
                event_type: str = MESSAGE) -> None:
        """Queue the room's next event for its live sockets (messages to every
        socket, other events to the full stream), written out by `flush` after
        whatever else this turn of the event loop delivers.

        The kernel's send() per socket is most of a fan-out's cost: the events
        of one burst (a group commit's posts, a read of RabbitMQ deliveries)
        cost one send() per socket, not one per event.
        """
        room.last_seq = seq
        frame = text_frame(body)
        for sock, catch_up in list(room.catching.items()):
            if catch_up.buffer is not None:
                if len(catch_up.buffer) >= CATCH_UP_BUFFER:
                    sock.close_with(CLOSE_SLOW_CONSUMER, "slow consumer")
                    continue
                catch_up.buffer.append((seq, frame))
            elif seq > catch_up.sent:
                # It read up to here from MongoDB: live from this seq on. It has
                # what is queued already, so that goes out before it joins.
                self.flush(room)
                room.go_live(sock, catch_up)
        if not room.flush_scheduled:
            room.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_turn, room)
        room.outgoing.append((seq, frame, event_type == MESSAGE, created))
        if event_type == MEMBER:
            self.member_event(room, body)

    def flush_turn(self, room: Room) -> None:
        room.flush_scheduled = False
        self.flush(room)

    def flush(self, room: Room) -> None:
        """Write the room's queued frames to its live sockets: one joined write
        per stream, the same bytes for every socket of it.

        Called before anything else reaches a live socket (a signal, a socket
        joining the live sets), so that nothing overtakes or repeats a queued event.
        """
        if not room.outgoing:
            return
        outgoing, room.outgoing = room.outgoing, []
        frames = [frame for _, frame, _, _ in outgoing]
        everything = b"".join(frames)
        sent = len(frames) * sum(sock.send_frame(everything)
                                 for sock in [*room.full, *room.quiet])
        if room.plain:
            messages = [frame for _, frame, message, _ in outgoing if message]
            if messages:
                data = everything if len(messages) == len(frames) else b"".join(messages)
                sent += len(messages) * sum(sock.send_frame(data) for sock in list(room.plain))
        self.metrics.delivered.inc(sent)
        for seq, _, _, created in outgoing:
            if created:
                try:
                    stored = datetime.datetime.fromisoformat(created)
                    self.metrics.delivery_latency.observe(
                        max(0.0, (now() - stored).total_seconds()))
                except (ValueError, TypeError):  # not a time, or one without a zone
                    log.warning("room %s: seq %d has a malformed created time", room.uri, seq)

    def signal(self, uri: str, payload: bytes, *, spare_slow: bool = True) -> int:
        """Send an ephemeral signal (no seq, never stored or replayed) to the room's
        full-stream sockets.

        A socket with frames still waiting to be written is spared (unless
        `spare_slow` is false): signals are the first thing a slow socket goes
        without. Returns the sockets sent to.
        """
        room = self.rooms.get(uri)
        if room is None:
            return 0
        self.flush(room)  # the room's events of this turn go first, as they came first
        frame = text_frame(payload)
        sent = 0
        targets = list(room.full)
        targets += [sock for sock, catch_up in room.catching.items()
                    if catch_up.buffer is None and catch_up.signals]
        for sock in targets:
            if not (spare_slow and sock.backlogged()) and sock.send_frame(frame):
                sent += 1
        return sent

    def start_repair(self, room: Room) -> None:
        if not room.busy:
            room.busy = True
            self.spawn(self.repair(room))

    async def repair(self, room: Room) -> None:
        """The room's one worker: deliver what waited, reading what is missing from MongoDB.

        While it runs (room.busy) live deliveries wait in room.pending; it
        stops only when nothing waits and nothing is known to be missing. A
        read that fails is retried with backoff for as long as the room has
        sockets; a delivery whose seq MongoDB, the truth, still lacks after
        `repair_attempts` reads (a rolled-back write, a stray publish) is
        dropped rather than stall the room.
        """
        failures = 0  # reads in a row that raised
        misses = 0  # reads in a row that did not reach a waiting delivery
        while self.rooms.get(room.uri) is room:
            room.pending.sort(key=lambda item: item[0])
            done = 0  # delivered or repeats; one slice off the front, not a pop(0) each
            for seq, body, created, event_type in room.pending:
                if seq > room.last_seq + 1:
                    break
                if seq == room.last_seq + 1:
                    self.deliver(room, seq, body, created, event_type)
                done += 1
            del room.pending[:done]
            if not room.pending and not room.stale:
                break
            stale, room.stale = room.stale, False
            try:
                # A gap: read only the missing range, since what follows it is
                # in pending already (in a room posted to by several processes,
                # a delivery often overtakes another's by a few ms). Stale (the
                # broker was away): read everything stored.
                await self.backfill(room, None if stale else room.pending[0][0] - 1)
            except Exception as error:
                room.stale = True
                failures += 1
                self.metrics.room_failures.labels("repair").inc()
                log.warning("room %s: gap repair failed (%s: %s); retrying", room.uri,
                            type(error).__name__, error)
                await asyncio.sleep(self.retry_delay(failures))
                continue
            failures = 0
            if not room.pending or min(item[0] for item in room.pending) <= room.last_seq + 1:
                misses = 0  # the gap is closed: deliver what waited
                continue
            misses += 1
            if misses < self.repair_attempts:
                await asyncio.sleep(self.retry_delay(misses))
                continue
            log.warning("room %s: dropping %d deliveries from seq %d: MongoDB has nothing "
                        "after seq %d", room.uri, len(room.pending), room.pending[0][0],
                        room.last_seq)
            self.metrics.repair_dropped.inc(len(room.pending))
            room.pending.clear()
            misses = 0
        room.busy = False

    async def backfill(self, room: Room, upto: int | None = None) -> None:
        """Deliver the stored events after the room's last seq (up to `upto`, or all)."""
        while True:
            limit = BACKFILL_PAGE if upto is None else min(BACKFILL_PAGE, upto - room.last_seq)
            if limit <= 0:
                return
            docs = await self.store.messages_after(room.uri, room.last_seq, limit)
            for doc in docs:
                if doc["seq"] == room.last_seq + 1:
                    event_type, body = stored_event(doc)
                    self.deliver(room, doc["seq"], body, None, event_type)
            self.metrics.backfilled.inc(len(docs))
            if len(docs) < limit:
                return

    def on_recovered(self, uris: list[str]) -> None:
        """The broker is back: what was published meanwhile is only in MongoDB."""
        self.metrics.broker_reconnects.inc()
        # Revocations published lately may have gone into a connection that was
        # dead before anyone knew: sent again (they are idempotent).
        moment = asyncio.get_running_loop().time()
        self.revocations = [(at, body) for at, body in self.revocations
                            if moment - at < REVOCATION_KEEP_SECONDS]
        for _, body in self.revocations:
            self.broker.publish_control(body)
        if self.tokens is not None:
            self.tokens.forget_all()  # logout notices sent meanwhile never arrived
        self.store.forget_members()  # nor "expel" notices
        self.signals.reconnected()  # and presence notices: ask everyone again
        for uri in uris:
            room = self.rooms.get(uri)
            if room is not None:
                room.stale = True
                self.start_repair(room)
                self.spawn(self.recheck_members(room))

    async def recheck_members(self, room: Room) -> None:
        """Close the readers of users who left the room, or were removed or
        banned, while this process could not hear of it. Retried while MongoDB
        is unavailable (and the room has readers)."""
        failures = 0
        while self.rooms.get(room.uri) is room:
            try:
                doc = await self.store.room(room.uri)
                break
            except Unavailable:
                failures += 1
                log.warning("room %s: MongoDB unavailable to recheck its members; retrying",
                            room.uri)
                await asyncio.sleep(self.retry_delay(failures))
        else:
            return
        members = set(doc["members"]) if doc else set()
        banned = set(doc.get("banned", ())) if doc else set()
        for sock in room.sockets():
            user_id = sock.user["id"]
            if user_id not in members:
                sock.close_with(CLOSE_POLICY, ENDED_BY["ban"] if user_id in banned
                                else ENDED_BY["remove"])

    def member_event(self, room: Room, body: bytes) -> None:
        """A member event was delivered (live, backfilled or repaired): one that
        ends a membership drops its cache entry and closes the member's readers
        of the room here, whatever became of the control notice."""
        try:
            event = json.loads(body)
            op, user_id = event["op"], event["user"]["id"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(user_id, str):
            return
        if op in ENDED_BY:
            self.store.forget_member(room.uri, user_id)
            self.signals.forget_member(room.uri, user_id)
            if any(reader.user["id"] == user_id for reader in room.sockets()):
                self.spawn(self.end_membership(room.uri, user_id, ENDED_BY[op]))
        elif op == "join" and self.on_joined is not None and isinstance(event.get("seq"), int):
            self.on_joined(room.uri, user_id, event["seq"])

    async def end_membership(self, uri: str, user_id: str, reason: str) -> None:
        """Close user_id's readers of uri unless MongoDB says they are a member
        again (they rejoined after the event); when it cannot say, close them:
        a reader that is wrongly closed reconnects, one wrongly kept reads on."""
        try:
            await self.store.check_member(uri, user_id)
            return
        except (NotFound, NotMember, Unavailable):
            pass
        room = self.rooms.get(uri)
        for reader in room.sockets() if room is not None else ():
            if reader.user["id"] == user_id:
                reader.close_with(CLOSE_POLICY, reason)

    # Control notices (across processes) ---------------------------------

    def revoke_token(self, user_id: str, token_id: str, close_sockets: bool = True) -> None:
        """Make every process forget the token (logout, refresh) and, on logout,
        close its sockets."""
        self.notify({"type": "logout" if close_sockets else "token_revoked",
                     "user_id": user_id, "token_id": token_id})

    def revoke_user(self, user_id: str, keep_token: str | None = None,
                    reason: str = "signed out") -> None:
        """Every process forgets the user's tokens (but keep_token) and closes
        their sockets opened with them: password change or reset, deactivation,
        deletion (accounts)."""
        self.notify({"type": "logout_user", "user_id": user_id, "keep_token": keep_token,
                     "reason": reason})

    def user_changed(self, user_id: str) -> None:
        """Every process forgets the user's tokens it believed live, so their
        next use reads the user as it is now (a changed profile)."""
        self.notify({"type": "user_changed", "user_id": user_id})

    def handle_notices(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Control notices of type `kind` (from any process, this one too) go to handler."""
        self.notice_handlers[kind] = handler

    def expel(self, uri: str, user_id: str, reason: str) -> None:
        """A member left, was removed or banned: every process forgets their
        membership and closes their sockets of the room (1008, `reason`)."""
        self.notify({"type": "expel", "uri": uri, "user_id": user_id, "reason": reason})

    def notify(self, notice: dict[str, Any]) -> None:
        """Act on a control notice here at once (even while RabbitMQ is down),
        and send it to every other process (the broker keeps it until it can).
        Its echo from the exchange is dropped here (`from`): acted on already,
        and a late echo must not undo a later notice."""
        body = encode({**notice, "from": self.signals.process})
        self.act(json.loads(body))
        self.broker.publish_control(body)
        if notice["type"] in REVOCATIONS:
            moment = asyncio.get_running_loop().time()
            self.revocations = [(at, sent) for at, sent in self.revocations
                                if moment - at < REVOCATION_KEEP_SECONDS]
            self.revocations.append((moment, body))

    def on_control(self, body: bytes) -> None:
        """A control notice from the exchange."""
        try:
            notice = json.loads(body)
        except ValueError:
            return
        if isinstance(notice, dict) and notice.get("from") != self.signals.process:
            self.act(notice)

    def act(self, notice: dict[str, Any]) -> None:
        if str(notice.get("type")).startswith(NOTICE_PREFIX):
            self.signals.on_notice(notice)
        elif notice.get("type") in ("logout", "token_revoked"):
            if self.tokens is not None and isinstance(notice.get("token_id"), str):
                self.tokens.forget(notice["token_id"])
            if notice["type"] != "logout":
                return
            for sock in list(self.sockets_by_user.get(notice.get("user_id"), ())):
                if sock.token_id == notice.get("token_id"):
                    sock.close_with(CLOSE_POLICY, "logged out")
        elif notice.get("type") == "joined":
            uri, user_id, seq = notice.get("uri"), notice.get("user_id"), notice.get("seq")
            if (isinstance(uri, str) and isinstance(user_id, str) and type(seq) is int
                    and self.on_joined is not None):
                self.on_joined(uri, user_id, seq)
        elif notice.get("type") in ("logout_user", "user_changed"):
            user_id, keep = notice.get("user_id"), notice.get("keep_token")
            if not isinstance(user_id, str):
                return
            if self.tokens is not None:
                self.tokens.forget_user(user_id, keep if isinstance(keep, str) else None)
            if notice["type"] == "logout_user":
                for sock in list(self.sockets_by_user.get(user_id, ())):
                    if sock.token_id != keep:
                        sock.close_with(CLOSE_POLICY, str(notice.get("reason", "signed out")))
        elif notice.get("type") in self.notice_handlers:
            self.notice_handlers[notice["type"]](notice)
        elif notice.get("type") == "expel":
            uri, user_id = notice.get("uri"), notice.get("user_id")
            if not isinstance(uri, str) or not isinstance(user_id, str):
                return
            self.store.forget_member(uri, user_id)
            room = self.rooms.get(uri)
            if room is not None:
                for sock in room.sockets():
                    if sock.user["id"] == user_id:
                        sock.close_with(CLOSE_POLICY, str(notice.get("reason", ENDED_BY["remove"])))
            self.signals.forget_member(uri, user_id)  # gone at once: no grace, not typing

    # Lifecycle ---------------------------------------------------------

    def spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.task_done)

    def task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for sockets in list(self.sockets_by_user.values()):
            for sock in list(sockets):
                sock.close_with(code, reason)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
