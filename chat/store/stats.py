"""What the admins' stats count, and each process's open sockets (the
processes collection: each process writes its own count now and then)."""

from __future__ import annotations

import datetime
from typing import Any

from chat.store.base import guarded, now


class Stats:
    """The processes collection: {_id: process id, sockets, at}."""

    async def ensure_stats_indexes(self) -> None:
        # A process that stopped is dropped a while after its last word.
        await self.processes.create_index("at", expireAfterSeconds=300, name="at_ttl")

    @guarded
    async def record_process(self, process_id: str, sockets: int) -> None:
        await self.processes.replace_one({"_id": process_id},
                                         {"_id": process_id, "sockets": sockets, "at": now()},
                                         upsert=True)

    @guarded
    async def processes_since(self, since: datetime.datetime) -> list[dict]:
        return await self.processes.find({"at": {"$gt": since}}).sort("_id").to_list(None)

    @guarded
    async def content_counts(self) -> dict[str, Any]:
        """Rooms, messages (not other room events), files and their bytes. A
        count of messages scans the event log: for admins' occasional looks only."""
        cursor = await self.files.aggregate(
            [{"$group": {"_id": None, "count": {"$sum": 1}, "bytes": {"$sum": "$length"}}}])
        files = await cursor.to_list(None)
        return {"rooms": await self.rooms.count_documents({}),
                "messages": await self.messages.count_documents({"type": {"$exists": False}}),
                "files": files[0]["count"] if files else 0,
                "file_bytes": files[0]["bytes"] if files else 0}
