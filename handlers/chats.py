"""Chat rooms: create, list mine, show, join (the tutorial's /api/chats/), mark read."""

from __future__ import annotations

from chat.hub import InvalidMessage
from chat.store import iso
from handlers import models
from handlers.base import ApiHandler, detail, endpoint, field_error


def read_positions(services, room: dict) -> dict[str, int]:
    """{user id: last_read_seq}: what MongoDB has, raised by what this process
    has not written yet (reads are written at most once a second)."""
    positions = dict(room.get("last_read") or {})
    for user_id, seq in services.hub.signals.read_positions(room["uri"]).items():
        positions[user_id] = max(seq, positions.get(user_id, 0))
    return positions


async def room_view(services, room: dict) -> dict:
    users = await services.store.users_by_id(room["members"])
    members = [users[i] for i in room["members"] if i in users]
    read = read_positions(services, room)
    return {
        "uri": room["uri"],
        "owner": users.get(room["owner"]),
        "members": members,
        "seq": room["seq"],
        "created": iso(room["created"]),
        "updated": iso(room["updated"]),
        "online": services.hub.signals.online(room["uri"]),
        "read": {member["username"]: read[member["id"]] for member in members
                 if member["id"] in read},
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
        known = self.services.hub.signals.reads_of(user["id"])
        self.reply(await self.services.store.chat_list(user["id"], known))


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


class ReadHandler(ApiHandler):
    @endpoint("I have read the chat up to seq (what the socket's read frame does)", "markRead",
              body=models.MarkReadBody, status=204, errors=(404, 503))
    async def put(self, uri: str, body: models.MarkReadBody) -> None:
        user = self.require_user()
        await self.services.store.check_member(uri, user["id"])
        try:
            await self.services.hub.mark_read(user, uri, body.seq)
        except InvalidMessage as error:
            raise field_error("seq", str(error)) from None
        self.set_status(204)
        self.finish()
