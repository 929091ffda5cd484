"""Rooms: their documents, membership (and the process's cache of it), read
positions and the chat list."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from chat.store.base import (
    Banned,
    Forbidden,
    GroupCommit,
    NotFound,
    NotMember,
    guarded,
    iso,
    now,
    remember,
)
from chat.store.notifications import default_level

KNOWN_MEMBERS = 100_000
# How long a membership found in MongoDB is believed without reading it again:
# a bound on what a lost "expel" notice could cost (the hub forgets them all
# after a broker outage, when notices are known to have been lost).
MEMBER_RECHECK_SECONDS = 300.0
KNOWN_ROOMS = 100_000
# Unread counts stop here (the page shows "999+"), and look at most this many
# events after a read position.
UNREAD_CAP = 999
UNREAD_SCAN = 10 * UNREAD_CAP
# How many of a room's last events the chat list looks through for its latest
# message; for the rooms where none is, how many more before those (one
# command for all of them: a bounded cost whatever the logs hold).
LATEST_SCAN = 50
LATEST_DEEP_SCAN = 2000
# Chats per page of the chat list (its first page is the user stream's snapshot too).
CHAT_PAGE = 200
# The chat list shows this much of each chat's latest message, and this many
# of its members (to name it).
PREVIEW_CHARS = 100
PREVIEW_MEMBERS = 4
# A message that is shown: not another kind of room event, not deleted.
VISIBLE_MESSAGE = {"type": {"$in": [None, "message"]}, "deleted": {"$ne": True}}


def ranked(condition: dict, rank: dict) -> dict:
    """condition and rank (an $or): under $and, because nx-27017's updates
    with a top-level $or ignore the filter's other fields (and change another
    room)."""
    return {"$and": [condition, rank]}


def moderates(by_id: str) -> dict:
    """A filter: by_id is the room's owner or one of its moderators."""
    return {"$or": [{"owner": by_id}, {"members": by_id, f"roles.{by_id}": "moderator"}]}


def outranks(by_id: str, user_id: str) -> dict:
    """A filter: by_id may act on user_id. The owner acts on anyone (but
    themself); a moderator on plain members only."""
    return {"$or": [{"owner": by_id},
                    {"members": by_id, f"roles.{by_id}": "moderator",
                     "owner": {"$nin": [user_id]}, f"roles.{user_id}": {"$nin": ["moderator"]}}]}


def dm_key(user_id: str, other_id: str) -> str:
    """A pair's DM key: their ids, sorted (one room for yourself: your notes)."""
    return ":".join(sorted((user_id, other_id)))


def parse_cursor(cursor: str | None) -> tuple[float, ObjectId] | None:
    """A chat list cursor ("<updated>_<room _id>", as chat_list gives it); the
    edge checks its form."""
    if cursor is None:
        return None
    updated, room_id = cursor.split("_")
    return float(updated), ObjectId(room_id)


def new_room_uri() -> str:
    return secrets.token_hex(8)[:15]


