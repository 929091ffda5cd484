"""MongoDB: users, tokens, rooms and messages. The only module that imports pymongo.

Every public coroutine raises `Unavailable` when MongoDB cannot be reached in
time, so the edge can answer 503 without knowing about pymongo.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
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
    WTimeoutError,
)

log = logging.getLogger("chat.store")

UNREACHABLE = (AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout,
               ServerSelectionTimeoutError, WTimeoutError)

# Failed logins older than this are never counted (the window is at most a day).
LOGIN_FAILURE_TTL = 24 * 3600
KNOWN_MEMBERS = 100_000
# How long a membership found in MongoDB is believed without reading it again:
# a bound on what a lost "expel" notice could cost (the hub forgets them all
# after a broker outage, when notices are known to have been lost).
MEMBER_RECHECK_SECONDS = 300.0
KNOWN_ROOMS = 100_000
# The most writes one group commit sends in one command.
GROUP_COMMIT_MAX = 500
# Unread counts stop here (the page shows "999+"), and look at most this many
# events after a read position.
UNREAD_CAP = 999
UNREAD_SCAN = 10 * UNREAD_CAP
# How many of a room's last events the chat list looks through for its latest message.
LATEST_SCAN = 50
# The chat list shows this much of each chat's latest message, and this many
# of its members (to name it).
PREVIEW_CHARS = 100
PREVIEW_MEMBERS = 4
# A message that is shown: not another kind of room event, not deleted.
VISIBLE_MESSAGE = {"type": {"$in": [None, "message"]}, "deleted": {"$ne": True}}


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


def username_key(username: str) -> str:
    """What makes two usernames the same account: case is ignored."""
    return username.casefold()


class Banned(NotMember):
    """Banned from the room: refused on every path, joining by link too."""


class Forbidden(Exception):
    """Not allowed; the message says why."""


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
            if isinstance(exc, UNREACHABLE) or exc.timeout:
                raise Unavailable(str(exc)) from exc
            raise
    return call


def live_token_user(doc: dict[str, Any] | None) -> dict | None:
    """A token document's user while it is live; None when there is none
    (revoked) or it expired (MongoDB's TTL removes it only some time after)."""
    if doc is None or doc["expires"] <= now():
        return None
    return doc["user"]


def public_user(doc: dict[str, Any]) -> dict[str, Any]:
    """The tutorial's user object."""
    return {
        "id": str(doc["_id"]),
        "username": doc["username"],
        "email": doc.get("email", ""),
        "first_name": doc.get("first_name", ""),
        "last_name": doc.get("last_name", ""),
    }


def iso(moment: datetime.datetime | float) -> str:
    if isinstance(moment, (int, float)):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public_message(doc: dict[str, Any]) -> dict[str, Any]:
    message = {
        "id": str(doc["_id"]),
        "seq": doc["seq"],
        "uri": doc["room"],
        "user": doc["user"],
        "message": doc["message"],
        "created": iso(doc["created"]),
    }
    if doc.get("client_id"):
        message["client_id"] = doc["client_id"]
    # Its current state: what its edit, delete and reaction events made of it.
    message["last_event_seq"] = doc.get("last_event_seq", doc["seq"])
    if doc.get("version"):
        message["version"] = doc["version"]
        message["edited"] = iso(doc["edited"])
    if doc.get("deleted"):
        message["deleted"] = True
    if doc.get("reactions"):
        message["reactions"] = doc["reactions"]
    return message


def event_about(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields every event about a message has: `id` and `target_seq` are
    the message's, `seq` the event's own."""
    return {"seq": doc["seq"], "id": doc["target_id"], "target_seq": doc["target_seq"],
            "uri": doc["room"], "created": iso(doc["created"])}


def public_edit(doc: dict[str, Any]) -> dict[str, Any]:
    # A deleted message's edits keep no text: theirs is erased with it.
    return {**event_about(doc), "message": doc.get("message", ""), "edited": iso(doc["created"]),
            "version": doc["version"], "user": doc["user"]}


def public_delete(doc: dict[str, Any]) -> dict[str, Any]:
    return {**event_about(doc), "by": doc["by"]}


def public_reaction(doc: dict[str, Any]) -> dict[str, Any]:
    return {**event_about(doc), "emoji": doc["emoji"], "op": doc["op"], "user": doc["user"]}


def public_member(doc: dict[str, Any]) -> dict[str, Any]:
    member = {"seq": doc["seq"], "uri": doc["room"], "created": iso(doc["created"]),
              "op": doc["op"], "user": doc["user"], "by": doc["by"]}
    if doc.get("role"):
        member["role"] = doc["role"]
    return member


def public_other_event(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored event other than a message, as sent: its fields, `id` and `uri` named as in messages."""
    event = {key: iso(value) if isinstance(value, datetime.datetime) else value
             for key, value in doc.items() if key not in ("_id", "room", "type")}
    event["id"] = str(doc["_id"])
    event["uri"] = doc["room"]
    return event


# How a type of stored room event is shown to clients, where it differs from
# public_other_event; a document without `type` is a message.
EVENT_RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "message": public_message,
    "edit": public_edit,
    "delete": public_delete,
    "reaction": public_reaction,
    "member": public_member,
}


def public_event(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored room event as clients see it, with its `type` first."""
    kind = doc.get("type", "message")
    return {"type": kind, **EVENT_RENDERERS.get(kind, public_other_event)(doc)}


def new_room_uri() -> str:
    return secrets.token_hex(8)[:15]


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


class Store:
    def __init__(self, url: str, database: str, timeout_ms: int = 2500,
                 write_concern: str = "majority", read_concern: str = "majority",
                 event_listeners: list | None = None):
        self.timeout = timeout_ms / 1000
        # timeoutMS bounds each operation as a whole (server selection, pool
        # checkout, the round trip and its retry), so a server that hangs
        # rather than refuses still gives Unavailable in time.
        # On a replica set: a write counts once a majority has it (it survives
        # a failover; a write-concern error is a failure, see insert_ordered),
        # a read never returns what a failover could roll back, and a write
        # cut by a failover is retried once by pymongo. These override the
        # URL's own options.
        self.client = AsyncMongoClient(
            url,
            tz_aware=True,
            timeoutMS=timeout_ms,
            appname="chat-server",
            w=int(write_concern) if write_concern.isdigit() else write_concern,
            readConcernLevel=read_concern,
            retryWrites=True,
            event_listeners=event_listeners or [],
        )
        db = self.client[database]
        self.users = db.users
        self.tokens = db.tokens
        self.login_failures = db.login_failures
        self.rate_counts = db.rate_counts
        self.rooms = db.rooms
        self.messages = db.messages
        # (room, user) pairs known to be members -> until when (loop time) that
        # is believed; the oldest are forgotten past KNOWN_MEMBERS, and a member
        # who leaves or is removed at once, in every process (forget_member,
        # through the hub's control notice).
        self.known_members: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self.member_recheck = MEMBER_RECHECK_SECONDS
        # Counts forget_member calls: a membership read that a forget overtook
        # (the read began before it) is not remembered.
        self.forgotten = 0
        # uri -> _id of rooms read lately. A room's update goes by _id when it is
        # known: the cheapest lookup on any server, and some wire servers
        # (nx-27017) scan the collection for an update by a secondary key.
        self.room_ids: collections.OrderedDict[str, ObjectId] = collections.OrderedDict()
        self.event_inserts = GroupCommit(self.insert_batches, self.timeout)
        self.room_touches = GroupCommit(self.touch_rooms, self.timeout)

    def deadline(self) -> float:
        """When an operation begun now must have ended (event loop time): the
        request's deadline inside one, else the timeout from now."""
        request = REQUEST_DEADLINE.get()
        return asyncio.get_running_loop().time() + self.timeout if request is None else request

    def begin_request(self) -> None:
        """Start the MongoDB time budget of an HTTP request (in its own task)."""
        REQUEST_DEADLINE.set(asyncio.get_running_loop().time() + self.timeout)

    def remember_member(self, uri: str, user_id: str, room_id: ObjectId | None = None) -> None:
        until = asyncio.get_running_loop().time() + self.member_recheck
        remember(self.known_members, (uri, user_id), until, KNOWN_MEMBERS)
        if room_id is not None:
            remember(self.room_ids, uri, room_id, KNOWN_ROOMS)

    def known_member(self, uri: str, user_id: str) -> bool:
        until = self.known_members.get((uri, user_id))
        return until is not None and until > asyncio.get_running_loop().time()

    def forget_member(self, uri: str, user_id: str) -> None:
        self.forgotten += 1
        self.known_members.pop((uri, user_id), None)

    def forget_members(self) -> None:
        """Believe no membership without reading it again."""
        self.forgotten += 1
        self.known_members.clear()

    @guarded
    async def ensure_indexes(self) -> None:
        await self.users.create_index("username", unique=True, name="username")
        # Usernames are unique ignoring case; the spelling the user chose is kept
        # for display. Partial: accounts made before this have no key until
        # backfilled, and two of them that differ only in case keep theirs apart.
        await self.users.create_index("username_key", unique=True, name="username_key",
                                      partialFilterExpression={"username_key": {"$type": "string"}})
        await self.backfill_username_keys()
        await self.rate_counts.create_index("expires", expireAfterSeconds=0, name="expires_ttl")
        await self.tokens.create_index("user_id", name="user_id")
        # MongoDB removes expired tokens and old failed logins by itself (TTL).
        await self.tokens.create_index("expires", expireAfterSeconds=0, name="expires_ttl")
        await self.login_failures.create_index([("username", ASCENDING), ("at", ASCENDING)],
                                               name="username_at")
        await self.login_failures.create_index("at", expireAfterSeconds=LOGIN_FAILURE_TTL,
                                               name="at_ttl")
        await self.rooms.create_index("uri", unique=True, name="uri")
        await self.rooms.create_index([("members", ASCENDING), ("updated", DESCENDING)],
                                      name="members_updated")
        await self.messages.create_index([("room", ASCENDING), ("seq", ASCENDING)],
                                         unique=True, name="room_seq")
        # The events about one message (edits, deletes, reactions), in seq order.
        await self.messages.create_index(
            [("room", ASCENDING), ("target_seq", ASCENDING), ("seq", ASCENDING)],
            name="room_target_seq", partialFilterExpression={"target_seq": {"$exists": True}})
        await self.messages.create_index(
            [("room", ASCENDING), ("user_id", ASCENDING), ("client_id", ASCENDING)],
            unique=True, name="room_user_client_id",
            partialFilterExpression={"client_id": {"$type": "string"}},
        )

    @guarded
    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def close(self) -> None:
        await self.client.close()

    # Users -------------------------------------------------------------

    async def backfill_username_keys(self) -> None:
        async for doc in self.users.find({"username_key": {"$exists": False}}, {"username": 1}):
            try:
                await self.users.update_one({"_id": doc["_id"]},
                                            {"$set": {"username_key": username_key(doc["username"])}})
            except DuplicateKeyError:
                log.warning("user %s differs from an older account only in case; it logs in "
                            "by its exact spelling", doc["_id"])

    @guarded
    async def create_user(self, username: str, email: str, password_hash: bytes) -> dict:
        doc = {"username": username, "username_key": username_key(username), "email": email,
               "password": password_hash, "first_name": "", "last_name": "", "created": now()}
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError:
            raise UsernameTaken(username) from None
        return doc

    @guarded
    async def user_by_name(self, username: str) -> dict | None:
        """The account named username in any case; its exact spelling first (two
        accounts made before names ignored case may differ only in case)."""
        found = await self.users.find({"$or": [{"username": username},
                                                {"username_key": username_key(username)}]},
                                      limit=2).to_list(None)
        return next((d for d in found if d["username"] == username), found[0] if found else None)

    @guarded
    async def users_by_id(self, ids: list[str]) -> dict[str, dict]:
        object_ids = [ObjectId(i) for i in ids]
        found = await self.users.find({"_id": {"$in": object_ids}}).to_list(None)
        return {str(doc["_id"]): public_user(doc) for doc in found}

    # Tokens ------------------------------------------------------------

    @guarded
    async def add_token(self, token_id: str, user: dict, expires: datetime.datetime) -> None:
        await self.tokens.insert_one({"_id": token_id, "user_id": user["id"], "user": user,
                                      "expires": expires})

    @guarded
    async def token_user(self, token_id: str) -> dict | None:
        """The user a live token belongs to, or None when revoked or expired."""
        return live_token_user(await self.tokens.find_one({"_id": token_id}))

    @guarded
    async def take_token(self, token_id: str) -> dict | None:
        """Revoke a token and return its user, if it was live: one caller wins."""
        return live_token_user(await self.tokens.find_one_and_delete({"_id": token_id}))

    @guarded
    async def revoke_token(self, token_id: str) -> None:
        await self.tokens.delete_one({"_id": token_id})

    @guarded
    async def record_login_attempt(self, username: str, address: str) -> Any:
        """A login attempt before its password is checked: it counts as a failure
        from its address (`pending`) until settled or forgotten, so attempts made
        at once see each other. Its id."""
        result = await self.login_failures.insert_one(
            {"username": username_key(username), "address": address, "at": now(),
             "pending": True})
        return result.inserted_id

    @guarded
    async def settle_login_failure(self, attempt_id: Any) -> None:
        await self.login_failures.update_one({"_id": attempt_id}, {"$unset": {"pending": ""}})

    @guarded
    async def forget_login_attempt(self, attempt_id: Any) -> None:
        await self.login_failures.delete_one({"_id": attempt_id})

    @guarded
    async def login_failures_since(self, username: str, since: datetime.datetime) -> list[dict]:
        """The failed and pending logins ({_id, at, address, pending}) for
        username after since, oldest first."""
        return await self.login_failures.find(
            {"username": username_key(username), "at": {"$gt": since}},
            {"at": 1, "address": 1, "pending": 1}).sort("at", ASCENDING).to_list(None)

    @guarded
    async def clear_login_failures(self, username: str, attempt_id: Any) -> None:
        """After attempt_id logged in: its failures and itself, not the attempts
        still in flight (those that fail still count)."""
        await self.login_failures.delete_many(
            {"username": username_key(username),
             "$or": [{"pending": {"$exists": False}}, {"_id": attempt_id}]})

    # Rate limits ---------------------------------------------------------

    @guarded
    async def count_hit(self, key: str, expires: datetime.datetime, hits: int = 1) -> int:
        """Add hits to key's counter (which MongoDB drops after expires): its
        count now, over every process. One command."""
        def hit():
            return self.rate_counts.find_one_and_update(
                {"_id": key}, {"$inc": {"n": hits}, "$setOnInsert": {"expires": expires}},
                upsert=True, return_document=ReturnDocument.AFTER)
        try:
            doc = await hit()
        except DuplicateKeyError:  # two first hits raced to insert it; now it exists
            doc = await hit()
        return doc["n"]

    @guarded
    async def hit_count(self, key: str) -> int:
        doc = await self.rate_counts.find_one({"_id": key}, {"n": 1})
        return doc["n"] if doc else 0

    # Rooms -------------------------------------------------------------

    @guarded
    async def create_room(self, owner_id: str) -> dict:
        while True:
            moment = now()
            # updated is epoch seconds: some wire servers turn a datetime given
            # to $set into a string, which would break sorting by activity.
            doc = {"uri": new_room_uri(), "owner": owner_id, "members": [owner_id], "seq": 0,
                   "created": moment, "updated": moment.timestamp()}
            try:
                await self.rooms.insert_one(doc)
                self.remember_member(doc["uri"], owner_id, doc["_id"])
                return doc
            except DuplicateKeyError:
                continue  # 60 random bits collided: draw again

    @guarded
    async def room(self, uri: str) -> dict | None:
        return await self.rooms.find_one({"uri": uri})

    @guarded
    async def rooms_of(self, user_id: str, limit: int = 200) -> list[dict]:
        cursor = self.rooms.find({"members": user_id}).sort("updated", DESCENDING).limit(limit)
        return await cursor.to_list(None)

    # Membership. Conditions on fields a room may lack use $nin / $in [.., None]:
    # nx-27017 does not match a missing field with $ne in an update.

    @guarded
    async def add_member(self, uri: str, user_id: str, by_link: bool) -> tuple[dict, bool]:
        """Add user_id to the room: (the room after, True when they were not a
        member before). NotFound, Banned, or Forbidden when joining a locked
        room by link."""
        condition: dict[str, Any] = {"uri": uri, "members": {"$nin": [user_id]},
                                     "banned": {"$nin": [user_id]}}
        if by_link:
            condition["locked"] = {"$in": [False, None]}
        room = await self.rooms.find_one_and_update(
            condition, {"$addToSet": {"members": user_id}}, return_document=ReturnDocument.AFTER)
        joined = room is not None
        if room is None:
            room = await self.rooms.find_one({"uri": uri})
            if room is None:
                raise NotFound(uri)
            if user_id not in room["members"]:
                if user_id in room.get("banned", ()):
                    raise Banned(uri)
                raise Forbidden("This chat is locked: its owner or a moderator can add you.")
        self.remember_member(uri, user_id, room["_id"])
        return room, joined

    @guarded
    async def remove_member(self, uri: str, user_id: str, ban: bool = False) -> dict | None:
        """Take user_id out of the room's members (and roles), banning them too
        when `ban`: the room as it was before, or None when nothing changed."""
        update: dict[str, Any] = {"$pull": {"members": user_id},
                                  "$unset": {f"roles.{user_id}": ""}}
        if ban:
            condition = {"uri": uri, "banned": {"$nin": [user_id]}}
            # $push under that condition adds them once; nx-27017's $addToSet
            # does not create a missing array.
            update["$push"] = {"banned": user_id}
        else:
            condition = {"uri": uri, "members": user_id}
        self.forget_member(uri, user_id)
        return await self.rooms.find_one_and_update(condition, update)

    @guarded
    async def unban(self, uri: str, user_id: str) -> bool:
        result = await self.rooms.update_one({"uri": uri, "banned": user_id},
                                             {"$pull": {"banned": user_id}})
        return result.modified_count > 0

    @guarded
    async def set_role(self, uri: str, user_id: str, role: str) -> bool:
        """Make a member a moderator or a plain member; False when not a member."""
        update = ({"$set": {f"roles.{user_id}": role}} if role != "member"
                  else {"$unset": {f"roles.{user_id}": ""}})
        result = await self.rooms.update_one({"uri": uri, "members": user_id}, update)
        return result.matched_count > 0

    @guarded
    async def hand_over(self, uri: str, owner_id: str, user_id: str) -> bool:
        """Make member user_id the owner; the old owner stays on as a moderator."""
        result = await self.rooms.update_one(
            {"uri": uri, "owner": owner_id, "members": user_id},
            {"$set": {"owner": user_id, f"roles.{owner_id}": "moderator"},
             "$unset": {f"roles.{user_id}": ""}})
        return result.matched_count > 0

    @guarded
    async def set_locked(self, uri: str, locked: bool) -> None:
        # Unlocked is no field at all: nx-27017 stores a boolean given to $set
        # as 0 or 1, which a condition on false would not match.
        await self.rooms.update_one(
            {"uri": uri}, {"$set": {"locked": True}} if locked else {"$unset": {"locked": ""}})

    @guarded
    async def check_member(self, uri: str, user_id: str) -> None:
        """Raise NotFound or NotMember unless user_id may read and post in uri."""
        if not self.known_member(uri, user_id):
            await self.member_room(uri, user_id, {"_id": 1})

    async def member_room(self, uri: str, user_id: str, fields: dict[str, int]) -> dict:
        """The room (its _id and `fields`) if user_id is a member; else NotFound,
        Banned or NotMember."""
        forgotten = self.forgotten
        room = await self.rooms.find_one({"uri": uri, "members": user_id}, fields)
        if room is None:
            room = await self.rooms.find_one({"uri": uri}, {"banned": 1})
            if room is None:
                raise NotFound(uri)
            raise (Banned if user_id in room.get("banned", ()) else NotMember)(uri)
        if self.forgotten == forgotten:
            self.remember_member(uri, user_id, room["_id"])
        return room

    # Room events -----------------------------------------------------

    @guarded
    async def member_seq(self, uri: str, user_id: str) -> int | None:
        """Raise NotFound or NotMember unless user_id may post in uri. Returns
        the room's recorded seq when it had to be read, None for a known member."""
        if self.known_member(uri, user_id):
            return None
        room = await self.member_room(uri, user_id, {"seq": 1})
        return room.get("seq", 0)

    @guarded
    async def insert_events(self, docs: list[dict], deadline: float | None = None) -> list:
        """Insert one room's consecutive events in order: a result per event,
        None when stored, else SeqTaken, ClientIdTaken, NotAttempted (an earlier
        one failed) or another exception. What is stored is always a prefix."""
        return await self.event_inserts.submit(docs, deadline)

    async def insert_batches(self, batches: list[list[dict]]) -> list[list]:
        """One ordered insert command for the batches of several rooms.

        Ordered, so a room's events are stored as a prefix and never with a
        hole. When one event fails the command stops there: the rest of its
        room is reported NotAttempted (its sequencer renumbers them) and the
        rest of the other rooms is sent again at once.
        """
        results: list[list] = [[NotAttempted()] * len(batch) for batch in batches]
        todo = [(b, i) for b, batch in enumerate(batches) for i in range(len(batch))]
        first = True
        while todo:
            try:
                failure = await self.insert_ordered([batches[b][i] for b, i in todo])
            except Exception as error:
                if first:
                    raise  # nothing is stored
                for b, i in todo:  # what an earlier command stored stays reported stored
                    results[b][i] = error
                break
            first = False
            failed = len(todo) if failure is None else failure["index"]
            for b, i in todo[:failed]:
                results[b][i] = None
            if failure is None:
                break
            b, i = todo[failed]
            results[b][i] = write_error(batches[b][i], failure)
            room = batches[b][0]["room"]
            todo = [(b, i) for b, i in todo[failed + 1:] if batches[b][0]["room"] != room]
        return results

    async def insert_ordered(self, docs: list[dict]) -> dict | None:
        """Insert docs in order, stopping at the first failure; returns its writeError."""
        try:
            await self.messages.insert_many(docs, ordered=True)
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                # Not acknowledged as configured: it may vanish in a failover,
                # and its seq be given again. Not stored, as far as anyone knows.
                raise Unavailable(f"write concern not satisfied: "
                                  f"{error.details['writeConcernErrors']}") from error
            failures = error.details.get("writeErrors")
            if not failures:
                raise
            return failures[0]
        return None

    @guarded
    async def event_by_client_id(self, uri: str, user_id: str, client_id: str) -> dict | None:
        return await self.messages.find_one({"room": uri, "user_id": user_id,
                                             "client_id": client_id})

    @guarded
    async def touch_room(self, event: dict, deadline: float | None = None) -> None:
        """Record a new event on its room: the latest seq, and activity for sorting."""
        await self.room_touches.submit(
            (event["room"], event["seq"], event["created"].timestamp()), deadline)

    async def touch_rooms(self, touches: list[tuple[str, int, float]]) -> list[None]:
        """One update per room for the touches of a batch: the room's highest seq
        and latest activity."""
        latest: dict[str, tuple[int, float]] = {}
        for uri, seq, updated in touches:
            known = latest.get(uri)
            latest[uri] = (seq, updated) if known is None else (max(seq, known[0]),
                                                                max(updated, known[1]))
        await self.rooms.bulk_write(
            [UpdateOne({"_id": self.room_ids[uri]} if uri in self.room_ids else {"uri": uri},
                       {"$max": {"seq": seq}, "$set": {"updated": updated}})
             for uri, (seq, updated) in latest.items()], ordered=False)
        return [None] * len(touches)

    @guarded
    async def last_seq(self, uri: str) -> int:
        last = await self.messages.find_one({"room": uri}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return last["seq"] if last else 0

    @guarded
    async def messages_after(self, uri: str, after: int, limit: int,
                             events: bool = True) -> list[dict]:
        """The room's events after seq `after`, oldest first; its messages alone
        unless `events`."""
        query: dict[str, Any] = {"room": uri, "seq": {"$gt": after}}
        if not events:
            query["type"] = None
        cursor = self.messages.find(query)
        return await cursor.sort("seq", ASCENDING).limit(limit).to_list(None)

    @guarded
    async def messages_before(self, uri: str, before: int | None, limit: int,
                              events: bool = True) -> list[dict]:
        """The `limit` events just below `before` (the latest when None), oldest
        first; messages alone unless `events`."""
        query: dict[str, Any] = {"room": uri}
        if not events:
            query["type"] = None
        if before is not None:
            query["seq"] = {"$lt": before}
        cursor = self.messages.find(query).sort("seq", DESCENDING).limit(limit)
        docs = await cursor.to_list(None)
        docs.reverse()
        return docs


    # Read positions and the chat list ---------------------------------

    @guarded
    async def read_positions(self, uri: str) -> dict[str, int]:
        """{user id: last_read_seq} of the room's members who have read anything."""
        room = await self.rooms.find_one({"uri": uri}, {"last_read": 1})
        return dict(room.get("last_read") or {}) if room else {}

    @guarded
    async def save_read_positions(self, positions: dict[str, dict[str, int]]) -> None:
        """Raise (never lower) read positions, {uri: {user id: seq}}: one command, one
        update per room however many of its members read."""
        await self.rooms.bulk_write(
            [UpdateOne({"_id": self.room_ids[uri]} if uri in self.room_ids else {"uri": uri},
                       {"$max": {f"last_read.{user_id}": seq for user_id, seq in users.items()}})
             for uri, users in positions.items()], ordered=False)

    @guarded
    async def chat_list(self, user_id: str, known_reads: dict[str, int]) -> list[dict]:
        """My chats, newest activity first, each with its unread count, latest
        message and first few members: four commands however many chats.
        `known_reads` ({uri: seq}) are read positions not written yet."""
        rooms = await self.rooms_of(user_id)
        reads = {r["uri"]: max((r.get("last_read") or {}).get(user_id, 0),
                               known_reads.get(r["uri"], 0)) for r in rooms}
        unread = await self.unread_counts(user_id, reads)
        latest = await self.latest_messages({r["uri"]: r["seq"] for r in rooms})
        people = {r["uri"]: r["members"][:PREVIEW_MEMBERS] for r in rooms}
        names = await self.users_by_id(list({i for ids in people.values() for i in ids}))
        chats = []
        for room in rooms:
            uri, message = room["uri"], latest.get(room["uri"])
            chats.append({
                "uri": uri, "owner": room["owner"], "members": len(room["members"]),
                "seq": room["seq"], "updated": iso(room["updated"]),
                "last_seq": max(room["seq"], message["seq"] if message else 0),
                "last_read_seq": reads[uri], "unread": unread.get(uri, 0),
                "last_message": message and {
                    "id": str(message["_id"]), "seq": message["seq"], "user": message["user"],
                    "text": message["message"][:PREVIEW_CHARS], "created": iso(message["created"])},
                "people": [{"id": i, "username": names[i]["username"]}
                           for i in people[uri] if i in names],
            })
        return chats

    @guarded
    async def unread_counts(self, user_id: str, reads: dict[str, int]) -> dict[str, int]:
        """{uri: messages by others after the read position, not deleted}, capped at
        UNREAD_CAP, for many rooms in one command.

        Only the UNREAD_SCAN events after a read position are looked at, so a
        reader who is far behind costs a bounded scan; past the cap the count
        is all anyone is shown anyway.
        """
        if not reads:
            return {}
        branches = [{"room": uri, "seq": {"$gt": read, "$lte": read + UNREAD_SCAN}}
                    for uri, read in reads.items()]
        cursor = await self.messages.aggregate([
            {"$match": {"$or": branches, "user_id": {"$ne": user_id}, **VISIBLE_MESSAGE}},
            {"$group": {"_id": "$room", "unread": {"$sum": 1}}},
        ])
        return {doc["_id"]: min(doc["unread"], UNREAD_CAP) async for doc in cursor}

    @guarded
    async def latest_messages(self, last_seqs: dict[str, int]) -> dict[str, dict]:
        """{uri: the room's latest message that is not deleted}, given each room's
        last seq: one command for the last LATEST_SCAN events of every room, then
        one per room whose window holds no message (a run of other events)."""
        if not last_seqs:
            return {}
        branches = [{"room": uri, "seq": {"$gt": last - LATEST_SCAN}}
                    for uri, last in last_seqs.items()]
        cursor = await self.messages.aggregate([
            {"$match": {"$or": branches, **VISIBLE_MESSAGE}},
            {"$sort": {"seq": DESCENDING}},
            {"$group": {"_id": "$room", "latest": {"$first": "$$ROOT"}}},
        ])
        latest = {doc["_id"]: doc["latest"] async for doc in cursor}
        for uri, last in last_seqs.items():
            if uri not in latest and last > LATEST_SCAN:
                found = await self.messages.find_one({"room": uri, **VISIBLE_MESSAGE},
                                                     sort=[("seq", DESCENDING)])
                if found is not None:
                    latest[uri] = found
        return latest

    # A message's state: the fold of its events --------------------------

    @guarded
    async def message_by_id(self, uri: str, message_id: str) -> dict | None:
        """The message (not another kind of event) with this id in this room."""
        try:
            object_id = ObjectId(message_id)
        except (InvalidId, TypeError):
            return None
        return await self.messages.find_one({"_id": object_id, "room": uri, "type": None})

    @guarded
    async def message_at(self, uri: str, seq: int) -> dict | None:
        return await self.messages.find_one({"room": uri, "seq": seq, "type": None})

    @guarded
    async def events_about(self, uri: str, target_seq: int, after: int) -> list[dict]:
        """The events about the message at target_seq after seq `after`, in order."""
        cursor = self.messages.find({"room": uri, "target_seq": target_seq, "seq": {"$gt": after}})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def unsaved_events(self, messages: list[dict]) -> list[dict]:
        """The events about these messages (of one room) that their saved state
        may not include yet, in seq order."""
        cursor = self.messages.find({"room": messages[0]["room"], "$or": [
            {"target_seq": m["seq"], "seq": {"$gt": m.get("last_event_seq", m["seq"])}}
            for m in messages]})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def count_change(self, message: dict, step: int) -> None:
        """Count a change to the message as begun (1) or saved (-1)."""
        await self.messages.update_one({"_id": message["_id"]}, {"$inc": {"changing": step}})

    @guarded
    async def save_message_state(self, message: dict, state: dict, saves_change: bool) -> bool:
        """Write a message's new state if it is still as read (same last_event_seq),
        counting one change as saved when `saves_change`: False when another
        writer moved it on first."""
        last = message.get("last_event_seq", message["seq"])
        seen = [last, None] if last == message["seq"] else [last]
        update: dict[str, Any] = {"$set": state}
        if saves_change:
            update["$inc"] = {"changing": -1}
        result = await self.messages.update_one(
            {"_id": message["_id"], "last_event_seq": {"$in": seen}}, update)
        return result.matched_count > 0

    @guarded
    async def erase_edits(self, uri: str, target_seq: int) -> None:
        """Remove the text of every edit of a deleted message."""
        await self.messages.update_many(
            {"room": uri, "target_seq": target_seq, "type": "edit", "message": {"$exists": True}},
            {"$unset": {"message": ""}})
