"""Invites: codes an admin hands out so that people may sign up when `signup: invite`."""

from __future__ import annotations

import datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument

from chat.store.base import guarded, now


class Invites:
    """The invites collection: {_id: code, uses_left, uses, expires, created, by}."""

    async def ensure_invite_indexes(self) -> None:
        await self.invites.create_index([("created", DESCENDING)], name="created")

    @guarded
    async def add_invite(self, code: str, uses: int, expires: datetime.datetime,
                         by: dict) -> dict:
        doc = {"_id": code, "uses_left": uses, "uses": uses, "expires": expires,
               "created": now(), "by": by}
        await self.invites.insert_one(doc)
        return doc

    @guarded
    async def invites_list(self, limit: int = 200) -> list[dict]:
        return await self.invites.find({}).sort("created", DESCENDING).limit(limit).to_list(None)

    @guarded
    async def take_invite(self, code: str) -> bool:
        """Spend one use of a live invite: the condition is in the write, so
        two sign-ups racing for its last use cannot both have it."""
        taken = await self.invites.find_one_and_update(
            {"_id": code, "uses_left": {"$gt": 0}, "expires": {"$gt": now()}},
            {"$inc": {"uses_left": -1}}, return_document=ReturnDocument.AFTER)
        return taken is not None

    @guarded
    async def give_back_invite(self, code: str) -> None:
        """A use taken by a sign-up that then failed (the username was taken)."""
        await self.invites.update_one({"_id": code}, {"$inc": {"uses_left": 1}})

    @guarded
    async def delete_invite(self, code: str) -> Any:
        return (await self.invites.delete_one({"_id": code})).deleted_count > 0
