"""Chat server: flags -> config -> services -> serve -> graceful stop.

    python server.py [--config config.yaml] [--port 8888] [--embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import re
import signal
import socket as sockets
import sys
from pathlib import Path

import tornado.httpserver
import tornado.web

from chat import config as chat_config
from chat import embedded, logs
from chat.accounts import AccountService
from chat.avatars import Avatars
from chat.blocks import BlockList
from chat.broker import AmqpBroker, MemoryBroker
from chat.compose import Composer
from chat.dms import DirectMessages
from chat.events import RoomEvents
from chat.fetch import Fetcher
from chat.files import Files
from chat.hub import CLOSE_GOING_AWAY, Hub
from chat.limits import Limit
from chat.mail import Mailer
from chat.mentions import People
from chat.metrics import Metrics
from chat.notifications import Notifier
from chat.passwords import Passwords
from chat.previews import Previews
from chat.quotas import UserLimits
from chat.render import Renderer
from chat.search import MongoTextSearch
from chat.signals import Signals
from chat.store import Store, Unavailable
from chat.streams import Streams
from chat.sweeper import Sweeper
from chat.tokens import Tokens
from handlers import (
    account,
    admin,
    auth,
    chats,
    dms,
    files,
    messages,
    notifications,
    openapi,
    ops,
    pages,
    search,
    socket,
    stream,
)
from handlers.base import MalformedRequests, NotFoundHandler, SecurityHeaders, Services
from handlers.drain import InFlight

log = logging.getLogger("chat.server")

HERE = Path(__file__).resolve().parent
URI = r"([0-9a-f]{15})"
# Largest body Tornado reads at all; the API's own limit (413) is max_body_bytes.
READ_LIMIT = 1024 * 1024
SHUTDOWN_GRACE = 3.0
# How long a stop waits for HTTP requests in flight (systemd's TimeoutStopSec is 15 s).
DRAIN_LIMIT = 8.0
# The collector's thresholds (CPython's default: 700, 10, 10). While 10,000
# sockets opened at once the heap grew fast enough for 12 full collections of
# it, 4.7 s of pauses in a 12 s storm; with these, none (gen 0 pauses of about
# 18 ms, one gen 1 of about 0.2 s), all open in 5.4-9.4 s instead of 12-16 s,
# and 40% less server CPU (docs/benchmarks.md). gc.freeze() after start-up
# was measured too and changed nothing: what the collector scans in a storm is
# the new sockets, not the start-up objects, so it is not used.
GC_THRESHOLDS = (50_000, 20, 100)


class Limits:
    """Per client address (sign-ups; logins and token refreshes), and per user
    (`users`: chat/quotas.py), over every process (counted in MongoDB)."""

    def __init__(self, config: chat_config.Config, store: Store):
        self.signup = Limit(store, "signup", config.signup_per_ip_per_minute, 60.0)
        self.login = Limit(store, "login", config.login_per_ip_per_minute, 60.0)
        self.users = UserLimits(store, rooms_per_hour=config.user_rooms_per_hour,
                                member_changes_per_minute=config.user_member_changes_per_minute,
                                signals_per_minute=config.user_signals_per_minute,
                                logouts_per_minute=config.user_logouts_per_minute)
        self.reset_address = Limit(store, "reset_ip", config.password_reset_per_ip_per_hour, 3600.0)
        self.reset_account = Limit(store, "reset_account",
                                   config.password_reset_per_account_per_hour, 3600.0)


def routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [
        (r"/auth/users/create/", auth.RegisterHandler),
        (r"/auth/jwt/create/", auth.LoginHandler),
        (r"/auth/jwt/refresh/", auth.RefreshHandler),
        (r"/auth/logout/", auth.LogoutHandler),
        # Accounts and the operator (chat/accounts.py).
        (r"/auth/me/", account.MeHandler),
        (r"/auth/me/avatar/", account.AvatarUploadHandler),
        (r"/auth/password/", account.PasswordHandler),
        (r"/auth/password/reset/", account.PasswordResetHandler),
        (r"/auth/password/reset/confirm/", account.PasswordResetConfirmHandler),
        (r"/auth/sessions/others/", account.SignOutOthersHandler),
        (r"/api/avatars/([0-9a-f]{24})/([0-9a-f]{12})/", account.AvatarHandler),
        (r"/api/admin/invites/", admin.InvitesHandler),
        (r"/api/admin/invites/([A-Za-z0-9_-]+)/", admin.InviteHandler),
        (r"/api/admin/users/", admin.UsersHandler),
        (r"/api/admin/users/([^/]+)/", admin.UserHandler),
        (r"/api/admin/stats/", admin.StatsHandler),
        (r"/api/admin/audit/", admin.AuditHandler),
        (r"/api/chats/", chats.ChatsHandler),
        (rf"/api/chats/{URI}/", chats.ChatHandler),
        (rf"/api/chats/{URI}/messages/", messages.MessagesHandler),
        (rf"/api/chats/{URI}/read/", chats.ReadHandler),
        (rf"/api/chats/{URI}/messages/([^/]+)/", messages.MessageHandler),
        (rf"/api/chats/{URI}/messages/([^/]+)/reactions/([^/]+)/", messages.ReactionHandler),
        (rf"/api/chats/{URI}/members/([^/]+)/", chats.MemberHandler),
        (rf"/api/chats/{URI}/bans/", chats.BansHandler),
        (rf"/api/chats/{URI}/bans/([^/]+)/", chats.BanHandler),
        (rf"/api/chats/{URI}/files/", files.UploadHandler),
        (rf"/api/chats/{URI}/files/([0-9a-f]{{24}})/", files.FileHandler),
        (rf"/api/chats/{URI}/messages/([^/]+)/preview/", files.PreviewHandler),
        (rf"/ws/chats/{URI}/", socket.ChatSocket),
        (r"/ws/", stream.UserStreamSocket),
        # Talking to people (issue 20).
        (r"/api/dms/", dms.DmsHandler),
        (r"/api/blocks/", dms.BlocksHandler),
        (r"/api/blocks/([^/]+)/", dms.BlockHandler),
        (r"/api/search/", search.SearchHandler),
        # Reaching people who are away (issue 21).
        (rf"/api/chats/{URI}/notifications/", notifications.LevelHandler),
        (r"/api/push/key", notifications.PushKeyHandler),
        (r"/api/push/subscriptions/", notifications.PushSubscriptionsHandler),
        (r"/api/notifications/unsubscribe/", notifications.UnsubscribeHandler),
        (r"/sw\.js", notifications.ServiceWorkerHandler),
        (r"/api/openapi.json", ops.OpenApiHandler),
        (r"/healthz", ops.HealthHandler),
        (r"/metrics", ops.MetricsHandler),
        *pages.routes(),
    ]


def make_app(services: Services, in_flight: InFlight) -> tornado.web.Application:
    config = services.config
    table = routes()

    def log_function(handler: tornado.web.RequestHandler) -> None:
        in_flight.finished()
        log_request(handler)

    return tornado.web.Application(
        [(pattern, handler, {"services": services}) for pattern, handler in table],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        transforms=[SecurityHeaders, in_flight.transform],
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_handler_class=pages.StaticFiles,
        cookie_secret=config.secret,
        xsrf_cookies=True,
        # Login CSRF and the like: a state-changing request from a browser on
        # another origin (Sec-Fetch-Site, else Origin) is refused, except from
        # allowed_origins; API clients, which send neither header, are not affected.
        cross_origin_protection=True,
        trusted_origins=list(config.allowed_origins),
        xsrf_cookie_kwargs={"samesite": "Strict", "secure": config.secure_cookies},
        websocket_ping_interval=config.ws_ping_interval,
        websocket_ping_timeout=config.ws_ping_interval,
        websocket_max_message_size=config.ws_max_message_bytes,
        log_function=log_function,
        openapi_json=json.dumps(openapi.document(table, config)),
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    user = getattr(handler, "current_user", None) or getattr(handler, "user", None) or {}
    # The room's uri, for the routes that have one (static files have a path argument too).
    room = next((arg for arg in getattr(handler, "path_args", None) or ()
                 if re.fullmatch(URI, arg)), "")
    logging.getLogger("chat.access").log(
        level, "%s %s %s", handler.request.method, logs.redact(handler.request.uri), status,
        extra={"request_id": getattr(handler, "request_id", ""), "status": status,
               "user": user.get("username", ""), "room": room,
               "reason": getattr(handler, "refusal", ""),
               "ip": handler.request.remote_ip,
               "ms": round(1000 * handler.request.request_time(), 1)})


def listen_backlog(wanted: int) -> int:
    """wanted, or the kernel's cap (somaxconn) when that is lower: say so rather
    than let the kernel shorten it silently."""
    try:
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return wanted
    if wanted > cap:
        log.warning("listen_backlog %d is above net.core.somaxconn (%d): using %d",
                    wanted, cap, cap)
        return cap
    return wanted


class ChatServer:
    """Everything one process runs; start() and stop() in that order."""

    def __init__(self, config: chat_config.Config, mongo_listeners: list | None = None):
        """mongo_listeners: pymongo event listeners for the store's client (tests count
        commands with them)."""
        self.config = config
        self.store = Store(config.mongo_url, config.mongo_db, config.mongo_timeout_ms,
                           config.mongo_write_concern, config.mongo_read_concern,
                           event_listeners=mongo_listeners,
                           search_language=config.search_language)
        if config.broker_in_memory:
            self.broker = MemoryBroker()
        else:
            self.broker = AmqpBroker(config.broker_url, config.broker_heartbeat,
                                     config.broker_reconnect_min, config.broker_reconnect_max)
        self.metrics = Metrics()
        self.passwords = Passwords(config.bcrypt_rounds, config.bcrypt_threads)
        self.signals = Signals(self.store, self.broker.publish_control,
                               presence=config.presence_enabled,
                               presence_grace=config.presence_grace_seconds,
                               presence_ttl=config.presence_ttl_seconds,
                               typing_ttl=config.typing_ttl_seconds,
                               read_flush=config.read_flush_seconds)
        self.tokens = Tokens(self.store, config.secret, config.token_ttl_days)
        self.hub = Hub(self.store, self.broker, self.metrics, config.max_message_chars,
                       config.user_messages_per_minute, signals=self.signals, tokens=self.tokens,
                       max_sockets_per_user=config.max_sockets_per_user)
        limits = Limits(config, self.store)
        # Talking to people: a room's people cached for the post path, Markdown
        # rendered once per message, DMs and blocks.
        self.people = People(self.store, self.hub, config.mention_room_max_without_role)
        self.renderer = Renderer(config.render_timeout_seconds, config.render_threads)
        events = RoomEvents(self.store, self.hub, self.people)
        direct = DirectMessages(self.store, self.people, events)
        events.composer = Composer(self.renderer, self.people, direct)
        self.hub.compose = events.composer.prepare
        # Files and link previews.
        self.previews = Previews(self.store, events,
                                 Fetcher(config.link_preview_allow, config.link_preview_timeout_seconds),
                                 None, config.link_previews)
        self.files = Files(self.store, self.hub, self.previews, config.max_upload_bytes,
                           config.upload_quota_bytes)
        self.previews.files = self.files
        # Accounts and the operator.
        self.avatars = Avatars()
        self.process_id = f"{sockets.gethostname()}:{config.port}:{os.getpid()}"
        self.accounts = AccountService(config, self.store, self.passwords, self.tokens, self.hub,
                                       Mailer(config), self.avatars, limits, self.process_id)
        self.services = Services(config, self.store, self.tokens, self.passwords, self.hub,
                                 self.metrics, limits, events,
                                 Streams(self.hub, self.store, events.current,
                                         config.max_subscriptions),
                                 direct, BlockList(self.store, self.people, events),
                                 self.files, self.previews, self.accounts,
                                 MongoTextSearch(self.store, events.current, config.search_max_scan),
                                 self.process_id)
        self.sweeper = Sweeper(self.store, self.services.events, config.changes_sweep_seconds,
                               config.changes_stale_seconds)
        # Reaching people who are away: levels, pushes and emails.
        self.notifier = Notifier(config, self.store, self.hub, self.people, self.metrics,
                                 Mailer(config), functools.partial(notifications.unsubscribe_token,
                                                                   config.secret))
        self.services.notifier = self.notifier
        self.http: tornado.httpserver.HTTPServer | None = None
        self.in_flight = InFlight()

    async def start(self) -> None:
        try:
            await self.store.ensure_indexes()
        except Unavailable:
            log.warning("MongoDB is not reachable; indexes will be created on the next start")
        self.metrics.watch_gc()
        gc.set_threshold(*GC_THRESHOLDS)
        await self.broker.start()
        self.signals.start()
        self.files.start()
        self.sweeper.start()
        self.notifier.start()
        # Behind nginx, the client's address and scheme come from its X-Real-IP
        # and X-Forwarded-Proto; trusting them otherwise would let clients forge them.
        self.http = tornado.httpserver.HTTPServer(MalformedRequests(make_app(self.services,
                                                                            self.in_flight)),
                                                  xheaders=self.config.behind_proxy,
                                                  max_body_size=READ_LIMIT)
        try:
            self.http.listen(self.config.port, self.config.address,
                             backlog=listen_backlog(self.config.listen_backlog))
        except OSError as error:
            raise SystemExit(f"cannot listen on {self.config.address}:{self.config.port}: "
                             f"{error.strerror}") from None
        log.info("chat server listening on http://%s:%d/", self.config.address, self.config.port)

    async def stop(self) -> None:
        """Stop accepting; close sockets with 1001 (their clients resume on another
        process); let the HTTP requests in flight finish (handlers/drain.py);
        then close the connections."""
        if self.http is not None:
            self.http.stop()
        drained = asyncio.ensure_future(self.in_flight.drain(DRAIN_LIMIT))
        self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self.hub.no_sockets.wait(), SHUTDOWN_GRACE)
        except TimeoutError:
            log.warning("some sockets did not close in time")
        if not await drained:
            log.warning("%d HTTP requests still running at shutdown", self.in_flight.count)
        self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")  # opened meanwhile
        await self.sweeper.stop()
        await self.hub.stop()
        await self.previews.stop()
        await self.files.stop()
        await self.notifier.stop()
        await self.signals.stop()  # before the broker: it says goodbye and saves reads
        await self.broker.close()
        if self.http is not None:
            await asyncio.wait_for(self.http.close_all_connections(), SHUTDOWN_GRACE)
        await self.store.close()
        self.passwords.close()
        self.renderer.close()
        self.avatars.close()
        self.metrics.unwatch_gc()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Realtime chat server (Tornado, MongoDB, RabbitMQ).")
    parser.add_argument("--config", default=str(HERE / "config.yaml"),
                        help="settings file (default: config.yaml beside server.py)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides config and CHAT_PORT)")
    parser.add_argument("--address", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--embedded", action="store_true",
                        help="one process for trying it out: in-process broker, a generated secret, "
                             "and a local MongoDB wire server under data_dir when none answers")
    return parser.parse_args(argv)


async def serve(config: chat_config.Config) -> None:
    mongo = await embedded.start_mongo(config) if config.embedded else None
    server = ChatServer(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await server.start()
        if config.embedded:
            print(f"\n  Chat server ready: open http://{config.address}:{config.port}/\n"
                  "  (Ctrl-C stops it)\n", flush=True)
        await stopping.wait()
        log.info("shutting down")
        await server.stop()
    finally:
        if mongo is not None:
            await embedded.stop_mongo(mongo)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = chat_config.load(args.config, port=args.port, address=args.address,
                                  embedded=args.embedded or None)
        if config.embedded:
            config = embedded.prepare(config)
        config.validate()
    except chat_config.ConfigError as error:
        print(f"chat server: configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_format, config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
