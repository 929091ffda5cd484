"""WebSockets: what every client socket shares, and the room's socket /ws/chats/<uri>/?since=N."""

from __future__ import annotations

import asyncio
import json
import logging

import pydantic
import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from chat.events import InvalidField
from chat.frames import encode, text_frame
from chat.hub import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    ENDED_BY,
    InvalidMessage,
    RateLimited,
    TooManySockets,
)
from chat.store import Banned, Forbidden, NotFound, NotMember, Unavailable
from handlers import models
from handlers.base import (
    ApiError,
    Authenticating,
    Services,
    api_error,
    decoded_arguments,
    detail,
    outermost_field,
    unauthorized,
    validated,
)

log = logging.getLogger("chat.socket")

CLOSE_INVALID_TEXT = 1007


class TextFrameChecking(tornado.websocket.WebSocketProtocol13):
    """Tornado drops the TCP connection when a text frame is not UTF-8; RFC 6455
    says to close it with 1007. (Compression is never negotiated, so the frame's
    data is the text itself.)

    A private method, because there is no public hook: Tornado decodes the
    frame and aborts the connection before on_message is called. Text frames
    are decoded twice (here and by Tornado): they are client frames, small and
    rate-limited, not the broadcast path."""

    def _handle_message(self, opcode: int, data: bytes):
        if opcode == 0x1:
            try:
                data.decode()
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_TEXT, "text frames must be UTF-8")
                return None
        return super()._handle_message(opcode, data)


class ClientSocket(Authenticating, tornado.websocket.WebSocketHandler):
    """What room sockets and user streams share: authentication before the
    upgrade, the origin check, the user's socket cap, frames in and out, slow
    consumers and closing."""

    def initialize(self, services: Services):
        self.services = services
        self.uri = ""
        self.user: dict = {}
        self.joined = False
        self.closing = False
        self.plain_stream = False

    def credentials(self) -> tuple[str | None, str | None]:
        token = self.get_query_argument("token", None)
        if token:
            return token, "query"
        return super().credentials()

    def check_xsrf_cookie(self) -> None:
        """No XSRF check: the socket takes GET only (its handshake is checked by
        origin), so any other method is answered 405, not 403."""

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        return None if protocol is None else TextFrameChecking(self, False, protocol.params)

    def check_origin(self, origin: str) -> bool:
        # Same-origin requests never get here (Tornado matches them to Host first).
        if origin in self.services.config.allowed_origins:
            return True
        self.refusal = "origin not allowed"  # for the access log line
        return False

    async def get(self, *args: str) -> None:
        """Authorise before the upgrade: refused handshakes answer with a status."""
        try:
            await self.authorise(*args)
        except (ApiError, NotFound, NotMember, Unavailable, TooManySockets) as failure:
            self.services.hub.release(self)
            error = (detail(429, "Too many open sockets for this user.", {"Retry-After": "10"})
                     if isinstance(failure, TooManySockets) else api_error(failure))
            self.refuse(error.status, error.body, error.headers)
            return
        await super().get(*args)

    async def admit(self) -> dict:
        """The user, authenticated and counted against their socket cap (at once,
        before any other await of the handshake)."""
        user = await self.authenticate()
        if user is None:
            raise unauthorized()
        self.user = user
        self.services.hub.admit(self)
        return user

    def refuse(self, status: int, body: dict, headers: dict[str, str]) -> None:
        """Answer the handshake with the API's error body ({detail} or {field: [...]})."""
        self.refusal = body.get("detail") or json.dumps(body)
        log.info("websocket refused: %s %s", status, self.refusal, extra=self.log_context())
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body))

    def on_finish(self) -> None:
        # A handshake refused after admit (by the origin check, say). Tornado
        # calls this for an accepted one too, before open(): that one stays counted.
        if self.ws_connection is None:
            self.services.hub.release(self)

    def limit_buffer(self) -> None:
        stream = self.ws_connection.stream
        stream.max_write_buffer_size = self.services.config.ws_send_buffer_bytes
        # The direct send() in send_frame is for plain sockets; TLS (Tornado's own
        # ssl_options, not nginx) must go through the stream.
        self.plain_stream = type(stream) is IOStream

    def parse_frame(self, text: str | bytes) -> models.Wire | None:
        """The client's frame as its model, or None after an error frame saying why."""
        frames = self.frames
        try:
            data = json.loads(text)
        except RecursionError:
            raw = text.encode() if isinstance(text, str) else text
            self.send_error_frame("invalid", f"{outermost_field(raw) or 'frame'}: Nested too deeply.")
            return None
        except ValueError:
            self.send_error_frame("invalid", "Frames must be JSON objects.")
            return None
        if not isinstance(data, dict) or data.get("type") not in frames.types:
            self.send_error_frame("invalid", "Unknown frame type; send one of: "
                                  f"{', '.join(sorted(frames.types))}.")
            return None
        uri = data.get("uri") if isinstance(data.get("uri"), str) else None
        try:
            models.refuse_unstorable_text(data, frames.fields)
            return frames.adapter.validate_python(
                data, strict=True, context={"config": self.services.config, "strict": True})
        except (pydantic.ValidationError, models.Invalid) as error:
            # skip=1: the frame union's errors start with its tag.
            problems = error.problems if isinstance(error, models.Invalid) else \
                models.field_errors(frames.union, error, skip=1)
            client_id = data.get("client_id") if "client_id" not in problems else None
            self.send_error_frame("invalid", "; ".join(
                f"{field}: {' '.join(messages)}" for field, messages in problems.items()),
                client_id if isinstance(client_id, str) else None,
                uri if "uri" not in problems else None)
            return None

    async def on_message(self, text: str | bytes) -> None:
        """Validate the frame, then hand it to handle_<its type>."""
        frame = self.parse_frame(text)
        if frame is None:
            return
        client_id = getattr(frame, "client_id", None)
        uri = getattr(frame, "uri", None)
        try:
            await getattr(self, f"handle_{frame.type}")(frame)
        except InvalidMessage as error:
            self.send_error_frame("invalid", f"{error.field}: {error}", client_id, uri)
        except RateLimited as error:
            self.send_error_frame("rate_limited", str(error), client_id, uri)
        except Unavailable:
            self.send_error_frame("unavailable", "The database is unavailable; try again shortly.",
                                  client_id, uri)
        except (NotFound, NotMember):
            self.not_a_member(uri)
        except Forbidden as error:  # a rule of the post (@room, a DM's block): it is not stored
            self.send_error_frame("forbidden", str(error), client_id, uri)

    def not_a_member(self, uri: str | None) -> None:
        self.close_with(CLOSE_POLICY, "no longer a member")
    async def post_frame(self, uri: str, frame: models.SendMessage) -> None:
        """A message frame, with its attachments, posted to uri."""
        try:
            await self.services.files.post(self.user, uri, frame.message, frame.client_id,
                                           frame.attachments)
        except InvalidField as error:  # its attachments
            self.send_error_frame("invalid", f"{error.field}: {error}", frame.client_id,
                                  getattr(frame, "uri", None))

    def send_error_frame(self, code: str, message: str, client_id: str | None = None,
                         uri: str | None = None) -> None:
        """An `error` frame (not RequestHandler.send_error, which answers HTTP errors)."""
        error = {"type": "error", "code": code, "detail": message}
        if client_id:
            error["client_id"] = client_id
        if uri:
            error["uri"] = uri
        self.send_frame(text_frame(encode(error)))

    def send_frame(self, frame: bytes) -> bool:
        """Write ready-made frame bytes; past the buffer limit, close with 4008."""
        if self.closing or self.ws_connection is None:
            return False
        stream = self.ws_connection.stream
        try:
            if self.plain_stream and not stream.writing() and not stream.closed():
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
        self.services.hub.release(self)
        if self.joined:
            self.gone()

    def gone(self) -> None:
        """The socket closed after it opened: leave what it joined."""

    def log_context(self) -> dict:
        return {"request_id": self.request_id, "user": self.user.get("username", ""),
                "room": self.uri}


