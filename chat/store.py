"""MongoDB: users, tokens, rooms and messages. The only module that imports pymongo.

Every public coroutine raises `Unavailable` when MongoDB cannot be reached in
time, so the edge can answer 503 without knowing about pymongo.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, UpdateOne
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

UNREACHABLE = (AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout,
               ServerSelectionTimeoutError, WTimeoutError)

# Failed logins older than this are never counted (the window is at most a day).
LOGIN_FAILURE_TTL = 24 * 3600
KNOWN_MEMBERS = 100_000
KNOWN_ROOMS = 100_000
# How many times a post retries after losing the race for a seq to another post.
SEQ_ATTEMPTS = 100
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


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def guarded(method):
    @functools.wraps(method)
    async def call(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except UNREACHABLE as exc:
            raise Unavailable(str(exc)) from exc
    return call


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
    return message


def new_room_uri() -> str:
    return secrets.token_hex(8)[:15]


class GroupCommit:
    """Writes that arrive while one is in flight go out together, as one command.

    Alone, a write is sent at once; under load, the writes of many posts share
    one round trip, and pymongo's and the server's cost per command is paid
    once for all of them. `send` gets the items and returns one result per
    item, an exception instance for an item that failed on its own; an
    exception it raises fails the whole batch.
    """

    def __init__(self, send: Callable[[list], Awaitable[list]]):
        self.send = send
        self.queue: list[tuple[Any, asyncio.Future]] = []
        self.flushing: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((item, future))
        if self.flushing is None:
            self.flushing = asyncio.create_task(self.flush())
        return await future

    async def flush(self) -> None:
        batch: list[tuple[Any, asyncio.Future]] = []
        try:
            while self.queue:
                batch = self.queue[:GROUP_COMMIT_MAX]
                del self.queue[:GROUP_COMMIT_MAX]
                try:
                    results = await self.send([item for item, _ in batch])
                except Exception as error:
                    # What waited meanwhile fails too, rather than wait out
                    # another timeout of a server that did not answer.
                    batch += self.queue
                    self.queue.clear()
                    results = [error] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.flushing = None
            for _, future in batch:  # cancelled mid-command: the loop is stopping
                future.cancel()


def remember(recent: collections.OrderedDict, key: Any, value: Any, limit: int) -> None:
    """Keep key as the newest entry of recent, forgetting the oldest past limit."""
    recent[key] = value
    recent.move_to_end(key)
    if len(recent) > limit:
        recent.popitem(last=False)


class Store:
    def __init__(self, url: str, database: str, timeout_ms: int = 2500):
        self.client = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
            appname="chat-server",
        )
        db = self.client[database]
        self.users = db.users
        self.tokens = db.tokens
        self.login_failures = db.login_failures
        self.rooms = db.rooms
        self.messages = db.messages
        # (room, user) pairs known to be members. Nobody ever leaves a room, so
        # a yes stays true; the oldest are forgotten past KNOWN_MEMBERS.
        self.known_members: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        # uri -> _id of rooms read lately. A room's update goes by _id when it is
        # known: the cheapest lookup on any server, and some wire servers
        # (nx-27017) scan the collection for an update by a secondary key.
        self.room_ids: collections.OrderedDict[str, ObjectId] = collections.OrderedDict()
        self.message_inserts = GroupCommit(self.insert_messages)
        self.room_touches = GroupCommit(self.touch_rooms)

    def remember_member(self, uri: str, user_id: str, room_id: ObjectId | None = None) -> None:
        remember(self.known_members, (uri, user_id), None, KNOWN_MEMBERS)
        if room_id is not None:
            remember(self.room_ids, uri, room_id, KNOWN_ROOMS)

    @guarded
    async def ensure_indexes(self) -> None:
        await self.users.create_index("username", unique=True, name="username")
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

    @guarded
    async def create_user(self, username: str, email: str, password_hash: bytes) -> dict:
        doc = {"username": username, "email": email, "password": password_hash,
               "first_name": "", "last_name": "", "created": now()}
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError:
            raise UsernameTaken(username) from None
        return doc

    @guarded
    async def user_by_name(self, username: str) -> dict | None:
        return await self.users.find_one({"username": username})

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
        doc = await self.tokens.find_one({"_id": token_id})
        if doc is None or doc["expires"] <= now():
            return None
        return doc["user"]

    @guarded
    async def revoke_token(self, token_id: str) -> None:
        await self.tokens.delete_one({"_id": token_id})

    @guarded
    async def record_login_failure(self, username: str) -> None:
        await self.login_failures.insert_one({"username": username, "at": now()})

    @guarded
    async def login_failures_since(self, username: str, since: datetime.datetime) -> list:
        """Times of the failed logins for username after since, oldest first."""
        docs = await self.login_failures.find(
            {"username": username, "at": {"$gt": since}}).sort("at", ASCENDING).to_list(None)
        return [doc["at"] for doc in docs]

    @guarded
    async def clear_login_failures(self, username: str) -> None:
        await self.login_failures.delete_many({"username": username})

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

    @guarded
    async def add_member(self, uri: str, user_id: str) -> dict | None:
        await self.rooms.update_one({"uri": uri}, {"$addToSet": {"members": user_id}})
        return await self.rooms.find_one({"uri": uri})

    @guarded
    async def check_member(self, uri: str, user_id: str) -> None:
        """Raise NotFound or NotMember unless user_id may read and post in uri."""
        if (uri, user_id) not in self.known_members:
            await self.member_room(uri, user_id, {"_id": 1})

    async def member_room(self, uri: str, user_id: str, fields: dict[str, int]) -> dict:
        """The room (its _id and `fields`) if user_id is a member; else NotFound or NotMember."""
        room = await self.rooms.find_one({"uri": uri, "members": user_id}, fields)
        if room is None:
            if await self.rooms.find_one({"uri": uri}, {"_id": 1}) is None:
                raise NotFound(uri)
            raise NotMember(uri)
        self.remember_member(uri, user_id, room["_id"])
        return room

    # Messages ----------------------------------------------------------

    @guarded
    async def post_message(self, uri: str, user: dict, text: str, client_id: str | None = None,
                           seq_hint: int | None = None) -> tuple[dict, bool]:
        """Store a message at the room's next seq: (message, True when new).
        The caller then publishes it and calls touch_room.

        The message is inserted at last seq + 1 and the unique (room, seq)
        index decides races, so a seq exists only once every smaller one
        does: gap-free even when a process dies mid-post, and a reader that
        sees seq N in MongoDB also sees every seq below it. A repeated
        client_id hits its unique index and returns the stored message.

        `seq_hint` (the last seq this process delivered in the room) lets a
        known member post with no read before the insert.
        """
        if seq_hint is None or (uri, user["id"]) not in self.known_members:
            room = await self.member_room(uri, user["id"], {"seq": 1})
            seq_hint = max(room["seq"], seq_hint or 0)
        seq = seq_hint + 1
        for _ in range(SEQ_ATTEMPTS):
            doc = {"room": uri, "seq": seq, "user_id": user["id"], "user": user,
                   "message": text, "created": now()}
            if client_id:
                doc["client_id"] = client_id
            try:
                await self.message_inserts.submit(doc)
                break
            except DuplicateKeyError:
                if client_id:
                    stored = await self.messages.find_one(
                        {"room": uri, "user_id": user["id"], "client_id": client_id})
                    if stored is not None:
                        return stored, False
                seq = await self.last_seq(uri) + 1
        else:
            raise Unavailable(f"room {uri} is too busy: no free seq after {SEQ_ATTEMPTS} tries")
        return doc, True

    async def insert_messages(self, docs: list[dict]) -> list[Exception | None]:
        """One insert command for posts to any rooms; unordered, so a post that
        loses its seq (or repeats its client_id) fails alone."""
        try:
            await self.messages.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            results: list[Exception | None] = [None] * len(docs)
            for failure in error.details.get("writeErrors", []):
                kind = DuplicateKeyError if failure.get("code") == 11000 else OperationFailure
                results[failure["index"]] = kind(failure.get("errmsg", ""), failure.get("code"),
                                                 failure)
            return results
        return [None] * len(docs)

    @guarded
    async def touch_room(self, message: dict) -> None:
        """Record a new message on its room: the latest seq, and activity for sorting."""
        await self.room_touches.submit(
            (message["room"], message["seq"], message["created"].timestamp()))

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
    async def messages_after(self, uri: str, after: int, limit: int) -> list[dict]:
        cursor = self.messages.find({"room": uri, "seq": {"$gt": after}})
        return await cursor.sort("seq", ASCENDING).limit(limit).to_list(None)

    @guarded
    async def messages_before(self, uri: str, before: int | None, limit: int) -> list[dict]:
        """The `limit` messages just below `before` (the latest when None), oldest first."""
        query: dict[str, Any] = {"room": uri}
        if before is not None:
            query["seq"] = {"$lt": before}
        cursor = self.messages.find(query).sort("seq", DESCENDING).limit(limit)
        docs = await cursor.to_list(None)
        docs.reverse()
        return docs

