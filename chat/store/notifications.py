"""Reaching people who are away: notification levels (on the room document),
pending pushes and emails (`notifications`), devices (`push_subscriptions`)
and the server's VAPID key (`server_keys`).

A pending notification is one document per (kind, user, room, seq): inserting
it twice is a no-op, so any number of processes may schedule the same one.
Whichever process claims it first holds a lease (`find_one_and_update`); one
that dies holding it leaves it to another once the lease ends. Times (due,
lease, done) are Unix seconds: nx-27017 stores a datetime given to $set as a
string, which would not compare.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from chat.store.base import eq, guarded, now

LEVELS = ("all", "mentions", "none")


def default_level(kind: str) -> str:
    """DMs notify of everything, rooms of mentions (Slack's and Campfire's defaults)."""
    return "all" if kind == "dm" else "mentions"


class Notifications:
    async def ensure_notification_indexes(self) -> None:
        await self.notifications.create_index(
            [("kind", ASCENDING), ("user_id", ASCENDING), ("uri", ASCENDING), ("seq", ASCENDING)],
            unique=True, name="once")
        await self.notifications.create_index([("state", ASCENDING), ("due", ASCENDING)],
                                              name="due")
        await self.push_subscriptions.create_index("endpoint", unique=True, name="endpoint")
        await self.push_subscriptions.create_index("user_id", name="user")

    # Levels ------------------------------------------------------------

    @guarded
    async def set_level(self, uri: str, user_id: str, level: str) -> dict | None:
        """Store user_id's level in the room (a member's); the room, or None when not a member."""
        return await self.rooms.find_one_and_update(
            {"uri": uri, "members": user_id}, {"$set": {f"levels.{user_id}": level}},
            projection={"uri": 1, "kind": 1}, return_document=ReturnDocument.AFTER)

    @guarded
    async def notice_room(self, uri: str, user_id: str) -> dict | None:
        """What a push or email to user_id says of the room: its name and kind, and
        `email_off` true when they unsubscribed; not its members, levels or reads."""
        # An expression, not a dotted projection: nx-27017 answers those with the
        # dotted name as a key where MongoDB nests it.
        return await self.rooms.find_one({"uri": uri}, {"name": 1, "kind": 1,
                                                        "email_off": f"$email_off.{user_id}"})

    @guarded
    async def read_position(self, uri: str, user_id: str) -> int:
        """user_id's stored last_read_seq in the room (0: none): not everyone's."""
        room = await self.rooms.find_one({"uri": uri}, {"seq": f"$last_read.{user_id}"})
        return (room or {}).get("seq", 0)

    # Pending pushes and emails -----------------------------------------

    @guarded
    async def schedule(self, pending: list[dict[str, Any]]) -> None:
        """Insert pending notifications; those already there are kept as they are."""
        try:
            await self.notifications.insert_many(pending, ordered=False)
        except BulkWriteError as error:
            if any(e.get("code") != 11000 for e in error.details.get("writeErrors", ())):
                raise

    @guarded
    async def schedule_one(self, doc: dict[str, Any]) -> bool:
        try:
            await self.notifications.insert_one(doc)
            return True
        except DuplicateKeyError:
            return False

    @guarded
    async def claim(self, lease_seconds: float) -> dict | None:
        """The next due notification nobody holds, leased to the caller; None when none is due.

        A lease moves `due` to its end too: a held notification is not due
        until its holder finished or died, so the filter needs no $or on the
        lease (nx-27017 evaluates an $or over every document)."""
        moment = time.time()
        return await self.notifications.find_one_and_update(
            {"state": eq("pending"), "due": {"$lte": moment}},
            {"$set": {"lease": moment + lease_seconds, "due": moment + lease_seconds},
             "$inc": {"attempts": 1}},
            sort=[("due", ASCENDING)], return_document=ReturnDocument.AFTER)

    @guarded
    async def finish(self, doc: dict, state: str, **fields: Any) -> None:
        """Close a claimed notification: sent, skipped (read, or seen) or failed."""
        await self.notifications.update_one(
            {"_id": doc["_id"]}, {"$set": {"state": state, "lease": None, "done": time.time(), **fields}})

    @guarded
    async def retry_later(self, doc: dict, due: float) -> None:
        await self.notifications.update_one({"_id": doc["_id"]},
                                            {"$set": {"due": due, "lease": None}})

    @guarded
    async def lock_emails(self, uri: str, user_id: str, lease_seconds: float) -> bool:
        """Hold the right to email user_id about the room (one process at a time,
        so the messages waiting go out in one email); False when another holds it."""
        moment = time.time()
        key = {"kind": "email-lock", "user_id": user_id, "uri": uri, "seq": 0}
        try:
            await self.notifications.insert_one({**key, "state": "lock", "lease": moment + lease_seconds})
            return True
        except DuplicateKeyError:
            taken = await self.notifications.find_one_and_update(
                {**key, "lease": {"$lte": moment}}, {"$set": {"lease": moment + lease_seconds}})
            return taken is not None

    @guarded
    async def unlock_emails(self, uri: str, user_id: str) -> None:
        await self.notifications.delete_one({"kind": "email-lock", "user_id": user_id, "uri": uri,
                                             "seq": 0})

    @guarded
    async def last_email_sent(self, uri: str, user_id: str) -> dict | None:
        return await self.notifications.find_one(
            {"kind": "email", "user_id": user_id, "uri": uri, "state": "sent"}, sort=[("done", -1)])

    @guarded
    async def pending_email_seqs(self, uri: str, user_id: str) -> list[int]:
        """The seqs of the messages waiting for an email to user_id about the room."""
        cursor = self.notifications.find({"kind": "email", "user_id": user_id, "uri": uri,
                                          "state": "pending"}, {"seq": 1})
        return [doc["seq"] async for doc in cursor]

    @guarded
    async def merge_emails(self, uri: str, user_id: str, upto: int) -> None:
        """The messages up to `upto` went out in one email: their own are done."""
        await self.notifications.update_many(
            {"kind": "email", "user_id": user_id, "uri": uri, "state": "pending", "seq": {"$lte": upto}},
            {"$set": {"state": "merged", "lease": None, "done": time.time()}})

    @guarded
    async def messages_at(self, uri: str, seqs: list[int]) -> list[dict]:
        """The messages at these seqs, in their current state, oldest first."""
        cursor = self.messages.find({"room": eq(uri), "seq": {"$in": seqs}, "type": None})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def email_off(self, uri: str, user_id: str) -> bool:
        """No more notification emails about the room for user_id (the unsubscribe link)."""
        result = await self.rooms.update_one({"uri": uri}, {"$set": {f"email_off.{user_id}": True}})
        return result.matched_count > 0

    # Devices -----------------------------------------------------------

    @guarded
    async def add_subscription(self, user_id: str, token_id: str | None, endpoint: str,
                               p256dh: str, auth: str) -> None:
        await self.push_subscriptions.update_one(
            {"endpoint": endpoint},
            {"$set": {"user_id": user_id, "token_id": token_id, "keys": {"p256dh": p256dh, "auth": auth}},
             "$setOnInsert": {"created": now()}}, upsert=True)

    @guarded
    async def remove_subscription(self, user_id: str, endpoint: str) -> bool:
        result = await self.push_subscriptions.delete_one({"user_id": user_id, "endpoint": endpoint})
        return result.deleted_count > 0

    @guarded
    async def forget_endpoint(self, endpoint: str) -> None:
        """The push service said the subscription is gone (404, 410)."""
        await self.push_subscriptions.delete_one({"endpoint": endpoint})

    @guarded
    async def forget_token_devices(self, token_id: str) -> None:
        """A logout: the devices that token registered get nothing more."""
        await self.push_subscriptions.delete_many({"token_id": token_id})

    @guarded
    async def forget_other_devices(self, user_id: str, token_id: str | None) -> None:
        """A password change or "sign out others": only the kept token's devices stay."""
        await self.push_subscriptions.delete_many({"user_id": user_id, "token_id": {"$nin": [token_id]}})

    @guarded
    async def subscriptions_of(self, user_id: str) -> list[dict]:
        return await self.push_subscriptions.find({"user_id": user_id}).to_list(None)

    # The VAPID key -----------------------------------------------------

    @guarded
    async def server_key(self, name: str, make) -> str:
        """A key every process shares: the stored one, or `make()` stored by the first to ask."""
        found = await self.server_keys.find_one({"_id": name})
        if found is not None:
            return found["value"]
        try:
            await self.server_keys.insert_one({"_id": name, "value": make(), "created": now()})
        except DuplicateKeyError:
            pass  # another process made it first: theirs is the one
        return (await self.server_keys.find_one({"_id": name}))["value"]
