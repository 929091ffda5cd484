"""Run every scenario against the chat server and the bare-Tornado reference.

    python -m bench.run [--mode quick|full] [--only idle,broadcast,rooms,post,two,hot_room,storm]

Starts a MongoDB wire server (nx-27017) on a free loopback port with a
temporary data folder, a fresh server process per scenario (RabbitMQ at
CHAT_BENCH_AMQP_URL, default 127.0.0.1:5672, on a vhost of its own that is deleted
afterwards), the reference, and the load
generator in its own process; then writes bench/results/<date>.json, the
Markdown table and the PNG plot, and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tornado

from bench import report
from bench.loadgen import raise_fd_limit
from deploy.cluster import port_open, wait_for_port
from tests.conftest import MongoServer, database_url
from tests.helpers import ServerProcess, free_port, scratch_vhost, stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AMQP_URL = os.environ.get("CHAT_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
FD_RESERVE = 300

MODES = {
    "quick": {
        "idle_levels": [1000, 2000],
        "broadcast_rates": [10, 20, 30, 45, 60, 80],
        "rooms": 200,
        "rooms_rates": [50, 100, 250, 500],
        "step_seconds": 1.5,
        "post_seconds": 3.0,
        "post_rounds": 2,
        "hot_room_seconds": 3.0,
        "storm_counts": [1000, 10000],
        "storm_users": 50,
    },
    "full": {
        "idle_levels": [1000, 10000, 20000],
        "broadcast_rates": [10, 20, 30, 40, 50, 60, 70, 80, 100, 120, 150, 180],
        "rooms": 1000,
        "rooms_rates": [100, 250, 500, 750, 1000],
        "step_seconds": 5.0,
        "post_seconds": 6.0,
        "post_rounds": 3,
        "hot_room_seconds": 8.0,
        "storm_counts": [1000, 10000],
        "storm_users": 200,
    },
}
SCENARIOS = ("idle", "broadcast", "rooms", "post", "two", "hot_room", "storm")

# Our server's settings for the benchmark: cheap bcrypt, limits out of the way.
SERVER_SETTINGS = {"max_sockets_per_user": 100000, "user_messages_per_minute": 10_000_000}


def loadgen(spec: dict, timeout: float = 900) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench.loadgen", json.dumps(spec)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}) for {spec.get('scenario')}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


class Reference:
    """bench/reference.py in its own process."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_path = log_dir / f"reference-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Reference:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "reference.py"),
                                             "--port", str(self.port)], cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, "the reference", self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.process)


