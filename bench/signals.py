"""What presence and typing cost: the connect storm with presence on and off, and
the 1,000-socket broadcast with 10% of the sockets typing and without.

    python -m bench.signals [--sockets 1000] [--users 100] [--rate 20] [--seconds 10]

Starts nx-27017 on a free port and a server process per run (RabbitMQ at
CHAT_BENCH_AMQP_URL on a vhost of its own, deleted afterwards); the load runs
in this process. Prints one JSON object and writes the "Live signals" section
of docs/benchmarks.md (with the machine's load average, which is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench.loadgen import (
    CONNECT_CONCURRENCY,
    HOST,
    Http,
    close_all,
    cpu_seconds,
    ms,
    own_cpu_seconds,
    percentile,
    raise_fd_limit,
)
from bench.report import replace_section
from bench.run import AMQP_URL, SERVER_SETTINGS
from bench.wsclient import WsClient, connect
from chat.broker import AmqpBroker
from tests.conftest import MongoServer, database_url
from tests.helpers import ServerProcess, scratch_vhost

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Live signals"
PASSWORD = "bench-password-1"
# A typer types for TYPE_SECONDS (a frame every 2 s, as the page sends them),
# stops, and pauses for PAUSE_SECONDS: its entry comes and goes.
TYPE_SECONDS = 6.0
PAUSE_SECONDS = 3.0


class Room:
    """One room on one server, `users` members with a token each (the first owns it)."""

    def __init__(self, port: int):
        self.port = port
        self.uri = ""
        self.tokens: list[str] = []

    async def make(self, users: int) -> Room:
        http = Http(self.port)
        try:
            for i in range(users):
                name = f"sig{uuid.uuid4().hex[:10]}"
                status, reply = await http.request("POST", "/auth/users/create/",
                                                   {"username": name, "password": PASSWORD})
                assert status == 201, reply
                status, reply = await http.request("POST", "/auth/jwt/create/",
                                                   {"username": name, "password": PASSWORD})
                assert status == 200, reply
                self.tokens.append(reply["token"])
                if i == 0:
                    status, reply = await http.request("POST", "/api/chats/", {}, self.tokens[0])
                    self.uri = reply["uri"]
                else:
                    status, reply = await http.request("PATCH", f"/api/chats/{self.uri}/", {},
                                                       self.tokens[-1])
                assert status == 200, reply
        finally:
            http.close()
        return self

    def path(self, token: str) -> str:
        return f"/ws/chats/{self.uri}/?token={token}&since=0"  # the page's full stream


class Counts:
    """Text frames by type, over every socket."""

    def __init__(self):
        self.kinds: dict[str, int] = {}

    def count(self, payload: bytes) -> None:
        kind = payload[9:payload.find(b'"', 9)].decode() if payload.startswith(b'{"type":"') else "?"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


async def open_all(room: Room, tokens: list[str], counts: Counts | None = None,
                   latencies: list | None = None,
                   sample_every: int = 10) -> tuple[list[WsClient], list[float], int]:
    """Open a socket per token, CONNECT_CONCURRENCY at a time (as the load generator does).
    Every `sample_every`-th socket records message latencies and counts its frames by
    type: looking into every frame of every socket would make this process the
    bottleneck."""
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[WsClient] = []
    times: list[float] = []
    failed = 0

    async def one(i: int, token: str) -> None:
        nonlocal failed
        async with semaphore:
            started = time.perf_counter()
            sampled = i % sample_every == 0
            try:
                client = await connect(HOST, room.port, room.path(token), wait=60,
                                       sample=latencies is not None and sampled,
                                       latencies=latencies)
            except (OSError, TimeoutError, ConnectionError):
                failed += 1
                return
            times.append(time.perf_counter() - started)
            if counts is not None and sampled:
                client.on_text = counts.count
            clients.append(client)
    await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    return clients, times, failed


class ControlCounts:
    """The presence notices on the control exchange, as another process gets them."""

    def __init__(self):
        self.notices = 0
        self.bytes = 0
        self.counting = False

    def count(self, body: bytes) -> None:
        if self.counting and json.loads(body).get("type") == "signal.presence":
            self.notices += 1
            self.bytes += len(body)


async def storm(port: int, pid: int, sockets: int, users: int, amqp_url: str) -> dict:
    """`sockets` sockets of `users` members opening at once; with presence on, each
    member's arrival is a diff to every full-stream socket already in, and the
    server tells the other processes (counted by a listener on the control
    exchange, standing in for one) what its room's members are."""
    room = await Room(port).make(users)
    control, listener = ControlCounts(), AmqpBroker(amqp_url)
    listener.on_control = control.count
    await listener.start()
    control.counting = True
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    counts = Counts()
    clients, times, failed = await open_all(room, [room.tokens[i % users] for i in range(sockets)],
                                            counts)
    all_open = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # the last diffs
    cpu = cpu_seconds(pid) - cpu0
    control.counting = False
    await listener.close()
    close_all(clients)
    # Every text frame: the catch-up (the members' joins are events), ready, the
    # presence state after it, the diffs; and those of every 10th socket by type.
    return {"sockets": sockets, "users": users, "open": len(clients), "failed": failed,
            "all_open_seconds": round(all_open, 2), "handshake_p99_ms": ms(percentile(times, 0.99)),
            "server_cpu_s": round(cpu, 2), "frames": sum(c.frames for c in clients),
            "frames_of_every_10th_by_type": counts.kinds,
            "presence_notices": control.notices, "presence_notice_bytes": control.bytes}


