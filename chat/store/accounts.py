"""Accounts: users, tokens and failed logins."""

from __future__ import annotations

import datetime
import re
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from chat.store.base import UsernameTaken, eq, guarded, log, now
from chat.store.public import public_user

# Failed logins older than this are never counted (the window is at most a day).
LOGIN_FAILURE_TTL = 24 * 3600


def username_key(username: str) -> str:
    """What makes two usernames the same account: case is ignored."""
    return username.casefold()


def live_token_user(doc: dict[str, Any] | None) -> dict | None:
    """A token document's user while it is live; None when there is none
    (revoked) or it expired (MongoDB's TTL removes it only some time after)."""
    if doc is None or doc["expires"] <= now():
        return None
    return doc["user"]


class Accounts:
    """The users, tokens and login_failures collections."""

    async def ensure_account_indexes(self) -> None:
        await self.users.create_index("username", unique=True, name="username")
        # Usernames are unique ignoring case; the spelling the user chose is kept
        # for display. Partial: accounts made before this have no key until
        # backfilled, and two of them that differ only in case keep theirs apart.
        await self.users.create_index("username_key", unique=True, name="username_key",
                                      partialFilterExpression={"username_key": {"$type": "string"}})
        await self.backfill_username_keys()
        await self.tokens.create_index("user_id", name="user_id")
        # MongoDB removes expired tokens and old failed logins by itself (TTL).
        await self.tokens.create_index("expires", expireAfterSeconds=0, name="expires_ttl")
        await self.login_failures.create_index([("username", ASCENDING), ("at", ASCENDING)],
                                               name="username_at")
        await self.login_failures.create_index("at", expireAfterSeconds=LOGIN_FAILURE_TTL,
                                               name="at_ttl")

    async def backfill_username_keys(self) -> None:
        async for doc in self.users.find({"username_key": {"$exists": False}}, {"username": 1}):
            try:
                await self.users.update_one({"_id": doc["_id"]},
                                            {"$set": {"username_key": username_key(doc["username"])}})
            except DuplicateKeyError:
                log.warning("user %s differs from an older account only in case; it logs in "
                            "by its exact spelling", doc["_id"])

    @guarded
    async def create_user(self, username: str, email: str, password_hash: bytes,
                          reuse_after: datetime.timedelta | None = None) -> dict:
        """A new account. A deleted account's name is taken over once it was
        deleted longer than reuse_after ago."""
        doc = {"username": username, "username_key": username_key(username), "email": email,
               "password": password_hash, "first_name": "", "last_name": "", "created": now(),
               "active": True}
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError:
            if reuse_after is None or not await self.free_username(username, reuse_after):
                raise UsernameTaken(username) from None
            doc.pop("_id", None)
            try:
                await self.users.insert_one(doc)
            except DuplicateKeyError:
                raise UsernameTaken(username) from None
        return doc

    async def free_username(self, username: str, reuse_after: datetime.timedelta) -> bool:
        """Rename the deleted account holding username, if it was deleted long
        enough ago, so that the name can be taken: whether it was."""
        holder = await self.users.find_one(
            {"username_key": username_key(username),
             "deleted": {"$lt": (now() - reuse_after).timestamp()}},
            {"_id": 1})
        if holder is None:
            return False
        await self.users.update_one({"_id": holder["_id"]},
                                    {"$set": {"username": f"deleted-{holder['_id']}"},
                                     "$unset": {"username_key": ""}})
        return True

    @guarded
    async def make_first_admin(self, user_id: str) -> bool:
        """With no admins configured, the first account created is one: the
        oldest account, made admin when no account is one yet. Whether it is."""
        if await self.users.find_one({"admin": True}, {"_id": 1}) is not None:
            return False
        first = await self.users.find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
        if first is None or str(first["_id"]) != user_id:
            return False
        await self.users.update_one({"_id": first["_id"]}, {"$set": {"admin": True}})
        return True

    @guarded
    async def user_by_id(self, user_id: str) -> dict | None:
        return await self.users.find_one({"_id": ObjectId(user_id)})

    @guarded
    async def user_by_email(self, email: str) -> dict | None:
        """The live account with this email (ignoring case), when exactly one has it."""
        found = await self.users.find(
            {"email": {"$regex": f"^{re.escape(email)}$", "$options": "i"},
             "deleted": {"$exists": False}}, limit=2).to_list(None)
        return found[0] if len(found) == 1 else None

    @guarded
    async def update_user(self, user_id: str, fields: dict[str, Any],
                          unset: tuple[str, ...] = ()) -> dict | None:
        """Set (and unset) fields of a live account: the account after, or None."""
        update: dict[str, Any] = {}
        if fields:
            update["$set"] = fields
        if unset:
            update["$unset"] = dict.fromkeys(unset, "")
        return await self.users.find_one_and_update(
            {"_id": ObjectId(user_id), "deleted": {"$exists": False}}, update,
            return_document=ReturnDocument.AFTER)

    @guarded
    async def set_admin_flag(self, user_id: str, admin: bool) -> None:
        await self.users.update_one({"_id": ObjectId(user_id)}, {"$set": {"admin": admin}})

    @guarded
    async def active_admins(self, configured: tuple[str, ...]) -> list[dict]:
        keys = [username_key(name) for name in configured]
        return await self.users.find(
            {"$or": [{"admin": True}, {"username_key": {"$in": keys}}],
             "active": {"$ne": False}, "deleted": {"$exists": False}},
            {"username": 1}).to_list(None)

    @guarded
    async def list_users(self, query: str, cursor: str, limit: int) -> list[dict]:
        """Accounts (not deleted) by username, after cursor (a username key),
        whose username, display name or email starts with query (any case)."""
        condition: dict[str, Any] = {"deleted": {"$exists": False}}
        if cursor:
            condition["username_key"] = {"$gt": cursor}
        if query:
            pattern = {"$regex": "^" + re.escape(query), "$options": "i"}
            condition["$or"] = [{"username": pattern}, {"display_name": pattern},
                                {"email": pattern}]
        return await self.users.find(condition).sort("username_key", ASCENDING).limit(
            limit).to_list(None)

    @guarded
    async def count_users(self, since: datetime.datetime) -> tuple[int, int]:
        """(accounts, those seen since `since`), deleted ones left out."""
        live = {"deleted": {"$exists": False}}
        return (await self.users.count_documents(live),
                await self.users.count_documents({**live,
                                                  "last_seen": {"$gt": since.timestamp()}}))

    @guarded
    async def touch_last_seen(self, user_id: str) -> None:
        # Times written by an update are epoch seconds: nx-27017 stores a
        # datetime given to $set or $max as a string.
        await self.users.update_one({"_id": ObjectId(user_id)},
                                    {"$max": {"last_seen": now().timestamp()}})

    @guarded
    async def mark_deleted(self, user_id: str) -> dict | None:
        """The account as deleted: inactive, its personal data erased; its
        username stays reserved (`deleted` is when, epoch seconds) until it may be reused."""
        return await self.users.find_one_and_update(
            {"_id": ObjectId(user_id), "deleted": {"$exists": False}},
            {"$set": {"deleted": now().timestamp(), "active": False, "email": "", "first_name": "",
                      "last_name": ""},
             "$unset": {"password": "", "display_name": "", "avatar": "", "admin": ""}})

    @guarded
    async def user_by_name(self, username: str) -> dict | None:
        """The account named username in any case; its exact spelling first (two
        accounts made before names ignored case may differ only in case). A
        deleted account has no name any more (it only keeps it from being taken)."""
        found = await self.users.find({"$or": [{"username": username},
                                                {"username_key": username_key(username)}],
                                       "deleted": {"$exists": False}},
                                      limit=2).to_list(None)
        return next((d for d in found if d["username"] == username), found[0] if found else None)

    @guarded
    async def users_by_id(self, ids: list[str]) -> dict[str, dict]:
        object_ids = [ObjectId(i) for i in ids]
        # One batch (the chat list names up to 800): one command, not a getMore too
        # (one more than can come: a batch filled exactly leaves the cursor open).
        found = await self.users.find({"_id": {"$in": object_ids}}).batch_size(
            len(object_ids) + 1).to_list(None)
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
    async def refresh_token_users(self, user_id: str, user: dict) -> None:
        """The user each token of theirs carries, as it is now (a changed profile)."""
        await self.tokens.update_many({"user_id": user_id}, {"$set": {"user": user}})

    @guarded
    async def revoke_user_tokens(self, user_id: str, keep: str | None = None) -> None:
        """Every token of the user, but `keep`."""
        condition: dict[str, Any] = {"user_id": user_id}
        if keep is not None:
            condition["_id"] = {"$ne": keep}
        await self.tokens.delete_many(condition)

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
            {"username": eq(username_key(username)), "at": {"$gt": since}},
            {"at": 1, "address": 1, "pending": 1}).sort("at", ASCENDING).to_list(None)

    @guarded
    async def clear_login_failures(self, username: str, attempt_id: Any) -> None:
        """After attempt_id logged in: its failures and itself, not the attempts
        still in flight (those that fail still count)."""
        # Two deletes, not one with an $or: nx-27017 evaluates an $or over
        # every document (a password-guessing run makes this collection big).
        await self.login_failures.delete_one({"_id": attempt_id})
        await self.login_failures.delete_many({"username": eq(username_key(username)),
                                               "pending": {"$exists": False}})

