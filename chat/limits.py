"""Sliding-window rate limits kept in this process's memory."""

from __future__ import annotations

import collections
import time


class RateLimiter:
    """At most `limit` hits per key within `window` seconds."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.hits: dict[str, collections.deque] = {}

    def hit(self, key: str) -> float:
        """Count a hit: 0 when allowed, else the seconds until one is."""
        now = self.clock()
        hits = self.hits.setdefault(key, collections.deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        if len(self.hits) > 10_000:
            self.forget_idle(now)
        return 0.0

    def forget_idle(self, now: float) -> None:
        """Drop keys with no hit in the window, so memory stays bounded."""
        for key in [k for k, v in self.hits.items() if not v or v[-1] <= now - self.window]:
            del self.hits[key]
