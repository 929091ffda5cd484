"""Who is in a room, as the post path needs it (the process's cache), and the
rules of mentions.

A post must cost no MongoDB read beyond its insert: the room's members (for
`@name`), owner, roles (for `@room`) and kind come from this cache. An entry
is read on first use (two commands: the room, its members' names), dropped
in every process when one announces a membership or role change
(RoomEvents.announce) or a block touches a DM (a "room_people" control
notice), and read again when older than `PEOPLE_TTL`, or sooner when a post
is in doubt (an `@word` no member answers to, an `@room` refused): a notice
lost with a broker outage costs at most that. A DM's entry also holds the
blocks between its two people (a third command when it is read).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools

from chat.store import Forbidden, NotFound, remember

PEOPLE_TTL = 60.0
# A post in doubt reads the room again only when its entry is older than this,
# so a stream of posts naming nobody costs one read per room per interval.
DOUBT_RECHECK = 2.0
KNOWN_ROOMS = 10_000
# The control notice that a room's people changed (to every process).
PEOPLE_NOTICE = "room_people"


@dataclasses.dataclass
class RoomPeople:
    uri: str
    kind: str
    owner: str | None
    roles: dict[str, str]
    members: dict[str, str]  # id -> username
    dm_users: list[str]
    loaded: float
    blocks: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # a DM's: (by, whom)
    levels: dict[str, str] = dataclasses.field(default_factory=dict)  # notification levels set

    @functools.cached_property
    def by_name(self) -> dict[str, str]:
        """{casefolded username: username} of the members."""
        return {name.casefold(): name for name in self.members.values()}

    @functools.cached_property
    def id_by_name(self) -> dict[str, str]:
        """{casefolded username: member id}: who a message's mentions name."""
        return {name.casefold(): member_id for member_id, name in self.members.items()}

    def moderates(self, user_id: str) -> bool:
        return self.owner == user_id or self.roles.get(user_id) == "moderator"


class People:
    def __init__(self, store, hub, mention_room_max_without_role: int = 20):
        self.store = store
        self.hub = hub
        hub.handle_notices(PEOPLE_NOTICE, self.on_people_notice)
        self.mention_room_max = mention_room_max_without_role
        self.rooms: collections.OrderedDict[str, RoomPeople] = collections.OrderedDict()
        self.ttl = PEOPLE_TTL
        self.doubt_recheck = DOUBT_RECHECK

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def of(self, uri: str, fresh: bool = False) -> RoomPeople:
        entry = self.rooms.get(uri)
        if entry is not None and not fresh and self.now() - entry.loaded < self.ttl:
            return entry
        loaded = self.now()
        room = await self.store.room_people(uri)
        if room is None:
            raise NotFound(uri)
        users = await self.store.users_by_id(room["members"])
        entry = RoomPeople(uri, room.get("kind", "room"), room.get("owner"),
                           dict(room.get("roles") or {}),
                           {i: users[i]["username"] for i in room["members"] if i in users},
                           list(room.get("dm_users") or ()), loaded,
                           levels=dict(room.get("levels") or {}))
        if entry.kind == "dm":
            entry.blocks = await self.store.blocks_among(entry.dm_users)
        remember(self.rooms, uri, entry, KNOWN_ROOMS)
        return entry

    def in_doubt(self, entry: RoomPeople) -> bool:
        return self.now() - entry.loaded >= self.doubt_recheck

    def forget(self, uri: str) -> None:
        self.rooms.pop(uri, None)

    def on_people_notice(self, notice: dict) -> None:
        if isinstance(notice.get("uri"), str):
            self.forget(notice["uri"])

    def changed(self, uri: str) -> None:
        """The room's members, roles or a DM's blocks changed: every process
        forgets its entry (here at once, elsewhere by a control notice)."""
        self.forget(uri)
        self.hub.notify({"type": PEOPLE_NOTICE, "uri": uri})

    def check_room_mention(self, entry: RoomPeople, user_id: str) -> None:
        """@room in a big room is for its owner and moderators."""
        if len(entry.members) > self.mention_room_max and not entry.moderates(user_id):
            raise Forbidden(f"@room in a chat of more than {self.mention_room_max} members is "
                            "for its owner and moderators only.")
