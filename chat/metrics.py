"""Prometheus metrics, one registry per application so tests can build many."""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.open_sockets = Gauge("chat_open_sockets", "Open WebSocket connections", registry=r)
        self.active_rooms = Gauge("chat_active_rooms", "Rooms with local subscribers", registry=r)
        self.posted = Counter("chat_messages_posted", "Messages stored by this process",
                              registry=r)
        self.event_inserts = Counter(
            "chat_event_inserts", "Room events whose insert MongoDB attempted (stored or refused)",
            registry=r)
        self.seq_renumbered = Counter(
            "chat_seq_renumbered", "Batches that lost a seq to another process and were renumbered",
            registry=r)
        self.room_update_failures = Counter(
            "chat_room_update_failures",
            "Stored events whose room seq/activity update failed (best effort)", registry=r)
        self.published = Counter("chat_messages_published", "Messages handed to the broker",
                                 registry=r)
        self.delivered = Counter("chat_messages_delivered",
                                 "Message frames written to sockets (one per socket)",
                                 registry=r)
        self.backfilled = Counter("chat_messages_backfilled",
                                  "Messages read from MongoDB to fill gaps or catch sockets up",
                                  registry=r)
        self.gaps = Counter("chat_gaps_detected", "Live deliveries that skipped a seq",
                            registry=r)
        self.room_failures = Counter(
            "chat_room_failures", "Room starts and gap repairs that failed and are retried",
            ["step"], registry=r)
        self.repair_dropped = Counter(
            "chat_repair_dropped",
            "Deliveries dropped by gap repair because MongoDB never had their seq", registry=r)
        self.slow_closes = Counter("chat_slow_consumer_closes",
                                   "Sockets closed with 4008 for not reading", registry=r)
        self.broker_reconnects = Counter("chat_broker_reconnects",
                                         "Times the broker connection was restored", registry=r)
        self.requests = Counter("chat_http_requests", "HTTP requests",
                                ["handler", "method", "status"], registry=r)
        self.request_latency = Histogram("chat_http_request_seconds", "HTTP request latency",
                                         ["handler"], buckets=LATENCY_BUCKETS, registry=r)
        self.delivery_latency = Histogram(
            "chat_delivery_seconds", "From storing a message to writing it to local sockets",
            buckets=LATENCY_BUCKETS, registry=r)

        # Reaching people who are away (chat/notifications.py).
        self.notifications_scheduled = Counter(
            "chat_notifications_scheduled", "Pending pushes and emails written", registry=r)
        self.pushes_sent = Counter("chat_pushes_sent", "Pushes taken by a push service", registry=r)
        self.emails_sent = Counter("chat_notification_emails_sent", "Notification emails sent",
                                   registry=r)
        self.notification_failures = Counter(
            "chat_notification_failures", "Failed push or email sends (retried with backoff)",
            ["kind"], registry=r)

    def watch_gc(self) -> None:
        """Time the garbage collector's pauses (they stall the event loop)."""
        self.gc_pauses = Histogram("chat_gc_pause_seconds", "Garbage collection pauses",
                                   ["generation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.gc_started = 0.0
        gc.callbacks.append(self.on_gc)

    def unwatch_gc(self) -> None:
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter()
        else:
            self.gc_pauses.labels(str(info["generation"])).observe(
                time.perf_counter() - self.gc_started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
