"""The AMQP consumer's failure paths, on the real RabbitMQ in the session's own vhost:
a delivery the hub cannot handle, and a consumer the broker cancels."""

from __future__ import annotations

import asyncio
import urllib.parse

import httpx
import pika

from chat.broker import AmqpBroker, exchange_name
from tests.helpers import (
    FIRST_MESSAGE,
    Listener,
    free_port,
    local_rabbit,
    metric,
    rabbitmqctl,
    two_members,
    vhost_of,
    wait_for,
)


def reconnects(server) -> float:
    return metric(httpx.get(f"{server.url}/metrics", timeout=5).text, "chat_broker_reconnects_total")


def publish_raw(amqp_url: str, uri: str, body: bytes) -> None:
    """What another process (or anyone with access to the vhost) could publish."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().basic_publish(exchange_name(uri), "", body)
    finally:
        connection.close()


def test_a_delivery_the_hub_cannot_handle_costs_only_itself(start_server, fresh_db, amqp_url):
    first = start_server(mongo_url=fresh_db)
    second = start_server(mongo_url=fresh_db)
    alice, bob, uri = two_members(first.url, second.url)

    async def scenario():
        listener = Listener(alice, uri).start(since=0)
        await wait_for(listener.ready.is_set, 10, "ready")
        # Valid JSON nested deeper than the decoder's recursion limit: json.loads
        # raises RecursionError, which no parser of a delivery expects.
        await asyncio.to_thread(publish_raw, amqp_url, uri, b"[" * 100_000 + b"]" * 100_000)
        sent = await asyncio.to_thread(bob.post, uri, "after the bad one")  # queued behind it
        await wait_for(lambda: sent["seq"] in listener.seqs, 10, "the next message")
        lost_connection = await asyncio.to_thread(reconnects, first)
        await listener.stop()
        return listener, lost_connection

    listener, lost_connection = asyncio.run(scenario())
    assert listener.seqs == [FIRST_MESSAGE]
    assert listener.closes == [None]  # the socket was never dropped
    assert lost_connection == 0  # nor the process's RabbitMQ connection
    assert "dropped a delivery for room" in first.log()


@local_rabbit
def test_a_consumer_the_broker_cancels_is_recovered(start_server, fresh_db, amqp_url):
    first = start_server(mongo_url=fresh_db)
    second = start_server(mongo_url=fresh_db)
    alice, bob, uri = two_members(first.url, second.url)
    vhost = vhost_of(amqp_url)

    def room_queues() -> list[str]:
        lines = rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name")
        return [line.split("\t")[1] for line in lines.splitlines()
                if line.startswith(exchange_name(uri) + "\t")]

    async def scenario():
        listener = Listener(alice, uri).start(since=0)
        await wait_for(listener.ready.is_set, 10, "ready")
        queues = await asyncio.to_thread(room_queues)
        assert len(queues) == 1  # only the first process has a socket in the room
        # An operator (or a policy) deletes the queue: the broker cancels its consumer.
        await asyncio.to_thread(rabbitmqctl, "delete_queue", "-p", vhost, queues[0])
        sent = [await asyncio.to_thread(bob.post, uri, f"m{n}") for n in range(3)]
        await wait_for(lambda: len(listener.seqs) >= 3, 10, "the messages after the cancel")
        await asyncio.sleep(0.3)  # a duplicate would arrive by now
        queues_after = await asyncio.to_thread(room_queues)
        await listener.stop()
        return listener, sent, queues_after

    listener, sent, queues_after = asyncio.run(scenario())
    assert listener.seqs == [m["seq"] for m in sent] == [FIRST_MESSAGE + n for n in range(3)]
    assert len(queues_after) == 1  # bound again
    assert reconnects(first) == 1


def test_a_dead_node_in_the_list_is_passed_over_without_waiting(start_server, amqp_url):
    """Whichever node the shuffle puts first, one cycle over the list reaches the
    live one: no backoff pause until every node has failed in turn."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # nothing listens there
    server = start_server(broker_url=f"{dead},{amqp_url}")
    log = server.log_path.read_text()
    assert httpx.get(f"{server.url}/healthz", timeout=5).json()["broker"] == "ok"
    live = urllib.parse.urlsplit(amqp_url)
    assert f"connected to RabbitMQ at {live.hostname}:{live.port or 5672}" in log
    assert "reconnecting to RabbitMQ in" not in log


def test_a_control_notice_sent_while_the_channel_is_down_goes_out_once_it_is_back(amqp_url):
    """A logout published while this process's channel is closing is kept, not
    dropped with a log line, and reaches the other processes after the reconnect."""
    async def scenario():
        sender, receiver = AmqpBroker(amqp_url), AmqpBroker(amqp_url)
        got: list[bytes] = []
        receiver.on_control = got.append
        await sender.start()
        await receiver.start()
        try:
            sender.channel.close()  # the sender's connection starts over
            sender.publish_control(b'{"type": "logout", "token_id": "t1"}')
            await wait_for(lambda: got, 10, "the notice, after the sender reconnected")
            return got
        finally:
            await sender.close()
            await receiver.close()

    assert asyncio.run(scenario()) == [b'{"type": "logout", "token_id": "t1"}']
