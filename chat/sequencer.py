"""One sequencer per room per process: queued room events get consecutive seqs.

Events that arrive while a room's batch is in flight queue up; the next batch
takes them all, numbers them last + 1, last + 2, ... and inserts them in one
ordered write (which the store's group commit shares with other rooms'
batches). An ordered insert stops at its first failure, so what is stored of
a batch is always a prefix: seq N is stored only once every seq below it is,
even when this process dies mid-batch. The unique (room, seq) index decides
races between processes: a batch that finds its seq taken re-reads the
room's last seq once and renumbers everything still queued, so contention
costs one retry per batch, not one per event.
"""

from __future__ import annotations

import asyncio
import collections

from chat.metrics import Metrics
from chat.store import (
    KNOWN_ROOMS,
    ClientIdTaken,
    NotAttempted,
    SeqTaken,
    Store,
    Unavailable,
    background,
    budget,
    now,
    remember,
)


class Pending:
    __slots__ = ("deadline", "event", "future")

    def __init__(self, event: dict, deadline: float):
        self.event = event
        self.deadline = deadline
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def answer(self, result: tuple[dict, bool]) -> None:
        if not self.future.done():  # its caller may have given up (cancelled)
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class RoomQueue:
    __slots__ = ("batch", "hint", "queue", "reread", "worker")

    def __init__(self):
        self.queue: list[Pending] = []
        self.batch: list[Pending] = []  # in flight
        self.hint = 0  # the highest seq a caller has seen stored
        self.reread = False  # another process took a seq: what we know is behind
        self.worker: asyncio.Task | None = None


class Sequencer:
    """Appends room events to the log in `store`, gap-free, one batch per room at a time."""

    def __init__(self, store: Store, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self.rooms: dict[str, RoomQueue] = {}
        # uri -> the last seq this process stored there. It may be behind (another
        # process posted since): that costs one failed insert and one read.
        self.last: collections.OrderedDict[str, int] = collections.OrderedDict()

    async def append(self, uri: str, event: dict, seen: int | None = None,
                     deadline: float | None = None) -> tuple[dict, bool]:
        """Store `event` (without seq and created) at the room's next seq.

        Returns (stored document, True), or (the document stored earlier,
        False) when the event's client_id was already used by its user in
        this room. `seen` is a seq the caller knows to be stored (the last one
        delivered here): no read is needed before the insert when it is current.
        Raises Unavailable when it cannot be stored before `deadline`
        (loop time; the store's timeout from now by default).
        """
        room = self.rooms.get(uri)
        if room is None:
            room = self.rooms[uri] = RoomQueue()
        if seen is not None:
            room.hint = max(room.hint, seen)
        pending = Pending(event, self.store.deadline() if deadline is None else deadline)
        room.queue.append(pending)
        if room.worker is None:
            # The worker outlives this caller and serves the posts queued after it.
            room.worker = background(self.run(uri, room))
        return await pending.future

    async def run(self, uri: str, room: RoomQueue) -> None:
        try:
            while room.queue:
                await self.send_batch(uri, room)
        finally:
            room.worker = None
            for pending in room.batch + room.queue:  # cancelled: the loop is stopping
                pending.future.cancel()
            room.batch = []
            if self.rooms.get(uri) is room and not room.queue:
                del self.rooms[uri]

    async def send_batch(self, uri: str, room: RoomQueue) -> None:
        moment = asyncio.get_running_loop().time()
        batch: list[Pending] = []
        for pending in room.queue:
            if pending.future.done():
                continue
            if pending.deadline <= moment:
                pending.fail(Unavailable("no time left to store the event"))
            else:
                batch.append(pending)
        room.queue.clear()
        if not batch:
            return
        room.batch = batch
        deadline = min(pending.deadline for pending in batch)
        try:
            last = max(room.hint, self.last.get(uri, 0))
            if room.reread or last == 0:
                with budget(deadline):  # the read counts against the batch's time
                    last = max(last, await self.store.last_seq(uri))
                room.reread = False
            created = now()
            docs = [{**pending.event, "room": uri, "seq": last + 1 + i, "created": created}
                    for i, pending in enumerate(batch)]
            results = await self.store.insert_events(docs, deadline)
        except Exception as error:
            # Nothing is known of what was stored: the next batch reads the last seq.
            room.reread = True
            for pending in batch:
                pending.fail(error)
            room.batch = []
            return
        retry: list[Pending] = []
        for pending, doc, result in zip(batch, docs, results, strict=True):
            if retry or isinstance(result, NotAttempted):
                retry.append(pending)
                continue
            self.metrics.event_inserts.inc()
            if result is None:
                remember(self.last, uri, doc["seq"], KNOWN_ROOMS)
                pending.answer((doc, True))
            elif isinstance(result, SeqTaken):
                self.metrics.seq_renumbered.inc()
                room.reread = True
                retry.append(pending)
            elif isinstance(result, ClientIdTaken):
                await self.resolve_repeat(uri, pending, retry)
            else:
                pending.fail(result)
        # What was not stored goes first in the next batch, in its order.
        room.queue[:0] = retry
        room.batch = []

    async def resolve_repeat(self, uri: str, pending: Pending, retry: list[Pending]) -> None:
        """The event's client_id is taken: answer with the event stored under it."""
        event = pending.event
        try:
            with budget(pending.deadline):
                stored = await self.store.event_by_client_id(uri, event["user_id"],
                                                             event["client_id"])
        except Exception as error:
            pending.fail(error)
            return
        if stored is None:  # removed meanwhile: store it as new
            retry.append(pending)
        else:
            pending.answer((stored, False))
