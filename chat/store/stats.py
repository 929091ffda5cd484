"""What the admins' stats count (each process counts its own sockets:
AccountService.census)."""

from __future__ import annotations

from typing import Any

from chat.store.base import guarded


class Stats:
    """Counts over the rooms, messages and files collections."""

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
