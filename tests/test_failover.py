"""RabbitMQ nodes dying under steady posting, on nodes of the tests' own (deploy/rabbit.py).

A three-node cluster (started once for the module) with two server processes
given every node, and a single node restarted under two processes. Loopback
only, bounded waits, every node and process stopped afterwards. The measured
times are printed and recorded as test properties (`pytest -s` or
`--junitxml` shows them); the asserts hold them to the issue's bounds.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from deploy import rabbit
from tests.helpers import FIRST_MESSAGE, Api, Listener, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not rabbit.available(), reason="needs Debian's rabbitmq-server")]

POST_PAUSE = 0.02


@pytest.fixture(scope="module")
def cluster():
    with rabbit.RabbitCluster(3, prefix="chat-test") as nodes:
        yield nodes


def node_of(server, cluster) -> rabbit.RabbitNode:
    """The node a process is connected to now, from its log."""
    log = server.log_path.read_text(errors="replace")
    ports = re.findall(r"connected to RabbitMQ at 127\.0\.0\.1:(\d+)", log)
    assert ports, f"server on {server.port} never connected:\n{server.log()}"
    return next(node for node in cluster.nodes if node.port == int(ports[-1]))


class Posters:
    """One thread per process posting to the room without pause; records who posted what when."""

    def __init__(self, apis: list[Api], uri: str):
        self.apis = apis
        self.uri = uri
        self.posted: dict[int, tuple[int, float]] = {}  # seq -> (process index, time sent)
        self.failures = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(len(apis))]

    def run(self, process: int) -> None:
        api, n = self.apis[process], 0
        while not self.stopping.is_set():
            sent = time.monotonic()
            reply = api.request("POST", f"/api/chats/{self.uri}/messages/",
                                json={"message": f"p{process}-{n}", "client_id": f"p{process}-{n}"})
            if reply.status_code == 200:
                self.posted[reply.json()["seq"]] = (process, sent)
                n += 1
            else:  # retried with the same client_id
                self.failures += 1
            time.sleep(POST_PAUSE)

    def start(self) -> Posters:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)

    def count(self) -> int:
        return len(self.posted)


def resumed_in(listeners: dict[int, list[Listener]], posters: Posters, since: float,
               fault: float) -> float:
    """Seconds from `since` until every socket had a message posted on the other
    process after the fault: the worst socket's first cross-process delivery."""
    worst = 0.0
    for process, group in listeners.items():
        for listener in group:
            arrivals = [at for seq, at in zip(listener.seqs, listener.arrivals, strict=True)
                        if seq in posters.posted and posters.posted[seq][0] != process
                        and posters.posted[seq][1] >= fault]
            assert arrivals, f"a socket on process {process} got nothing from the other"
            worst = max(worst, min(arrivals) - since)
    return worst


async def run_fault(servers, apis_by_process: list[Api], uri: str, fault, after_fault=None):
    """Sockets on both processes, posting on both; fault() mid-stream; then
    every socket must get every stored message exactly once, in order."""
    listeners = {p: [Listener(apis_by_process[p], uri).start(since=0) for _ in range(2)]
                 for p in range(len(servers))}
    everyone = [lst for group in listeners.values() for lst in group]
    await wait_for(lambda: all(lst.ready.is_set() for lst in everyone), 15, "ready")
    posters = Posters(apis_by_process, uri).start()
    try:
        await wait_for(lambda: min(len(lst.seqs) for lst in everyone) >= 40, 20, "the stream")
        fault_at = time.monotonic()
        await asyncio.to_thread(fault)
        since = time.monotonic() if after_fault is None else await asyncio.to_thread(after_fault)
        # Post on for a while after the fault so every socket has something to resume with.
        await wait_for(lambda: any(p[1] > since + 1.0 for p in posters.posted.values()), 30,
                       "posts after the fault")
    finally:
        await asyncio.to_thread(posters.stop)
    total = posters.count()
    await wait_for(lambda: all(len(lst.seqs) >= total for lst in everyone), 30,
                   f"all {total} messages on every socket")
    await asyncio.sleep(0.5)  # a duplicate would arrive by now
    for listener in everyone:
        await listener.stop()
    return listeners, posters, total, fault_at, since


def assert_every_message_once(listeners: dict[int, list[Listener]], total: int) -> None:
    for group in listeners.values():
        for listener in group:
            missing = total - len(set(listener.seqs))
            doubled = len(listener.seqs) - len(set(listener.seqs))
            assert (missing, doubled) == (0, 0), f"{missing} missing, {doubled} duplicated"
            assert listener.seqs == list(range(FIRST_MESSAGE, FIRST_MESSAGE + total))
            assert listener.closes == [None]  # the socket itself was never dropped


def test_a_killed_cluster_node_costs_no_message_and_delivery_resumes_within_3_s(
        cluster, start_server, fresh_db, record_property):
    urls = ",".join(cluster.urls)
    servers = [start_server(mongo_url=fresh_db, broker_url=urls) for _ in range(2)]
    alice = Api(servers[0].url).signup()
    uri = alice.new_chat()
    bob = Api(servers[1].url).signup()
    bob.join(uri)
    victim = node_of(servers[0], cluster)

    listeners, posters, total, fault_at, _ = asyncio.run(
        run_fault(servers, [alice, bob], uri, victim.kill))
    resumed = resumed_in(listeners, posters, fault_at, fault_at)
    record_property("failover_resumed_seconds", round(resumed, 3))
    print(f"\ncluster node SIGKILL: delivery resumed on every process in {resumed:.3f} s "
          f"({total} messages, {posters.failures} posts retried)")
    assert_every_message_once(listeners, total)
    assert node_of(servers[0], cluster) is not victim  # it really moved
    assert resumed < 3.0
    victim.start()  # back in the cluster for whatever runs next


def test_a_restarted_single_node_resumes_delivery_within_2_s(start_server, fresh_db,
                                                              record_property, tmp_path):
    node = rabbit.RabbitNode(rabbit.unique_name("chat-test-single"), tmp_path).start()
    try:
        servers = [start_server(mongo_url=fresh_db, broker_url=node.url) for _ in range(2)]
        alice = Api(servers[0].url).signup()
        uri = alice.new_chat()
        bob = Api(servers[1].url).signup()
        bob.join(uri)

        def restart() -> float:
            time.sleep(1.0)  # down for a moment: the processes are backing off by then
            node.start()  # same name, port and data
            return time.monotonic()  # it accepts connections from here on

        listeners, posters, total, fault_at, back_at = asyncio.run(
            run_fault(servers, [alice, bob], uri, node.kill, restart))
        resumed = resumed_in(listeners, posters, back_at, fault_at)
        record_property("restart_resumed_seconds", round(resumed, 3))
        print(f"\nsingle node SIGKILL and restart: delivery resumed {resumed:.3f} s after "
              f"the node accepted connections ({total} messages)")
        assert_every_message_once(listeners, total)
        assert resumed < 2.0
    finally:
        node.stop()
