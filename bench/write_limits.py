"""How many membership changes and chats one user can make before the per-user
limits answer 429, at the default limits, against one server process.

    .venv/bin/python -m bench.write_limits

Starts nx-27017 on a free port and a server on a scratch vhost of the local
RabbitMQ (both removed afterwards); one user joins and leaves one chat as fast
as one HTTP client can, then creates chats. Prints JSON. Bounded: about 10 s.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from chat.embedded import wire_server_command
from deploy.cluster import wait_for_port
from tests.conftest import AMQP_URL, database_url
from tests.helpers import Api, ServerProcess, free_port, scratch_vhost, stop_process

DEFAULTS = {"user_member_changes_per_minute": 100, "user_rooms_per_hour": 50}


def flood(base_url: str) -> dict:
    owner, user = Api(base_url).signup(), Api(base_url).signup()
    uri = owner.new_chat()
    started, changes = time.perf_counter(), 0
    while True:
        reply = (user.request("PATCH", f"/api/chats/{uri}/") if changes % 2 == 0 else
                 user.request("DELETE", f"/api/chats/{uri}/members/{user.username}/"))
        if reply.status_code == 429:
            break
        changes += 1
    seconds = time.perf_counter() - started
    events = [e for e in owner.history(uri, events=1, limit=200)["messages"] if e["type"] == "member"]
    chats = 1  # the owner's first
    while owner.request("POST", "/api/chats/").status_code != 429:
        chats += 1
    return {"member_changes_before_429": changes, "seconds": round(seconds, 2),
            "member_events_per_second": round(changes / seconds, 1),
            "member_events_stored": len(events), "retry_after": int(reply.headers["Retry-After"]),
            "chats_before_429": chats}


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder, scratch_vhost(AMQP_URL, "bench-limits") as amqp:
        mongo = subprocess.Popen(wire_server_command(port, Path(folder)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, mongo, "nx-27017")
            server = ServerProcess(database_url(f"mongodb://127.0.0.1:{port}"), amqp,
                                   log_dir=Path(folder), **DEFAULTS).start()
            try:
                print(json.dumps(flood(server.url), indent=2))
            finally:
                server.stop()
        finally:
            stop_process(mongo)


if __name__ == "__main__":
    main()
