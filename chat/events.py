"""Room events besides posts: edits, deletes, reactions, membership and moderation.

Every change is an event in the room's log (DESIGN.md, "Data"): stored at the
room's next seq through the hub's one append path, then delivered like a
message, so a socket resuming with `since` replays it exactly once, in order.

The order of the two writes each change makes:
- Edit, delete, reaction: the event first, then the message's state in place.
  A message document carries `last_event_seq`, and its state is always exactly
  the fold of its events up to that seq: the state is written with a
  compare-and-set on last_event_seq that folds in every stored event after
  it, in seq order, whoever stored them (`settle`). So a history page never
  shows a state newer than its last_event_seq claims, a client applies only
  the events above it, concurrent changes from several processes all land,
  and a process that dies between the two writes leaves its event to be
  folded in by the next change to that message.
  In between, an event is stored (and the room's seq may be recorded past
  it) while its message does not show it yet. The message counts its changes
  in flight (`changing`: raised before the event is appended, lowered by the
  save that folds it in), and a history page folds in the stored events of
  any message it finds changing (`current`). So a page read after the room's
  seq reached N shows every change up to N, which a socket opened with
  since=N does not replay; pages without changes in flight cost nothing more.
- Membership: the room document first (it is what every access check reads,
  so a ban holds before anyone hears of it), then the control notice that
  closes the member's sockets in every process, then the event. A process
  that dies before the event leaves the change made but unannounced; the
  room's members list shows it.
"""

from __future__ import annotations

from typing import Any

import emoji as emoji_data

from chat.store import Banned, Forbidden, NotFound, NotMember, Unavailable, public_message

ROLES = ("owner", "moderator", "member")  # highest first
MODERATORS = ("owner", "moderator")
# Distinct emoji on one message: bounds the document and the picker's row.
MAX_REACTIONS = 20
# Compare-and-set rounds of one settle; each lost round means another writer
# folded in events meanwhile, so this is reached only under a storm of changes.
SETTLE_ATTEMPTS = 20


class InvalidField(ValueError):
    """A bad value in a named field (400 naming it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def brief(user: dict) -> dict:
    """A user as events name them."""
    return {"id": user["id"], "username": user["username"]}


def role_of(room: dict, user_id: str) -> str:
    if room["owner"] == user_id:
        return "owner"
    return room.get("roles", {}).get(user_id, "member")


def check_emoji(value: Any) -> str:
    """One emoji, in its fully qualified form (so "❤" and "❤️" are one reaction)."""
    if not isinstance(value, str) or not emoji_data.is_emoji(value):
        raise InvalidField("emoji", "Must be exactly one emoji.")
    qualified = emoji_data.emojize(emoji_data.demojize(value))
    return qualified if emoji_data.is_emoji(qualified) else value


def fold(message: dict, events: list[dict]) -> dict:
    """The message's state fields after `events` (those after its last_event_seq, in order)."""
    state = {
        "message": message["message"],
        "version": message.get("version", 0),
        "edited": message.get("edited"),
        "deleted": message.get("deleted", False),
        "reactions": {key: list(users) for key, users in message.get("reactions", {}).items()},
        "last_event_seq": message.get("last_event_seq", message["seq"]),
    }
    for event in events:
        state["last_event_seq"] = event["seq"]
        if state["deleted"]:
            continue  # a change that raced the delete changes nothing
        kind = event["type"]
        if kind == "edit":
            state["message"] = event.get("message", "")
            # Rendered and its mentions found when it was made (chat/compose.py).
            for key in ("html", "mentions", "mentions_room"):
                if key in event:
                    state[key] = event[key]
            state["version"] = event["version"]
            # Epoch seconds: some wire servers store a datetime given to $set as a string.
            state["edited"] = event["created"].timestamp()
        elif kind == "delete":
            state.update(message="", deleted=True, reactions={}, html="", mentions=[],
                         mentions_room=False)
        elif kind == "reaction":
            users = state["reactions"].setdefault(event["emoji"], [])
            name = event["user"]["username"]
            if event["op"] == "add" and name not in users:
                users.append(name)
            elif event["op"] == "remove" and name in users:
                users.remove(name)
            if not users:
                del state["reactions"][event["emoji"]]
    return state


