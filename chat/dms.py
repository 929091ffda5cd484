"""Direct messages: the one room of a pair of users, with the rules of DMs.

A DM has no owner, roles, bans or lock, and nobody joins it by link (the store
and RoomEvents refuse those). Either person may leave; they are back in it when
the other writes again, or when they start it again. Starting one writes the
members' `join` events, which the user stream turns into `chat` frames.
"""

from __future__ import annotations

from chat.events import RoomEvents
from chat.mentions import People, RoomPeople
from chat.store import Forbidden

# Refusals do not say that a block is the reason (the blocked person is not told).
CANNOT_START = "You cannot start a direct message with this user."
CANNOT_POST = "You cannot post in this chat."


class DirectMessages:
    def __init__(self, store, people: People, events: RoomEvents):
        self.store = store
        self.people = people
        self.events = events

    async def start(self, user: dict, username: str) -> dict:
        """The DM room of user and username (made on the first call; the caller
        is back in it if they had left): NotFound for an unknown user."""
        other = await self.events.user_named(username)
        pair = [user["id"], other["id"]]
        if other["id"] != user["id"] and (other["id"], user["id"]) in await self.store.blocks_among(pair):
            raise Forbidden(CANNOT_START)
        room, created = await self.store.dm_room(user["id"], other["id"])
        uri = room["uri"]
        if created:
            for member in ([user, other] if other["id"] != user["id"] else [user]):
                await self.events.announce(uri, "join", member, user)
        elif user["id"] not in room["members"]:
            back = await self.store.rejoin_dm(uri, user["id"])
            if back is not None:
                room = back
                await self.events.announce(uri, "join", user, user)
        return room

    async def check_post(self, user: dict, entry: RoomPeople) -> None:
        """Before a post into a DM: refused when the other person blocked the
        poster; the other person is put back in it when they had left."""
        others = [i for i in entry.dm_users if i != user["id"]]
        if any((other, user["id"]) in entry.blocks for other in others):
            raise Forbidden(CANNOT_POST)
        for other in others:
            if other not in entry.members and await self.store.rejoin_dm(entry.uri, other):
                names = await self.store.users_by_id([other])
                if other in names:
                    await self.events.announce(entry.uri, "join", names[other], user)
