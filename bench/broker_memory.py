"""What rooms cost RabbitMQ in memory: durable room exchanges, and what a process
holds for each room with a local reader: before, an exclusive queue (with its
binding and consumer) per room; now, one binding of the process's one queue.

    .venv/bin/python -m bench.broker_memory [--exchanges 100000] [--queues 10000]

Starts a RabbitMQ node of its own (deploy/rabbit.py), declares into a scratch
vhost of its own, reads the node's memory breakdown after each step (after a
garbage collection), deletes the vhost and stops the node. Prints JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import tempfile
import time
from pathlib import Path

import pika

from deploy.rabbit import RabbitNode, unique_name

THREADS = 4


def memory(node: RabbitNode) -> dict[str, int]:
    node.ctl("eval", "[erlang:garbage_collect(P) || P <- erlang:processes()], ok.")
    time.sleep(1)  # let the allocators settle before reading
    status = json.loads(node.ctl("status", "--formatter", "json"))
    breakdown = status["memory"]
    return {"total": int(breakdown["total"]["erlang"] if isinstance(breakdown["total"], dict)
                         else breakdown["total"]),
            **{key: int(value) for key, value in breakdown.items()
               if key != "total" and isinstance(value, int)}}


def declare_exchanges(url: str, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for name in names:
        channel.exchange_declare(name, exchange_type="fanout", durable=True)
    connection.close()


def hold_queues(url: str, exchanges: list[str]) -> pika.BlockingConnection:
    """One exclusive, server-named queue bound to each exchange, as a process with
    local sockets in those rooms has; kept until the connection closes."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for exchange in exchanges:
        queue = channel.queue_declare("", exclusive=True, auto_delete=True,
                                      arguments={"x-max-length": 100_000}).method.queue
        channel.queue_bind(queue, exchange)
        channel.basic_consume(queue, lambda *_: None, auto_ack=True)
    return connection


def hold_bindings(url: str, exchanges: list[str]) -> pika.BlockingConnection:
    """One exclusive queue (with one consumer) bound to every exchange, as a
    process holds since one queue per process."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True, auto_delete=True,
                                  arguments={"x-max-length": 1_000_000}).method.queue
    for exchange in exchanges:
        channel.queue_bind(queue, exchange)
    channel.basic_consume(queue, lambda *_: None, auto_ack=True)
    return connection


def spread(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=10_000)
    args = parser.parse_args(argv)

    node = RabbitNode(unique_name("chat-bench-memory"), Path(tempfile.mkdtemp(prefix="chat-bench-rabbit-")))
    node.start()
    vhost = "chat-bench-memory"
    held: list[pika.BlockingConnection] = []
    try:
        node.ctl("add_vhost", vhost)
        node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = node.url.replace("/%2F", f"/{vhost}")
        before = memory(node)
        names = [f"chat.room.{i:015x}" for i in range(args.exchanges)]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(declare_exchanges, [url] * THREADS, spread(names, THREADS)))
        declare_seconds = time.monotonic() - started
        with_exchanges = memory(node)
        disk = sum(f.stat().st_size for f in (node.dir / "mnesia").rglob("*") if f.is_file())
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            held = list(pool.map(hold_queues, [url] * THREADS,
                                 spread(names[:args.queues], THREADS)))
        with_queues = memory(node)
        for connection in held:
            connection.close()
        without_queues = memory(node)
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            held = list(pool.map(hold_bindings, [url] * THREADS,
                                 spread(names[:args.queues], THREADS)))
        with_bindings = memory(node)
        result = {
            "rabbitmq": node.ctl("eval", "rabbit_misc:version().").strip().strip('"'),
            "exchanges": args.exchanges,
            "declare_seconds": round(declare_seconds, 1),
            "memory_before": before,
            "memory_with_exchanges": with_exchanges,
            "bytes_per_exchange": round((with_exchanges["total"] - before["total"])
                                        / args.exchanges),
            "mnesia_disk_bytes_with_exchanges": disk,
            "queues": args.queues,
            "memory_with_queues": with_queues,
            "bytes_per_queue_with_binding_and_consumer": round(
                (with_queues["total"] - with_exchanges["total"]) / args.queues),
            "memory_with_bindings": with_bindings,
            "bytes_per_binding_of_one_queue": round(
                (with_bindings["total"] - without_queues["total"]) / args.queues),
        }
        print(json.dumps(result, indent=2))
    finally:
        for connection in held:
            connection.close()
        try:
            node.ctl("delete_vhost", vhost, timeout=600)  # 100,000 exchanges take minutes
        finally:
            node.stop()
            shutil.rmtree(node.home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
