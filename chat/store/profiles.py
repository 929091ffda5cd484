"""What accounts keep besides the users collection: profile pictures,
password-reset tokens, and what a deleted account leaves erased elsewhere."""

from __future__ import annotations

import datetime

from bson import Binary

from chat.store.base import guarded, now


class Profiles:
    """The avatars and password_resets collections; push subscriptions and
    blocks of a deleted account (collections other issues fill) are erased here."""

    async def ensure_profile_indexes(self) -> None:
        await self.avatars.create_index([("user_id", 1), ("version", 1)], name="user_version")
        await self.password_resets.create_index("user_id", name="user_id")
        await self.password_resets.create_index("expires", expireAfterSeconds=0,
                                                name="expires_ttl")

    @guarded
    async def save_avatar(self, user_id: str, version: str, data: bytes,
                          content_type: str) -> None:
        """The user's new picture, then the end of the ones before (their URLs
        name their version). Inserted, never replaced: nx-27017 cannot replace
        a document holding binary data."""
        await self.avatars.insert_one({"user_id": user_id, "version": version,
                                       "data": Binary(data), "type": content_type,
                                       "saved": now()})
        await self.avatars.delete_many({"user_id": user_id, "version": {"$ne": version}})

    @guarded
    async def avatar(self, user_id: str, version: str) -> dict | None:
        return await self.avatars.find_one({"user_id": user_id, "version": version})

    @guarded
    async def delete_avatar(self, user_id: str) -> None:
        await self.avatars.delete_many({"user_id": user_id})

    @guarded
    async def add_password_reset(self, token_hash: str, user_id: str,
                                 expires: datetime.datetime) -> None:
        await self.password_resets.insert_one({"_id": token_hash, "user_id": user_id,
                                               "expires": expires})

    @guarded
    async def take_password_reset(self, token_hash: str) -> str | None:
        """The user of a live reset token, which is spent by this: single use,
        one caller wins. None when unknown, used or expired."""
        doc = await self.password_resets.find_one_and_delete({"_id": token_hash})
        if doc is None or doc["expires"] <= now():
            return None
        return doc["user_id"]

    @guarded
    async def drop_password_resets(self, user_id: str) -> None:
        """A password set (changed or reset) ends every reset link sent before."""
        await self.password_resets.delete_many({"user_id": user_id})

    @guarded
    async def erase_user_traces(self, user_id: str) -> None:
        """A deleted account's picture, reset links, push subscriptions and blocks
        (those it made and those naming it)."""
        await self.avatars.delete_many({"user_id": user_id})
        await self.password_resets.delete_many({"user_id": user_id})
        await self.push_subscriptions.delete_many({"user_id": user_id})
        await self.blocks.delete_many({"$or": [{"user_id": user_id}, {"blocked_id": user_id}]})