class ChatSocket(ClientSocket):
    """The room's WebSocket: /ws/chats/<uri>/?since=N."""

    frames = models.ROOM_FRAMES

    def initialize(self, services: Services):
        super().initialize(services)
        self.since: int | None = None

    async def authorise(self, uri: str) -> None:
        query = validated(models.SocketQuery, decoded_arguments(self.request.query_arguments),
                          self.services.config, strict=False)
        self.since = query.since
        self.uri = uri
        user = await self.admit()
        await self.services.store.check_member(uri, user["id"])

    async def open(self, uri: str) -> None:
        self.limit_buffer()
        self.joined = True
        try:
            # Whatever keeps the join from finishing (a room that cannot start,
            # a read that hangs), the client is not left waiting: it reconnects.
            # Ending open() also lets Tornado read the client's close reply.
            seq = await asyncio.wait_for(self.services.hub.join(self, uri, self.since),
                                         self.services.config.ws_ready_timeout)
        except Banned:
            # Removed or banned since the handshake's check: nothing was sent.
            self.close_with(CLOSE_POLICY, ENDED_BY["ban"])
            return
        except (NotFound, NotMember):
            self.close_with(CLOSE_POLICY, ENDED_BY["remove"])
            return
        except TimeoutError:
            self.close_with(CLOSE_INTERNAL_ERROR, "room not ready; reconnect")
            return
        except Unavailable:
            self.close_with(CLOSE_INTERNAL_ERROR, "database unavailable")
            return
        except Exception:
            log.exception("joining the room failed", extra=self.log_context())
            self.close_with(CLOSE_INTERNAL_ERROR, "server error")
            return
        if self.closing:
            self.services.hub.leave(self, uri)  # closed while joining
            return
        if self.since is not None:
            # Only a client that asked for a catch-up is told where it ends, and
            # gets signals: a plain client (chatire's) takes every frame for a message.
            self.send_frame(text_frame(encode({"type": "ready", "seq": seq})))
            for payload in self.services.hub.signals.welcome(uri):
                self.send_frame(text_frame(payload))

    def gone(self) -> None:
        self.services.hub.leave(self, self.uri)

    async def handle_message(self, frame: models.SendMessage) -> None:
        await self.post_frame(self.uri, frame)

    async def handle_typing(self, frame: models.Typing) -> None:
        await self.services.limits.users.signal(self.user)
        self.services.hub.signals.typing_frame(self.uri, self.user, frame.stop)

    async def handle_read(self, frame: models.MarkRead) -> None:
        await self.services.limits.users.signal(self.user)
        await self.services.hub.mark_read(self.user, self.uri, frame.seq)

