"""Blocks: whom each user has blocked (the blocks collection)."""

from __future__ import annotations

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from chat.store.base import guarded, now


class Blocks:
    """One document per (blocker, blocked) pair."""

    async def ensure_block_indexes(self) -> None:
        await self.blocks.create_index([("user_id", ASCENDING), ("blocked_id", ASCENDING)],
                                       unique=True, name="user_blocked")

    @guarded
    async def block(self, user_id: str, blocked: dict) -> None:
        try:
            await self.blocks.insert_one({"user_id": user_id, "blocked_id": blocked["id"],
                                          "blocked": blocked, "created": now()})
        except DuplicateKeyError:
            pass  # blocked already

    @guarded
    async def unblock(self, user_id: str, blocked_id: str) -> bool:
        result = await self.blocks.delete_one({"user_id": user_id, "blocked_id": blocked_id})
        return result.deleted_count > 0

    @guarded
    async def blocks_of(self, user_id: str) -> list[dict]:
        cursor = self.blocks.find({"user_id": user_id}).sort("created", ASCENDING)
        return await cursor.to_list(None)

    @guarded
    async def blocked_by(self, sender_id: str, user_ids: list[str]) -> set[str]:
        """Which of user_ids blocked sender_id: one command."""
        cursor = self.blocks.find({"user_id": {"$in": user_ids}, "blocked_id": sender_id},
                                  {"user_id": 1})
        return {doc["user_id"] async for doc in cursor}

    @guarded
    async def blocks_among(self, user_ids: list[str]) -> set[tuple[str, str]]:
        """The blocks between these users: {(blocker id, blocked id)}."""
        cursor = self.blocks.find({"user_id": {"$in": user_ids}, "blocked_id": {"$in": user_ids}},
                                  {"user_id": 1, "blocked_id": 1})
        return {(doc["user_id"], doc["blocked_id"]) async for doc in cursor}
