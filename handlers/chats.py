"""Chat rooms: create, list mine, show, join (the tutorial's /api/chats/), mark read."""

from __future__ import annotations

from chat.events import MODERATORS, role_of
from chat.store import iso
from chat.store.notifications import default_level
from handlers import models
from handlers.base import ApiHandler, endpoint


async def room_view(services, room: dict, viewer_id: str) -> dict:
    """A room with its members and their roles; its bans for the owner and moderators."""
    moderating = role_of(room, viewer_id) in MODERATORS
    banned = room.get("banned", []) if moderating else []
    users = await services.store.users_by_id(room["members"] + banned)
    members = [{**users[i], "role": role_of(room, i)} for i in room["members"] if i in users]
    # Reads are written at most once a second: this process may know newer ones.
    read = services.hub.signals.read_positions(room["uri"], room.get("last_read"))
    view = {
        "uri": room["uri"],
        "kind": room.get("kind", "room"),
        "name": room.get("name"),
        "topic": room.get("topic", ""),
        "owner": users.get(room["owner"]) if room["owner"] else None,
        "members": members,
        "locked": bool(room.get("locked")),
        "seq": room["seq"],
        "created": iso(room["created"]),
        "updated": iso(room["updated"]),
        "online": services.hub.signals.online(room["uri"]),
        "read": {member["username"]: read[member["id"]] for member in members
                 if member["id"] in read},
        "notifications": (room.get("levels") or {}).get(viewer_id)
        or default_level(room.get("kind", "room")),
    }
    if moderating:
        view["bans"] = [users[i] for i in banned if i in users]
    return view


class ChatsHandler(ApiHandler):
    @endpoint("Start a chat, with a name and a topic if given", "createChat",
              body=models.NewChat, body_required=False, response=models.ChatCreated,
              errors=(429, 503))
    async def post(self, body: models.NewChat) -> None:
        user = self.require_user()
        await self.services.limits.users.room_created(user)
        room = await self.services.store.create_room(user["id"], body.name, body.topic)
        # No member event starts a chat: the notice a join sends gives it to the
        # starter's user streams, on every process.
        self.services.hub.notify({"type": "joined", "uri": room["uri"], "user_id": user["id"],
                                  "seq": 0})
        self.reply({"status": "SUCCESS", "uri": room["uri"],
                    "message": "New chat session created"})

    @endpoint("My chats, newest activity first: the first 200 as a list (as ever), or a "
              "page with has_more when asked with before= or paged=1", "listChats",
              query=models.ChatsQuery, response=list[models.ChatSummary] | models.ChatPage,
              errors=(503,))
    async def get(self, query: models.ChatsQuery) -> None:
        user = self.require_user()
        known = self.services.hub.signals.reads_of(user["id"])
        chats, more = await self.services.store.chat_list(
            user["id"], known, current=self.services.events.current, username=user["username"],
            before=query.before, limit=query.limit)
        if query.before is None and not query.paged:
            self.reply(chats)
        else:
            self.reply({"chats": chats, "has_more": more})


class ChatHandler(ApiHandler):
    @endpoint("A chat with its owner, members and their roles (and bans, for its owner and "
              "moderators)", "getChat", response=models.Chat, errors=(403, 404, 503))
    async def get(self, uri: str) -> None:
        user = self.require_user()
        room = await self.services.events.member_room(uri, user["id"])
        self.reply(await room_view(self.services, room, user["id"]))

    @endpoint("Join by the chat's link; an owner or moderator adds a user by username, "
              "locks the chat against joining by link, or sets its name or topic (then the "
              "answer is the chat)",
              "joinChat", body=models.Join, body_required=False,
              response=models.Joined | models.Chat, errors=(403, 404, 409, 429, 503))
    async def patch(self, uri: str, body: models.Join) -> None:
        user = self.require_user()
        await self.services.limits.users.member_change(user)
        events = self.services.events
        if body.name is not None or body.topic is not None:
            await events.set_info(user, uri, body.name, body.topic)
            room = await events.member_room(uri, user["id"])
            self.reply(await room_view(self.services, room, user["id"]))
            return
        if body.locked is not None:
            await events.set_locked(user, uri, body.locked)
            room = await events.member_room(uri, user["id"])
            self.reply(await room_view(self.services, room, user["id"]))
            return
        if body.username and body.username != user["username"]:
            room, joining = await events.add(user, uri, body.username)
        else:
            room, joining = await events.join(user, uri), user
        view = await room_view(self.services, room, user["id"])
        self.reply({"status": "SUCCESS", "uri": uri, "members": view["members"],
                    "message": f"{joining['username']} joined the chat",
                    "user": next(m for m in view["members"] if m["id"] == joining["id"])})


class ReadHandler(ApiHandler):
    @endpoint("I have read the chat up to seq (what the socket's read frame does)", "markRead",
              body=models.MarkReadBody, status=204, errors=(404, 429, 503))
    async def put(self, uri: str, body: models.MarkReadBody) -> None:
        user = self.require_user()
        await self.services.limits.users.signal(user)
        await self.services.store.check_member(uri, user["id"])
        await self.services.hub.mark_read(user, uri, body.seq)
        self.set_status(204)
        self.finish()


class MemberHandler(ApiHandler):
    @endpoint("The owner sets a member's role: moderator, member, or owner (handing the "
              "chat over; the old owner stays on as a moderator)", "setMemberRole",
              body=models.RoleBody, status=204, errors=(404, 409, 429, 503))
    async def put(self, uri: str, username: str, body: models.RoleBody) -> None:
        user = self.require_user()
        await self.services.limits.users.member_change(user)
        await self.services.events.set_role(user, uri, username, body.role)
        self.set_status(204)
        self.finish()

    @endpoint("Leave (your own username; not the owner), or remove a member (the owner, or "
              "a moderator removing a member)", "removeMember", status=204,
              errors=(404, 409, 429, 503))
    async def delete(self, uri: str, username: str) -> None:
        user = self.require_user()
        await self.services.limits.users.member_change(user)
        await self.services.events.remove(user, uri, username)
        self.set_status(204)
        self.finish()


class BansHandler(ApiHandler):
    @endpoint("Ban a user (owner or moderators): removed, and refused on every path",
              "banUser", body=models.BanBody, status=204, errors=(404, 409, 429, 503))
    async def post(self, uri: str, body: models.BanBody) -> None:
        user = self.require_user()
        await self.services.limits.users.member_change(user)
        await self.services.events.ban(user, uri, body.username)
        self.set_status(204)
        self.finish()


class BanHandler(ApiHandler):
    @endpoint("Lift a ban (owner or moderators)", "unbanUser", status=204,
              errors=(404, 409, 429, 503))
    async def delete(self, uri: str, username: str) -> None:
        user = self.require_user()
        await self.services.limits.users.member_change(user)
        await self.services.events.unban(user, uri, username)
        self.set_status(204)
        self.finish()
