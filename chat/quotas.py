"""Per-user limits on every write a user can make besides messages (which
`Hub.check_rate` limits): rooms created, membership changes, signals (typing
and read frames, read marks over HTTP) and logouts. Each holds across
processes (chat/limits.py counts in MongoDB); a person never reaches them, a
script does at once."""

from __future__ import annotations

from chat.hub import RateLimited
from chat.limits import Limit


class TooMany(RateLimited):
    """A per-user limit was reached: retry after `retry_after` seconds."""

    def __init__(self, what: str, retry_after: float):
        super().__init__(retry_after)
        self.args = (f"Too many {what}; retry in {max(1, round(retry_after))} s.",)


class UserLimits:
    def __init__(self, store, *, rooms_per_hour: int, member_changes_per_minute: int,
                 signals_per_minute: int, logouts_per_minute: int):
        self.rooms = Limit(store, "rooms", rooms_per_hour, 3600.0)
        self.member_changes = Limit(store, "member_changes", member_changes_per_minute, 60.0)
        self.signals = Limit(store, "signals", signals_per_minute, 60.0)
        self.logouts = Limit(store, "logouts", logouts_per_minute, 60.0)

    @staticmethod
    async def hit(limit: Limit, what: str, user: dict) -> None:
        wait = await limit.hit(user["id"])
        if wait:
            raise TooMany(what, wait)

    async def room_created(self, user: dict) -> None:
        await self.hit(self.rooms, "chats created", user)

    async def member_change(self, user: dict) -> None:
        """Joining, leaving, adding, removing, banning, unbanning, roles, locking."""
        await self.hit(self.member_changes, "membership changes", user)

    async def signal(self, user: dict) -> None:
        """A typing or read frame, or a read mark over HTTP."""
        await self.hit(self.signals, "typing and read signals", user)

    async def logout(self, user: dict) -> None:
        await self.hit(self.logouts, "logouts", user)
