"""Accounts (issue 24), measured on two server processes (nx-27017, a scratch
RabbitMQ vhost):

- revocation: a user with sockets open on process B changes their password
  (or is deactivated) through process A; the time until every other socket
  on B is closed;
- a forgotten-password request: the answer's time for an account that exists
  and has an email, and for a name that does not (they should not differ: the
  lookup and the mail happen after the answer);
- a profile picture: PUT of a 2000 x 1500 JPEG, re-encoded to a 256 px PNG.

    python -m bench.accounts [--rounds 5]    (about half a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import websockets
from PIL import Image

from bench.run import AMQP_URL
from tests.conftest import MongoServer, database_url
from tests.helpers import Api, ServerProcess, next_frame, scratch_vhost, two_members

# Sockets of the user on the other process (max_sockets_per_user is 10).
SOCKETS = 9


def ms(values: list[float]) -> str:
    return (f"median {1000 * statistics.median(values):.1f} ms, "
            f"max {1000 * max(values):.1f} ms (n={len(values)})")


async def until_closed(sockets: list) -> None:
    async def closed(ws) -> None:
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    await asyncio.gather(*(closed(ws) for ws in sockets))


async def revocation(a: ServerProcess, b: ServerProcess, admin: Api, deactivate: bool) -> float:
    """Seconds from just before the request until every other socket of the
    user on the other process is closed."""
    _, user, uri = two_members(a.url)
    devices = [Api(a.url, user.username, user.password).login() for _ in range(SOCKETS)]
    sockets = [await websockets.connect(d.ws_url(uri, since=0, base_url=b.url)) for d in devices]
    for ws in sockets:
        await next_frame(ws, "ready")
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    if deactivate:
        reply = await loop.run_in_executor(None, lambda: admin.request(
            "PATCH", f"/api/admin/users/{user.username}/", json={"active": False}))
    else:
        reply = await loop.run_in_executor(None, lambda: user.request(
            "POST", "/auth/password/", json={"old_password": user.password,
                                             "new_password": "another-pass-1"}))
    assert reply.status_code in (200, 204), reply.text
    await asyncio.wait_for(until_closed(sockets), 10)
    return time.perf_counter() - started


def reset_times(a: ServerProcess, rounds: int) -> tuple[list[float], list[float]]:
    known, unknown = [], []
    for _ in range(rounds):
        api = Api(a.url).signup()
        api.request("PATCH", "/auth/me/", json={"email": f"{api.username}@example.test"})
        for name, into in ((api.username, known), (f"nobody-{api.username}", unknown)):
            started = time.perf_counter()
            assert httpx.post(f"{a.url}/auth/password/reset/",
                              json={"username": name}).status_code == 202
            into.append(time.perf_counter() - started)
    return known, unknown


def picture_times(a: ServerProcess, rounds: int) -> list[float]:
    api = Api(a.url).signup()
    out = io.BytesIO()
    Image.effect_mandelbrot((2000, 1500), (-2, -1.2, 1, 1.2), 100).convert("RGB").save(
        out, "JPEG", quality=85)
    body = out.getvalue()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        reply = api.request("PUT", "/auth/me/avatar/", content=body)
        assert reply.status_code == 200, reply.text
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, scratch_vhost(AMQP_URL, "chat-bench") as amqp:
        work = Path(folder)
        mongo = MongoServer(work / "mongo")
        mongo.start()
        # No mail server: a reset's answer never waits for one anyway.
        settings = {"smtp_host": "127.0.0.1", "smtp_port": 9, "smtp_security": "none",
                    "password_reset_per_ip_per_hour": 10_000, "avatar_max_bytes": 900_000}
        url = database_url(mongo.url)
        a = ServerProcess(url, amqp, log_dir=work, **settings).start()
        b = ServerProcess(url, amqp, log_dir=work, **settings).start()
        try:
            admin = Api(a.url).signup()  # the first account: the admin
            for deactivate in (False, True):
                times = [asyncio.run(revocation(a, b, admin, deactivate))
                         for _ in range(args.rounds)]
                what = "deactivation" if deactivate else "password change"
                print(f"{what}: {SOCKETS} sockets on the other process closed in {ms(times)}")
            known, unknown = reset_times(a, args.rounds * 4)
            print(f"reset request, existing account with email: {ms(known)}")
            print(f"reset request, unknown name:                {ms(unknown)}")
            print(f"picture 2000x1500 JPEG -> 256 px PNG: {ms(picture_times(a, args.rounds))}")
        finally:
            a.stop()
            b.stop()
            mongo.stop()


if __name__ == "__main__":
    main()
