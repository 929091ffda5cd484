"""Ephemeral room signals across processes: presence, typing, read positions.

None of these has a seq or is ever replayed (DESIGN.md, "Realtime path" 4).
Each process tells the others what it knows through typed notices on the
control exchange, and every notice a process keeps carries an expiry, so a
lost "stop" or a process that died without a word corrects itself:

- Presence: a process announces the members with a local socket in a room
  when that set changes (at most once per PRESENCE_EVERY per room), and all
  of its rooms in one snapshot every third of `presence_ttl`. Another
  process's entries expire `presence_ttl` after its last snapshot, so a
  SIGKILLed process's members leave everyone's view within ttl + ttl / 3. A
  member whose last local socket closes stays listed for `presence_grace` (a
  reconnect within it announces nothing).
- Typing: a room's set of typers, each entry expiring `typing_ttl` after its
  last typing frame; starts are throttled per user and room (a stop does not
  reset the throttle). A process that
  gets its first socket in a room asks the others who types there.
- Read positions are the exception: stored per (room, user), only raised,
  and written to MongoDB at most once per `read_flush` for all of them; a
  member's rise is told to sockets and to other processes at most once per
  READ_EVERY, and not at all when it is no rise.

Sockets get frames through `send(uri, payload)`, which the hub sets: it
writes to the room's full-stream sockets only and spares slow ones first.
A socket gets the room's presence after `ready` as it was last shown to the
room's sockets, then the diffs every socket there gets: at most one per room
per PRESENCE_EVERY, so a connect storm of N members is not N diffs to each.
Nothing here costs a MongoDB write per typing frame or presence change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from chat.broker import ignore
from chat.frames import encode
from chat.store import Store, Unavailable, background

log = logging.getLogger("chat.signals")

# A user's typing frames closer together than this (per room) are dropped.
TYPING_THROTTLE = 1.0
# A room's sockets get its typing set at most this often: what changes in
# between goes out together (in a big room, every typer's start and stop would
# otherwise be a frame to every socket).
TYPING_EVERY = 0.5
# A room's presence notice to the other processes, and its presence diff to
# the sockets here, go out at most this often, with what has changed by then: a
# connect storm of N members would otherwise be N notices of up to N entries
# each, parsed by every process, and N diffs to each of up to N sockets.
PRESENCE_EVERY = 0.2
NOTICE_PREFIX = "signal."
# A member's read position in a room goes to the room's sockets here, and to
# the other processes, at most this often (the highest by then): a reader who
# marks every message of a burst read costs each other socket a frame a second.
READ_EVERY = 1.0
# How long a member's last told read position is kept once nothing waits: a
# read that does not raise it within this long tells nobody.
READ_KEPT = 60.0


def read_payload(uri: str, user_id: str, username: str, seq: int) -> bytes:
    return encode({"type": "read", "uri": uri, "user": username, "user_id": user_id, "seq": seq})


class LocalMember:
    """A member with sockets to a room on this process (or within the grace)."""

    __slots__ = ("leaving", "sockets", "username")

    def __init__(self, username: str):
        self.username = username
        self.sockets = 0
        self.leaving: asyncio.TimerHandle | None = None


class Peer:
    """What another process last said about its rooms, and until when it holds."""

    __slots__ = ("expires", "rooms")

    def __init__(self, expires: float):
        self.expires = expires
        self.rooms: dict[str, dict[str, str]] = {}  # uri -> {user id: username}


class Typist:
    __slots__ = ("accepted", "expires", "username")

    def __init__(self, username: str):
        self.username = username
        self.expires = 0.0
        self.accepted = 0.0  # when this process last took a frame of theirs


class Paced:
    """What was last sent about a room (its typing set and presence diff to the
    sockets here, its local members to the other processes), when, and the send
    that waits."""

    __slots__ = ("at", "payload", "timer")

    def __init__(self):
        self.payload: Any = None
        self.at = 0.0
        self.timer: asyncio.TimerHandle | None = None


class PacedRead:
    """A member's read position in a room: the highest heard, the last told, when."""

    __slots__ = ("at", "seq", "timer", "told", "username")

    def __init__(self, username: str):
        self.username = username
        self.seq = 0
        self.told = 0
        self.at = 0.0
        self.timer: asyncio.TimerHandle | None = None


