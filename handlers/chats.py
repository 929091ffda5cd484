"""Chat rooms: create, list mine, show, join (the tutorial's /api/chats/)."""

from __future__ import annotations

from chat.store import iso
from handlers import models
from handlers.base import ApiHandler, detail, endpoint, field_error


async def room_view(services, room: dict) -> dict:
    users = await services.store.users_by_id(room["members"])
    members = [users[i] for i in room["members"] if i in users]
    return {
        "uri": room["uri"],
        "owner": users.get(room["owner"]),
        "members": members,
        "seq": room["seq"],
        "created": iso(room["created"]),
        "updated": iso(room["updated"]),
    }


class ChatsHandler(ApiHandler):
    @endpoint("Start a chat", "createChat", response=models.ChatCreated, errors=(503,))
    async def post(self) -> None:
        user = self.require_user()
        room = await self.services.store.create_room(user["id"])
        self.reply({"status": "SUCCESS", "uri": room["uri"],
                    "message": "New chat session created"})

    @endpoint("My chats, newest activity first", "listChats",
              response=list[models.ChatSummary], errors=(503,))
    async def get(self) -> None:
        user = self.require_user()
        rooms = await self.services.store.rooms_of(user["id"])
        self.reply([{"uri": r["uri"], "owner": r["owner"], "members": len(r["members"]),
                     "seq": r["seq"], "updated": iso(r["updated"])} for r in rooms])


class ChatHandler(ApiHandler):
    @endpoint("A chat with its owner and members", "getChat", response=models.Chat,
              errors=(403, 404, 503))
    async def get(self, uri: str) -> None:
        user = self.require_user()
        room = await self.room_or_404(uri)
        if user["id"] not in room["members"]:
            raise detail(403, "You are not a member of this chat.")
        self.reply(await room_view(self.services, room))

    @endpoint("Join; the owner may add a user by username", "joinChat", body=models.Join,
              body_required=False, response=models.Joined, errors=(404, 503))
    async def patch(self, uri: str, body: models.Join) -> None:
        user = self.require_user()
        store = self.services.store
        room = await self.room_or_404(uri)
        joining = user
        username = body.username
        if username and username != user["username"]:
            if room["owner"] != user["id"]:
                raise detail(403, "Only the chat's owner can add other users.")
            other = await store.user_by_name(username)
            if other is None:
                raise field_error("username", "No user with that username.")
            joining = {"id": str(other["_id"]), "username": other["username"]}
        room = await store.add_member(uri, joining["id"])
        view = await room_view(self.services, room)
        self.reply({"status": "SUCCESS", "uri": uri, "members": view["members"],
                    "message": f"{joining['username']} joined the chat",
                    "user": next(m for m in view["members"] if m["id"] == joining["id"])})

    async def room_or_404(self, uri: str) -> dict:
        room = await self.services.store.room(uri)
        if room is None:
            raise detail(404, "Not found.")
        return room
