"""MongoDB: the only package that imports pymongo.

Each module owns its collections and their indexes: `accounts` (users, tokens,
failed logins), `ratecounts` (limits' counters), `rooms` (rooms, membership,
read positions, the chat list), `eventlog` (the rooms' event log),
`blocks` (whom each user blocked), `files` (GridFS: uploads, thumbnails,
preview images, the link preview cache), `invites`, `audit`, `profiles`
(pictures, password resets), `stats` (what the admins' stats count),
`search` (the messages' text index and the search query) and `notifications`
(levels, pending pushes and emails, devices, the VAPID key); `base`
holds what they share (the request's time budget, `guarded`, group commit,
write-error mapping) and `public` how documents are shown to clients.

Every public coroutine raises `Unavailable` when MongoDB cannot be reached in
time, so the edge can answer 503 without knowing about pymongo.
"""

from __future__ import annotations

import asyncio

from pymongo import AsyncMongoClient

from chat.store.accounts import Accounts, live_token_user, username_key
from chat.store.audit import Audit
from chat.store.base import (
    REQUEST_DEADLINE,
    Banned,
    ClientIdTaken,
    Forbidden,
    GroupCommit,
    NotAttempted,
    NotFound,
    NotMember,
    SeqTaken,
    Unavailable,
    UsernameTaken,
    background,
    budget,
    guarded,
    iso,
    now,
    remember,
    write_error,
)
from chat.store.blocks import Blocks
from chat.store.eventlog import EventLog
from chat.store.files import CHUNK_BYTES, Files, UploadStream, object_id
from chat.store.invites import Invites
from chat.store.notifications import Notifications
from chat.store.profiles import Profiles
from chat.store.public import (
    EVENT_RENDERERS,
    active,
    public_event,
    public_message,
    public_user,
)
from chat.store.ratecounts import RateCounts
from chat.store.rooms import (
    CHAT_PAGE,
    KNOWN_MEMBERS,
    KNOWN_ROOMS,
    LATEST_SCAN,
    PREVIEW_CHARS,
    UNREAD_CAP,
    UNREAD_SCAN,
    Rooms,
    new_room_uri,
)
from chat.store.search import MessageSearch
from chat.store.stats import Stats

__all__ = [
    "CHAT_PAGE",
    "CHUNK_BYTES",
    "EVENT_RENDERERS",
    "KNOWN_MEMBERS",
    "KNOWN_ROOMS",
    "LATEST_SCAN",
    "PREVIEW_CHARS",
    "REQUEST_DEADLINE",
    "UNREAD_CAP",
    "UNREAD_SCAN",
    "Banned",
    "ClientIdTaken",
    "Files",
    "Forbidden",
    "GroupCommit",
    "NotAttempted",
    "NotFound",
    "NotMember",
    "SeqTaken",
    "Store",
    "Unavailable",
    "UploadStream",
    "UsernameTaken",
    "active",
    "background",
    "budget",
    "guarded",
    "iso",
    "live_token_user",
    "new_room_uri",
    "now",
    "object_id",
    "public_event",
    "public_message",
    "public_user",
    "remember",
    "username_key",
    "write_error",
]


class Store(Accounts, RateCounts, Rooms, EventLog, Blocks, Files, Invites, Audit, Profiles, Stats,
            MessageSearch, Notifications):
    """One client and its collections; each part's methods are in its own module."""

    def __init__(self, url: str, database: str, timeout_ms: int = 2500,
                 write_concern: str = "majority", read_concern: str = "majority",
                 event_listeners: list | None = None, search_language: str = "english"):
        self.timeout = timeout_ms / 1000
        self.search_language = search_language
        # timeoutMS bounds each operation as a whole (server selection, pool
        # checkout, the round trip and its retry), so a server that hangs
        # rather than refuses still gives Unavailable in time.
        # On a replica set: a write counts once a majority has it (it survives
        # a failover; a write-concern error is a failure, see insert_ordered),
        # a read never returns what a failover could roll back, and a write
        # cut by a failover is retried once by pymongo. These override the
        # URL's own options.
        self.client = AsyncMongoClient(
            url,
            tz_aware=True,
            timeoutMS=timeout_ms,
            appname="chat-server",
            w=int(write_concern) if write_concern.isdigit() else write_concern,
            readConcernLevel=read_concern,
            retryWrites=True,
            event_listeners=event_listeners or [],
        )
        db = self.client[database]
        self.users = db.users
        self.tokens = db.tokens
        self.login_failures = db.login_failures
        self.rate_counts = db.rate_counts
        self.rooms = db.rooms
        self.messages = db.messages
        self.invites = db.invites
        self.audit = db.audit
        self.avatars = db.avatars
        self.password_resets = db.password_resets
        self.push_subscriptions = db.push_subscriptions
        self.blocks = db.blocks
        self.notifications = db.notifications
        self.server_keys = db.server_keys
        self.init_rooms()
        self.init_event_log()
        self.init_files(db)

    def deadline(self) -> float:
        """When an operation begun now must have ended (event loop time): the
        request's deadline inside one, else the timeout from now."""
        request = REQUEST_DEADLINE.get()
        return asyncio.get_running_loop().time() + self.timeout if request is None else request

    def begin_request(self) -> None:
        """Start the MongoDB time budget of an HTTP request (in its own task)."""
        REQUEST_DEADLINE.set(asyncio.get_running_loop().time() + self.timeout)

    @guarded
    async def ensure_indexes(self) -> None:
        await self.ensure_account_indexes()
        await self.ensure_rate_count_indexes()
        await self.ensure_room_indexes()
        await self.ensure_event_indexes()
        await self.ensure_block_indexes()
        await self.ensure_file_indexes()
        await self.ensure_invite_indexes()
        await self.ensure_audit_indexes()
        await self.ensure_profile_indexes()
        await self.ensure_search_indexes()
        await self.ensure_notification_indexes()

    @guarded
    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def close(self) -> None:
        await self.client.close()