class ReadPacer:
    """Tells send(uri, user_id, username, seq) of each member's rising read
    position at most once per READ_EVERY, with the highest by then."""

    def __init__(self, clock: Callable[[], float], send: Callable[[str, str, str, int], None]):
        self.clock = clock
        self.send = send
        self.rooms: dict[str, dict[str, PacedRead]] = {}

    def rise(self, uri: str, user_id: str, username: str, seq: int) -> bool:
        """False when seq is not above what was heard already."""
        members = self.rooms.setdefault(uri, {})
        entry = members.get(user_id)
        if entry is None:
            entry = members[user_id] = PacedRead(username)
        if seq <= entry.seq:
            return False
        entry.seq = seq
        if entry.timer is None:
            wait = entry.at + READ_EVERY - self.clock()
            if wait > 0:
                entry.timer = asyncio.get_running_loop().call_later(wait, self.tell, uri, user_id)
            else:
                self.tell(uri, user_id)
        return True

    def tell(self, uri: str, user_id: str) -> None:
        entry = self.rooms.get(uri, {}).get(user_id)
        if entry is None:
            return
        entry.timer = None
        if entry.seq > entry.told:
            entry.told, entry.at = entry.seq, self.clock()
            self.send(uri, user_id, entry.username, entry.seq)

    def forget_room(self, uri: str) -> None:
        for entry in self.rooms.pop(uri, {}).values():
            if entry.timer is not None:
                entry.timer.cancel()

    def prune(self) -> None:
        """Forget the members with nothing waiting, told over READ_KEPT ago."""
        oldest = self.clock() - READ_KEPT
        for uri, members in list(self.rooms.items()):
            for user_id in [i for i, e in members.items() if e.timer is None and e.at < oldest]:
                del members[user_id]
            if not members:
                del self.rooms[uri]

    def cancel(self) -> None:
        for members in self.rooms.values():
            for entry in members.values():
                if entry.timer is not None:
                    entry.timer.cancel()


