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

`--cost` measures instead what a post in a 1,000-member room with the default
levels costs the server: its CPU seconds (/proc/<pid>/stat) and the MongoDB
commands it sends (counted by bench/mongo_proxy.py between it and nx-27017),
per post, with and without one mention, for this checkout and for others
given by --checkout NAME=PATH (e.g. one without notifications), runs
alternating. One server process, default settings (push delay 15 s): the
window is the posts plus the wait until no notification is pending, so the
deferred sends are in it; members have no push devices and no email, and no
streams open.

    python -m bench.notifications --cost --checkout before=/tmp/before --posts 500 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from bson import ObjectId
from pymongo import MongoClient

from bench.loadgen import cpu_seconds
from bench.mongo_proxy import CountingProxy
from bench.run import AMQP_URL
from tests.conftest import MongoServer, database_url
from tests.helpers import Api, ServerProcess, scratch_vhost
from tests.push_service import PushService

DELAY = 0.5
IDLE = 3.0


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


def big_room(server: ServerProcess, mongo_url: str) -> tuple[Api, str]:
    """A room of 1,000 members (999 written straight to the database): its owner, its uri."""
    owner = Api(server.url).signup()
    uri = owner.new_chat()
    client = MongoClient(mongo_url)
    db = client.get_default_database()
    ids = [ObjectId() for _ in range(999)]
    db.users.insert_many([{"_id": i, "username": f"m{n:04d}", "username_key": f"m{n:04d}",
                           "email": "", "password": b"", "active": True}
                          for n, i in enumerate(ids)])
    db.rooms.update_one({"uri": uri}, {"$push": {"members": {"$each": [str(i) for i in ids]}}})
    client.close()
    return owner, uri


def big_room_posts(a: ServerProcess, posts: int) -> dict[str, list[float]]:
    owner, uri = big_room(a, a.mongo_url)
    owner.post(uri, "warm")
    times: dict[str, list[float]] = {"no mention": [], "one mention": []}
    for i in range(posts):
        for what, text in (("no mention", f"plain {i}"), ("one mention", f"@m{i % 999:04d} hi")):
            started = time.monotonic()
            owner.post(uri, text)
            times[what].append(time.monotonic() - started)
    return times


class CheckoutServer(ServerProcess):
    """A server process of another checkout of the project (its server.py and config.yaml)."""

    def __init__(self, tree: Path, *args, **settings):
        super().__init__(*args, **settings)
        self.tree = tree

    def start(self, wait: bool = True) -> CheckoutServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.tree / "server.py"), "--port", str(self.port)],
                cwd=self.tree, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self


def post_cost(tree: Path, mongo: MongoServer, amqp: str, work: Path, posts: int,
              mention: bool) -> dict:
    """One run: server CPU seconds and MongoDB commands per post, and the commands by name."""
    proxy = CountingProxy(mongo.port).start()
    name = f"cost_{uuid.uuid4().hex[:8]}"
    server = CheckoutServer(tree, f"mongodb://127.0.0.1:{proxy.port}/{name}", amqp,
                            log_dir=work).start()
    direct = MongoClient(f"{mongo.url}/{name}")
    try:
        owner, uri = big_room(server, f"{mongo.url}/{name}")
        for i in range(20):  # warm: the room's people cached, code paths taken
            owner.post(uri, f"warm {i}")
        time.sleep(2)
        # What the server does with no posts (presence, pollers) in IDLE seconds: a
        # reader may subtract it from the window's figures.
        cpu, commands = cpu_seconds(server.process.pid), proxy.snapshot()
        time.sleep(IDLE)
        idle_cpu = (cpu_seconds(server.process.pid) - cpu) / IDLE
        idle_commands = sum((proxy.snapshot() - commands).values()) / IDLE
        cpu, commands, started = cpu_seconds(server.process.pid), proxy.snapshot(), time.monotonic()
        for i in range(posts):
            owner.post(uri, f"@m{i % 999:04d} hi" if mention else f"plain {i}")
        posted = time.monotonic() - started
        # The deferred pushes (due push_delay_seconds later) are part of a post's cost.
        deadline = time.monotonic() + 120
        while (direct.get_default_database().notifications.count_documents({"state": "pending"})
               and time.monotonic() < deadline):
            time.sleep(0.5)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(server.process.pid) - cpu
        used = proxy.snapshot() - commands
        return {"cpu_ms": 1000 * cpu / posts, "commands": sum(used.values()) / posts,
                "by_name": {k: round(v / posts, 2) for k, v in used.most_common()},
                "posted_s": posted, "window_s": seconds,
                "idle": f"{1000 * idle_cpu:.0f} ms CPU/s, {idle_commands:.1f} commands/s"}
    finally:
        direct.close()
        server.stop()
        proxy.stop()


def cost(args) -> None:
    sides = {"this": Path(__file__).resolve().parent.parent}
    for given in args.checkout:
        name, _, path = given.partition("=")
        sides[name] = Path(path).resolve()
        if not (sides[name] / "server.py").exists():
            raise SystemExit(f"--checkout {given}: no server.py there")
    results: dict[tuple[str, bool], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder, scratch_vhost(AMQP_URL, "chat-bench") as amqp:
        work = Path(folder)
        mongo = MongoServer(work / "mongo")
        mongo.start()
        try:
            for run in range(args.runs):
                for side, tree in sides.items():
                    for mention in (False, True):
                        got = post_cost(tree, mongo, amqp, work, args.posts, mention)
                        results.setdefault((side, mention), []).append(got)
                        print(f"run {run + 1} {side:6} {'one mention' if mention else 'no mention ':11}: "
                              f"{got['cpu_ms']:.2f} ms CPU/post, {got['commands']:.2f} commands/post "
                              f"(posts {got['posted_s']:.1f} s, window {got['window_s']:.1f} s; "
                              f"idle {got['idle']}) "
                              f"{got['by_name']}", flush=True)
        finally:
            mongo.stop()
    load = os.getloadavg()[0]
    print(f"\n{args.posts} posts a run, {args.runs} runs a side alternating; load average {load:.1f}")
    print("| checkout | posts | server CPU per post (ms), median (min-max) | "
          "MongoDB commands per post, median (min-max) |")
    print("|---|---|---|---|")
    for (side, mention), runs in results.items():
        cpu = [r["cpu_ms"] for r in runs]
        commands = [r["commands"] for r in runs]
        print(f"| {side} | {'one mention each' if mention else 'no mention'} | "
              f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | "
              f"{statistics.median(commands):.2f} ({min(commands):.2f}-{max(commands):.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--cost", action="store_true",
                        help="CPU and MongoDB commands per post, this checkout and --checkout ones")
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help="another checkout of the project to measure, for --cost")
    parser.add_argument("--runs", type=int, default=3, help="runs per side, for --cost")
    args = parser.parse_args()
    if args.cost:
        cost(args)
        return
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
