"""The audit log: every admin action (who, what, when, target), newest first."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import DESCENDING

from chat.store.base import guarded, now


class Audit:
    """The audit collection: {by: {id, username}, action, target, details, at}."""

    async def ensure_audit_indexes(self) -> None:
        await self.audit.create_index([("at", DESCENDING)], name="at")

    @guarded
    async def record_audit(self, by: dict, action: str, target: str,
                           details: dict[str, Any] | None = None) -> None:
        await self.audit.insert_one({"by": {"id": by["id"], "username": by["username"]},
                                     "action": action, "target": target,
                                     "details": details or {}, "at": now()})

    @guarded
    async def audit_page(self, before: str | None, limit: int) -> list[dict]:
        """Entries newest first, older than the entry `before` (an id) when given."""
        condition = {"_id": {"$lt": ObjectId(before)}} if before else {}
        return await self.audit.find(condition).sort("_id", DESCENDING).limit(limit).to_list(None)
