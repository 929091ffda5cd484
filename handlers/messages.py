"""A room's messages: post one, page through the history."""

from __future__ import annotations

from chat.store import public_event
from handlers.base import ApiHandler, field_error

DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_CLIENT_ID = 64


class MessagesHandler(ApiHandler):
    async def post(self, uri: str) -> None:
        user = self.require_user()
        data = self.body()
        if "message" not in data:
            raise field_error("message", "This field is required.")
        client_id = self.string_field(data, "client_id", required=False,
                                      max_length=MAX_CLIENT_ID) or None
        message = await self.services.hub.post(user, uri, data["message"], client_id)
        self.reply({"status": "SUCCESS", **message})

    async def get(self, uri: str) -> None:
        user = self.require_user()
        after = self.int_argument("after")
        before = self.int_argument("before", minimum=1)
        limit = self.int_argument("limit", minimum=1, maximum=MAX_PAGE, default=DEFAULT_PAGE)
        if after is not None and before is not None:
            raise field_error("before", "Give either 'after' or 'before', not both.")
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
