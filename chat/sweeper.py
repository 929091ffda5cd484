"""Finishes the message changes left in flight (DESIGN.md, "Data"): an edit,
delete or reaction whose event was stored but whose save failed, or whose
process died first. Until then a deleted text would stay in the message
document and its edit events; each process sweeps now and then, and finishing
is idempotent, so any number of processes may sweep the same message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from chat.store import Unavailable, background

log = logging.getLogger("chat.sweeper")

# Messages finished per sweep at most: the rest wait for the next.
SWEEP_BATCH = 100


class Sweeper:
    def __init__(self, store, events, every: float, stale: float,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.events = events
        self.every = every
        self.stale = stale
        self.clock = clock
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = background(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sweep()
            except Unavailable:
                log.warning("sweep of changes in flight skipped: MongoDB unavailable")

    async def sweep(self) -> int:
        """Finish the changes begun more than `stale` seconds ago; how many messages."""
        messages = await self.store.stale_changes(self.clock() - self.stale, SWEEP_BATCH)
        for message in messages:
            await self.events.finish(message)
        if messages:
            log.info("finished the changes left in flight on %d messages", len(messages))
        return len(messages)
