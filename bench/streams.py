"""User streams at scale: many people, each a member of many rooms, one /ws/ each.

    python -m bench.streams [--users 5000] [--rooms 1000] [--per-user 20]
                            [--rates 100,300,1000] [--seconds 10]

Starts nx-27017 and one server process (RabbitMQ at CHAT_BENCH_AMQP_URL, on a
vhost of its own). Users sign up through the API; memberships are written to
MongoDB directly (every user in `per-user` rooms, the same number of members
in each room), since a join per membership through the API would take most of
the run. Then:
- a connect storm: every user opens a user stream at once; the time until
  every `chats` snapshot arrived, failures and the server's RSS per stream
  (MongoDB commands per snapshot are counted in tests/test_commands.py);
- posts spread over the rooms through the API at each rate for `seconds`:
  deliveries/s on the streams, post -> user-stream delivery p50/p99 (every
  10th stream is sampled), server CPU per delivery.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import pymongo

from bench.loadgen import (
    CONNECT_CONCURRENCY,
    HOST,
    Http,
    close_all,
    cpu_seconds,
    ms,
    percentile,
    raise_fd_limit,
    rss_kib,
)
from bench.run import AMQP_URL, SERVER_SETTINGS
from bench.wsclient import WsClient, connect
from tests.conftest import MongoServer, database_url
from tests.helpers import ServerProcess, scratch_vhost

PASSWORD = "bench-password-1"
SIGNUP_CONCURRENCY = 8
POSTERS = 16


async def sign_up(port: int, count: int) -> list[tuple[str, str]]:
    """(user id, token) of `count` new users."""
    queue = list(range(count))
    users: list[tuple[str, str]] = []

    async def call(http: Http, path: str, body: dict, expect: int) -> dict:
        for _ in range(20):  # a loaded machine answers 503 now and then: try again
            status, reply = await http.request("POST", path, body)
            if status == expect:
                return reply
            assert status == 503, reply
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{path} kept answering 503")

    async def worker() -> None:
        http = Http(port)
        try:
            while queue:
                queue.pop()
                body = {"username": f"st{uuid.uuid4().hex[:12]}", "password": PASSWORD}
                user_id = (await call(http, "/auth/users/create/", body, 201))["id"]
                token = (await call(http, "/auth/jwt/create/", body, 200))["token"]
                users.append((user_id, token))
        finally:
            http.close()
    await asyncio.gather(*(worker() for _ in range(SIGNUP_CONCURRENCY)))
    return users


async def make_rooms(port: int, owners: list[tuple[str, str]]) -> list[str]:
    uris: list[str] = []
    http = Http(port)
    try:
        for _user_id, token in owners:
            status, reply = await http.request("POST", "/api/chats/", {}, token)
            assert status == 200, reply
            uris.append(reply["uri"])
    finally:
        http.close()
    return uris


def rooms_of(index: int, rooms: int, per_user: int) -> list[int]:
    """User index's rooms: the same number of members in every room."""
    stride = rooms // per_user
    return [(index % rooms + stride * k) % rooms for k in range(per_user)]


async def storm(port: int, pid: int, tokens: list[str],
                latencies: list[float]) -> tuple[list[WsClient], dict]:
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[WsClient] = []
    failed = 0
    rss0 = rss_kib(pid)
    started = time.perf_counter()

    async def one(i: int, token: str) -> None:
        nonlocal failed
        async with semaphore:
            try:
                client = await connect(HOST, port, f"/ws/?token={token}", wait=60,
                                       sample=i % 10 == 0, latencies=latencies)
            except (OSError, TimeoutError, ConnectionError):
                failed += 1
                return
            clients.append(client)
    await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    seconds = time.perf_counter() - started
    await asyncio.sleep(1.0)
    return clients, {
        "streams": len(clients), "failed": failed, "all_snapshots_s": round(seconds, 2),
        "rss_kib_per_stream": round((rss_kib(pid) - rss0) / max(1, len(clients)), 1),
    }


