"""What every part of the store shares: its exceptions, the request's MongoDB
time budget, `guarded` (pymongo errors -> Unavailable), group commit and the
mapping of write errors."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

log = logging.getLogger("chat.store")

# A write the write concern did not acknowledge (WriteConcernError, its
# timeout WTimeoutError among them: a replica set without its majority, a
# stepdown) counts as not stored, like one MongoDB did not answer.
UNREACHABLE = (AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout,
               ServerSelectionTimeoutError, WriteConcernError)

# The most writes one group commit sends in one command.
GROUP_COMMIT_MAX = 500


class Unavailable(Exception):
    """MongoDB did not answer in time."""


class UsernameTaken(Exception):
    pass


class NotFound(Exception):
    pass


class NotMember(Exception):
    pass


class SeqTaken(Exception):
    """Another writer stored an event at this seq first."""


class ClientIdTaken(Exception):
    """The user already stored an event with this client_id in the room."""


class NotAttempted(Exception):
    """An ordered insert stopped at an earlier event; this one was not tried."""


# When the HTTP request being served must have its answer from MongoDB (event
# loop time), once the edge has begun one: every operation of the request, and
# its time queued behind a group commit, counts against it. A context variable
# because it belongs to one request's task, not to the application.
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_deadline", default=None)


def background(coroutine) -> asyncio.Task:
    """A task in a context of its own: work that outlives the request (or the
    caller) that began it must not inherit its REQUEST_DEADLINE or
    pymongo.timeout, and may serve later callers too."""
    return asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())



class Banned(NotMember):
    """Banned from the room: refused on every path, joining by link too."""


class Forbidden(Exception):
    """Not allowed; the message says why."""


def eq(value: Any) -> dict:
    """An equality on a scalar field, as {"$eq": value}: the same to MongoDB.
    nx-27017, the embedded store, matches a plain {field: value} as "equal, or
    an array holding it" through json_each, which no index serves, so a query
    with one scans the whole collection whatever else it says: a history page
    took 0.9 s at 1,000,000 messages, 5 ms with the room an $eq
    (tests/test_query_plans.py). Top-level $or/$and are evaluated in Python
    over every document there too: none in queries on messages."""
    return {"$eq": value}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def budget(deadline: float) -> pymongo.timeout:
    """Bound every MongoDB operation in the block by deadline (event loop time), all together."""
    return pymongo.timeout(max(0.001, deadline - asyncio.get_running_loop().time()))


def guarded(method):
    @functools.wraps(method)
    async def call(*args, **kwargs):
        deadline = REQUEST_DEADLINE.get()
        try:
            if deadline is None:
                return await method(*args, **kwargs)
            with budget(deadline):
                return await method(*args, **kwargs)
        except PyMongoError as exc:
            # `timeout` covers every way the client-side operation timeout
            # (timeoutMS, pymongo.timeout) ends an operation.
            if isinstance(exc, UNREACHABLE) or exc.timeout or unacknowledged(exc):
                raise Unavailable(str(exc)) from exc
            raise
    return call


def unacknowledged(exc: PyMongoError) -> bool:
    """A bulk write that failed only its write concern."""
    return (isinstance(exc, BulkWriteError) and bool(exc.details.get("writeConcernErrors"))
            and not exc.details.get("writeErrors"))


def iso(moment: datetime.datetime | float) -> str:
    if isinstance(moment, (int, float)):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GroupCommit:
    """Writes that arrive while one is in flight go out together, as one command.

    Alone, a write is sent at once; under load, the writes of many posts share
    one round trip, and pymongo's and the server's cost per command is paid
    once for all of them. `send` gets the items and returns one result per
    item, an exception instance for an item that failed on its own; an
    exception it raises fails the whole batch.

    Each write has a deadline (event loop time) that counts its time in the
    queue: a write whose deadline passed while it waited is failed unsent, and
    a command gets only as much time as its most pressed write has left.
    """

    def __init__(self, send: Callable[[list], Awaitable[list]], timeout: float):
        self.send = send
        self.timeout = timeout
        self.queue: list[tuple[Any, float, asyncio.Future]] = []
        self.flushing: asyncio.Task | None = None

    async def submit(self, item: Any, deadline: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if deadline is None:
            deadline = REQUEST_DEADLINE.get() or loop.time() + self.timeout
        self.queue.append((item, deadline, future))
        if self.flushing is None:
            # The flush serves later submitters too.
            self.flushing = background(self.flush())
        return await future

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[Any, float, asyncio.Future]] = []
        try:
            while self.queue:
                moment = loop.time()
                for entry in self.queue:
                    if entry[1] <= moment and not entry[2].done():
                        entry[2].set_exception(Unavailable("no time left for the write"))
                self.queue[:] = [entry for entry in self.queue if not entry[2].done()]
                batch = self.queue[:GROUP_COMMIT_MAX]
                del self.queue[:GROUP_COMMIT_MAX]
                if not batch:
                    continue
                try:
                    with budget(min(deadline for _, deadline, _ in batch)):
                        results = await self.send([item for item, _, _ in batch])
                except Exception as error:
                    # What waited meanwhile fails too, rather than wait out
                    # another timeout of a server that did not answer.
                    batch += self.queue
                    self.queue.clear()
                    results = [error] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.flushing = None
            for _, _, future in batch:  # cancelled mid-command: the loop is stopping
                future.cancel()


def write_error(doc: dict, failure: dict) -> Exception:
    """The exception for one failed insert of an insert command."""
    if failure.get("code") != 11000:
        return OperationFailure(failure.get("errmsg", ""), failure.get("code"), failure)
    # Which unique index refused it: MongoDB names its keys in keyPattern, some
    # wire servers (nx-27017) only the index in errmsg.
    pattern = failure.get("keyPattern")
    names = " ".join(pattern) if isinstance(pattern, dict) else failure.get("errmsg", "")
    if doc.get("client_id") and "client_id" in names:
        return ClientIdTaken(doc["client_id"])
    if "seq" in names:
        return SeqTaken(doc["seq"])
    # Another unique index: renumbering would not help.
    return DuplicateKeyError(failure.get("errmsg", ""), 11000, failure)


def remember(recent: collections.OrderedDict, key: Any, value: Any, limit: int) -> None:
    """Keep key as the newest entry of recent, forgetting the oldest past limit."""
    recent[key] = value
    recent.move_to_end(key)
    if len(recent) > limit:
        recent.popitem(last=False)