async def broadcast(port: int, pid: int, sockets: int, users: int, rate: float, seconds: float,
                    typing_share: float) -> dict:
    """One room of `sockets` full-stream sockets; `rate` posts/s for `seconds`
    through 8 sender sockets; `typing_share` of the sockets (each its own member)
    typing on and off meanwhile."""
    typers = int(sockets * typing_share)
    room = await Room(port).make(max(users, typers + 1))
    counts = Counts()
    latencies: list[float] = []
    # The typers are members 1..typers; the other sockets are the owner's.
    tokens = room.tokens[1:typers + 1] + [room.tokens[0]] * (sockets - typers)
    clients, _times, failed = await open_all(room, tokens, counts, latencies)
    sampled = sum(1 for c in clients if c.on_text is not None)
    typing_clients, senders = clients[:typers], clients[typers:typers + 8]
    await asyncio.sleep(1.0)
    stop_at = time.perf_counter() + seconds

    async def type_on_and_off(i: int, client: WsClient) -> None:
        await asyncio.sleep(i * (TYPE_SECONDS + PAUSE_SECONDS) / max(1, typers))  # staggered
        while time.perf_counter() < stop_at:
            typing_until = time.perf_counter() + TYPE_SECONDS
            while time.perf_counter() < min(typing_until, stop_at):
                client.send_text('{"type":"typing"}')
                await asyncio.sleep(2.0)
            client.send_text('{"type":"typing","stop":true}')
            await asyncio.sleep(PAUSE_SECONDS)

    async def post() -> int:
        sent, t0 = 0, time.perf_counter()
        while time.perf_counter() < stop_at:
            due = int((time.perf_counter() - t0) * rate) + 1
            while sent < due:
                senders[sent % len(senders)].send_text(
                    json.dumps({"type": "message", "message": f"t={time.time():.6f}"}))
                sent += 1
            await asyncio.sleep(0.005)
        return sent

    before = dict(counts.kinds)
    cpu0, own0, t0 = cpu_seconds(pid), own_cpu_seconds(), time.perf_counter()
    typing_tasks = [asyncio.ensure_future(type_on_and_off(i, c)) for i, c in enumerate(typing_clients)]
    sent = await post()
    for _ in range(2000):  # drain: up to 20 s, until the sampled sockets have every post
        if counts.kinds.get("message", 0) - before.get("message", 0) >= sent * sampled:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cpu, own = cpu_seconds(pid) - cpu0, own_cpu_seconds() - own0
    await asyncio.gather(*typing_tasks)
    close_all(clients)
    scale = len(clients) / sampled  # from the sampled sockets to all of them
    delivered = {kind: scale * (n - before.get(kind, 0)) for kind, n in counts.kinds.items()}
    return {"sockets": len(clients), "failed": failed, "typers": typers, "posts": sent,
            "offered_posts_per_s": rate, "seconds": round(elapsed, 2),
            "message_deliveries": round(delivered.get("message", 0)), "expected": sent * len(clients),
            "deliveries_per_s": round(delivered.get("message", 0) / elapsed, 1),
            "typing_frames": round(delivered.get("typing", 0)),
            "typing_frames_per_s": round(delivered.get("typing", 0) / elapsed, 1),
            "loadgen_cpu_pct": round(100 * own / elapsed, 1),
            "latency_p50_ms": ms(percentile(latencies, 0.5)),
            "latency_p99_ms": ms(percentile(latencies, 0.99)),
            "server_cpu_s": round(cpu, 2),
            "server_cpu_pct": round(100 * cpu / elapsed, 1)}