class RoomEvents:
    def __init__(self, store, hub, people=None):
        self.store = store
        self.hub = hub
        # chat.mentions.People: the post path's cache of rooms, told of membership changes.
        self.people = people
        # chat.compose.Composer (set by server.py): renders edits and finds their mentions.
        self.composer = None

    # Rooms and members ----------------------------------------------------

    async def member_room(self, uri: str, user_id: str) -> dict:
        """The room, if user_id is a member; else NotFound, Banned or NotMember."""
        room = await self.store.room(uri)
        if room is None:
            raise NotFound(uri)
        if user_id not in room["members"]:
            raise (Banned if user_id in room.get("banned", ()) else NotMember)(uri)
        return room

    async def moderated_room(self, uri: str, user_id: str) -> dict:
        room = await self.member_room(uri, user_id)
        if room.get("kind") == "dm":
            raise Forbidden("A direct message has no owner, moderators, bans or lock.")
        if role_of(room, user_id) not in MODERATORS:
            raise Forbidden("Only the chat's owner and moderators can do that.")
        return room

    async def user_named(self, username: Any, field: str | None = None) -> dict:
        """The user (brief) of that name: 400 naming `field` when given, else 404."""
        doc = await self.store.user_by_name(username) if isinstance(username, str) else None
        if doc is None:
            if field:
                raise InvalidField(field, "No user with that username.")
            raise NotFound(username)
        return {"id": str(doc["_id"]), "username": doc["username"]}

    async def announce(self, uri: str, op: str, user: dict, by: dict, role: str | None = None) -> None:
        event = {"type": "member", "op": op, "user": brief(user), "by": brief(by)}
        if role:
            event["role"] = role
        if self.people is not None:
            self.people.changed(uri)
        await self.hub.append_event(uri, event)

    async def join(self, user: dict, uri: str) -> dict:
        """Join by the room's link: refused when banned, or when the room is locked."""
        room, joined = await self.store.add_member(uri, user["id"], by_link=True)
        if joined:
            await self.announce(uri, "join", user, user)
        return room

    async def add(self, by: dict, uri: str, username: Any) -> tuple[dict, dict]:
        """An owner or moderator adds a user by name, locked room or not: (room, user)."""
        await self.moderated_room(uri, by["id"])
        user = await self.user_named(username, "username")
        if (user["id"], by["id"]) in await self.store.blocks_among([user["id"], by["id"]]):
            # Without saying that it is a block.
            raise Forbidden(f"{user['username']} cannot be added to this chat.")
        try:
            room, joined = await self.store.add_member(uri, user["id"], by_link=False)
        except Banned:
            raise Forbidden(f"{user['username']} is banned from this chat: unban them first.") from None
        if joined:
            await self.announce(uri, "join", user, by)
        return room, user

    def check_rank(self, room: dict, by: dict, user: dict) -> None:
        """The owner acts on anyone; a moderator on plain members only."""
        if ROLES.index(role_of(room, by["id"])) >= ROLES.index(role_of(room, user["id"])):
            raise Forbidden("Moderators can act on members only, and nobody on the owner.")

    async def remove(self, by: dict, uri: str, username: str) -> None:
        """Leave (your own name) or remove a member (owner or moderator)."""
        room = await self.member_room(uri, by["id"])
        user = await self.user_named(username)
        if user["id"] == by["id"]:
            if room["owner"] == by["id"]:
                raise Forbidden("The owner cannot leave: make another member the owner first.")
            op = "leave"
        else:
            if role_of(room, by["id"]) not in MODERATORS:
                raise Forbidden("Only the chat's owner and moderators can remove members.")
            self.check_rank(room, by, user)
            op = "remove"
        if await self.store.remove_member(uri, user["id"]) is None:
            raise NotFound(username)
        self.hub.expel(uri, user["id"], "left the chat" if op == "leave" else "removed from the chat")
        await self.announce(uri, op, user, by)

    async def ban(self, by: dict, uri: str, username: Any) -> None:
        """Ban a user (a member or not): removed, and refused on every path."""
        room = await self.moderated_room(uri, by["id"])
        user = await self.user_named(username, "username")
        if user["id"] == by["id"]:
            raise Forbidden("You cannot ban yourself.")
        self.check_rank(room, by, user)
        if await self.store.remove_member(uri, user["id"], ban=True) is None:
            return  # banned already
        self.hub.expel(uri, user["id"], "banned from the chat")
        await self.announce(uri, "ban", user, by)

    async def unban(self, by: dict, uri: str, username: str) -> None:
        await self.moderated_room(uri, by["id"])
        user = await self.user_named(username)
        if not await self.store.unban(uri, user["id"]):
            raise NotFound(username)
        await self.announce(uri, "unban", user, by)

    async def set_role(self, by: dict, uri: str, username: str, role: Any) -> None:
        """The owner makes a member a moderator or a member again, or hands the room over."""
        if role not in ROLES:
            raise InvalidField("role", "Must be one of: moderator, member, owner.")
        room = await self.member_room(uri, by["id"])
        if room["owner"] != by["id"]:
            raise Forbidden("Only the chat's owner can change roles.")
        user = await self.user_named(username)
        if user["id"] not in room["members"]:
            raise NotFound(username)
        if role_of(room, user["id"]) == role:
            return
        if user["id"] == by["id"]:
            raise Forbidden("The owner stays the owner until they hand the room to another member.")
        if role == "owner":
            changed = await self.store.hand_over(uri, by["id"], user["id"])
        else:
            changed = await self.store.set_role(uri, user["id"], role)
        if not changed:
            raise NotFound(username)
        await self.announce(uri, "role", user, by, role)

    async def set_info(self, by: dict, uri: str, name: str | None, topic: str | None) -> None:
        """The owner or a moderator names the room or sets its topic: a `room` event."""
        room = await self.moderated_room(uri, by["id"])
        info = {"name": room.get("name") if name is None else name,
                "topic": room.get("topic", "") if topic is None else topic}
        if info == {"name": room.get("name"), "topic": room.get("topic", "")}:
            return
        await self.store.set_room_info(uri, info)
        await self.hub.append_event(uri, {"type": "room", **info, "by": brief(by)})

    async def set_locked(self, by: dict, uri: str, locked: bool) -> None:
        room = await self.moderated_room(uri, by["id"])
        if bool(room.get("locked")) != locked:
            await self.store.set_locked(uri, locked)

    # Messages -------------------------------------------------------------

    async def target(self, user: dict, uri: str, message_id: str) -> tuple[dict, dict]:
        """(room, message as it is now) for a member acting on a message of this room."""
        room = await self.member_room(uri, user["id"])
        message = await self.store.message_by_id(uri, message_id)
        if message is None:
            raise NotFound(message_id)
        return room, await self.settle(uri, message)

    async def change(self, uri: str, message: dict, event: dict) -> dict:
        """Append an event about `message` and fold it into the message's state."""
        event.update(target_seq=message["seq"], target_id=str(message["_id"]))
        # Counted before the append and never uncounted if it fails: an event
        # that may be stored keeps its message checked by history pages.
        await self.store.count_change(message, 1)
        await self.hub.append_event(uri, event)
        return await self.settle(uri, message, saves_change=True)

    async def edit(self, user: dict, uri: str, message_id: str, text: Any) -> dict:
        text = self.hub.check_text(text)
        _, message = await self.target(user, uri, message_id)
        if message["user_id"] != user["id"]:
            raise Forbidden("You can only edit your own messages.")
        if message.get("deleted"):
            raise NotFound(message_id)
        if text != message["message"]:
            await self.hub.check_rate(user)
            rendered = {} if self.composer is None else await self.composer.prepare(
                user, uri, text, posting=False)
            message = await self.change(uri, message, {
                "type": "edit", "user": brief(user), "user_id": user["id"], "message": text,
                "version": message.get("version", 0) + 1, **rendered})
        return public_message(message)

    async def delete(self, user: dict, uri: str, message_id: str) -> None:
        room, message = await self.target(user, uri, message_id)
        if message["user_id"] != user["id"] and role_of(room, user["id"]) not in MODERATORS:
            raise Forbidden("You can only delete your own messages.")
        if message.get("deleted"):
            # Deleted already; erasing again heals a process that died before it erased.
            await self.store.erase_edits(uri, message["seq"])
            return
        await self.change(uri, message, {"type": "delete", "by": brief(user), "user_id": user["id"]})

    async def react(self, user: dict, uri: str, message_id: str, emoji: Any, add: bool) -> None:
        emoji = check_emoji(emoji)
        _, message = await self.target(user, uri, message_id)
        if message.get("deleted"):
            raise NotFound(message_id)
        reactions = message.get("reactions", {})
        if (user["username"] in reactions.get(emoji, ())) == add:
            return  # as asked already
        if add and emoji not in reactions and len(reactions) >= MAX_REACTIONS:
            raise InvalidField("emoji", f"A message can have at most {MAX_REACTIONS} different reactions.")
        await self.hub.check_rate(user)
        await self.change(uri, message, {
            "type": "reaction", "emoji": emoji, "op": "add" if add else "remove",
            "user": brief(user), "user_id": user["id"]})

    async def current(self, docs: list[dict]) -> list[dict]:
        """A history page with the stored events of its messages that have
        changes in flight folded in (their writers have not saved them yet, or
        died first)."""
        messages = [doc for doc in docs if doc.get("type") is None and doc.get("changing")]
        if not messages:
            return docs
        unsaved: dict[int, list[dict]] = {}
        for event in await self.store.unsaved_events(messages):
            unsaved.setdefault(event["target_seq"], []).append(event)
        if not unsaved:
            return docs
        return [{**doc, **fold(doc, unsaved[doc["seq"]])}
                if doc.get("type") is None and doc["seq"] in unsaved else doc for doc in docs]

    async def settle(self, uri: str, message: dict, saves_change: bool = False) -> dict:
        """The message with every stored event about it folded in, and saved so;
        `saves_change`: the caller's counted change is among them."""
        if not saves_change and not message.get("changing"):
            # No change in flight: every stored event about it is in its state
            # (an event is stored only once counted, and uncounted once saved).
            return message
        for _ in range(SETTLE_ATTEMPTS):
            events = await self.store.events_about(
                uri, message["seq"], message.get("last_event_seq", message["seq"]))
            if not events:
                if saves_change:  # another writer saved it: only the count is left
                    await self.store.count_change(message, -1)
                return message
            state = fold(message, events)
            if await self.store.save_message_state(message, state, saves_change):
                if state["deleted"]:
                    await self.store.erase_edits(uri, message["seq"])
                return {**message, **state}
            message = await self.store.message_at(uri, message["seq"])
        raise Unavailable(f"message {message['_id']} changes faster than it can be saved")