class Bench:
    def __init__(self, mode: str, work: Path, amqp_url: str):
        self.mode = mode
        self.amqp_url = amqp_url
        self.params = MODES[mode]
        self.work = work
        self.mongo = MongoServer(work / "mongo")

    def ours(self, count: int = 1) -> list[ServerProcess]:
        url = database_url(self.mongo.url)
        return [ServerProcess(url, self.amqp_url, log_dir=self.work, **SERVER_SETTINGS).start()
                for _ in range(count)]

    def idle(self) -> dict:
        """Sequentially: RSS is measured per process, and connect storms would overlap."""
        out = {}
        spec = {"scenario": "idle", "levels": self.idle_levels(), "rooms": 100}
        [proc] = self.ours()
        try:
            out["ours"] = loadgen({**spec, "target": {"kind": "ours", "ports": [proc.port],
                                                      "pids": [proc.process.pid]}})
        finally:
            proc.stop()
        ref = Reference(self.work).start()
        try:
            out["ref"] = loadgen({**spec, "target": {"kind": "ref", "ports": [ref.port],
                                                     "pids": [ref.process.pid]}})
        finally:
            ref.stop()
        return out

    def idle_levels(self) -> list[int]:
        """The levels that fit under the fd limit (a server needs fds of its own: up to 100
        pooled MongoDB connections while sockets authenticate, RabbitMQ, logs)."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return [min(level, limit - FD_RESERVE) for level in self.params["idle_levels"]]

    def ramp(self, rooms: int, per_room: int, senders: int, sample_every: int,
             servers: int = 1) -> dict:
        """Ours and the reference up at once; the load generator alternates their steps."""
        spec = {"scenario": "ramp", "rooms": rooms, "sockets_per_room": per_room,
                "senders_per_room": senders, "sample_every": sample_every,
                "rates": self.params["broadcast_rates" if rooms == 1 else "rooms_rates"],
                "step_seconds": self.params["step_seconds"], "break_p99": 0.2}
        procs = self.ours(servers)
        ref = Reference(self.work).start()
        targets = [
            {"kind": "ours", "ports": [p.port for p in procs], "pids": [p.process.pid for p in procs]},
            {"kind": "ref", "ports": [ref.port], "pids": [ref.process.pid]}]
        try:
            if 2 * rooms * per_room + 1000 < resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
                return loadgen({**spec, "targets": targets})
            # Both sides' sockets do not fit in one process: one target after the other.
            return {**loadgen({**spec, "targets": targets[:1]}), **loadgen({**spec, "targets": targets[1:]})}
        finally:
            for proc in procs:
                proc.stop()
            ref.stop()

    def broadcast(self) -> dict:
        return self.ramp(1, 1000, 8, 10)

    def rooms(self) -> dict:
        return self.ramp(self.params["rooms"], 10, 1, 1)

    def two(self) -> dict:
        return self.ramp(1, 1000, 8, 10, servers=2)

    def hot_room(self) -> dict:
        """1 room x 1,000 sockets over two processes, 200 closed-loop posters (100 per
        process), then 300 posts/s paced."""
        procs = self.ours(2)
        try:
            return loadgen({"scenario": "hot_room", "sockets": 1000, "posters": 200,
                            "seconds": self.params["hot_room_seconds"], "paced_rate": 300,
                            "paced_seconds": self.params["step_seconds"],
                            "mongo_pids": [self.mongo.process.pid],
                            "target": {"kind": "ours", "ports": [p.port for p in procs],
                                       "pids": [p.process.pid for p in procs]}})
        finally:
            for proc in procs:
                proc.stop()

    def storm(self) -> dict:
        """Sockets opening all at once against one fresh process, level after level."""
        [proc] = self.ours()
        counts = [min(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE)
                  for n in self.params["storm_counts"]]
        try:
            return loadgen({"scenario": "storm", "counts": counts,
                            "users": self.params["storm_users"],
                            "target": {"kind": "ours", "ports": [proc.port],
                                       "pids": [proc.process.pid]}})
        finally:
            proc.stop()

    def post(self) -> dict:
        """Ours and the reference, alternated; the cheapest round of each counts.

        CPU per post is inflated by whatever else the machine runs at that moment, so
        the least of a few alternated rounds is the steadiest figure for every side.
        The reference's CPU per post is Tornado's own share of a post: the request or
        frame in, the JSON, the broadcast, with no storage and no broker.
        """
        out: dict = {}
        seconds = self.params["post_seconds"]
        for via in ("http", "ws"):
            rounds: dict[str, list[dict]] = {"ours": [], "ref": []}
            for _ in range(self.params["post_rounds"]):
                spec = {"scenario": "post", "via": via, "concurrency": 4, "seconds": seconds,
                        "mongo_pids": [self.mongo.process.pid]}
                [proc] = self.ours()
                try:
                    rounds["ours"].append(loadgen({**spec, "target": {
                        "kind": "ours", "ports": [proc.port], "pids": [proc.process.pid]}}))
                finally:
                    proc.stop()
                ref = Reference(self.work).start()
                try:
                    rounds["ref"].append(loadgen({**spec, "mongo_pids": [], "target": {
                        "kind": "ref", "ports": [ref.port], "pids": [ref.process.pid]}}))
                finally:
                    ref.stop()
            out[f"ref_{via}"] = min(rounds["ref"], key=lambda r: r["server_cpu_ms_per_post"])
            out[f"ours_{via}"] = min(rounds["ours"], key=lambda r: r["server_cpu_ms_per_post"])
            out[f"rounds_{via}"] = rounds
        return out


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "tornado": tornado.version, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the chat server against bare Tornado.")
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios out of {','.join(SCENARIOS)}")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    fd_limit = raise_fd_limit()
    if not port_open(5672) and "127.0.0.1:5672" in AMQP_URL:
        print("RabbitMQ is not running on 127.0.0.1:5672 (make rabbitmq starts it)", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    with scratch_vhost(AMQP_URL, "chat-bench") as amqp_url:
        bench = Bench(args.mode, work, amqp_url)
        results = {"date": started.isoformat(timespec="seconds"), "mode": args.mode,
                   "command": f"make bench MODE={args.mode}", "machine": machine(),
                   "params": bench.params, "fd_limit": fd_limit, "scenarios": {}}
        try:
            bench.mongo.start()
            for name in args.only.split(","):
                print(f"== {name}", file=sys.stderr, flush=True)
                began = time.monotonic()
                results["scenarios"][name] = getattr(bench, name)()
                results["scenarios"][name]["scenario_seconds"] = round(time.monotonic() - began, 1)
        finally:
            bench.mongo.stop()
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H%M%SZ")
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    paths = report.write(results, RESULTS / stem, docs=None if args.no_docs else ROOT / "docs")
    print(f"wrote {json_path}, {', '.join(str(p) for p in paths)}", file=sys.stderr)
    print((RESULTS / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
