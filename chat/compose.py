"""What a message's text becomes before it is stored, once per post or edit:
its HTML, its mentions (checked against the room's rules), and, in a direct
message, the rules of DMs."""

from __future__ import annotations

from typing import Any

from chat.mentions import People, RoomPeople
from chat.render import MENTION, Renderer, resolve
from chat.store import Forbidden


def unresolved(text: str, entry: RoomPeople) -> bool:
    """Whether some `@word` names nobody the cache knows (a new member, maybe)."""
    people = entry.by_name
    return any(resolve(match.group(1), people) is None for match in MENTION.finditer(text))


class Composer:
    def __init__(self, renderer: Renderer, people: People, dms):
        self.renderer = renderer
        self.people = people
        self.dms = dms

    async def prepare(self, user: dict, uri: str, text: str, posting: bool = True) -> dict[str, Any]:
        """The fields a message (or an edit) stores beside its text: html,
        mentions, mentions_room. Forbidden for an @room the user may not make,
        or a post into a DM the other person blocked them from."""
        entry = await self.people.of(uri)
        if "@" in text and unresolved(text, entry) and self.people.in_doubt(entry):
            entry = await self.people.of(uri, fresh=True)
        if posting and entry.kind == "dm":
            await self.dms.check_post(user, entry)
        rendered = await self.renderer.render(text, entry.by_name)
        if rendered.mentions_room:
            try:
                self.people.check_room_mention(entry, user["id"])
            except Forbidden:
                if not self.people.in_doubt(entry):
                    raise
                self.people.check_room_mention(await self.people.of(uri, fresh=True), user["id"])
        return {"html": rendered.html, "mentions": rendered.mentions,
                "mentions_room": rendered.mentions_room}
