"""A room's messages: post one, page through the history, edit, delete, react."""

from __future__ import annotations

from chat.store import public_event
from handlers import models
from handlers.base import ApiHandler, endpoint


class MessagesHandler(ApiHandler):
    @endpoint("Post a message", "postMessage", body=models.NewMessage, response=models.Posted,
              errors=(403, 404, 429, 503))
    async def post(self, uri: str, body: models.NewMessage) -> None:
        user = self.require_user()
        message = await self.services.files.post(user, uri, body.message, body.client_id,
                                                 body.attachments)
        self.reply({"status": "SUCCESS", **message})

    @endpoint("History, oldest first: messages in their current state (edited text, "
              "reactions, deleted tombstones); with events=1 every room event in seq order; "
              "around=seq: the history around it",
              "listMessages", query=models.MessagesQuery, response=models.MessagePage,
              errors=(403, 404, 503))
    async def get(self, uri: str, query: models.MessagesQuery) -> None:
        user = self.require_user()
        after, before, limit = query.after, query.before, query.limit
        events = query.events == 1
        store = self.services.store
        await store.check_member(uri, user["id"])
        has_more_after = None
        if query.around is not None:
            # Half before, the seq itself, the rest after: a search result in context.
            older = await store.messages_before(uri, query.around + 1, (limit + 1) // 2 + 1,
                                                events)
            has_more = len(older) > (limit + 1) // 2
            older = older[1:] if has_more else older
            newer = await store.messages_after(uri, query.around, limit - len(older) + 1, events)
            has_more_after = len(newer) > limit - len(older)
            docs = older + newer[:limit - len(older)]
        elif after is not None:
            docs = await store.messages_after(uri, after, limit + 1, events)
            has_more = len(docs) > limit
            docs = docs[:limit]
        else:
            docs = await store.messages_before(uri, before, limit + 1, events)
            has_more = len(docs) > limit
            docs = docs[-limit:] if has_more else docs
        docs = await self.services.events.current(docs)
        page = {"uri": uri, "messages": [public_event(d) for d in docs], "has_more": has_more}
        if has_more_after is not None:
            page["has_more_after"] = has_more_after
        self.reply(page)


class MessageHandler(ApiHandler):
    @endpoint("Edit your own message", "editMessage", body=models.EditBody,
              response=models.Message, errors=(404, 429, 503))
    async def patch(self, uri: str, message_id: str, body: models.EditBody) -> None:
        user = self.require_user()
        message = await self.services.events.edit(user, uri, message_id, body.message)
        self.services.previews.schedule(user, uri, message)
        self.reply(message)

    @endpoint("Delete your own message, or any as the chat's owner or a moderator: it keeps "
              "its id and seq, its text is erased", "deleteMessage", status=204,
              errors=(404, 429, 503))
    async def delete(self, uri: str, message_id: str) -> None:
        user = self.require_user()
        await self.services.events.delete(user, uri, message_id)
        self.set_status(204)
        self.finish()


class ReactionHandler(ApiHandler):
    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Not UTF-8: U+FFFD stands in, so the emoji is refused naming its field
        # (and a message id so garbled is not found) instead of a bare 400.
        return value.decode("utf-8", "replace")

    @endpoint("Add your reaction (one emoji)", "addReaction", status=204,
              errors=(400, 404, 429, 503))
    async def put(self, uri: str, message_id: str, emoji: str) -> None:
        user = self.require_user()
        await self.services.events.react(user, uri, message_id, emoji, add=True)
        self.set_status(204)
        self.finish()

    @endpoint("Remove your reaction", "removeReaction", status=204, errors=(400, 404, 429, 503))
    async def delete(self, uri: str, message_id: str, emoji: str) -> None:
        user = self.require_user()
        await self.services.events.react(user, uri, message_id, emoji, add=False)
        self.set_status(204)
        self.finish()
