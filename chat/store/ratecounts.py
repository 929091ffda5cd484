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
        # Counters stored without `expires` (nx-27017 ignored the $setOnInsert
        # that wrote it until count_hit put it in the filter) would never
        # expire: drop them. Their limits start again from zero, once.
        await self.rate_counts.delete_many({"expires": {"$exists": False}})

    @guarded
    async def count_hit(self, key: str, expires: datetime.datetime, hits: int = 1) -> int:
        """Add hits to key's counter (which MongoDB drops after expires): its
        count now, over every process. One command."""
        # `expires` is in the filter, not in $setOnInsert: an upsert inserts the
        # filter's equality fields on MongoDB and on nx-27017 alike, while
        # nx-27017 ignores $setOnInsert (and stores a date given to $set or $max
        # as a string), so its counters never expired. A key's expiry is fixed
        # by its window, so the filter matches every hit of the key.
        try:
            doc = await self.rate_counts.find_one_and_update(
                {"_id": key, "expires": expires}, {"$inc": {"n": hits}},
                upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            # Two first hits raced to insert it and this one lost: it exists now.
            doc = await self.rate_counts.find_one_and_update(
                {"_id": key}, {"$inc": {"n": hits}}, return_document=ReturnDocument.AFTER)
        if doc is None:
            # SecantusDB (0.7.0b3) answers an upsert that found the document a
            # concurrent first hit had just inserted with no document, though it
            # counted the hit (mongod returns it): read the count, which later
            # hits may have raised (erring toward refusing, never allowing more).
            doc = await self.rate_counts.find_one({"_id": key}, {"n": 1})
        return doc["n"]

    @guarded
    async def hit_count(self, key: str) -> int:
        doc = await self.rate_counts.find_one({"_id": key}, {"n": 1})
        return doc["n"] if doc else 0

