"""Carries new messages to every server process. The only module that imports pika.

Two implementations share one interface:

- `AmqpBroker`: RabbitMQ through pika's TornadoConnection, on one node of a
  cluster. One durable fanout exchange per room (cluster-wide); one
  exclusive, server-named queue per process (per connection: on the node it
  is connected to, gone with that node), bound to the control exchange and
  to the exchange of every room with a local reader; a delivery's exchange
  names its room. pika has no automatic
  recovery, so losing the connection (or the channel, or a consumer) moves
  on at once to the next node, each node tried once per cycle, with capped
  exponential backoff and jitter on the IOLoop only after a whole cycle
  failed; then it restores every binding, re-sends what could not be
  published, and reports the rooms so the hub backfills them from MongoDB.
- `MemoryBroker`: the same interface inside one process (embedded mode).

The owner sets `on_message(uri, body)` (a delivery), `on_recovered(uris)`
(bindings restored after an outage: backfill these rooms) and, optionally,
`on_control(body)` (a process-wide notice such as a revoked token).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable, Sequence

import pika
from pika.adapters.tornado_connection import TornadoConnection
from pika.exceptions import AMQPError

log = logging.getLogger("chat.broker")

CONTROL_EXCHANGE = "chat.control"
# Bound how much a process keeps to re-send after an outage; beyond it the
# receivers' gap repair and reconnect backfill from MongoDB still deliver.
UNSENT_LIMIT = 10_000
# Deliveries the process's queue holds while the process stalls before dropping
# the oldest; gap repair fetches what was dropped from MongoDB.
QUEUE_MAX_LENGTH = 1_000_000
ROOM_EXCHANGE_PREFIX = "chat.room."


def exchange_name(uri: str) -> str:
    return ROOM_EXCHANGE_PREFIX + uri


class ChannelLost(Exception):
    """The AMQP channel closed while an operation waited for its reply."""


def ignore(*_args, **_kwargs) -> None:
    pass


class MemoryBroker:
    """Fan-out inside this process, for one process without RabbitMQ."""

    healthy = True

    def __init__(self):
        self.rooms: set[str] = set()
        self.on_message: Callable[[str, bytes], None] = ignore
        self.on_recovered: Callable[[list[str]], None] = ignore
        self.on_control: Callable[[bytes], None] = ignore

    async def start(self) -> None:
        pass

    def publish(self, uri: str, body: bytes) -> None:
        # Delivered on a later turn of the loop, as from a real broker.
        if uri in self.rooms:
            asyncio.get_running_loop().call_soon(self.on_message, uri, body)

    def publish_control(self, body: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.on_control, body)

    async def subscribe(self, uri: str) -> None:
        self.rooms.add(uri)

    async def unsubscribe(self, uri: str) -> None:
        self.rooms.discard(uri)

    async def close(self) -> None:
        self.rooms.clear()


class AmqpBroker:
    def __init__(self, urls: Sequence[str] | str, heartbeat: int = 15,
                 backoff_min: float = 0.1, backoff_max: float = 1.0):
        urls = [urls] if isinstance(urls, str) else list(urls)
        self.nodes = [node_parameters(url, heartbeat) for url in urls]
        random.shuffle(self.nodes)  # processes spread over the cluster's nodes
        self.next_node = 0  # where the next cycle over the nodes starts
        self.workflow = None  # pika's connection workflow while a cycle runs
        self.restored = False  # this connection's topology is back (see restore)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_message: Callable[[str, bytes], None] = ignore
        self.on_recovered: Callable[[list[str]], None] = ignore
        self.on_control: Callable[[bytes], None] = ignore

        self.connection: TornadoConnection | None = None
        self.channel = None
        self.restoring = False
        self.closing = False
        self.attempt = 0
        self.reconnect_timer: asyncio.TimerHandle | None = None
        self.opened: asyncio.Future | None = None
        self.closed: asyncio.Future | None = None
        # What the hub wants (rooms with local readers) and what is bound now to
        # this connection's one queue.
        self.wanted: set[str] = set()
        self.bound: set[str] = set()
        self.queue: str | None = None
        self.room_locks: dict[str, list] = {}
        # Exchanges declared on the current channel, and publishes waiting
        # for their room's exchange, in order.
        self.declared: set[str] = set()
        self.waiting: dict[str, list[bytes]] = {}
        self.unsent: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=UNSENT_LIMIT)
        self.unsent_control: collections.deque[bytes] = collections.deque(maxlen=UNSENT_LIMIT)
        self.replies: set[asyncio.Future] = set()
        self.tasks: set[asyncio.Task] = set()

    @property
    def healthy(self) -> bool:
        return self.channel is not None and self.channel.is_open and not self.restoring

    # Connection lifecycle ----------------------------------------------

    async def start(self, wait: float = 5.0) -> None:
        """Connect; the server starts even when RabbitMQ is down (HTTP keeps working)."""
        self.opened = asyncio.get_running_loop().create_future()
        self.connect()
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), wait)
        except TimeoutError:
            log.warning("RabbitMQ is not reachable yet; retrying in the background")

    def connect(self) -> None:
        """One cycle: try each node once, starting after the one last used."""
        if self.reconnect_timer is not None:
            self.reconnect_timer.cancel()
            self.reconnect_timer = None
        if self.workflow is not None:
            return  # a cycle is already under way
        order = self.nodes[self.next_node:] + self.nodes[:self.next_node]
        log.info("connecting to RabbitMQ (%s)", ", ".join(node_name(node) for node in order))
        self.workflow = TornadoConnection.create_connection(order, self.on_connect_done)

    def on_connect_done(self, result) -> None:
        self.workflow = None
        if isinstance(result, BaseException):  # every node failed, or close() aborted
            if not self.closing:
                log.warning("cannot connect to any RabbitMQ node: %r", result)
                self.schedule_reconnect()
            return
        if self.closing:
            result.close()
            return
        self.connection = result
        self.restored = False
        # The next cycle starts at the node after this one: a node that just
        # died is tried last.
        self.next_node = (self.nodes.index(result.params) + 1) % len(self.nodes)
        log.info("connected to RabbitMQ at %s", node_name(result.params))
        result.add_on_close_callback(self.on_connection_closed)
        result.channel(on_open_callback=self.on_channel_open)

    def on_connection_closed(self, _connection, reason) -> None:
        self.forget_channel()
        if self.closing:
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)
            return
        log.warning("RabbitMQ connection lost: %s", reason)
        if self.restored:
            self.connect()  # the other nodes at once; no waiting for a dead one
        else:
            self.schedule_reconnect()  # lost again before it was restored: back off

    def on_channel_open(self, channel) -> None:
        channel.add_on_close_callback(self.on_channel_closed)
        channel.add_on_cancel_callback(self.on_consumer_cancelled)
        self.channel = channel
        self.spawn(self.restore())

    def on_consumer_cancelled(self, frame) -> None:
        """The broker cancelled a consumer (its queue was deleted, its node left):
        that room would silently stop. Recover as from a lost channel."""
        log.warning("RabbitMQ cancelled consumer %s; reconnecting",
                    frame.method.consumer_tag)
        if self.channel is not None and self.channel.is_open:
            self.channel.close()

    def on_channel_closed(self, channel, reason) -> None:
        if channel is not self.channel:
            return
        self.forget_channel()
        if self.closing:
            return
        # A channel error (e.g. a refused declare) leaves the connection up but
        # every consumer gone: start over through the one reconnect path.
        log.warning("RabbitMQ channel closed: %s", reason)
        if self.connection is not None and self.connection.is_open:
            self.connection.close()
        # else the connection is closing too: on_connection_closed reconnects

    def forget_channel(self) -> None:
        self.channel = None
        self.queue = None
        self.bound.clear()
        self.declared.clear()
        for room, bodies in self.waiting.items():
            self.unsent.extend((room, body) for body in bodies)
        self.waiting.clear()
        for reply in self.replies:
            if not reply.done():
                reply.set_exception(ChannelLost())
        self.replies.clear()

    def schedule_reconnect(self) -> None:
        """The next cycle after a pause: doubling from backoff_min, capped at
        backoff_max (small, so a node's return is not missed by long), with
        jitter so processes do not all come back at the same instant."""
        if self.closing or self.reconnect_timer is not None:
            return
        self.attempt += 1
        delay = backoff_delay(self.attempt, self.backoff_min, self.backoff_max)
        log.info("reconnecting to RabbitMQ in %.2f s", delay)
        self.reconnect_timer = asyncio.get_running_loop().call_later(delay, self.connect)

    async def restore(self) -> None:
        """Declare and bind every wanted room, re-send, then report the rooms."""
        self.restoring = True
        first = self.opened is not None and not self.opened.done()
        try:
            await self.reply(self.channel.exchange_declare, exchange=CONTROL_EXCHANGE,
                             exchange_type="fanout", durable=True)
            # One queue for everything this process reads: a queue (with its
            # consumer) costs the broker about 25 KiB, a binding far less.
            frame = await self.reply(self.channel.queue_declare, queue="", exclusive=True,
                                     auto_delete=True,
                                     arguments={"x-max-length": QUEUE_MAX_LENGTH})
            self.queue = frame.method.queue
            await self.reply(self.channel.queue_bind, queue=self.queue,
                             exchange=CONTROL_EXCHANGE)
            self.channel.basic_consume(self.queue, self.on_delivery, auto_ack=True)
            rooms = sorted(self.wanted)
            for uri in rooms:
                await self.sync(uri)
        except (ChannelLost, AMQPError) as error:
            log.warning("restoring RabbitMQ topology failed: %s", error)
            return
        finally:
            self.restoring = False
        self.restored = True  # the next loss moves on at once again
        self.attempt = 0
        # One pass over what was queued: publish() queues again whatever still
        # cannot go, so looping until the queue is empty could spin forever.
        unsent, self.unsent = list(self.unsent), collections.deque(maxlen=UNSENT_LIMIT)
        for uri, body in unsent:
            self.publish(uri, body)
        unsent_control, self.unsent_control = (list(self.unsent_control),
                                               collections.deque(maxlen=UNSENT_LIMIT))
        for body in unsent_control:
            self.publish_control(body)
        if first:
            self.opened.set_result(None)
        else:
            log.info("RabbitMQ connection restored; %d rooms to backfill", len(rooms))
        if rooms:  # bound again, but what was published meanwhile is only in MongoDB
            self.on_recovered(rooms)

    def spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reply(self, method, **kwargs) -> asyncio.Future:
        """Call a pika channel method and await its reply frame."""
        future = asyncio.get_running_loop().create_future()
        self.replies.add(future)

        def on_reply(frame):
            self.replies.discard(future)
            if not future.done():
                future.set_result(frame)

        method(callback=on_reply, **kwargs)
        return future

    async def close(self) -> None:
        self.closing = True
        if self.reconnect_timer is not None:
            self.reconnect_timer.cancel()
        if self.workflow is not None:
            self.workflow.abort()
        if self.connection is None or self.connection.is_closed:
            return
        self.closed = asyncio.get_running_loop().create_future()
        if not self.connection.is_closing:
            self.connection.close()
        try:
            await asyncio.wait_for(self.closed, 3)
        except TimeoutError:
            log.warning("RabbitMQ did not confirm the close in time")

    # Rooms -------------------------------------------------------------

    async def subscribe(self, uri: str) -> None:
        """Bind a queue for uri now, or as soon as RabbitMQ is back."""
        self.wanted.add(uri)
        await self.sync(uri)

    async def unsubscribe(self, uri: str) -> None:
        self.wanted.discard(uri)
        await self.sync(uri)

    async def sync(self, uri: str) -> None:
        """Make the binding of uri match whether it is wanted; one change at a time."""
        # [lock, how many syncs hold or wait for it]: dropped when unused.
        entry = self.room_locks.setdefault(uri, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                await self.bind_or_unbind(uri)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self.room_locks[uri]

    async def bind_or_unbind(self, uri: str) -> None:
        channel, queue = self.channel, self.queue
        if channel is None or queue is None:
            return  # the reconnect restores whatever is wanted then
        try:
            if uri in self.wanted and uri not in self.bound:
                await self.declare_exchange(uri)
                await self.reply(channel.queue_bind, queue=queue, exchange=exchange_name(uri))
                self.bound.add(uri)
            elif uri not in self.wanted and uri in self.bound:
                self.bound.discard(uri)
                # Deliveries already queued still come; the hub drops them.
                await self.reply(channel.queue_unbind, queue=queue, exchange=exchange_name(uri))
        except ChannelLost:
            pass  # the reconnect restores whatever is wanted then

    async def declare_exchange(self, uri: str) -> None:
        if uri in self.declared:
            return
        # Durable and never auto-deleted: publishing to a missing exchange is
        # a channel error that would drop every consumer on the channel.
        await self.reply(self.channel.exchange_declare, exchange=exchange_name(uri),
                         exchange_type="fanout", durable=True)
        self.declared.add(uri)

    # Publishing --------------------------------------------------------

    def publish(self, uri: str, body: bytes) -> None:
        """Send without waiting; what cannot be sent now is re-sent after reconnect."""
        if self.channel is None or not self.channel.is_open:
            self.unsent.append((uri, body))
            return
        if uri in self.declared:
            self.basic_publish(uri, body)
            return
        if uri in self.waiting:
            self.waiting[uri].append(body)
            return
        self.waiting[uri] = [body]
        self.spawn(self.publish_when_declared(uri))

    async def publish_when_declared(self, uri: str) -> None:
        try:
            await self.declare_exchange(uri)
        except ChannelLost:
            return  # forget_channel moved the waiting bodies to unsent
        for body in self.waiting.pop(uri, []):
            self.basic_publish(uri, body)

    def basic_publish(self, uri: str, body: bytes) -> None:
        try:
            self.channel.basic_publish(exchange_name(uri), "", body)
        except AMQPError as error:
            log.warning("publish to %s failed (%s); will re-send", uri, error)
            self.unsent.append((uri, body))

    def publish_control(self, body: bytes) -> None:
        """Send a notice to every process; while RabbitMQ is away it waits, and is
        sent once the connection is restored."""
        if self.channel is None or not self.channel.is_open:
            self.unsent_control.append(body)
            return
        try:
            self.channel.basic_publish(CONTROL_EXCHANGE, "", body)
        except AMQPError as error:
            log.warning("control notice not sent (%s); will re-send", error)
            self.unsent_control.append(body)

    def on_delivery(self, _channel, method, _properties, body: bytes) -> None:
        """Route a delivery of the one queue by the exchange it came through."""
        # An exception escaping a pika callback breaks the whole connection
        # (every room's consumer): one bad delivery costs only itself.
        exchange = method.exchange
        try:
            if exchange == CONTROL_EXCHANGE:
                self.on_control(body)
            elif exchange.startswith(ROOM_EXCHANGE_PREFIX):
                self.on_message(exchange[len(ROOM_EXCHANGE_PREFIX):], body)
        except Exception:
            if exchange == CONTROL_EXCHANGE:
                log.exception("dropped a control notice that could not be handled")
            else:
                log.exception("dropped a delivery for room %s that could not be handled",
                              exchange.removeprefix(ROOM_EXCHANGE_PREFIX))


def backoff_delay(failures: int, first: float, maximum: float) -> float:
    """The pause after `failures` failures in a row (1 or more): doubling from
    `first`, capped at `maximum`, with jitter (half to all of it) so that what
    failed together does not retry together."""
    ceiling = min(maximum, first * 2 ** (failures - 1))
    return random.uniform(ceiling / 2, ceiling)


def node_parameters(url: str, heartbeat: int) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.heartbeat = heartbeat
    # One try per node per cycle; the broker's own backoff paces the cycles.
    parameters.connection_attempts = 1
    parameters.retry_delay = 0
    parameters.socket_timeout = 3
    parameters.stack_timeout = 5
    parameters.blocked_connection_timeout = 30
    return parameters


def node_name(parameters: pika.ConnectionParameters) -> str:
    return f"{parameters.host}:{parameters.port}"