class Signals:
    def __init__(self, store: Store, publish: Callable[[bytes], None], *,
                 presence: bool = True, presence_grace: float = 10.0,
                 presence_ttl: float = 20.0, typing_ttl: float = 6.0,
                 read_flush: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.publish = publish
        # Set by the hub: (uri, payload, spare_slow=) to the room's full-stream sockets,
        # and (uri, user id, username, seq) to the user streams of a reader.
        self.send: Callable[..., Any] = ignore
        self.own_read: Callable[[str, str, str, int], None] = ignore
        self.presence_enabled = presence
        self.presence_grace = presence_grace
        self.presence_ttl = presence_ttl
        self.typing_ttl = typing_ttl
        self.read_flush = read_flush
        self.clock = clock
        self.process = secrets.token_hex(8)
        # Rooms with sockets here: the presence each was last shown, to send diffs.
        self.shown: dict[str, dict[str, str]] = {}
        self.diff_out: dict[str, Paced] = {}
        self.local: dict[str, dict[str, LocalMember]] = {}
        self.peers: dict[str, Peer] = {}
        self.typing: dict[str, dict[str, Typist]] = {}
        self.typing_timers: dict[str, asyncio.TimerHandle] = {}
        self.typing_out: dict[str, Paced] = {}
        self.presence_out: dict[str, Paced] = {}
        # Rooms that just got their first socket here: their next presence notice
        # asks the others who is typing (nobody re-announces a typer otherwise).
        self.asking: set[str] = set()
        # Read positions: the highest known per room with sockets here, and
        # what waits for the next write.
        self.reads: dict[str, dict[str, int]] = {}
        self.unsaved: dict[str, dict[str, int]] = {}
        self.flushing: asyncio.Task | None = None
        # Read positions told to the sockets here, and to the other processes.
        self.read_frames = ReadPacer(clock, self.send_read)
        self.read_notices = ReadPacer(clock, self.notify_read)
        # (uri, user id) -> when a typing start of theirs was last taken: kept
        # through a stop, so alternating start and stop is throttled as starts
        # alone are; the oldest first, forgotten once past TYPING_THROTTLE.
        self.typing_accepted: collections.OrderedDict[tuple[str, str], float] = \
            collections.OrderedDict()
        # A start that came after a stop within the throttle: taken when the
        # throttle allows, unless another stop comes first.
        self.typing_later: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.snapshot_soon: asyncio.TimerHandle | None = None
        self.ticker: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    # Lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self.presence_enabled:
            # Everyone answers with a snapshot, so this process's view is whole at once.
            self.notify({"type": "signal.hello"})
        # Without presence here, others' still arrive: they must expire as well.
        self.ticker = background(self.tick())

    def reconnected(self) -> None:
        """Back on the broker after an outage: notices were lost both ways."""
        if self.presence_enabled:
            self.notify({"type": "signal.hello"})
            self.send_snapshot()

    async def stop(self) -> None:
        """Say goodbye (the others keep our members for a grace) and save reads."""
        if self.ticker is not None:
            self.ticker.cancel()
        if self.presence_enabled:
            self.notify({"type": "signal.bye", "grace": self.presence_grace})
        for members in self.local.values():
            for member in members.values():
                if member.leaving is not None:
                    member.leaving.cancel()
        for timer in (*self.typing_timers.values(), self.snapshot_soon, *self.typing_later.values(),
                      *(out.timer for out in self.typing_out.values()),
                      *(out.timer for out in self.diff_out.values()),
                      *(out.timer for out in self.presence_out.values())):
            if timer is not None:
                timer.cancel()
        self.read_frames.cancel()
        self.read_notices.cancel()
        if self.flushing is not None:
            await asyncio.gather(self.flushing, return_exceptions=True)
        if self.unsaved:
            await self.save_reads()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def tick(self) -> None:
        """Re-announce this process's rooms and forget peers that went quiet."""
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            if self.presence_enabled:
                self.send_snapshot()
            self.read_frames.prune()
            self.read_notices.prune()
            now = self.clock()
            for process, peer in list(self.peers.items()):
                if peer.expires <= now:
                    log.info("presence of process %s expired", process)
                    del self.peers[process]
                    for uri in peer.rooms:
                        self.changed(uri)

    def notify(self, notice: dict[str, Any]) -> None:
        notice["process"] = self.process
        self.publish(encode(notice))

    def spawn(self, coroutine) -> None:
        task = background(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Sockets -----------------------------------------------------------

    def joined(self, uri: str, user: dict) -> None:
        """A socket of user opened in uri (either stream: both make a member present)."""
        arrived = uri not in self.shown
        if arrived:
            self.shown[uri] = self.online_ids(uri)
            self.reads[uri] = {}
            self.spawn(self.load_reads(uri))
            self.asking.add(uri)
        members = self.local.setdefault(uri, {})
        member = members.get(user["id"])
        if member is None:
            member = members[user["id"]] = LocalMember(user["username"])
        member.sockets += 1
        returned = member.leaving is not None
        if returned:
            member.leaving.cancel()  # back within the grace: nobody hears of it
            member.leaving = None
        if arrived or (member.sockets == 1 and not returned):
            self.local_changed(uri)

    def left(self, uri: str, user: dict, room_empty: bool) -> None:
        """A socket of user closed; `room_empty` when it was this process's last in uri."""
        member = self.local.get(uri, {}).get(user["id"])
        if member is not None:
            member.sockets -= 1
            if member.sockets <= 0:
                self.stop_typing(uri, user)
                member.leaving = asyncio.get_running_loop().call_later(
                    self.presence_grace, self.grace_over, uri, user["id"])
        if room_empty:
            self.shown.pop(uri, None)
            self.reads.pop(uri, None)
            self.read_frames.forget_room(uri)
            self.drop_typing(uri)
            self.asking.discard(uri)
            for outs in (self.typing_out, self.diff_out):
                out = outs.pop(uri, None)
                if out is not None and out.timer is not None:
                    out.timer.cancel()

    def grace_over(self, uri: str, user_id: str) -> None:
        members = self.local.get(uri, {})
        member = members.get(user_id)
        if member is not None and member.sockets <= 0:
            del members[user_id]
            if not members:
                del self.local[uri]
            self.local_changed(uri)

    def forget_member(self, uri: str, user_id: str) -> None:
        """user_id left the room or was removed: gone at once, with no grace, and no
        longer typing. Every process hears of it (the hub's notice) and forgets here."""
        self.unset_typing(uri, user_id)
        members = self.local.get(uri, {})
        member = members.pop(user_id, None)
        if member is not None:
            if member.leaving is not None:
                member.leaving.cancel()
            if not members:
                self.local.pop(uri, None)
            self.local_changed(uri)
        for peer in self.peers.values():
            peer.rooms.get(uri, {}).pop(user_id, None)
        self.changed(uri)

    def welcome(self, uri: str) -> list[bytes]:
        """What a full-stream socket gets after ready: the room's presence, and
        who is typing when anyone is.

        The presence is what the room's sockets were last shown, not what is
        online now: the socket gets the room's next diff with the others, and a
        change that waits for it would otherwise come twice (or a leave never)."""
        payloads = []
        if self.presence_enabled:
            shown = self.shown.get(uri, {})  # none once its socket closed while joining
            payloads.append(encode({"type": "presence", "uri": uri, "users": [
                {"id": user_id, "username": name} for user_id, name in shown.items()]}))
        if self.typing.get(uri):
            payloads.append(self.typing_payload(uri))
        return payloads

    # Presence ----------------------------------------------------------

    def online_ids(self, uri: str) -> dict[str, str]:
        """{user id: username} of everyone with a socket to uri on any process."""
        online = {user_id: member.username for user_id, member in self.local.get(uri, {}).items()}
        for peer in self.peers.values():
            online.update(peer.rooms.get(uri, ()))
        return online

    def online(self, uri: str) -> list[str]:
        return sorted(self.online_ids(uri).values())

    def local_changed(self, uri: str) -> None:
        """The members with a socket to uri here changed: tell the sockets here and
        the other processes, each at the end of this turn of the loop or
        PRESENCE_EVERY after they were last told, all changes in one."""
        if self.presence_enabled or uri in self.asking:
            self.pace(self.presence_out, uri, PRESENCE_EVERY, self.send_presence, at_once=False)
        self.changed(uri)

    def send_presence(self, uri: str) -> None:
        out = self.presence_out.get(uri)
        if out is None:
            return
        out.timer = None
        users = self.local_users(uri) if self.presence_enabled else None
        notice: dict[str, Any] = {"type": "signal.presence", "uri": uri, "ttl": self.presence_ttl}
        if users is not None:
            notice["users"] = users
        if uri in self.asking:
            self.asking.discard(uri)
            notice["typing"] = True  # tell me who is typing here
        elif users == out.payload:
            return  # changes that undid each other: the others know this already
        out.payload, out.at = users, self.clock()
        self.notify(notice)
        if uri not in self.local:
            del self.presence_out[uri]  # nobody here: nothing to pace

    def local_users(self, uri: str) -> list[list[str]]:
        return [[user_id, member.username] for user_id, member in self.local.get(uri, {}).items()]

    def changed(self, uri: str) -> None:
        """The room's presence may have changed: its sockets here get a diff at the
        end of this turn of the loop or PRESENCE_EVERY after their last one."""
        if uri in self.shown and self.presence_enabled:
            self.pace(self.diff_out, uri, PRESENCE_EVERY, self.send_diff, at_once=False)

    def send_diff(self, uri: str) -> None:
        """Send the room's sockets here what changed since they were last told:
        changes that undid each other in between are no change."""
        out, shown = self.diff_out[uri], self.shown[uri]  # both go when the room does
        out.timer = None
        online = self.online_ids(uri)
        joined = [{"id": i, "username": name} for i, name in online.items() if i not in shown]
        left = [{"id": i, "username": name} for i, name in shown.items() if i not in online]
        if joined or left:
            self.shown[uri] = online
            out.at = self.clock()
            # Not spared on a slow socket: a missed diff would leave its page wrong
            # until it reconnects. Typing frames carry the whole set and read
            # positions only rise, so the next one corrects a missed one.
            self.send(uri, encode({"type": "presence", "uri": uri, "joined": joined, "left": left}),
                      spare_slow=False)

    def send_snapshot(self) -> None:
        self.snapshot_soon = None
        self.notify({"type": "signal.snapshot", "ttl": self.presence_ttl,
                     "rooms": {uri: self.local_users(uri) for uri in self.local}})

    def on_presence(self, notice: dict, peer: Peer) -> None:
        uri = notice["uri"]
        if notice.get("typing"):
            self.tell_typers(uri)
        if "users" not in notice:
            return  # presence is off there: it only asked who is typing
        peer.rooms[uri] = dict(notice["users"])
        if not peer.rooms[uri]:
            del peer.rooms[uri]
        self.changed(uri)

    def on_snapshot(self, notice: dict, peer: Peer) -> None:
        before = peer.rooms
        peer.rooms = {uri: dict(users) for uri, users in notice["rooms"].items() if users}
        for uri in before.keys() | peer.rooms.keys():
            if before.get(uri) != peer.rooms.get(uri):
                self.changed(uri)

    def on_hello(self, _notice: dict, _peer: Peer) -> None:
        # Several hellos at once (a restart of many processes) get one answer.
        if self.presence_enabled and self.snapshot_soon is None:
            self.snapshot_soon = asyncio.get_running_loop().call_later(0.05, self.send_snapshot)

    def on_bye(self, notice: dict, peer: Peer) -> None:
        # Its sockets are reconnecting elsewhere: keep its members for a grace.
        peer.expires = min(peer.expires, self.clock() + float(notice.get("grace", 0)))

    # Typing ------------------------------------------------------------

    def typing_frame(self, uri: str, user: dict, stop: bool) -> None:
        """A typing frame from one of user's sockets in uri."""
        if stop:
            self.stop_typing(uri, user)
            return
        now = self.clock()
        accepted = self.typing_accepted
        while accepted and next(iter(accepted.values())) <= now - TYPING_THROTTLE:
            accepted.popitem(last=False)
        key = (uri, user["id"])
        if key in accepted:
            if key not in self.typing_later and user["id"] not in self.typing.get(uri, {}):
                self.typing_later[key] = asyncio.get_running_loop().call_later(
                    accepted[key] + TYPING_THROTTLE - now, self.typing_due, uri, user)
            return
        accepted[key] = now
        self.notify({"type": "signal.typing", "uri": uri, "user": [user["id"], user["username"]],
                     "ttl": self.typing_ttl})
        self.set_typing(uri, user["id"], user["username"], self.typing_ttl).accepted = now

    def typing_due(self, uri: str, user: dict) -> None:
        del self.typing_later[(uri, user["id"])]
        self.typing_accepted.pop((uri, user["id"]), None)  # its throttle is over
        self.typing_frame(uri, user, stop=False)

    def stop_typing(self, uri: str, user: dict) -> None:
        """user stopped typing (said so, sent a message, left, closed the last socket).
        A process with sockets in uri keeps the room's typing set and tells the
        others only when user is in it; one without (a post over HTTP) cannot
        know, so it tells them anyway."""
        later = self.typing_later.pop((uri, user["id"]), None)
        if later is not None:
            later.cancel()
        typists = self.typing.get(uri)
        if uri in self.shown and (typists is None or user["id"] not in typists):
            return
        self.notify({"type": "signal.typing", "uri": uri, "user": [user["id"], user["username"]],
                     "stop": True})
        self.unset_typing(uri, user["id"])

    def set_typing(self, uri: str, user_id: str, username: str, ttl: float) -> Typist | None:
        if uri not in self.shown:
            return Typist(username)  # nobody here to tell
        typists = self.typing.setdefault(uri, {})
        typist = typists.get(user_id)
        if typist is None:
            typist = typists[user_id] = Typist(username)
            self.typing_changed(uri)
        typist.expires = self.clock() + ttl
        loop = asyncio.get_running_loop()
        timer = self.typing_timers.get(uri)
        if timer is not None and timer.when() > loop.time() + ttl:
            timer.cancel()  # an entry told with what was left of its ttl ends sooner
            timer = None
        if timer is None:
            self.typing_timers[uri] = loop.call_later(ttl, self.expire_typing, uri)
        return typist

    def unset_typing(self, uri: str, user_id: str) -> None:
        typists = self.typing.get(uri)
        if typists is not None and typists.pop(user_id, None) is not None:
            self.typing_changed(uri)
            if not typists:
                self.drop_typing(uri)

    def expire_typing(self, uri: str) -> None:
        """The room's earliest typing entry is due: drop what expired, wait for the next."""
        self.typing_timers.pop(uri, None)
        typists = self.typing.get(uri)
        if not typists:
            return
        now = self.clock()
        expired = [user_id for user_id, typist in typists.items() if typist.expires <= now]
        for user_id in expired:
            del typists[user_id]
        if expired:
            self.typing_changed(uri)
        if not typists:
            self.drop_typing(uri)
            return
        due = min(typist.expires for typist in typists.values())
        self.typing_timers[uri] = asyncio.get_running_loop().call_later(
            max(0.0, due - now), self.expire_typing, uri)

    def drop_typing(self, uri: str) -> None:
        self.typing.pop(uri, None)
        timer = self.typing_timers.pop(uri, None)
        if timer is not None:
            timer.cancel()

    def typing_changed(self, uri: str) -> None:
        """Tell the room's sockets its typing set: now, or TYPING_EVERY after they
        were last told, with whatever has changed by then."""
        self.pace(self.typing_out, uri, TYPING_EVERY, self.send_typing, at_once=True)

    def pace(self, outs: dict[str, Paced], uri: str, every: float,
             send: Callable[[str], None], *, at_once: bool) -> None:
        """Call send(uri) `every` after its last send, with whatever has changed by
        then; if that is past, now when `at_once`, else at the end of this turn
        of the loop (so that changes made together go out together)."""
        out = outs.setdefault(uri, Paced())
        if out.timer is not None:
            return
        wait = out.at + every - self.clock()
        if wait > 0 or not at_once:
            out.timer = asyncio.get_running_loop().call_later(max(wait, 0.0), send, uri)
        else:
            send(uri)

    def send_typing(self, uri: str) -> None:
        out = self.typing_out.get(uri)
        if out is None:
            return
        out.timer = None
        payload = self.typing_payload(uri)
        if payload != (out.payload or b""):  # a start and stop in between: nothing to say
            out.payload, out.at = payload, self.clock()
            self.send(uri, payload)

    def typing_payload(self, uri: str) -> bytes:
        return encode({"type": "typing", "uri": uri, "users": [
            typist.username for typist in self.typing.get(uri, {}).values()]})

    def tell_typers(self, uri: str) -> None:
        """A process just got its first socket in uri: tell it who types here, each
        with what is left of their entry. Only the typers of this process's own
        sockets: each process tells its own, so nobody is told twice."""
        now = self.clock()
        typers = [[user_id, typist.username, typist.expires - now]
                  for user_id, typist in self.typing.get(uri, {}).items()
                  if typist.accepted and typist.expires > now]
        if typers:
            self.notify({"type": "signal.typers", "uri": uri, "users": typers})

    def on_typers(self, notice: dict, _peer: Peer) -> None:
        for user_id, username, ttl in notice["users"]:
            self.set_typing(notice["uri"], user_id, username, float(ttl))

    def on_typing(self, notice: dict, _peer: Peer) -> None:
        user_id, username = notice["user"]
        if notice.get("stop"):
            self.unset_typing(notice["uri"], user_id)
        else:
            self.set_typing(notice["uri"], user_id, username, float(notice["ttl"]))

    # Read positions ----------------------------------------------------

    def read(self, uri: str, user: dict, seq: int) -> None:
        """user has read uri up to seq (checked by the caller): store and tell
        (paced: READ_EVERY)."""
        known = self.reads.get(uri)
        if known is not None and known.get(user["id"], 0) >= seq:
            return  # never down, and no news
        if not self.read_notices.rise(uri, user["id"], user["username"], seq):
            return  # told (or waiting to be) already
        self.save_read(uri, user["id"], seq)
        self.raise_read(uri, user["id"], user["username"], seq)

    def notify_read(self, uri: str, user_id: str, username: str, seq: int) -> None:
        self.notify({"type": "signal.read", "uri": uri, "user": [user_id, username], "seq": seq})

    def posted(self, uri: str, user: dict, seq: int) -> None:
        """user posted seq: they have read what came before it. Stored, but told to
        nobody: everyone gets the message itself and can tell as much from it."""
        known = self.reads.get(uri)
        if known is not None:
            if known.get(user["id"], 0) >= seq:
                return
            known[user["id"]] = seq
        self.save_read(uri, user["id"], seq)

    def save_read(self, uri: str, user_id: str, seq: int) -> None:
        unsaved = self.unsaved.setdefault(uri, {})
        unsaved[user_id] = max(seq, unsaved.get(user_id, 0))
        if self.flushing is None:
            self.flushing = background(self.flush_reads())

    def raise_read(self, uri: str, user_id: str, username: str, seq: int) -> None:
        # The reader's own user streams hear of it whether or not the room has
        # sockets here: their other devices clear their badges.
        self.own_read(uri, user_id, username, seq)
        known = self.reads.get(uri)
        if known is None or known.get(user_id, 0) >= seq:
            return
        known[user_id] = seq
        self.read_frames.rise(uri, user_id, username, seq)

    def send_read(self, uri: str, user_id: str, username: str, seq: int) -> None:
        if uri in self.reads:
            self.send(uri, read_payload(uri, user_id, username, seq))

    def on_read(self, notice: dict, _peer: Peer) -> None:
        user_id, username = notice["user"]
        self.raise_read(notice["uri"], user_id, username, int(notice["seq"]))

    def read_positions(self, uri: str, stored: dict[str, int] | None = None) -> dict[str, int]:
        """{user id: seq}: `stored` (what MongoDB has) raised by what this process
        knows and may not have written yet, so a reader sees their own read at once."""
        positions = dict(stored or {})
        for known in (self.reads.get(uri, {}), self.unsaved.get(uri, {})):
            for user_id, seq in known.items():
                positions[user_id] = max(seq, positions.get(user_id, 0))
        return positions

    def reads_of(self, user_id: str) -> dict[str, int]:
        """{uri: seq} of user_id's read positions this process knows, in every room."""
        found: dict[str, int] = {}
        for positions in (self.reads, self.unsaved):
            for uri, users in positions.items():
                if user_id in users:
                    found[uri] = max(users[user_id], found.get(uri, 0))
        return found

    async def load_reads(self, uri: str) -> None:
        try:
            stored = await self.store.read_positions(uri)
        except Unavailable:
            return  # notices still raise them; the page takes the max of all it hears
        known = self.reads.get(uri)
        if known is not None:
            for user_id, seq in stored.items():
                known[user_id] = max(seq, known.get(user_id, 0))

    async def flush_reads(self) -> None:
        """Write what waits, then at most once per read_flush while more comes."""
        try:
            while self.unsaved:
                await self.save_reads()
                await asyncio.sleep(self.read_flush)
        finally:
            self.flushing = None

    async def save_reads(self) -> None:
        batch, self.unsaved = self.unsaved, {}
        try:
            await self.store.save_read_positions(batch)
        except Unavailable:
            log.warning("read positions of %d rooms not saved yet: MongoDB unavailable",
                        len(batch))
            for uri, users in batch.items():
                waiting = self.unsaved.setdefault(uri, {})
                for user_id, seq in users.items():
                    waiting[user_id] = max(seq, waiting.get(user_id, 0))

    # Notices from other processes --------------------------------------

    def on_notice(self, notice: dict) -> None:
        process = notice.get("process")
        if process == self.process or not isinstance(process, str):
            return  # our own, back from the exchange: already applied
        handler = self.handlers.get(notice.get("type"))
        if handler is None:
            return
        peer = self.peers.get(process)
        if peer is None:
            peer = self.peers[process] = Peer(self.clock() + self.presence_ttl)
        if notice["type"] in ("signal.snapshot", "signal.presence"):
            peer.expires = self.clock() + float(notice.get("ttl", self.presence_ttl))
        try:
            handler(self, notice, peer)
        except (KeyError, TypeError, ValueError):
            log.warning("dropping a malformed %s notice", notice.get("type"))

    handlers = {
        "signal.presence": on_presence,
        "signal.snapshot": on_snapshot,
        "signal.hello": on_hello,
        "signal.bye": on_bye,
        "signal.typing": on_typing,
        "signal.typers": on_typers,
        "signal.read": on_read,
    }
