"""Rate limits that hold across processes: counters in MongoDB.

A limit counts hits per key in fixed windows (`store.count_hit`: one
findAndModify per hit, on a counter MongoDB deletes two windows later), so N
processes allow the configured number, not N times it. The decision uses the
sliding-window estimate: the previous window's count, weighted by how much of
it still overlaps the last `window` seconds, plus the current one. That keeps a
burst across a window's edge limited too; the previous count is read once per
key and window and kept.
"""

from __future__ import annotations

import datetime
import time

# Keys whose previous-window count this process keeps before forgetting old ones.
KEPT = 10_000


class Limit:
    """At most `limit` hits per key in any `window` seconds, over all processes.
    Refused hits count too: a client that keeps trying keeps itself waiting."""

    def __init__(self, store, name: str, limit: int, window: float, clock=time.time):
        self.store = store
        self.name = name
        self.limit = limit
        self.window = window
        self.clock = clock
        self.previous: dict[str, tuple[int, int]] = {}  # key -> (window number, its count)

    def counter(self, key: str, number: int) -> str:
        return f"{self.name}:{number}:{key}"

    async def hit(self, key: str) -> float:
        """Count a hit: 0 when allowed, else the seconds until one is."""
        now = self.clock()
        number = int(now // self.window)
        fraction = now / self.window - number
        expires = datetime.datetime.fromtimestamp((number + 2) * self.window, datetime.UTC)
        current = await self.store.count_hit(self.counter(key, number), expires)
        previous = await self.previous_count(key, number)
        if previous * (1 - fraction) + current <= self.limit:
            return 0.0
        return self.wait(previous, current, fraction)

    async def previous_count(self, key: str, number: int) -> int:
        kept = self.previous.get(key)
        if kept is not None and kept[0] == number - 1:
            return kept[1]
        count = await self.store.hit_count(self.counter(key, number - 1))
        if len(self.previous) >= KEPT:
            self.previous = {k: v for k, v in self.previous.items() if v[0] >= number - 1}
        self.previous[key] = (number - 1, count)
        return count

    def wait(self, previous: int, current: int, fraction: float) -> float:
        """Seconds until one more hit fits: within this window once enough of the
        previous one has slid out, else in the next (where this one is previous)."""
        room = self.limit - current - 1
        if room >= 0 and previous > 0:
            return (1 - room / previous - fraction) * self.window
        later = max(0.0, 1 - (self.limit - 1) / current) if current else 0.0
        return (1 - fraction + later) * self.window