def run_against(mongo_url: str, amqp_url: str, work: Path, settings: dict, scenario) -> dict:
    server = ServerProcess(database_url(mongo_url), amqp_url, log_dir=work,
                           **SERVER_SETTINGS, **settings).start()
    try:
        return asyncio.run(scenario(server.port, server.process.pid))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20, help="posts/s in the broadcast")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternated rounds of each pair; the machine is shared")
    parser.add_argument("--storm-only", action="store_true",
                        help="only the connect storm; prints, leaves docs/benchmarks.md alone")
    args = parser.parse_args()
    raise_fd_limit()
    load = {"before": os.getloadavg(), "cpus": os.cpu_count()}
    result: dict = {"args": vars(args), "storm": [], "broadcast": []}
    with tempfile.TemporaryDirectory(prefix="bench-signals-") as folder, \
            scratch_vhost(AMQP_URL, "chat-bench") as amqp_url:
        work = Path(folder)
        mongo = MongoServer(work / "mongo")
        mongo.start()
        try:
            for _ in range(args.rounds):
                for presence in (True, False):
                    row = run_against(mongo.url, amqp_url, work, {"presence_enabled": presence},
                                      lambda port, pid: storm(port, pid, args.sockets, args.users,
                                                              amqp_url))
                    result["storm"].append({"presence": presence, **row})
                    print(json.dumps(result["storm"][-1]), flush=True)
                for share in () if args.storm_only else (0.1, 0.0):
                    row = run_against(mongo.url, amqp_url, work, {}, lambda port, pid, s=share: broadcast(
                        port, pid, args.sockets, args.users, args.rate, args.seconds, s))
                    result["broadcast"].append({"typing_share": share, **row})
                    print(json.dumps(result["broadcast"][-1]), flush=True)
        finally:
            mongo.stop()
    load["after"] = os.getloadavg()
    result["load"] = load
    print(json.dumps(result), flush=True)
    if not args.storm_only:
        write_section(result)


def write_section(result: dict) -> None:
    load = result["load"]
    options = " ".join(f"--{k} {v:g}" for k, v in result["args"].items() if k != "storm_only")
    lines = [
        SECTION, "",
        f"`python -m bench.signals {options}` "
        "(part of `make bench`): one server process, one room, "
        f"{result['args']['sockets']} sockets on the full stream (`since`, as the page opens them). "
        f"The machine ({load['cpus']} cores) is shared with other people's test runs: load "
        f"average {load['before'][0]:.1f} before and {load['after'][0]:.1f} after, so read the "
        "pairs (run alternately) against each other, not as absolute figures.", "",
        f"Connect storm: {result['args']['sockets']} sockets of {result['args']['users']} members "
        "opening at once, presence on vs off (every member's arrival is a presence diff to "
        "every socket already in).", "",
        "| presence | all open (s) | handshake p99 (ms) | server CPU (s) | frames sent "
        "| presence notices | notice bytes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes_storm = [
        "", "Frames sent: a `ready` per socket, with presence on also the room's presence right "
        "after it, and a diff to every socket already live when a member's first socket opens. "
        "Sockets still catching up get no diffs (the state they get after `ready` is current), "
        "so when every member's first socket arrives before any socket is ready, there are none.",
        "Presence notices: what the server told the other processes on the control exchange "
        "(each parses every one); a room's goes out at most every 0.2 s (PRESENCE_EVERY) with "
        "its members as they are then, not one per arriving member with the whole list.",
    ]
    for row in result["storm"]:
        lines.append(f"| {'on' if row['presence'] else 'off'} | {row['all_open_seconds']} | "
                     f"{row['handshake_p99_ms']} | {row['server_cpu_s']} | "
                     f"{row['frames']} | {row['presence_notices']} | "
                     f"{row['presence_notice_bytes']} |")
    lines += notes_storm
    lines += [
        "", f"Broadcast: {result['args']['rate']:g} posts/s for {result['args']['seconds']:g} s to "
        "every socket, with 10% of the sockets (each its own member) typing for 6 s, stopping, "
        "pausing 3 s, and again, vs nobody typing.", "",
        "| typing | deliveries/s | message p50 (ms) | message p99 (ms) | typing frames/s | server CPU |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["broadcast"]:
        lines.append(f"| {int(100 * row['typing_share'])}% | {row['deliveries_per_s']} | "
                     f"{row['latency_p50_ms']} | {row['latency_p99_ms']} | "
                     f"{row['typing_frames_per_s']} | {row['server_cpu_pct']}% |")
    lines += [
        "", "A room's typing set goes to its sockets at most every 0.5 s (chat/signals.py, "
        "TYPING_EVERY): with every start and stop sent at once, the same 100 typers cost about "
        "14,000 typing frames/s, as many as the messages themselves.",
    ]
    replace_section(DOCS, SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
