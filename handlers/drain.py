"""HTTP requests in flight, so that a stopping process lets them finish.

A rolling restart behind nginx must answer no 5xx: the stopping process stops
listening (nginx's next connect is refused, and nginx passes the request to
another process, POSTs included, since nothing was sent), finishes what it
is serving, and answers with `Connection: close` meanwhile so nginx stops
reusing its keepalive connections to it. Only once no request has begun for
longer than nginx's upstream `keepalive_timeout` (deploy/nginx.conf) are the
remaining idle connections closed: by then nginx has closed its side, so no
request can be on its way down one of them.

Every request Tornado routes makes one transform (begin) and is logged once
when it finishes (end); the two are hooked in server.make_app.
"""

from __future__ import annotations

import asyncio

import tornado.web

# Longer than nginx's upstream keepalive_timeout (1 s in deploy/nginx.conf).
QUIET_SECONDS = 1.5


class InFlight:
    def __init__(self):
        self.count = 0
        self.last_begun = 0.0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False

    def transform(self, request) -> tornado.web.OutputTransform:
        """Tornado makes a request's transforms as it starts serving it."""
        self.count += 1
        self.last_begun = asyncio.get_running_loop().time()
        self.idle.clear()
        return CloseWhileDraining(request, self)

    def finished(self) -> None:
        """Called from the application's log_function: once per request, at its end."""
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self.idle.set()

    async def drain(self, limit: float) -> bool:
        """Until nothing is in flight and nothing began for QUIET_SECONDS, at most
        `limit` seconds; False when it gave up (a request still running)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            try:
                await asyncio.wait_for(self.idle.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return False
            quiet_until = self.last_begun + QUIET_SECONDS
            if loop.time() >= quiet_until and self.idle.is_set():
                return True
            if quiet_until > deadline:
                return self.idle.is_set()
            await asyncio.sleep(quiet_until - loop.time())


class CloseWhileDraining(tornado.web.OutputTransform):
    def __init__(self, request, in_flight: InFlight):
        super().__init__(request)
        self.in_flight = in_flight

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        if self.in_flight.draining and status_code != 101:
            headers["Connection"] = "close"  # the proxy opens a new one, to another process
        return status_code, headers, chunk
