"""The load generator: one scenario against one target, run in its own process.

    python -m bench.loadgen '<json spec>'   (bench/run.py writes the spec)

It signs up a user, creates rooms, opens sockets, posts messages with a send
timestamp ("t=<time.time()>") and measures at the receivers. Every loop is
bounded in count and time. The result is one JSON object on stdout's last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import uuid

from bench.wsclient import WsClient, connect

HOST = "127.0.0.1"
CONNECT_CONCURRENCY = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Process measures ---------------------------------------------------------

def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 2)


def raise_fd_limit() -> int:
    """As high as allowed, for this process and its children: 65,536, or the hard
    limit where it cannot be raised (no CAP_SYS_RESOURCE). Returns the limit in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(65536, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# A small keep-alive HTTP/1.1 client ------------------------------------------

class Http:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None,
                      token: str | None = None) -> tuple[int, dict | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        data = json.dumps(body).encode() if body is not None else b""
        auth = f"Authorization: JWT {token}\r\n" if token else ""
        self.writer.write(
            (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{auth}"
             f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        raw = await self.reader.readexactly(length) if length else b""
        return status, json.loads(raw) if raw else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Targets: our server (accounts, rooms) and the reference (bare rooms) -------

class Target:
    def __init__(self, spec: dict):
        self.kind = spec["kind"]
        self.ports: list[int] = spec["ports"]
        self.pids: list[int] = spec.get("pids", [])
        self.token = ""

    async def setup(self, rooms: int) -> list[str]:
        """Sign up one user (it owns every room, so it is a member) and make the rooms."""
        if self.kind == "ref":
            return [uuid.uuid4().hex[:15] for _ in range(rooms)]
        http = Http(self.ports[0])
        name, password = f"bench{uuid.uuid4().hex[:10]}", "bench-password-1"
        status, reply = await http.request("POST", "/auth/users/create/",
                                           {"username": name, "password": password})
        assert status == 201, reply
        status, reply = await http.request("POST", "/auth/jwt/create/",
                                           {"username": name, "password": password})
        assert status == 200, reply
        self.token = reply["token"]
        http.close()
        uris: list[str] = []
        conns = [Http(self.ports[0]) for _ in range(8)]

        async def make(conn: Http, count: int) -> None:
            for _ in range(count):
                status, reply = await conn.request("POST", "/api/chats/", {}, self.token)
                assert status == 200, reply
                uris.append(reply["uri"])
        await asyncio.gather(*(make(c, rooms // 8 + (i < rooms % 8)) for i, c in enumerate(conns)))
        for conn in conns:
            conn.close()
        return uris

    def path(self, room: str) -> str:
        if self.kind == "ref":
            return f"/ws/{room}/"
        # since=0, as the page does: only a socket that asked for a catch-up gets ready.
        return f"/ws/chats/{room}/?token={self.token}&since=0"

    def message(self, text: str) -> str:
        return json.dumps({"type": "message", "message": text})


async def open_sockets(target: Target, plan: list[tuple[str, int, bool]], latencies: list,
                       stored: list | None = None) -> tuple[list[WsClient], list[float], int]:
    """Open one socket per (room, port, sampled); returns (clients, connect times, failures)."""
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[WsClient | None] = [None] * len(plan)
    times: list[float] = []
    failures = 0

    async def one(index: int, room: str, port: int, sample: bool) -> None:
        nonlocal failures
        async with semaphore:
            for _attempt in range(3):
                started = time.perf_counter()
                try:
                    clients[index] = await connect(HOST, port, target.path(room), sample=sample,
                                                   latencies=latencies, stored=stored)
                    times.append(time.perf_counter() - started)
                    return
                except (OSError, TimeoutError, ConnectionError):
                    await asyncio.sleep(0.2)
            failures += 1
    await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan)))
    return [c for c in clients if c is not None], times, failures


def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.close()


# Scenarios ----------------------------------------------------------------

HOLD_PER_PROCESS = 9000  # sockets per helper process: the fd limit may be 20,000 here


async def idle(target: Target, spec: dict) -> dict:
    """Open sockets in levels; server RSS per socket and connect time at each.

    The sockets are held by helper processes (`hold`), at most
    HOLD_PER_PROCESS each, so no process of the load generator needs more
    file descriptors than a default hard limit allows.
    """
    rooms = await target.setup(spec.get("rooms", 100))
    await asyncio.sleep(0.5)
    pid = target.pids[0]
    rss0 = rss_kib(pid)
    helpers: list[asyncio.subprocess.Process] = []
    rows = []
    have = 0
    try:
        for level in spec["levels"]:
            started = time.perf_counter()
            chunks = []
            while have + sum(chunks) < level:
                chunks.append(min(HOLD_PER_PROCESS, level - have - sum(chunks)))
            replies = []
            offset = have
            for count in chunks:
                helper = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.loadgen",
                    json.dumps({"scenario": "hold", "target": {**spec["target"], "token": target.token},
                                "rooms": rooms, "offset": offset, "count": count}),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24)
                helpers.append(helper)
                offset += count
                replies.append(helper.stdout.readline())
            held = [json.loads(line) for line in await asyncio.gather(*replies)]
            elapsed = time.perf_counter() - started
            have = level
            times = [t for h in held for t in h["times"]]
            failures = sum(h["failed"] for h in held)
            await asyncio.sleep(spec.get("settle", 2.0))
            rss = rss_kib(pid)
            alive = level - failures - sum(r.get("failed", 0) for r in rows)
            rows.append({
                "sockets": level, "open": alive, "failed": failures,
                "connect_seconds": round(elapsed, 2),
                "connects_per_s": round(sum(chunks) / elapsed, 1) if elapsed else None,
                "connect_p50_ms": ms(percentile(times, 0.5)),
                "connect_p99_ms": ms(percentile(times, 0.99)),
                "rss_base_kib": rss0, "rss_kib": rss,
                "rss_per_socket_kib": round((rss - rss0) / max(1, alive), 2),
            })
            print(f"  idle {target.kind} {level}: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        for helper in helpers:
            helper.stdin.close()
        await asyncio.gather(*(h.wait() for h in helpers))
    return {"levels": rows}


async def hold(spec: dict) -> dict:
    """A helper of `idle`: open sockets, report, keep them until stdin closes."""
    target = Target(spec["target"])
    target.token = spec["target"].get("token", "")
    rooms = spec["rooms"]
    plan = [(rooms[i % len(rooms)], target.ports[0], False)
            for i in range(spec["offset"], spec["offset"] + spec["count"])]
    started = time.perf_counter()
    clients, times, failures = await open_sockets(target, plan, [])
    print(json.dumps({"opened": len(clients), "failed": failures,
                      "elapsed": time.perf_counter() - started,
                      "times": [round(t, 5) for t in times]}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes our stdin (bounded by the parent's timeout)
    close_all(clients)
    await asyncio.sleep(0.2)
    return {"closed": len(clients)}


class RampSide:
    """One target of a ramp: its rooms, sockets and senders."""

    def __init__(self, target: Target):
        self.target = target
        self.latencies: list[float] = []
        self.stored: list[float] = []
        self.clients: list[WsClient] = []
        self.senders: list[WsClient] = []
        self.steps: list[dict] = []
        self.broken = 0
        self.done = False
        self.info: dict = {}
        self.rooms: list[str] = []

    async def open(self, spec: dict) -> None:
        target, per_room = self.target, spec["sockets_per_room"]
        rooms = self.rooms = await target.setup(spec["rooms"])
        sample_every = spec.get("sample_every", 1)
        plan = []
        for r, room in enumerate(rooms):
            for k in range(per_room):
                index = r * per_room + k
                port = target.ports[index % len(target.ports)]
                plan.append((room, port, index % sample_every == 0))
        started = time.perf_counter()
        self.clients, times, failures = await open_sockets(target, plan, self.latencies, self.stored)
        if failures:
            print(f"  {target.kind}: {failures} sockets failed to open", file=sys.stderr, flush=True)
        # Several senders per room when asked: the server handles one socket's
        # frames one after another, which would cap a room at 1 / (post latency).
        self.senders = [self.clients[r * per_room + k] for k in range(spec.get("senders_per_room", 1))
                        for r in range(len(rooms)) if r * per_room + k < len(self.clients)]
        self.info = {"rooms": len(rooms), "sockets": len(self.clients), "failed": failures,
                     "connect_seconds": round(time.perf_counter() - started, 2),
                     "connect_p99_ms": ms(percentile(times, 0.99))}

    async def step(self, spec: dict, rate: float) -> dict:
        target, clients, latencies = self.target, self.clients, self.latencies
        per_room = spec["sockets_per_room"]
        latencies.clear()
        self.stored.clear()
        out_of_order0 = sum(c.out_of_order for c in clients)
        before = sum(c.frames for c in clients)
        count = max(1, int(rate * spec["step_seconds"]))
        cpu0 = [cpu_seconds(p) for p in target.pids]
        own0 = own_cpu_seconds()
        t0 = time.perf_counter()
        sent = 0
        deadline = t0 + spec["step_seconds"] * 3 + 5
        while sent < count and time.perf_counter() < deadline:
            due = min(count, int((time.perf_counter() - t0) * rate) + 1)
            while sent < due:
                self.senders[sent % len(self.senders)].send_text(target.message(f"t={time.time():.6f}"))
                sent += 1
            await asyncio.sleep(0.002)
        send_seconds = time.perf_counter() - t0
        expected = sent * per_room
        got, last_got, last_change = 0, -1, time.perf_counter()
        for _ in range(int(spec.get("drain_seconds", 5.0) / 0.01)):
            got = sum(c.frames for c in clients) - before
            if got != last_got:
                last_change, last_got = time.perf_counter(), got
            if got >= expected:
                break
            await asyncio.sleep(0.01)
        end = time.perf_counter() if got >= expected else last_change
        server_cpu = sum(cpu_seconds(p) for p in target.pids) - sum(cpu0)
        throughput = got / (end - t0)
        closed = sum(1 for c in clients if c.closed.done())
        p99 = percentile(latencies, 0.99)
        step = {
            "offered_posts_per_s": rate, "offered_deliveries_per_s": rate * per_room,
            "sent": sent, "send_seconds": round(send_seconds, 2), "expected": expected,
            "delivered": got, "seconds": round(end - t0, 2), "deliveries_per_s": round(throughput, 1),
            "latency_p50_ms": ms(percentile(latencies, 0.5)), "latency_p99_ms": ms(p99),
            "latency_max_ms": ms(max(latencies) if latencies else None),
            "stored_to_delivery_p50_ms": ms(percentile(self.stored, 0.5)),
            "stored_to_delivery_p99_ms": ms(percentile(self.stored, 0.99)),
            "posts_stored_per_s": round(got / per_room / (end - t0), 1),
            "samples": len(latencies), "closed_sockets": closed,
            "out_of_order": sum(c.out_of_order for c in clients) - out_of_order0,
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_us_per_delivery": round(1e6 * server_cpu / got, 2) if got else None,
            "loadgen_cpu_s": round(own_cpu_seconds() - own0, 2),
        }
        # Latency broke: p99 over the limit. Saturated: it no longer keeps up at all.
        saturated = got < expected or throughput < 0.9 * rate * per_room
        step["broken"] = saturated or p99 is None or p99 > spec.get("break_p99", 0.2)
        step["saturated"] = saturated
        self.steps.append(step)
        print(f"  {target.kind} {rate}/s: {step}", file=sys.stderr, flush=True)
        if saturated:
            self.broken += 1
            self.done = self.broken >= spec.get("saturated_steps", 2) or closed > 0
        else:
            self.broken = 0
        if step["broken"]:
            await asyncio.sleep(1.0)  # let a backlog clear before the next step
        return step

    def result(self) -> dict:
        steps = self.steps
        costs = [s["server_cpu_us_per_delivery"] for s in steps if s["server_cpu_us_per_delivery"]]
        return {**self.info, "steps": steps,
                "max_deliveries_per_s": max((s["deliveries_per_s"] for s in steps), default=0),
                "server_cpu_us_per_delivery": min(costs) if costs else None}


async def ramp(targets: list[Target], spec: dict) -> dict:
    """Rooms of sockets posting over their sockets at ramped rates.

    With several targets (ours and the reference) every rate is run against
    each in turn, so a change in the machine's load hits both alike.
    """
    sides = [RampSide(t) for t in targets]
    for side in sides:
        await side.open(spec)
    await asyncio.sleep(1.0)
    for rate in spec["rates"]:
        for side in sides:
            if not side.done:
                await side.step(spec, rate)
        if all(side.done for side in sides):
            break
    for side in sides:
        close_all(side.clients)
    await asyncio.sleep(0.5)
    return {side.target.kind: side.result() for side in sides}


async def post_path(target: Target, spec: dict) -> dict:
    """Closed-loop posting through HTTP or the socket; a socket per room counts deliveries."""
    concurrency, seconds, via = spec["concurrency"], spec["seconds"], spec["via"]
    rooms = await target.setup(concurrency)
    latencies: list[float] = []
    clients, _times, _failures = await open_sockets(
        target, [(room, target.ports[0], True) for room in rooms], latencies)
    await asyncio.sleep(0.5)
    arrived = [asyncio.Event() for _ in clients]
    for client, event in zip(clients, arrived, strict=True):
        client.on_text = lambda _payload, event=event: event.set()
    posted = [0] * concurrency
    stop_at = time.perf_counter() + seconds
    pids = target.pids + spec.get("mongo_pids", [])
    cpu0 = [cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()

    async def http_worker(i: int) -> None:
        http = Http(target.ports[0])
        path = f"/api/chats/{rooms[i]}/messages/"
        while time.perf_counter() < stop_at:
            status, reply = await http.request("POST", path, {"message": f"t={time.time():.6f}"},
                                               target.token)
            assert status == 200, reply
            posted[i] += 1
        http.close()

    async def ws_worker(i: int) -> None:
        client = clients[i]
        while time.perf_counter() < stop_at:
            arrived[i].clear()
            client.send_text(target.message(f"t={time.time():.6f}"))
            await asyncio.wait_for(arrived[i].wait(), 10)
            posted[i] += 1

    worker = http_worker if via == "http" else ws_worker
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    total = sum(posted)
    for _ in range(500):  # up to 5 s for the last deliveries
        if sum(c.frames - 1 for c in clients) >= total:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    delivered = sum(c.frames - 1 for c in clients)
    close_all(clients)
    server_cpu = sum(cpu[:len(target.pids)])
    mongo_cpu = sum(cpu[len(target.pids):])
    return {"via": via, "concurrency": concurrency, "seconds": round(elapsed, 2), "posts": total,
            "posts_per_s": round(total / elapsed, 1), "delivered_per_s": round(delivered / elapsed, 1),
            "latency_p50_ms": ms(percentile(latencies, 0.5)),
            "latency_p99_ms": ms(percentile(latencies, 0.99)),
            "server_cpu_s": round(server_cpu, 3), "mongo_server_cpu_s": round(mongo_cpu, 3),
            "server_cpu_ms_per_post": round(1000 * server_cpu / max(1, total), 4),
            "mongo_server_cpu_ms_per_post": round(1000 * mongo_cpu / max(1, total), 4)}


async def metrics(port: int) -> dict[str, float]:
    """The server's Prometheus samples, by name with labels."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
                 .encode())
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    samples: dict[str, float] = {}
    for line in raw.split(b"\r\n\r\n", 1)[1].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def counted(ports: list[int], names: tuple[str, ...]) -> dict[str, float]:
    """Each counter summed over the processes."""
    every = await asyncio.gather(*(metrics(p) for p in ports))
    return {name: sum(m.get(name, 0.0) for m in every) for name in names}


SEQUENCER_COUNTERS = ("chat_messages_posted_total", "chat_event_inserts_total",
                      "chat_seq_renumbered_total", "chat_room_update_failures_total",
                      "chat_gaps_detected_total", "chat_messages_backfilled_total")


async def hot_room(target: Target, spec: dict) -> dict:
    """One room, `sockets` sockets spread over the target's processes, and
    `posters` members posting over HTTP (as many per process), closed-loop:
    each posts again as soon as its post is answered (answered only once
    stored). Then a paced step at `paced_rate` posts/s through sockets, for
    post-to-delivery latency.

    MongoDB insert attempts per stored post come from the servers' own counters
    (chat_event_inserts_total: inserts MongoDB attempted, stored or refused).
    """
    side = RampSide(target)
    await side.open({"rooms": 1, "sockets_per_room": spec["sockets"],
                     "senders_per_room": spec["posters"], "sample_every": 10})
    await asyncio.sleep(1.0)
    room = side.rooms[0]
    # A member per poster: 200 people, each under their own message limit.
    poster_tokens = await members(target, room, spec["posters"])
    before = await counted(target.ports, SEQUENCER_COUNTERS)
    frames0 = sum(c.frames for c in side.clients)
    side.latencies.clear()
    answers: list[float] = []
    failed = 0
    refused: dict[str, int] = {}  # status -> count
    stop_at = time.perf_counter() + spec["seconds"]
    cpu0 = [cpu_seconds(p) for p in target.pids]
    mongo_pids = spec.get("mongo_pids", [])
    mongo0 = [cpu_seconds(p) for p in mongo_pids]
    own0 = own_cpu_seconds()
    t0 = time.perf_counter()

    async def poster(i: int) -> None:
        nonlocal failed
        http = Http(target.ports[i % len(target.ports)])
        path = f"/api/chats/{room}/messages/"
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status, _ = await http.request("POST", path, {"message": f"t={time.time():.6f}"},
                                               poster_tokens[i])
                if status == 200:
                    answers.append(time.perf_counter() - started)
                else:
                    failed += 1
                    refused[str(status)] = refused.get(str(status), 0) + 1
        finally:
            http.close()

    await asyncio.gather(*(poster(i) for i in range(spec["posters"])))
    elapsed = time.perf_counter() - t0
    server_cpu = sum(cpu_seconds(p) for p in target.pids) - sum(cpu0)
    mongo_cpu = sum(cpu_seconds(p) for p in mongo_pids) - sum(mongo0)
    own_cpu = own_cpu_seconds() - own0
    after = await counted(target.ports, SEQUENCER_COUNTERS)
    expected = len(answers) * len(side.clients)
    for _ in range(int(spec.get("drain_seconds", 10) / 0.01)):
        if sum(c.frames for c in side.clients) - frames0 >= expected:
            break
        await asyncio.sleep(0.01)
    delivered = sum(c.frames for c in side.clients) - frames0
    burst_latencies = list(side.latencies)
    stored = after["chat_messages_posted_total"] - before["chat_messages_posted_total"]
    inserts = after["chat_event_inserts_total"] - before["chat_event_inserts_total"]
    burst = {
        "posters": spec["posters"], "seconds": round(elapsed, 2), "posts": len(answers),
        "failed": failed, "refused": refused, "stored_posts_per_s": round(len(answers) / elapsed, 1),
        "insert_attempts": inserts, "stored": stored,
        "insert_attempts_per_stored_post": round(inserts / stored, 3) if stored else None,
        "renumbered_batches": after["chat_seq_renumbered_total"]
        - before["chat_seq_renumbered_total"],
        "room_update_failures": after["chat_room_update_failures_total"]
        - before["chat_room_update_failures_total"],
        # Deliveries that skipped a seq (the other process's post still on its way
        # through RabbitMQ) and the events read back from MongoDB to fill them.
        "gaps": after["chat_gaps_detected_total"] - before["chat_gaps_detected_total"],
        "backfilled": after["chat_messages_backfilled_total"]
        - before["chat_messages_backfilled_total"],
        "answer_p50_ms": ms(percentile(answers, 0.5)), "answer_p99_ms": ms(percentile(answers, 0.99)),
        "delivered": delivered, "expected_deliveries": expected,
        "post_to_delivery_p50_ms": ms(percentile(burst_latencies, 0.5)),
        "post_to_delivery_p99_ms": ms(percentile(burst_latencies, 0.99)),
        "server_cpu_s": round(server_cpu, 2), "mongo_server_cpu_s": round(mongo_cpu, 2),
        "loadgen_cpu_s": round(own_cpu, 2),
    }
    print(f"  hot room burst: {burst}", file=sys.stderr, flush=True)
    await asyncio.sleep(1.0)
    paced = await side.step({"sockets_per_room": len(side.clients),
                             "step_seconds": spec["paced_seconds"], "drain_seconds": 10},
                            spec["paced_rate"])
    close_all(side.clients)
    await asyncio.sleep(0.5)
    return {**side.info, "burst": burst, "paced": paced}


async def storm_level(target: Target, room: str, tokens: list[str], count: int,
                      wait: float, since: int) -> dict:
    gc0 = await metrics(target.ports[0])
    overflows0 = listen_overflows()
    cpu0 = cpu_seconds(target.pids[0])
    times: list[float] = []
    clients: list[WsClient] = []
    failures = 0
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            client = await connect(HOST, target.ports[0],
                                   f"/ws/chats/{room}/?token={tokens[i % len(tokens)]}&since={since}",
                                   wait=wait)
        except (OSError, TimeoutError, ConnectionError):
            failures += 1
            return
        times.append(time.perf_counter() - started)
        clients.append(client)

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(target.pids[0]) - cpu0
    overflows = listen_overflows() - overflows0
    gc1 = await metrics(target.ports[0])
    close_all(clients)
    pauses = {}
    for generation in (0, 1, 2):
        key = f'chat_gc_pause_seconds_%s{{generation="{generation}"}}'
        runs = gc1.get(key % "count", 0) - gc0.get(key % "count", 0)
        total = gc1.get(key % "sum", 0) - gc0.get(key % "sum", 0)
        pauses[f"gen{generation}"] = {"collections": int(runs), "total_ms": round(1000 * total, 1)}
    return {"sockets": count, "open": len(clients), "failed": failures,
            "all_open_seconds": round(elapsed, 2),
            "handshake_p50_ms": ms(percentile(times, 0.5)),
            "handshake_p99_ms": ms(percentile(times, 0.99)),
            "listen_overflows": overflows, "server_cpu_s": round(cpu, 2), "gc": pauses}


def listen_overflows() -> int:
    """The kernel's count of connections dropped for a full listen queue (every
    listener on the machine)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


async def members(target: Target, room: str, count: int) -> list[str]:
    """Tokens of `count` new users who joined room (8 at a time)."""
    tokens: list[str] = []

    async def join(http: Http, n: int) -> None:
        for _ in range(n):
            name = f"bench{uuid.uuid4().hex[:10]}"
            status, reply = await http.request("POST", "/auth/users/create/",
                                               {"username": name, "password": "bench-password-1"})
            assert status == 201, reply
            status, reply = await http.request("POST", "/auth/jwt/create/",
                                               {"username": name, "password": "bench-password-1"})
            assert status == 200, reply
            token = reply["token"]
            status, reply = await http.request("PATCH", f"/api/chats/{room}/", {}, token)
            assert status == 200, reply
            tokens.append(token)

    conns = [Http(target.ports[0]) for _ in range(8)]
    await asyncio.gather(*(join(c, count // 8 + (i < count % 8)) for i, c in enumerate(conns)))
    for conn in conns:
        conn.close()
    return tokens


async def storm(target: Target, spec: dict) -> dict:
    """Sockets opening all at once (no client-side pacing), each authenticated
    with the token of one of `users` members of one room."""
    room = (await target.setup(1))[0]
    tokens = await members(target, room, spec["users"] - 1) + [target.token]
    # Each socket opens at the room's current seq, as the page does after loading
    # history: a storm of arrivals, not of catch-ups (since=0 would replay the
    # members' join events to every socket).
    http = Http(target.ports[0])
    status, reply = await http.request("GET", f"/api/chats/{room}/", None, target.token)
    http.close()
    assert status == 200, reply
    rows = []
    for count in spec["counts"]:
        rows.append(await storm_level(target, room, tokens, count, spec.get("wait", 60),
                                      reply["seq"]))
        print(f"  storm {count}: {rows[-1]}", file=sys.stderr, flush=True)
        await asyncio.sleep(spec.get("settle", 3.0))
    return {"users": spec["users"], "levels": rows}


SCENARIOS = {"idle": idle, "post": post_path, "hot_room": hot_room, "storm": storm}


async def main(spec: dict) -> dict:
    if spec["scenario"] == "hold":
        return await hold(spec)
    if spec["scenario"] == "ramp":
        targets = [Target(t) for t in spec["targets"]]
        return await asyncio.wait_for(ramp(targets, spec), spec.get("timeout", 900))
    target = Target(spec["target"])
    return await asyncio.wait_for(SCENARIOS[spec["scenario"]](target, spec), spec.get("timeout", 900))


def run(spec: dict) -> dict:
    """uvloop when installed (the bench extra has it): a lighter client, same for both targets."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(spec))
    return uvloop.run(main(spec))


if __name__ == "__main__":
    raise_fd_limit()
    spec = json.loads(sys.argv[1])
    result = run(spec)
    result["loadgen_cpu_s"] = round(own_cpu_seconds(), 2)
    print(json.dumps(result), flush=True)
