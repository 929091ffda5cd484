"""A room's messages: post one, page through the history."""

from __future__ import annotations

from chat.store import public_event
from handlers import models
from handlers.base import ApiHandler, endpoint


class MessagesHandler(ApiHandler):
    @endpoint("Post a message", "postMessage", body=models.NewMessage, response=models.Posted,
              errors=(403, 404, 429, 503))
    async def post(self, uri: str, body: models.NewMessage) -> None:
        user = self.require_user()
        message = await self.services.hub.post(user, uri, body.message, body.client_id)
        self.reply({"status": "SUCCESS", **message})

    @endpoint("History, oldest first", "listMessages", query=models.MessagesQuery,
              response=models.MessagePage, errors=(403, 404, 503))
    async def get(self, uri: str, query: models.MessagesQuery) -> None:
        user = self.require_user()
        after, before, limit = query.after, query.before, query.limit
        store = self.services.store
        await store.check_member(uri, user["id"])
        if after is not None:
            docs = await store.messages_after(uri, after, limit + 1)
            has_more = len(docs) > limit
            docs = docs[:limit]
        else:
            docs = await store.messages_before(uri, before, limit + 1)
            has_more = len(docs) > limit
            docs = docs[-limit:] if has_more else docs
        self.reply({"uri": uri, "messages": [public_event(d) for d in docs],
                    "has_more": has_more})
