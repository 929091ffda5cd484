"""Direct messages and blocks: /api/dms/ and /api/blocks/."""

from __future__ import annotations

from handlers import models
from handlers.base import ApiHandler, endpoint
from handlers.chats import room_view


class DmsHandler(ApiHandler):
    @endpoint("The direct message of me and username (made on the first call, the same "
              "whoever asks; with myself: my notes)", "startDm", body=models.StartDm,
              response=models.Chat, errors=(403, 404, 503))
    async def post(self, body: models.StartDm) -> None:
        user = self.require_user()
        room = await self.services.dms.start(user, body.username)
        self.reply(await room_view(self.services, room, user["id"]))


class BlocksHandler(ApiHandler):
    @endpoint("Whom I blocked", "listBlocks", response=list[models.Blocked], errors=(503,))
    async def get(self) -> None:
        user = self.require_user()
        self.reply(await self.services.blocks.listed(user))


class BlockHandler(ApiHandler):
    @endpoint("Block a user: they cannot start a DM with me, post in our DM or add me to a "
              "chat", "blockUser", status=204, errors=(404, 503))
    async def put(self, username: str) -> None:
        user = self.require_user()
        await self.services.blocks.block(user, username)
        self.set_status(204)
        self.finish()

    @endpoint("Unblock a user", "unblockUser", status=204, errors=(404, 503))
    async def delete(self, username: str) -> None:
        user = self.require_user()
        await self.services.blocks.unblock(user, username)
        self.set_status(204)
        self.finish()
