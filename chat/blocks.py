"""Blocking: whom a user blocked cannot start a DM with them, post in their
DM, or add them to a room. Their messages in shared rooms stay visible."""

from __future__ import annotations

from chat.events import InvalidField, RoomEvents
from chat.mentions import People
from chat.store import NotFound, iso


class BlockList:
    def __init__(self, store, people: People, events: RoomEvents):
        self.store = store
        self.people = people
        self.events = events

    async def block(self, user: dict, username: str) -> None:
        other = await self.events.user_named(username)
        if other["id"] == user["id"]:
            raise InvalidField("username", "You cannot block yourself.")
        await self.store.block(user["id"], other)
        await self.forget_dm(user, other)

    async def unblock(self, user: dict, username: str) -> None:
        other = await self.events.user_named(username)
        if not await self.store.unblock(user["id"], other["id"]):
            raise NotFound(username)
        await self.forget_dm(user, other)

    async def forget_dm(self, user: dict, other: dict) -> None:
        """The pair's DM is read again at its next post (its blocks changed)."""
        room = await self.store.find_dm(user["id"], other["id"])
        if room is not None:
            self.people.changed(room["uri"])

    async def listed(self, user: dict) -> list[dict]:
        return [{"user": doc["blocked"], "created": iso(doc["created"])}
                for doc in await self.store.blocks_of(user["id"])]
