"""Reaching people who are away: who a message notifies, and the pushes and
emails for what stayed unread.

Whether someone has seen a message is `seq <= last_read_seq`. A post works out
once, from the process's cache of the room's people and levels
(chat/mentions.py), who it notifies; of those, people with the room open and
visible on some client (the user stream's `focus` frame, told to every
process) cost nothing more. For the rest one insert schedules a push and an
email each (`notifications`, chat/store/notifications.py); any process claims
them when due, and skips those whose reader has read past them by then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import html
import json
import logging
import time
import urllib.parse
from typing import Any

import tornado.httpclient
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02, b64urlencode
from pywebpush import WebPusher

from chat.mail import Refused
from chat.store import Unavailable, iso
from chat.store.notifications import default_level

log = logging.getLogger("chat.notifications")

TEXT_CHARS = 100
# Control notices: which chat a client shows (per stream), and a push sent.
FOCUS_NOTICE = "notify.focus"
PUSHED_NOTICE = "notify.pushed"
PUSH_TTL = 24 * 3600
# A failed send is tried again (notify_retry_first_seconds, doubling up to
# notify_retry_max_seconds) until this many attempts have failed.
GIVE_UP_AFTER = 10
PUSH_TIMEOUT = 10.0
VAPID_EXPIRY = 12 * 3600
# Encrypting a push (an ECDH per device) and signing VAPID claims are CPU work:
# done by these threads, off the event loop.
PUSH_THREADS = 2


def notifies(level: str, kind: str, mentioned: bool) -> bool:
    if level == "none":
        return False
    return level == "all" or kind == "dm" or mentioned


def topic(uri: str) -> str:
    """The push `Topic` of a room (RFC 8030 §5.4: at most 32 characters of
    base64url): a push service keeps only the newest undelivered push of a
    topic, so a push sent twice (a process died before marking it sent), or
    one a later push or a "clear" overtook, is not delivered as well."""
    return b64urlencode(hashlib.sha256(uri.encode()).digest()[:24])


def encrypt(device: dict, data: bytes) -> bytes:
    """The aes128gcm body (RFC 8291) of a push to one device (in the pool)."""
    return WebPusher({"endpoint": device["endpoint"], "keys": device["keys"]}).encode(data)["body"]


def vapid_from(text: str) -> Vapid02:
    text = text.strip()
    return Vapid02.from_pem(text.encode()) if text.startswith("-----") else Vapid02.from_string(text)


def new_vapid_key() -> str:
    vapid = Vapid02()
    vapid.generate_keys()
    return vapid.private_pem().decode()


class Notifier:
    def __init__(self, config, store, hub, people, metrics, mailer, unsubscribe_signer):
        self.config = config
        self.store = store
        self.hub = hub
        self.people = people
        self.metrics = metrics
        self.mailer = mailer
        self.sign_unsubscribe = unsubscribe_signer
        self.process = hub.signals.process
        # user id -> {stream key: the uri it shows, visible}: every process's streams.
        self.focus: dict[str, dict[str, str]] = {}
        # (user id, uri) -> seq of the last push sent, so a read past it clears it.
        self.pushed: dict[tuple[str, str], int] = {}
        self.vapid: Vapid02 | None = None
        self.public_key = ""
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.pool = concurrent.futures.ThreadPoolExecutor(PUSH_THREADS, thread_name_prefix="push")
        # push service origin -> (expiry, its VAPID Authorization header)
        self.signed: dict[str, tuple[float, dict[str, str]]] = {}
        self.running: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.poll = min(1.0, max(0.05, config.push_delay_seconds / 5))
        hub.on_posted = self.posted
        hub.on_read = self.read
        for kind in (FOCUS_NOTICE, PUSHED_NOTICE):
            hub.handle_notices(kind, self.on_notice)

    def start(self) -> None:
        self.running = asyncio.ensure_future(self.dispatch())

    async def load_key(self) -> None:
        """The VAPID key: configured, else the one in MongoDB (made by the first process)."""
        key = self.config.vapid_private_key or await self.store.server_key("vapid", new_vapid_key)
        self.vapid = vapid_from(key)
        raw = self.vapid.public_key.public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
        self.public_key = b64urlencode(raw)

    async def stop(self) -> None:
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # Focus: which rooms people have open and visible ---------------------

    def set_focus(self, user_id: str, stream: str, uri: str | None) -> None:
        """A stream of user_id shows uri (None: nothing visible): known here at
        once, and every other process is told (Hub.notify)."""
        self.hub.notify({"type": FOCUS_NOTICE, "user_id": user_id,
                         "stream": f"{self.process}:{stream}", "uri": uri})

    def apply_focus(self, user_id: str, key: str, uri: str | None) -> None:
        shown = self.focus.setdefault(user_id, {})
        if uri is None:
            shown.pop(key, None)
            if not shown:
                del self.focus[user_id]
        else:
            shown[key] = uri

    def visible(self, user_id: str, uri: str) -> bool:
        return any(shown == uri and self.alive(key)
                   for key, shown in self.focus.get(user_id, {}).items())

    def alive(self, stream_key: str) -> bool:
        """Whether the process of a stream still answers (presence's peers): the
        focus of a process that died must not hold pushes back for ever."""
        process, signals = stream_key.split(":", 1)[0], self.hub.signals
        if process == self.process or not signals.presence_enabled:
            return True
        peer = signals.peers.get(process)
        return peer is not None and peer.expires > signals.clock()

    def on_notice(self, notice: dict[str, Any]) -> None:
        kind, user_id, uri = notice.get("type"), notice.get("user_id"), notice.get("uri")
        if not isinstance(user_id, str):
            return
        stream = notice.get("stream")
        if kind == FOCUS_NOTICE and isinstance(stream, str):
            self.apply_focus(user_id, stream, uri if isinstance(uri, str) else None)
        elif kind == PUSHED_NOTICE and isinstance(uri, str) and type(notice.get("seq")) is int:
            self.pushed[(user_id, uri)] = max(notice["seq"], self.pushed.get((user_id, uri), 0))

    # The post path: once per message ---------------------------------------

    def posted(self, uri: str, user: dict, event: dict) -> None:
        self.hub.spawn(self.schedule_for(uri, user, event))

    def recipients(self, entry, sender_id: str, event: dict) -> list[str]:
        """Members the message notifies by their levels (not the sender; blocks aside)."""
        levels, kind = entry.levels, entry.kind
        # Who the message names: a lookup per mention in the cached entry's map.
        if event.get("mentions_room"):
            mentioned = set(entry.members)
        else:
            ids = entry.id_by_name
            mentioned = {ids[name.casefold()] for name in event.get("mentions") or ()
                         if name.casefold() in ids}
        if kind == "dm" or event.get("mentions_room"):
            candidates = entry.members.keys()
        else:  # a room: only the mentioned and those who asked for everything
            candidates = mentioned | {i for i, level in levels.items() if level == "all"}
        return [i for i in candidates if i != sender_id and i in entry.members
                and notifies(levels.get(i) or default_level(kind), kind, i in mentioned)]

    async def schedule_for(self, uri: str, user: dict, event: dict) -> None:
        try:
            entry = await self.people.of(uri)
            users = [i for i in self.recipients(entry, user["id"], event)
                     if not self.visible(i, uri)]
            if not users:
                return
            if entry.kind == "dm":
                blocked = {by for by, whom in entry.blocks if whom == user["id"]}
            else:
                blocked = await self.store.blocked_by(user["id"], users)
            users = [i for i in users if i not in blocked]
            if not users:
                return
            moment = time.time()
            push_due = moment + self.config.push_delay_seconds
            email_due = moment + self.config.email_delay_minutes * 60
            pending = []
            for user_id in users:
                base = {"user_id": user_id, "uri": uri, "seq": event["seq"], "state": "pending",
                        "lease": None, "attempts": 0, "created": moment}
                pending.append({**base, "kind": "push", "due": push_due})
                if self.mailer.enabled:
                    pending.append({**base, "kind": "email", "due": email_due})
            await self.store.schedule(pending)
            self.metrics.notifications_scheduled.inc(len(pending))
            self.wake.set()
        except Exception:
            log.exception("room %s seq %s: scheduling its notifications failed", uri, event.get("seq"))

    # Reads: a read past a push clears it on the other devices -------------

    def read(self, user: dict, uri: str, seq: int) -> None:
        pushed = self.pushed.get((user["id"], uri))
        if pushed is not None and seq >= pushed:
            del self.pushed[(user["id"], uri)]
            self.hub.spawn(self.store.schedule_one({
                "kind": "clear", "user_id": user["id"], "uri": uri, "seq": seq, "due": time.time(),
                "state": "pending", "lease": None, "attempts": 0, "created": time.time()}))
            self.wake.set()

    # Sending: any process, under a lease ------------------------------------

    async def dispatch(self) -> None:
        while True:
            try:
                if self.vapid is None:
                    await self.load_key()
                while (doc := await self.store.claim(self.config.notify_lease_seconds)) is not None:
                    await self.deliver(doc)
            except Unavailable:
                log.warning("notifications: MongoDB unavailable; trying again shortly")
            except Exception:
                log.exception("notifications: dispatch failed")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.poll)
            except TimeoutError:
                pass

    async def deliver(self, doc: dict) -> None:
        try:
            devices = []
            if doc["kind"] in ("push", "clear"):
                devices = await self.store.subscriptions_of(doc["user_id"])
                if not devices:
                    # Asked first: most people have no device, and for them
                    # nothing more is read (their read position, the message, the room).
                    await self.store.finish(doc, "skipped", reason="no device")
                    return
            if doc["kind"] == "clear":
                await self.push_all(devices, {"type": "clear", "uri": doc["uri"], "seq": doc["seq"]},
                                    urgency="low")
                await self.store.finish(doc, "sent")
                return
            read = max(await self.store.read_position(doc["uri"], doc["user_id"]),
                       self.hub.signals.reads_of(doc["user_id"]).get(doc["uri"], 0))
            if doc["seq"] <= read:
                await self.store.finish(doc, "skipped", reason="read")
                return
            if doc["kind"] == "push":
                await self.send_push(doc, devices)
            else:
                await self.send_email(doc, read)
        except asyncio.CancelledError:
            raise
        except Refused as error:
            self.metrics.notification_failures.labels(doc["kind"]).inc()
            log.error("%s to %s refused for good (%s); not tried again", doc["kind"], doc["user_id"],
                      error)
            await self.store.finish(doc, "failed", error=str(error)[:200])
        except Exception as error:
            self.metrics.notification_failures.labels(doc["kind"]).inc()
            attempts = doc.get("attempts", 1)
            if attempts >= GIVE_UP_AFTER:
                log.error("%s to %s failed %d times (%s); given up", doc["kind"], doc["user_id"],
                          attempts, error)
                await self.store.finish(doc, "failed", error=str(error)[:200])
                return
            config = self.config
            delay = min(config.notify_retry_max_seconds,
                        config.notify_retry_first_seconds * 2 ** (attempts - 1))
            log.warning("%s to %s failed (%s); again in %.3g s", doc["kind"], doc["user_id"],
                        error, delay)
            await self.store.retry_later(doc, time.time() + delay)

    def room_url(self, uri: str) -> str:
        return f"{self.config.public_url.rstrip('/')}/chats/{uri}/"

    async def send_push(self, doc: dict, devices: list[dict]) -> None:
        if self.visible(doc["user_id"], doc["uri"]):
            await self.store.finish(doc, "skipped", reason="visible")
            return
        message = await self.store.message_at(doc["uri"], doc["seq"])
        if message is None or message.get("deleted"):
            await self.store.finish(doc, "skipped", reason="deleted")
            return
        room = await self.store.notice_room(doc["uri"], doc["user_id"]) or {}
        payload = {"type": "message", "uri": doc["uri"], "seq": doc["seq"],
                   "room": room.get("name") or ("Direct message" if room.get("kind") == "dm" else "Chat"),
                   "sender": message["user"]["username"], "text": message["message"][:TEXT_CHARS],
                   "url": self.room_url(doc["uri"])}
        sent = await self.push_all(devices, payload, urgency="high")
        await self.store.finish(doc, "sent", devices=sent)
        if sent:
            self.metrics.pushes_sent.inc(sent)
            self.hub.notify({"type": PUSHED_NOTICE, "user_id": doc["user_id"], "uri": doc["uri"],
                             "seq": doc["seq"]})

    async def push_all(self, devices: list[dict], payload: dict, urgency: str) -> int:
        """Push to a user's devices; the number that took it. A device its push
        service says is gone is forgotten; any other failure raises."""
        sent = 0
        data, room_topic = json.dumps(payload).encode(), topic(payload["uri"])
        for device in devices:
            status = await self.post_push(device, data, urgency, room_topic)
            if status in (404, 410):
                await self.store.forget_endpoint(device["endpoint"])
            elif 200 <= status < 300:
                sent += 1
            else:
                raise RuntimeError(f"push service answered {status}")
        return sent

    async def post_push(self, device: dict, data: bytes, urgency: str, topic: str) -> int:
        """Encrypt (RFC 8291, aes128gcm) and sign (RFC 8292) one push; the service's status."""
        endpoint = device["endpoint"]
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self.pool, encrypt, device, data)
        origin = urllib.parse.urlsplit(endpoint)
        headers = {**await self.vapid_headers(f"{origin.scheme}://{origin.netloc}"),
                   "TTL": str(PUSH_TTL), "Urgency": urgency, "Topic": topic,
                   "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream"}
        response = await self.http.fetch(endpoint, method="POST", body=body, headers=headers,
                                         raise_error=False, request_timeout=PUSH_TIMEOUT)
        if response.code == 599:
            raise RuntimeError(f"push service unreachable: {response.error}")
        return response.code

    async def vapid_headers(self, audience: str) -> dict[str, str]:
        """The VAPID Authorization for a push service: signed (in the pool) once and
        reused until half its life is gone, as RFC 8292 §2 allows, not once per push."""
        moment = time.time()
        expiry, headers = self.signed.get(audience, (0.0, {}))
        if expiry - moment < VAPID_EXPIRY / 2:
            expiry = int(moment) + VAPID_EXPIRY
            claims = {"sub": self.config.vapid_subject, "aud": audience, "exp": expiry}
            headers = await asyncio.get_running_loop().run_in_executor(self.pool, self.vapid.sign,
                                                                       claims)
            self.signed[audience] = (expiry, headers)
        return headers

    # Email: one per room for what stayed unread ------------------------------

    async def send_email(self, doc: dict, read: int) -> None:
        if not await self.store.lock_emails(doc["uri"], doc["user_id"],
                                            self.config.notify_lease_seconds):
            # Another process is emailing about this room now: this message is
            # in its email, or goes in the next one.
            await self.store.retry_later(doc, time.time() + self.config.notify_lease_seconds)
            return
        try:
            await self.email_unread(doc, read)
        finally:
            await self.store.unlock_emails(doc["uri"], doc["user_id"])

    async def email_unread(self, doc: dict, read: int) -> None:
        user_id, uri = doc["user_id"], doc["uri"]
        interval = self.config.email_min_interval_minutes * 60
        last = await self.store.last_email_sent(uri, user_id)
        if last is not None and last["done"] + interval > time.time():
            await self.store.retry_later(doc, last["done"] + interval)
            return
        user = (await self.store.users_by_id([user_id])).get(user_id) or {}
        if not user.get("email") or not self.mailer.enabled:
            await self.store.finish(doc, "skipped", reason="no email")
            return
        seqs = sorted(s for s in await self.store.pending_email_seqs(uri, user_id) if s > read)
        messages = [m for m in await self.store.messages_at(uri, seqs) if not m.get("deleted")]
        if not messages:
            await self.store.finish(doc, "skipped", reason="deleted")
            await self.store.merge_emails(uri, user_id, max(seqs, default=doc["seq"]))
            return
        room = await self.store.notice_room(uri, user_id) or {}
        if room.get("email_off"):
            await self.store.finish(doc, "skipped", reason="unsubscribed")
            return
        name = room.get("name") or ("a direct message" if room.get("kind") == "dm" else "a chat")
        unsubscribe = (f"{self.config.public_url.rstrip('/')}/api/notifications/unsubscribe/"
                       f"?token={self.sign_unsubscribe(user_id, uri)}")
        await self.mailer.send_notification(user["email"], f"Unread messages in {name}",
                                            *email_body(name, messages, self.room_url(uri), unsubscribe),
                                            unsubscribe=unsubscribe)
        await self.store.finish(doc, "sent", seqs=[m["seq"] for m in messages])
        await self.store.merge_emails(uri, user_id, messages[-1]["seq"])
        self.metrics.emails_sent.inc()


def email_body(room: str, messages: list[dict], link: str, unsubscribe: str) -> tuple[str, str]:
    """(text, HTML) of an email listing the unread messages, each with its sender and time."""
    lines = [f"Unread messages in {room}:", ""]
    items = []
    for message in messages:
        when = iso(message["created"])
        sender = message["user"]["username"]
        edited = " (edited)" if message.get("edited") else ""
        lines += [f"{sender}, {when}{edited}:", message["message"], ""]
        items.append(f"<li><b>{html.escape(sender)}</b> <small>{when}{edited}</small>"
                     f"<div>{html.escape(message['message'])}</div></li>")
    lines += [f"Open the chat: {link}", f"Unsubscribe from these emails: {unsubscribe}"]
    body = (f"<p>Unread messages in {html.escape(room)}:</p><ul>{''.join(items)}</ul>"
            f'<p><a href="{html.escape(link)}">Open the chat</a></p>'
            f'<p><small><a href="{html.escape(unsubscribe)}">Unsubscribe</a></small></p>')
    return "\n".join(lines), body