async def posting(port: int, pid: int, clients: list[WsClient], posters: list[tuple[str, str]],
                  rate: float, seconds: float, latencies: list[float]) -> dict:
    """`rate` posts/s through the API for `seconds`, each by a member of its room."""
    latencies.clear()
    frames0 = sum(c.frames for c in clients)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    stop_at = t0 + seconds
    sent = 0
    https = [Http(port) for _ in range(POSTERS)]

    async def poster(http: Http, lane: int) -> None:
        nonlocal sent
        n = 0
        while time.perf_counter() < stop_at:
            due = t0 + (n * POSTERS + lane) / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            uri, token = random.choice(posters)
            status, _ = await http.request("POST", f"/api/chats/{uri}/messages/",
                                           {"message": f"t={time.time():.6f}"}, token)
            if status == 200:
                sent += 1
            n += 1
    try:
        await asyncio.gather(*(poster(http, lane) for lane, http in enumerate(https)))
    finally:
        for http in https:
            http.close()
    await asyncio.sleep(2.0)  # the last deliveries
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    delivered = sum(c.frames for c in clients) - frames0
    return {"offered_posts_per_s": rate, "posts_per_s": round(sent / seconds, 1),
            "deliveries_per_s": round(delivered / elapsed, 1),
            "latency_p50_ms": ms(percentile(latencies, 0.5)),
            "latency_p99_ms": ms(percentile(latencies, 0.99)),
            "server_cpu_pct": round(100 * cpu / elapsed, 1),
            "server_cpu_us_per_delivery": round(1e6 * cpu / max(1, delivered), 1)}


async def scenario(server: ServerProcess, mongo_url: str, args) -> dict:
    port, pid = server.port, server.process.pid
    users = await sign_up(port, args.users)
    uris = await make_rooms(port, users[:args.rooms])
    ids = [user_id for user_id, _ in users]
    members: dict[int, list[str]] = {r: [] for r in range(args.rooms)}
    for index, user_id in enumerate(ids):
        for r in rooms_of(index, args.rooms, args.per_user):
            members[r].append(user_id)
    client = pymongo.MongoClient(mongo_url)
    try:
        client.get_default_database().rooms.bulk_write(
            [pymongo.UpdateOne({"uri": uris[r]}, {"$set": {"members": sorted(set(ids_))}})
             for r, ids_ in members.items()], ordered=False)
    finally:
        client.close()
    posters = [(uris[r], users[ids.index(ids_[0])][1]) for r, ids_ in members.items() if ids_]
    latencies: list[float] = []
    clients, storm_row = await storm(port, pid, [t for _, t in users], latencies)
    print(json.dumps({"storm": storm_row}), flush=True)
    rows = []
    try:
        for rate in args.rates:
            rows.append(await posting(port, pid, clients, posters, rate, args.seconds, latencies))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close_all(clients)
    return {"storm": storm_row, "posting": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--rates", default="100,300,1000")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    raise_fd_limit()
    load = {"before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as folder, \
            scratch_vhost(AMQP_URL, "chat-bench") as amqp_url:
        work = Path(folder)
        mongo = MongoServer(work / "mongo")
        mongo.start()
        try:
            mongo_url = database_url(mongo.url)
            logs = Path(tempfile.mkdtemp(prefix="bench-streams-logs-"))  # kept, for a look after
            server = ServerProcess(mongo_url, amqp_url, log_dir=logs, bcrypt_rounds=4,
                                   **{**SERVER_SETTINGS, "max_sockets_per_user": 10}).start()
            try:
                result = asyncio.run(scenario(server, mongo_url, args))
            finally:
                server.stop()
        finally:
            mongo.stop()
    load["after"] = os.getloadavg()
    result.update(args=dict(vars(args)), load=load, server_log=str(server.log_path))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
