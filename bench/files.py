"""What files cost: N clients uploading a file each at once (throughput and the
server's RSS while they do), then downloading them back in Range requests.

    python -m bench.files [--clients 20] [--mib 25] [--range-mib 4]

Starts nx-27017 on a free port and one server process (the in-process broker:
files do not touch RabbitMQ); the load runs in this process. Prints one JSON
object and writes the "Files" section of docs/benchmarks.md (with the
machine's load average, which is shared).
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

import httpx

from bench.report import replace_section
from bench.run import SERVER_SETTINGS
from tests.conftest import MongoServer, database_url
from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Files"
PASSWORD = "bench-password-1"
PIECE = 64 * 1024
MiB = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """VmHWM counts from now on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sign_up(http: httpx.AsyncClient) -> str:
    name = f"b{uuid.uuid4().hex[:12]}"
    reply = await http.post("/auth/users/create/", json={"username": name, "password": PASSWORD})
    reply.raise_for_status()
    reply = await http.post("/auth/jwt/create/", json={"username": name, "password": PASSWORD})
    reply.raise_for_status()
    http.cookies.clear()  # a header token, not the login cookie (which needs XSRF)
    return reply.json()["token"]


async def scenario(base: str, pid: int, clients: int, size: int, range_size: int) -> dict:
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        tokens = [await sign_up(http) for _ in range(clients)]
        owner = {"Authorization": f"JWT {tokens[0]}"}
        uri = (await http.post("/api/chats/", headers=owner)).json()["uri"]
        for token in tokens[1:]:
            joined = await http.patch(f"/api/chats/{uri}/", headers={"Authorization": f"JWT {token}"})
            joined.raise_for_status()
        data = os.urandom(size)

        async def body():
            for start in range(0, size, PIECE):
                yield data[start:start + PIECE]

        async def upload(token: str) -> str:
            reply = await http.post(f"/api/chats/{uri}/files/", params={"name": "bench.bin"},
                                    content=body(), headers={"Authorization": f"JWT {token}",
                                                             "Content-Length": str(size)})
            reply.raise_for_status()
            return reply.json()["id"]

        samples: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                samples.append(status_kib(pid, "VmRSS"))
                await asyncio.sleep(0.05)

        reset_peak(pid)
        rss_before = status_kib(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)
        sampler = asyncio.ensure_future(sample())
        started = time.perf_counter()
        ids = await asyncio.gather(*(upload(token) for token in tokens))
        upload_seconds = time.perf_counter() - started
        done.set()
        await sampler
        upload_cpu = cpu_seconds(pid) - cpu_before
        peak = status_kib(pid, "VmHWM")

        async def download(token: str, file_id: str) -> int:
            got = 0
            for start in range(0, size, range_size):
                end = min(size, start + range_size) - 1
                reply = await http.get(f"/api/chats/{uri}/files/{file_id}/", headers={
                    "Authorization": f"JWT {token}", "Range": f"bytes={start}-{end}"})
                assert reply.status_code == 206, reply.status_code
                assert reply.content == data[start:end + 1]
                got += len(reply.content)
            return got

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        received = await asyncio.gather(*(download(t, i) for t, i in zip(tokens, ids, strict=True)))
        download_seconds = time.perf_counter() - started
        download_cpu = cpu_seconds(pid) - cpu_before
    total = clients * size
    assert sum(received) == total
    return {
        "clients": clients, "file_mib": size / MiB, "range_mib": range_size / MiB,
        "upload_seconds": round(upload_seconds, 2),
        "upload_mib_s": round(total / MiB / upload_seconds, 1),
        "upload_server_cpu_s": round(upload_cpu, 2),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_per_upload_mib": round((peak - rss_before) / 1024 / clients, 2),
        "rss_sampled_max_mib": round(max(samples, default=0) / 1024, 1),
        "download_seconds": round(download_seconds, 2),
        "download_mib_s": round(total / MiB / download_seconds, 1),
        "download_server_cpu_s": round(download_cpu, 2),
        "load_before": os.getloadavg()[0],
    }


def write_docs(result: dict, command: str) -> None:
    section = (
        f"{SECTION}\n\n"
        f"`{command}` (part of `make bench`): one server process on nx-27017; "
        f"{result['clients']} clients upload a {result['file_mib']:g} MiB file each at once "
        f"(streamed, 64 KiB writes, Content-Length given), then download them back in "
        f"{result['range_mib']:g} MiB Range requests, all clients at once. The machine (2 cores) "
        f"is shared with other people's test runs (load average {result['load_before']:.1f} at the "
        f"start): read the figures as orders of magnitude.\n\n"
        "| what | value |\n| --- | --- |\n"
        f"| upload, all together | {result['upload_mib_s']} MiB/s ({result['upload_seconds']} s, "
        f"server CPU {result['upload_server_cpu_s']} s) |\n"
        f"| server RSS before / peak while uploading | {result['rss_before_mib']} / "
        f"{result['rss_peak_mib']} MiB |\n"
        f"| RSS growth per concurrent upload | {result['rss_growth_per_upload_mib']} MiB |\n"
        f"| download with Range, all together | {result['download_mib_s']} MiB/s "
        f"({result['download_seconds']} s, server CPU {result['download_server_cpu_s']} s) |\n\n"
        "An upload holds at most one 255 KiB GridFS chunk and Tornado's 64 KiB read buffer: each "
        "chunk is inserted as it fills, and Tornado reads no more of the body until the insert is "
        "done (pymongo's AsyncGridIn would hold up to 48 MB per upload). A download reads four "
        "chunks (1 MiB) per command and writes each out before the next.\n")
    replace_section(DOCS, SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mib", type=float, default=25)
    parser.add_argument("--range-mib", type=float, default=4)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-files-") as work:
        mongo = MongoServer(Path(work) / "mongo")
        mongo.start()
        # nx-27017 serves one command at a time: twenty uploads' chunk inserts
        # queue behind each other longer than the tests' 2 s timeout.
        server = ServerProcess(database_url(mongo.url), "memory://", log_dir=Path(work),
                               mongo_timeout_ms=15000, **SERVER_SETTINGS).start()
        try:
            result = asyncio.run(scenario(server.url, server.process.pid, args.clients,
                                          int(args.mib * MiB), int(args.range_mib * MiB)))
        finally:
            server.stop()
            mongo.stop()
    print(json.dumps(result))
    if not args.no_docs:
        write_docs(result, f"python -m bench.files --clients {args.clients} --mib {args.mib:g} "
                           f"--range-mib {args.range_mib:g}")


if __name__ == "__main__":
    main()
