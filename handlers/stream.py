"""The user stream: /ws/, one socket for every chat of its user (chat/streams.py)."""

from __future__ import annotations

import asyncio
import logging

from chat.frames import encode, text_frame
from chat.store import Unavailable
from handlers import models
from handlers.base import Services, decoded_arguments, validated
from handlers.socket import CLOSE_INTERNAL_ERROR, ClientSocket

log = logging.getLogger("chat.socket")


class UserStreamSocket(ClientSocket):
    frames = models.STREAM_FRAMES

    def initialize(self, services: Services):
        super().initialize(services)
        self.stream = services.streams.stream(self)

    async def authorise(self) -> None:
        validated(models.StreamQuery, decoded_arguments(self.request.query_arguments),
                  self.services.config, strict=False)
        await self.admit()

    async def open(self) -> None:
        self.limit_buffer()
        self.joined = True
        try:
            await asyncio.wait_for(self.services.streams.open(self.stream),
                                   self.services.config.ws_ready_timeout)
        except TimeoutError:
            self.close_with(CLOSE_INTERNAL_ERROR, "chats not ready; reconnect")
        except Unavailable:
            self.close_with(CLOSE_INTERNAL_ERROR, "database unavailable")
        except Exception:
            log.exception("opening the user stream failed", extra=self.log_context())
            self.close_with(CLOSE_INTERNAL_ERROR, "server error")

    def gone(self) -> None:
        self.services.streams.close(self.stream)
        if self.stream.focus is not None:
            self.services.notifier.set_focus(self.user["id"], str(id(self.stream)), None)

    def not_a_member(self, uri: str | None) -> None:
        # The stream stays: only that chat is refused (its chat_gone comes from the event).
        self.send_error_frame("invalid", "uri: not a chat of yours.", uri=uri)

    async def handle_message(self, frame: models.StreamSendMessage) -> None:
        self.services.streams.member(self.stream, frame.uri)
        await self.post_frame(frame.uri, frame)

    async def handle_typing(self, frame: models.StreamTyping) -> None:
        self.services.streams.member(self.stream, frame.uri)
        await self.services.limits.users.signal(self.user)
        self.services.hub.signals.typing_frame(frame.uri, self.user, frame.stop)

    async def handle_read(self, frame: models.StreamMarkRead) -> None:
        self.services.streams.member(self.stream, frame.uri)
        await self.services.limits.users.signal(self.user)
        await self.services.hub.mark_read(self.user, frame.uri, frame.seq)

    async def handle_subscribe(self, frame: models.Subscribe) -> None:
        await self.services.limits.users.signal(self.user)
        seq = await self.services.streams.subscribe(self.stream, frame.uri, frame.since)
        if frame.uri not in self.stream.subscribed:
            return  # gone while it caught up
        self.send_frame(text_frame(encode({"type": "ready", "uri": frame.uri, "seq": seq})))
        for payload in self.services.hub.signals.welcome(frame.uri):
            self.send_frame(text_frame(payload))

    async def handle_unsubscribe(self, frame: models.Unsubscribe) -> None:
        self.services.streams.unsubscribe(self.stream, frame.uri)

    async def handle_focus(self, frame: models.FocusFrame) -> None:
        """The chat this client shows and is visible (pushes wait while it is)."""
        if frame.uri is not None:
            self.services.streams.member(self.stream, frame.uri)
        self.stream.focus = frame.uri
        self.services.notifier.set_focus(self.user["id"], str(id(self.stream)), frame.uri)
