"""A loopback TCP proxy in front of a MongoDB server that counts the commands
going through it, by name: the MongoDB commands a server process sends,
counted from outside it (nx-27017 keeps no opcounters) and for any checkout
of the server, old or new.

Each request is an OP_MSG whose first section is the command document; its
first key is the command's name. Monitoring (hello, isMaster) is left out."""

from __future__ import annotations

import asyncio
import collections
import struct
import threading

import bson

OP_MSG = 2013
MONITORING = {"hello", "ismaster", "isMaster"}


def command_name(message: bytes) -> str | None:
    """The command of an OP_MSG (header, flags, then a kind-0 section first)."""
    if struct.unpack_from("<i", message, 12)[0] != OP_MSG or message[20] != 0:
        return None
    size = struct.unpack_from("<i", message, 21)[0]
    return next(iter(bson.decode(message[21:21 + size])), None)


class CountingProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> CountingProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self.connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def connection(self, client_reader, client_writer) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        answers = asyncio.ensure_future(self.pipe(reader, client_writer))
        try:
            while True:
                header = await client_reader.readexactly(16)
                rest = await client_reader.readexactly(struct.unpack_from("<i", header)[0] - 16)
                name = command_name(header + rest)
                if name is not None and name not in MONITORING:
                    with self.lock:
                        self.counts[name] += 1
                writer.write(header + rest)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            answers.cancel()
            client_writer.close()

    @staticmethod
    async def pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