class Rooms:
    """The rooms collection, and which memberships this process believes."""

    def init_rooms(self) -> None:
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
        self.room_touches = GroupCommit(self.touch_rooms, self.timeout)
        # Whether this process follows uri's events as they are stored (the hub
        # sets it): a cached membership is believed only then, since the event
        # that ends it is what drops it everywhere.
        self.following: Callable[[str], bool] = lambda _uri: True

    async def ensure_room_indexes(self) -> None:
        await self.rooms.create_index("uri", unique=True, name="uri")
        await self.rooms.create_index([("members", ASCENDING), ("updated", DESCENDING)],
                                      name="members_updated")
        # The one direct-message room of a pair of users ("<id>:<id>", sorted).
        await self.rooms.create_index("dm", unique=True, name="dm",
                                      partialFilterExpression={"dm": {"$type": "string"}})

    def remember_member(self, uri: str, user_id: str, room_id: ObjectId | None = None) -> None:
        until = asyncio.get_running_loop().time() + self.member_recheck
        remember(self.known_members, (uri, user_id), until, KNOWN_MEMBERS)
        if room_id is not None:
            remember(self.room_ids, uri, room_id, KNOWN_ROOMS)

    def known_member(self, uri: str, user_id: str) -> bool:
        until = self.known_members.get((uri, user_id))
        return (until is not None and until > asyncio.get_running_loop().time()
                and self.following(uri))

    def forget_member(self, uri: str, user_id: str) -> None:
        self.forgotten += 1
        self.known_members.pop((uri, user_id), None)

    def forget_members(self) -> None:
        """Believe no membership without reading it again."""
        self.forgotten += 1
        self.known_members.clear()

    @guarded
    async def create_room(self, owner_id: str, name: str | None = None,
                          topic: str | None = None) -> dict:
        fields: dict[str, Any] = {"kind": "room", "owner": owner_id, "members": [owner_id]}
        if name:
            fields["name"] = name
        if topic:
            fields["topic"] = topic
        return await self.insert_room(fields)

    async def insert_room(self, fields: dict[str, Any]) -> dict:
        """A new room of `fields` under a fresh uri."""
        while True:
            try:
                return await self.try_insert_room(fields)
            except DuplicateKeyError:
                continue  # 60 random bits collided: draw again

    async def try_insert_room(self, fields: dict[str, Any]) -> dict:
        moment = now()
        # updated is epoch seconds: nx-27017 turns a datetime given to $set
        # into a string (MongoDB keeps a date), which would break sorting by activity.
        doc = {"uri": new_room_uri(), **fields, "seq": 0, "created": moment,
               "updated": moment.timestamp()}
        await self.rooms.insert_one(doc)
        for member in doc["members"]:
            self.remember_member(doc["uri"], member, doc["_id"])
        return doc

    @guarded
    async def dm_room(self, user_id: str, other_id: str) -> tuple[dict, bool]:
        """The direct-message room of the two users (one room for yourself: your
        notes), made on the first call: (room, True when made now). Concurrent
        first calls from both sides make one room: the pair is a unique key."""
        pair = sorted({user_id, other_id})
        key = dm_key(user_id, other_id)
        while True:
            room = await self.rooms.find_one({"dm": key})
            if room is not None:
                return room, False
            try:
                return await self.try_insert_room({"kind": "dm", "dm": key, "dm_users": pair,
                                                   "owner": None, "members": pair}), True
            except DuplicateKeyError:
                continue  # the other side made it first (or the uri collided): read it

    @guarded
    async def find_dm(self, user_id: str, other_id: str) -> dict | None:
        return await self.rooms.find_one({"dm": dm_key(user_id, other_id)}, {"uri": 1})

    @guarded
    async def rejoin_dm(self, uri: str, user_id: str) -> dict | None:
        """Put a member of the DM's pair who left back in it: the room after, or
        None when they were in it already."""
        room = await self.rooms.find_one_and_update(
            {"uri": uri, "dm_users": user_id, "members": {"$nin": [user_id]}},
            {"$addToSet": {"members": user_id}}, return_document=ReturnDocument.AFTER)
        if room is not None:
            self.remember_member(uri, user_id, room["_id"])
        return room

    @guarded
    async def set_room_info(self, uri: str, info: dict[str, str]) -> None:
        """Set a room's name and/or topic (an empty topic is none)."""
        update: dict[str, Any] = {}
        for key, value in info.items():
            update.setdefault("$set" if value else "$unset", {})[key] = value or ""
        await self.rooms.update_one({"uri": uri}, update)

    @guarded
    async def room_people(self, uri: str) -> dict | None:
        """What a post needs to know of its room: members, owner, roles, kind."""
        return await self.rooms.find_one(
            {"uri": uri}, {"members": 1, "owner": 1, "roles": 1, "kind": 1, "dm_users": 1,
                           "levels": 1})

    @guarded
    async def room(self, uri: str) -> dict | None:
        return await self.rooms.find_one({"uri": uri})

    @guarded
    async def rooms_of(self, user_id: str, limit: int = CHAT_PAGE,
                       before: tuple[float, ObjectId] | None = None,
                       uri: str | None = None) -> list[dict]:
        """user_id's rooms, latest activity first (then _id, so that a page ends
        between two rooms whatever their times), after the cursor `before`;
        `uri`: that room alone, if theirs."""
        query: dict[str, Any] = {"members": user_id}
        if uri is not None:
            query["uri"] = uri
        if before is not None:
            updated, room_id = before
            query["$or"] = [{"updated": {"$lt": updated}},
                            {"updated": updated, "_id": {"$lt": room_id}}]
        cursor = self.rooms.find(query).sort([("updated", DESCENDING), ("_id", DESCENDING)])
        # One batch: a page is one command, not a find and its getMore.
        return await cursor.limit(limit).batch_size(limit + 1).to_list(None)

    @guarded
    async def member_uris(self, user_id: str) -> list[str]:
        """Every room user_id is a member of (uris only): one command."""
        cursor = self.rooms.find({"members": user_id}, {"uri": 1, "_id": 0})
        return [doc["uri"] async for doc in cursor]

    # Membership. Conditions on fields a room may lack use $nin / $in [.., None]:
    # nx-27017 does not match a missing field with $ne in an update.

    @guarded
    async def add_member(self, uri: str, user_id: str, by_id: str | None = None) -> tuple[dict, bool]:
        """Add user_id to the room: (the room after, True when they were not a
        member before); by the room's link when `by_id` is None, else by that
        owner or moderator. NotFound, Banned, or Forbidden when joining a
        locked room by link or when by_id moderates the room no more."""
        condition: dict[str, Any] = {"uri": uri, "members": {"$nin": [user_id]},
                                     "banned": {"$nin": [user_id]}, "kind": {"$nin": ["dm"]}}
        if by_id is None:
            condition["locked"] = {"$in": [False, None]}
        else:
            condition = ranked(condition, moderates(by_id))
        forgotten = self.forgotten
        room = await self.rooms.find_one_and_update(
            condition, {"$addToSet": {"members": user_id}}, return_document=ReturnDocument.AFTER)
        joined = room is not None
        if room is None:
            room = await self.rooms.find_one({"uri": uri})
            if room is None:
                raise NotFound(uri)
            if user_id not in room["members"]:
                if room.get("kind") == "dm":
                    raise Forbidden("Nobody joins a direct message: it is between its two people.")
                if user_id in room.get("banned", ()):
                    raise Banned(uri)
                if by_id is not None:
                    raise Forbidden("Only the chat's owner and moderators can add members.")
                raise Forbidden("This chat is locked: its owner or a moderator can add you.")
        if self.forgotten == forgotten:  # a ban or removal since may have undone it
            self.remember_member(uri, user_id, room["_id"])
        return room, joined

    # Permission changes: each re-checks, in its update's filter, the ranks that
    # allowed it, so a change that raced another (a hand-over, a ban, a
    # demotion) matches nothing rather than undoing it. None / False: nothing
    # matched, and the caller reads the room again to say why.

    @guarded
    async def remove_member(self, uri: str, user_id: str, by_id: str | None = None,
                            ban: bool = False) -> dict | None:
        """Take user_id out of the room's members (and roles), banning them too
        when `ban`: the room as it was before, or None when nothing changed.
        `by_id` acts on them (outranking them: see `outranks`); None is
        user_id leaving. The owner is never taken out."""
        update: dict[str, Any] = {"$pull": {"members": user_id},
                                  "$unset": {f"roles.{user_id}": ""}}
        condition: dict[str, Any] = {"uri": uri, "owner": {"$nin": [user_id]}}
        if ban:
            condition["banned"] = {"$nin": [user_id]}
            # $push under that condition adds them once; nx-27017's $addToSet
            # does not create a missing array.
            update["$push"] = {"banned": user_id}
        else:
            condition["members"] = user_id
        if by_id is not None:
            condition = ranked(condition, outranks(by_id, user_id))
        self.forget_member(uri, user_id)
        return await self.rooms.find_one_and_update(condition, update)

    @guarded
    async def unban(self, uri: str, by_id: str, user_id: str) -> bool:
        result = await self.rooms.update_one(ranked({"uri": uri, "banned": user_id},
                                                                    moderates(by_id)),
                                             {"$pull": {"banned": user_id}})
        return result.modified_count > 0

    @guarded
    async def set_role(self, uri: str, owner_id: str, user_id: str, role: str) -> bool:
        """The owner makes a member (not themself: the caller checks) a moderator
        or a plain member."""
        update = ({"$set": {f"roles.{user_id}": role}} if role != "member"
                  else {"$unset": {f"roles.{user_id}": ""}})
        result = await self.rooms.update_one(
            {"uri": uri, "owner": owner_id, "members": user_id}, update)
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
    async def abandon_room(self, uri: str, owner_id: str) -> None:
        """A deleted account's room with nobody else in it: no owner (its owner
        then leaves it as anyone does)."""
        await self.rooms.update_one({"uri": uri, "owner": owner_id}, {"$set": {"owner": None}})

    @guarded
    async def set_locked(self, uri: str, by_id: str, locked: bool) -> bool:
        # Unlocked is no field at all: nx-27017 stores a boolean given to $set
        # as 0 or 1, which a condition on false would not match.
        result = await self.rooms.update_one(
            ranked({"uri": uri}, moderates(by_id)),
            {"$set": {"locked": True}} if locked else {"$unset": {"locked": ""}})
        return result.matched_count > 0

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


    @guarded
    async def member_seq(self, uri: str, user_id: str) -> int | None:
        """Raise NotFound or NotMember unless user_id may post in uri. Returns
        the room's recorded seq when it had to be read, None for a known member."""
        if self.known_member(uri, user_id):
            return None
        room = await self.member_room(uri, user_id, {"seq": 1})
        return room.get("seq", 0)


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
    async def chat_list(self, user_id: str, known_reads: dict[str, int], *,
                        current: Callable[[list[dict]], Awaitable[list[dict]]],
                        username: str = "", before: str | None = None, limit: int = CHAT_PAGE,
                        uri: str | None = None) -> tuple[list[dict], bool]:
        """A page of my chats, newest activity first, each with its unread
        count (and of those, how many mention `username` or the room), latest
        message and first few members, and whether more follow (each chat's
        `cursor` is the `before` of the page after it): at most six commands
        however many chats and whatever their logs hold.
        `known_reads` ({uri: seq}) are read positions not written yet;
        `current` folds in the changes in flight of messages (RoomEvents.current);
        `uri`: that chat's entry alone (none when not a member)."""
        rooms = await self.rooms_of(user_id, limit + 1, parse_cursor(before), uri)
        more = len(rooms) > limit
        rooms = rooms[:limit]
        reads = {r["uri"]: max((r.get("last_read") or {}).get(user_id, 0),
                               known_reads.get(r["uri"], 0)) for r in rooms}
        unread = await self.unread_counts(user_id, reads, username)
        latest = await self.latest_messages({r["uri"]: r["seq"] for r in rooms})
        # What a delete or edit in flight (or left by a dead process) made of
        # them: a deleted text is never a preview.
        latest = {doc["room"]: doc for doc in await current(list(latest.values()))
                  if not doc.get("deleted")}
        people = {r["uri"]: r["members"][:PREVIEW_MEMBERS] for r in rooms}
        # A DM is named after the other of its pair, who may have left it.
        others = {r["uri"]: next((i for i in r["dm_users"] if i != user_id), user_id)
                  for r in rooms if r.get("kind") == "dm"}
        names = await self.users_by_id(list({i for ids in people.values() for i in ids}
                                            | set(others.values())))
        chats = []
        for room in rooms:
            uri, message = room["uri"], latest.get(room["uri"])
            counts = unread.get(uri, (0, 0))
            chats.append({
                "uri": uri, "cursor": f"{room['updated']!r}_{room['_id']}",
                "kind": room.get("kind", "room"), "owner": room["owner"],
                "name": room.get("name"), "topic": room.get("topic", ""),
                "members": len(room["members"]),
                "seq": room["seq"], "updated": iso(room["updated"]),
                "last_seq": max(room["seq"], message["seq"] if message else 0),
                "last_read_seq": reads[uri], "unread": counts[0], "mentions": counts[1],
                "notifications": (room.get("levels") or {}).get(user_id)
                or default_level(room.get("kind", "room")),
                "last_message": message and {
                    "id": str(message["_id"]), "seq": message["seq"], "user": message["user"],
                    "text": message["message"][:PREVIEW_CHARS], "created": iso(message["created"])},
                "people": [{"id": i, "username": names[i]["username"]}
                           for i in people[uri] if i in names],
            })
            if uri in others and others[uri] in names:
                other = names[others[uri]]
                chats[-1]["other"] = {"id": other["id"], "username": other["username"]}
        return chats, more

    @guarded
    async def unread_counts(self, user_id: str, reads: dict[str, int],
                            username: str = "") -> dict[str, tuple[int, int]]:
        """{uri: (messages by others after the read position, not deleted; those
        of them that mention `username` or the room)}, capped at UNREAD_CAP,
        for many rooms in one command.

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
            {"$group": {"_id": "$room", "unread": {"$sum": 1}, "mentions": {"$sum": {"$cond": [
                {"$or": [{"$eq": ["$mentions_room", True]},
                         {"$in": [username, {"$ifNull": ["$mentions", []]}]}]}, 1, 0]}}}},
        ], batchSize=len(reads) + 1)  # a batch filled exactly leaves the cursor open
        return {doc["_id"]: (min(doc["unread"], UNREAD_CAP), min(doc["mentions"], UNREAD_CAP))
                async for doc in cursor}

    @guarded
    async def latest_messages(self, last_seqs: dict[str, int]) -> dict[str, dict]:
        """{uri: the room's latest message that is not deleted}, given each room's
        last seq: one command for the last LATEST_SCAN events of every room, then
        one for the LATEST_DEEP_SCAN before those of the rooms whose window held
        no message (a run of other events); further back, no preview."""
        latest = await self.latest_in(
            {uri: (last - LATEST_SCAN, last) for uri, last in last_seqs.items()})
        deeper = {uri: (last - LATEST_SCAN - LATEST_DEEP_SCAN, last - LATEST_SCAN)
                  for uri, last in last_seqs.items() if uri not in latest and last > LATEST_SCAN}
        return {**latest, **await self.latest_in(deeper)}

    async def latest_in(self, windows: dict[str, tuple[int, int]]) -> dict[str, dict]:
        """{uri: the latest visible message with a seq in (low, high]}, in one command."""
        if not windows:
            return {}
        branches = [{"room": uri, "seq": {"$gt": low, "$lte": high}}
                    for uri, (low, high) in windows.items()]
        cursor = await self.messages.aggregate([
            {"$match": {"$or": branches, **VISIBLE_MESSAGE}},
            {"$sort": {"seq": DESCENDING}},
            {"$group": {"_id": "$room", "latest": {"$first": "$$ROOT"}}},
        ], batchSize=len(windows) + 1)
        return {doc["_id"]: doc["latest"] async for doc in cursor}

