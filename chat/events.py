"""Room events besides posts: edits, deletes, reactions, link previews, membership
and moderation.

Every change is an event in the room's log (DESIGN.md, "Data"): stored at the
room's next seq through the hub's one append path, then delivered like a
message, so a socket resuming with `since` replays it exactly once, in order.

The order of the two writes each change makes:
- Edit, delete, reaction, preview: the event first, then the message's state in place.
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
  room's members list shows it. Each permission change re-checks the ranks
  that allowed it in its update's filter (chat/store/rooms.py: `moderates`,
  `outranks`), so of two racing changes the second matches nothing and is
  answered 403/404 (what changed) or 409: the owner is always a member.
- Edits take their version from a counter on the message as they begin, and
  a new emoji holds one of the message's MAX_REACTIONS places before its
  event is stored, so neither depends on an earlier read. A change left in
  flight (a failed save, a dead process) is finished by chat/sweeper.py.
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


class Conflict(Exception):
    """The change lost a race with another (409): the room is not as it was read."""


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
        "preview": message.get("preview"),
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
            # Versions are handed out as edits begin, which may be stored in
            # another order: the state shows the highest.
            state["version"] = max(state["version"], event["version"])
            # Epoch seconds: nx-27017 stores a datetime given to $set as a string.
            state["edited"] = event["created"].timestamp()
        elif kind == "delete":
            state.update(message="", deleted=True, reactions={}, html="", mentions=[],
                         mentions_room=False, preview=None)
        elif kind == "preview":
            state["preview"] = event.get("preview")
        elif kind == "reaction":
            if event["emoji"] not in state["reactions"] and len(state["reactions"]) >= MAX_REACTIONS:
                continue  # past the cap: only a place given back and taken again in a race
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
        self.check_moderator(uri, room, {"id": user_id})
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
        room, joined = await self.store.add_member(uri, user["id"])
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
            room, joined = await self.store.add_member(uri, user["id"], by_id=by["id"])
        except Banned:
            raise Forbidden(f"{user['username']} is banned from this chat: unban them first.") from None
        if joined:
            await self.announce(uri, "join", user, by)
        return room, user

    def check_rank(self, room: dict, by: dict, user: dict) -> None:
        """The owner acts on anyone; a moderator on plain members only."""
        if ROLES.index(role_of(room, by["id"])) >= ROLES.index(role_of(room, user["id"])):
            raise Forbidden("Moderators can act on members only, and nobody on the owner.")

    async def refused(self, uri: str, check) -> Conflict:
        """Why a permission change matched nothing: `check` (which raises the
        answer: 403, 404) on the room as it is now; else the room changed under
        it and it may be tried again."""
        check(await self.room_now(uri))
        return Conflict("The chat changed meanwhile: look again and retry.")

    async def room_now(self, uri: str) -> dict:
        room = await self.store.room(uri)
        if room is None:
            raise NotFound(uri)
        return room

    async def remove(self, by: dict, uri: str, username: str) -> None:
        """Leave (your own name) or remove a member (owner or moderator)."""
        user = await self.user_named(username)
        leaving = user["id"] == by["id"]

        def check(room: dict) -> None:
            if by["id"] not in room["members"]:
                raise (Banned if by["id"] in room.get("banned", ()) else NotMember)(uri)
            if leaving:
                if room["owner"] == by["id"]:
                    raise Forbidden("The owner cannot leave: make another member the owner first.")
                return
            if role_of(room, by["id"]) not in MODERATORS:
                raise Forbidden("Only the chat's owner and moderators can remove members.")
            if user["id"] not in room["members"]:
                raise NotFound(username)
            self.check_rank(room, by, user)

        check(await self.room_now(uri))
        removed = await self.store.remove_member(uri, user["id"], None if leaving else by["id"])
        if removed is None:
            raise await self.refused(uri, check)
        op = "leave" if leaving else "remove"
        self.hub.expel(uri, user["id"], "left the chat" if leaving else "removed from the chat")
        await self.announce(uri, op, user, by)

    async def ban(self, by: dict, uri: str, username: Any) -> None:
        """Ban a user (a member or not): removed, and refused on every path."""
        user = await self.user_named(username, "username")
        if user["id"] == by["id"]:
            raise Forbidden("You cannot ban yourself.")

        def check(room: dict) -> None:
            self.check_moderator(uri, room, by)
            self.check_rank(room, by, user)

        room = await self.room_now(uri)
        check(room)
        if user["id"] in room.get("banned", ()):
            return  # banned already
        if await self.store.remove_member(uri, user["id"], by["id"], ban=True) is None:
            room = await self.room_now(uri)
            check(room)
            if user["id"] in room.get("banned", ()):
                return  # banned meanwhile, by another
            raise Conflict("The chat changed meanwhile: look again and retry.")
        self.hub.expel(uri, user["id"], "banned from the chat")
        await self.announce(uri, "ban", user, by)

    def check_moderator(self, uri: str, room: dict, by: dict) -> None:
        if by["id"] not in room["members"]:
            raise (Banned if by["id"] in room.get("banned", ()) else NotMember)(uri)
        if role_of(room, by["id"]) not in MODERATORS:
            raise Forbidden("Only the chat's owner and moderators can do that.")

    async def unban(self, by: dict, uri: str, username: str) -> None:
        user = await self.user_named(username)

        def check(room: dict) -> None:
            self.check_moderator(uri, room, by)
            if user["id"] not in room.get("banned", ()):
                raise NotFound(username)

        check(await self.room_now(uri))
        if not await self.store.unban(uri, by["id"], user["id"]):
            raise await self.refused(uri, check)
        await self.announce(uri, "unban", user, by)

    async def set_role(self, by: dict, uri: str, username: str, role: Any) -> None:
        """The owner makes a member a moderator or a member again, or hands the room over."""
        if role not in ROLES:
            raise InvalidField("role", "Must be one of: moderator, member, owner.")
        user = await self.user_named(username)

        def check(room: dict) -> None:
            if by["id"] not in room["members"]:
                raise (Banned if by["id"] in room.get("banned", ()) else NotMember)(uri)
            if room["owner"] != by["id"]:
                raise Forbidden("Only the chat's owner can change roles.")
            if user["id"] not in room["members"]:
                raise NotFound(username)

        room = await self.room_now(uri)
        check(room)
        if role_of(room, user["id"]) == role:
            return
        if user["id"] == by["id"]:
            raise Forbidden("The owner stays the owner until they hand the room to another member.")
        if role == "owner":
            changed = await self.store.hand_over(uri, by["id"], user["id"])
        else:
            changed = await self.store.set_role(uri, by["id"], user["id"], role)
        if not changed:
            raise await self.refused(uri, check)
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
        if bool(room.get("locked")) != locked and \
                not await self.store.set_locked(uri, by["id"], locked):
            raise await self.refused(uri, lambda room: self.check_moderator(uri, room, by))

    # Messages -------------------------------------------------------------

    async def target(self, user: dict, uri: str, message_id: str) -> tuple[dict, dict]:
        """(room, message as it is now) for a member acting on a message of this room."""
        room = await self.member_room(uri, user["id"])
        message = await self.store.message_by_id(uri, message_id)
        if message is None:
            raise NotFound(message_id)
        return room, await self.settle(uri, message)

    async def change(self, uri: str, message: dict, event: dict, counted: bool = False) -> dict:
        """Append an event about `message` and fold it into the message's state;
        `counted` when the caller counted the change as begun already."""
        event.update(target_seq=message["seq"], target_id=str(message["_id"]))
        # Counted before the append and never uncounted if it fails: an event
        # that may be stored keeps its message checked by history pages.
        if not counted:
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
            version = await self.store.begin_edit(message)
            message = await self.change(uri, message, {
                "type": "edit", "user": brief(user), "user_id": user["id"], "message": text,
                "version": version, **rendered}, counted=True)
        return public_message(message)

    async def delete(self, user: dict, uri: str, message_id: str) -> None:
        room, message = await self.target(user, uri, message_id)
        if message["user_id"] != user["id"] and role_of(room, user["id"]) not in MODERATORS:
            raise Forbidden("You can only delete your own messages.")
        if message.get("deleted"):
            # Deleted already; erasing again heals a process that died before it erased.
            await self.store.erase_edits(uri, message["seq"])
            await self.store.delete_message_files(uri, message["seq"])
            return
        await self.hub.check_rate(user)
        await self.change(uri, message, {"type": "delete", "by": brief(user), "user_id": user["id"]})
        # Its files (attachments, preview image) go with it; a ban keeps them.
        await self.store.delete_message_files(uri, message["seq"])

    async def react(self, user: dict, uri: str, message_id: str, emoji: Any, add: bool) -> None:
        emoji = check_emoji(emoji)
        _, message = await self.target(user, uri, message_id)
        if message.get("deleted"):
            raise NotFound(message_id)
        reactions = message.get("reactions", {})
        if (user["username"] in reactions.get(emoji, ())) == add:
            return  # as asked already
        full = InvalidField("emoji", f"A message can have at most {MAX_REACTIONS} different reactions.")
        if add and emoji not in reactions and len(reactions) >= MAX_REACTIONS:
            raise full
        await self.hub.check_rate(user)
        if add and not await self.store.begin_reaction(message, emoji, MAX_REACTIONS):
            raise full
        await self.change(uri, message, {
            "type": "reaction", "emoji": emoji, "op": "add" if add else "remove",
            "user": brief(user), "user_id": user["id"]}, counted=add)

    async def current(self, docs: list[dict]) -> list[dict]:
        """A history page (or the chat list's latest messages, of several rooms)
        with the stored events of its messages that have changes in flight
        folded in (their writers have not saved them yet, or died first)."""
        messages = [doc for doc in docs if doc.get("type") is None and doc.get("changing")]
        if not messages:
            return docs
        unsaved: dict[tuple[str, int], list[dict]] = {}
        for event in await self.store.unsaved_events(messages):
            unsaved.setdefault((event["room"], event["target_seq"]), []).append(event)
        if not unsaved:
            return docs
        return [{**doc, **fold(doc, unsaved[doc["room"], doc["seq"]])}
                if doc.get("type") is None and (doc["room"], doc["seq"]) in unsaved else doc
                for doc in docs]

    async def finish(self, message: dict) -> None:
        """Finish the changes left in flight on a message (a save that failed, a
        process that died): fold and save them, erase a deleted one's edits,
        and count none in flight. Idempotent, on any process (chat/sweeper.py)."""
        settled = await self.settle(message["room"], message)
        if settled.get("deleted"):
            await self.store.erase_edits(message["room"], message["seq"])
        await self.store.end_changes(message)  # unless a change began since it was read

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
            if state["deleted"]:
                # Before the state is saved: a process that dies in between
                # leaves the change counted, for the next change or the sweeper.
                await self.store.erase_edits(uri, message["seq"])
            if await self.store.save_message_state(message, state, saves_change):
                return {**message, **state}
            message = await self.store.message_at(uri, message["seq"])
        raise Unavailable(f"message {message['_id']} changes faster than it can be saved")
