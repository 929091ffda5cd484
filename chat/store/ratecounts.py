"""Rate limits' counters, shared by every process (chat/limits.py spends them)."""

from __future__ import annotations

import datetime

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from chat.store.base import guarded


class RateCounts:
    """The rate_counts collection: one counter per key, dropped by MongoDB after it expires."""

    async def ensure_rate_count_indexes(self) -> None:
        await self.rate_counts.create_index("expires", expireAfterSeconds=0, name="expires_ttl")

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

