"""Rate limits that hold across processes: counters in MongoDB.

A limit counts hits per key in fixed windows (`store.count_hit`, a
findAndModify on a counter MongoDB deletes two windows later), so N processes
allow the configured number, not N times it. The decision uses the
sliding-window estimate: the previous window's count, weighted by how much of
it still overlaps the last `window` seconds, plus the current one. That keeps a
burst across a window's edge limited too; the previous count is read once per
key and window and kept.

A process does not ask MongoDB for every hit: it reserves a share of the limit
(1/SHARES of it) in one command and spends it locally. What it reserved and did
not spend counts as spent, so the limit can be reached a little early (by at
most a share per process), never passed. One reservation per key is in flight at
a time: hits that find none left wait for it and spend from it (a burst of posts
by one user costs a command per share, not one per post), share its refusal, and
fail with it when MongoDB does not answer.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time

# A process reserves this fraction of a limit at a time: 100 messages a minute
# cost one command per 5 posts.
SHARES = 20
# Keys this process keeps a reservation or a previous count for, before
# forgetting those of past windows.
KEPT = 10_000


class Limit:
    """At most `limit` hits per key in any `window` seconds, over all processes."""

    def __init__(self, store, name: str, limit: int, window: float, clock=time.time):
        self.store = store
        self.name = name
        self.limit = limit
        self.window = window
        self.clock = clock
        self.share = max(1, limit // SHARES)
        self.reserved: dict[str, tuple[int, int]] = {}  # key -> (window number, hits left)
        self.previous: dict[str, tuple[int, int]] = {}  # key -> (window number, its count)
        # key -> the wait its reservation in flight ends with (0 when granted)
        self.reserving: dict[str, asyncio.Future[float]] = {}

    def counter(self, key: str, number: int) -> str:
        return f"{self.name}:{number}:{key}"

    async def hit(self, key: str) -> float:
        """Count a hit: 0 when allowed, else the seconds until one is."""
        while True:
            number = int(self.clock() // self.window)
            left = self.reserved.get(key)
            if left is not None and left[0] == number and left[1] > 0:
                self.reserved[key] = (number, left[1] - 1)
                return 0.0
            in_flight = self.reserving.get(key)
            if in_flight is None:
                return await self.reserve(key)
            # shield: a waiter that is cancelled must not cancel the reservation.
            wait = await asyncio.shield(in_flight)
            if wait:
                return wait

    async def reserve(self, key: str) -> float:
        """Reserve a share for key and spend one hit of it; what hits waiting
        meanwhile get: 0 to spend the rest, the wait if refused, or the error."""
        outcome: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.reserving[key] = outcome
        try:
            wait = await self.take_share(key)
        except asyncio.CancelledError:
            outcome.set_result(0.0)  # a waiter reserves in its place
            raise
        except Exception as error:
            outcome.set_exception(error)
            outcome.exception()  # no waiter is fine: the caller gets the error
            raise
        else:
            outcome.set_result(wait)
            return wait
        finally:
            del self.reserving[key]

    async def take_share(self, key: str) -> float:
        now = self.clock()
        number = int(now // self.window)
        fraction = now / self.window - number
        counter = self.counter(key, number)
        expires = datetime.datetime.fromtimestamp((number + 2) * self.window, datetime.UTC)
        total = await self.store.count_hit(counter, expires, self.share)
        previous = await self.previous_count(key, number)
        before = total - self.share  # hits counted before this reservation
        fits = math.floor(self.limit - previous * (1 - fraction)) - before
        granted = max(0, min(self.share, fits))
        if granted < self.share:  # near the limit: give back what cannot be spent
            await self.store.count_hit(counter, expires, granted - self.share)
        if granted == 0:
            return self.wait(previous, before, fraction)
        self.keep(self.reserved, key, (number, granted - 1), number)
        return 0.0

    async def previous_count(self, key: str, number: int) -> int:
        kept = self.previous.get(key)
        if kept is not None and kept[0] == number - 1:
            return kept[1]
        count = await self.store.hit_count(self.counter(key, number - 1))
        self.keep(self.previous, key, (number - 1, count), number - 1)
        return count

    @staticmethod
    def keep(table: dict, key: str, value: tuple[int, int], oldest: int) -> None:
        if len(table) >= KEPT:
            for stale in [k for k, v in table.items() if v[0] < oldest]:
                del table[stale]
        table[key] = value

    def wait(self, previous: int, counted: int, fraction: float) -> float:
        """Seconds until one more hit fits, with `counted` hits in this window:
        within it once enough of the previous one has slid out, else in the
        next (where this one is the previous)."""
        room = self.limit - counted - 1
        if room >= 0 and previous > 0:
            return max(0.0, (1 - room / previous - fraction) * self.window)
        later = max(0.0, 1 - (self.limit - 1) / counted) if counted else 0.0
        return (1 - fraction + later) * self.window
