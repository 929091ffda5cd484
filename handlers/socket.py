"""The room's WebSocket: /ws/chats/<uri>/?since=N."""

from __future__ import annotations

import json
import logging

import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from chat.hub import CLOSE_SLOW_CONSUMER, InvalidMessage, RateLimited, encode, text_frame
from chat.store import NotFound, NotMember, Unavailable
from handlers.base import MAX_INT, ApiError, Authenticating, Services, api_error, detail, unauthorized

log = logging.getLogger("chat.socket")

MAX_CLIENT_ID = 64


class ChatSocket(Authenticating, tornado.websocket.WebSocketHandler):
    def initialize(self, services: Services):
        self.services = services
        self.uri = ""
        self.user: dict = {}
        self.since: int | None = None
        self.joined = False
        self.closing = False
        self.plain_stream = False

    def credentials(self) -> tuple[str | None, str | None]:
        token = self.get_query_argument("token", None)
        if token:
            return token, "query"
        return super().credentials()

    def check_origin(self, origin: str) -> bool:
        # Same-origin requests never get here (Tornado matches them to Host first).
        if origin in self.services.config.allowed_origins:
            return True
        self.refusal = "origin not allowed"  # for the access log line
        return False

    async def get(self, uri: str) -> None:
        """Authorise before the upgrade: refused handshakes answer with a status."""
        try:
            await self.authorise(uri)
        except (ApiError, NotFound, NotMember, Unavailable) as failure:
            error = api_error(failure)
            self.refuse(uri, error.status, error.body.get("detail", "Refused."), error.headers)
            return
        await super().get(uri)

    async def authorise(self, uri: str) -> None:
        user = await self.authenticate()
        if user is None:
            raise unauthorized()
        since = self.get_query_argument("since", None)
        if since is not None:
            # ASCII digits only ("²".isdigit() is true), and within MongoDB's
            # 8-byte integers: a bigger one fails the catch-up query.
            if not (since.isascii() and since.isdigit()) or len(since) > 19 \
                    or int(since) > MAX_INT:
                raise detail(400, "since must be a whole number >= 0.")
            self.since = int(since)
        await self.services.store.check_member(uri, user["id"])
        if self.services.hub.count_user_sockets(user["id"]) >= self.services.config.max_sockets_per_user:
            raise detail(429, "Too many open sockets for this user.", {"Retry-After": "10"})
        self.user = user
        self.uri = uri

    def refuse(self, uri: str, status: int, message: str, headers: dict[str, str]) -> None:
        self.refusal = message
        log.info("websocket refused: %s %s (room %s)", status, message, uri)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"detail": message}))

    async def open(self, uri: str) -> None:
        stream = self.ws_connection.stream
        stream.max_write_buffer_size = self.services.config.ws_send_buffer_bytes
        # The direct send() in send_frame is for plain sockets; TLS (Tornado's own
        # ssl_options, not nginx) must go through the stream.
        self.plain_stream = type(stream) is IOStream
        self.joined = True
        try:
            seq = await self.services.hub.join(self, uri, self.since)
        except Unavailable:
            self.close_with(1011, "database unavailable")
            return
        if self.closing:
            self.services.hub.leave(self, uri)  # closed while joining
            return
        self.send_frame(text_frame(encode({"type": "ready", "seq": seq})))

    async def on_message(self, text: str | bytes) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            self.send_error("invalid", "Frames must be JSON objects.")
            return
        if not isinstance(frame, dict) or frame.get("type") != "message":
            self.send_error("invalid", "Unknown frame type; send {\"type\": \"message\", ...}.")
            return
        client_id = frame.get("client_id")
        if client_id is not None and (not isinstance(client_id, str)
                                      or not 0 < len(client_id) <= MAX_CLIENT_ID):
            self.send_error("invalid", f"client_id must be a string of 1 to {MAX_CLIENT_ID} characters.")
            return
        try:
            await self.services.hub.post(self.user, self.uri, frame.get("message"), client_id)
        except InvalidMessage as error:
            self.send_error("invalid", f"message: {error}", client_id)
        except RateLimited as error:
            self.send_error("rate_limited", str(error), client_id)
        except Unavailable:
            self.send_error("unavailable", "The database is unavailable; try again shortly.",
                            client_id)
        except (NotFound, NotMember):
            self.close_with(1008, "no longer a member")

    def send_error(self, code: str, message: str, client_id: str | None = None) -> None:
        error = {"type": "error", "code": code, "detail": message}
        if client_id:
            error["client_id"] = client_id
        self.send_frame(text_frame(encode(error)))

    def send_frame(self, frame: bytes) -> bool:
        """Write ready-made frame bytes; past the buffer limit, close with 4008."""
        if self.closing or self.ws_connection is None:
            return False
        stream = self.ws_connection.stream
        try:
            if self.plain_stream and not stream._write_buffer and not stream.closed():
                # Nothing queued: hand the bytes straight to the socket. IOStream.write
                # would do the same send() but also make a Future whose resolution is a
                # loop callback, per socket per message: most of a broadcast's cost.
                # The stream's byte counters move as if it had written them itself.
                try:
                    sent = stream.socket.send(frame)
                except OSError:
                    sent = 0  # would block, or an error that stream.write reports and handles
                stream._total_write_index += sent
                stream._total_write_done_index += sent
                if sent == len(frame):
                    return True
                frame = frame[sent:]
            stream.write(frame)
        except StreamBufferFullError:
            stream.max_write_buffer_size = None  # room for the close frame
            self.services.metrics.slow_closes.inc()
            log.info("closing slow consumer %s in room %s", self.user.get("username"), self.uri)
            self.close_with(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        except StreamClosedError:
            return False
        return True

    def backlogged(self) -> bool:
        return self.ws_connection is not None and self.ws_connection.stream.writing()

    async def drain(self) -> bool:
        if self.closing or self.ws_connection is None:
            return False
        try:
            await self.ws_connection.stream.write(b"")  # resolves once all before it is sent
        except StreamClosedError:
            return False
        return not self.closing

    def close_with(self, code: int, reason: str) -> None:
        if not self.closing:
            log.info("closing socket: %d %s", code, reason, extra=self.log_context())
            self.closing = True
            self.close(code, reason)

    def on_close(self) -> None:
        if not self.closing:
            log.info("socket closed by the client: %s", self.close_code, extra=self.log_context())
        self.closing = True
        if self.joined:
            self.services.hub.leave(self, self.uri)

    def log_context(self) -> dict:
        return {"request_id": self.request_id, "user": self.user.get("username", ""),
                "room": self.uri}

