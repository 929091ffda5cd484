"""Reaching people who are away (issue 21), on two server processes (nx-27017,
a scratch RabbitMQ vhost) and a local push service (VAPID checked, payload
decrypted, as in tests/test_notifications.py):

- post -> push-service receipt for an unread DM, beyond the configured
  push_delay_seconds (the dispatcher's poll, the claim, the encryption, the
  round trip), p50 and p99;
- a post in a 1,000-member room with the default levels, without and with a
  mention: the poster's answer time (the MongoDB commands of each are counted
  in tests/test_commands.py).

    python -m bench.notifications [--posts 40]    (about half a minute)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from bson import ObjectId
from pymongo import MongoClient

from bench.run import AMQP_URL
from tests.conftest import MongoServer, database_url
from tests.helpers import Api, ServerProcess, scratch_vhost
from tests.push_service import PushService

DELAY = 0.5


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def push_latency(a: ServerProcess, b: ServerProcess, push: PushService, posts: int) -> list[float]:
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = alice.request("POST", "/api/dms/", json={"username": bob.username}).json()["uri"]
    name = f"bench-{bob.username}"
    bob.request("POST", "/api/push/subscriptions/", json=push.device(name).subscription)
    latencies = []
    for i in range(posts):
        posted_at = time.monotonic()
        seq = alice.post(uri, f"m{i}")["seq"]
        push.wait_for(lambda got, s=seq: any(p["seq"] == s for p in push.of(name)), 30)
        latencies.append(time.monotonic() - posted_at - DELAY)
    return latencies


def big_room_posts(a: ServerProcess, posts: int) -> dict[str, list[float]]:
    owner = Api(a.url).signup()
    uri = owner.new_chat()
    client = MongoClient(a.mongo_url)
    db = client.get_default_database()
    ids = [ObjectId() for _ in range(999)]
    db.users.insert_many([{"_id": i, "username": f"m{n:04d}", "username_key": f"m{n:04d}",
                           "email": "", "password": b"", "active": True}
                          for n, i in enumerate(ids)])
    db.rooms.update_one({"uri": uri}, {"$push": {"members": {"$each": [str(i) for i in ids]}}})
    client.close()
    owner.post(uri, "warm")
    times: dict[str, list[float]] = {"no mention": [], "one mention": []}
    for i in range(posts):
        for what, text in (("no mention", f"plain {i}"), ("one mention", f"@m{i % 999:04d} hi")):
            started = time.monotonic()
            owner.post(uri, text)
            times[what].append(time.monotonic() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, scratch_vhost(AMQP_URL, "chat-bench") as amqp:
        work = Path(folder)
        mongo = MongoServer(work / "mongo")
        mongo.start()
        push = PushService().start()
        url = database_url(mongo.url)
        settings = {"push_delay_seconds": DELAY, "user_messages_per_minute": 100_000}
        a = ServerProcess(url, amqp, log_dir=work, **settings).start()
        b = ServerProcess(url, amqp, log_dir=work, **settings).start()
        try:
            push.vapid_key = httpx.get(f"{a.url}/api/push/key").json()["key"]
            late = push_latency(a, b, push, args.posts)
            print(f"unread DM, post -> push received, beyond the {DELAY} s delay: "
                  f"p50 {1000 * statistics.median(late):.0f} ms, p99 {1000 * pct(late, 0.99):.0f} ms "
                  f"(n={len(late)})")
            for what, times in big_room_posts(a, args.posts).items():
                print(f"post in a 1,000-member room, default levels, {what}: "
                      f"p50 {1000 * statistics.median(times):.1f} ms, "
                      f"p99 {1000 * pct(times, 0.99):.1f} ms (n={len(times)})")
        finally:
            a.stop()
            b.stop()
            push.stop()
            mongo.stop()


if __name__ == "__main__":
    main()
