"""A minimal asyncio WebSocket client for the load generator.

Lighter than a full client library so that one load-generator process can
read 100,000 frames a second: server frames are parsed by their headers only,
and the payload is looked at only on sampled sockets (for the send timestamp
and the seq). Client frames are masked with a zero key (valid RFC 6455 and
free to apply). Pings are answered, so idle sockets stay open.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import struct
import time

ZERO_MASK = b"\x00\x00\x00\x00"
STAMP = b'"message":"t='
CREATED = b'"created":"'


class WsClient(asyncio.Protocol):
    """One socket. `frames` counts text frames; sampled sockets record latencies."""

    def __init__(self, host: str, port: int, path: str, sample: bool = False,
                 latencies: list | None = None, stored: list | None = None):
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.sample = sample
        self.latencies = latencies
        self.stored = stored  # from the message's "created" (stored) time to its arrival
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()  # the first text frame (the server's "ready")
        self.closed = loop.create_future()
        self.frames = 0
        self.last_seq = 0
        self.out_of_order = 0
        self.close_code: int | None = None
        self.on_text = None  # optional callback(payload bytes)

    # asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc or self.close_code}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            if not status.startswith(b"HTTP/1.1 101"):
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(bytes(buf[:200]).decode(errors="replace")))
                self.transport.close()
                return
            del buf[:end + 4]
            self.upgraded = True
        size = len(buf)
        i = 0
        while size - i >= 2:
            b0 = buf[i]
            length = buf[i + 1] & 0x7F
            start = i + 2
            if length == 126:
                if size - i < 4:
                    break
                length = (buf[i + 2] << 8) | buf[i + 3]
                start = i + 4
            elif length == 127:
                if size - i < 10:
                    break
                length = struct.unpack_from("!Q", buf, i + 2)[0]
                start = i + 10
            end = start + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                self.frames += 1
                if self.sample or self.on_text is not None:
                    self.text(bytes(buf[start:end]))
                if not self.ready.done():
                    self.ready.set_result(None)
            elif opcode == 9:
                self.send_frame(0x8A, bytes(buf[start:end]))
            elif opcode == 8:
                if length >= 2:
                    self.close_code = (buf[start] << 8) | buf[start + 1]
                self.transport.close()
            i = end
        if i:
            del buf[:i]

    # Payloads ---------------------------------------------------------------

    def text(self, payload: bytes) -> None:
        if self.on_text is not None:
            self.on_text(payload)
        if not self.sample:
            return
        arrived = time.time()
        at = payload.find(STAMP)
        if at >= 0:
            end = payload.find(b'"', at + len(STAMP))
            try:
                self.latencies.append(arrived - float(payload[at + len(STAMP):end]))
            except ValueError:
                pass
        at = payload.find(CREATED)
        if at >= 0 and self.stored is not None:
            end = payload.find(b'"', at + len(CREATED))
            try:
                created = datetime.datetime.fromisoformat(payload[at + len(CREATED):end].decode())
                self.stored.append(arrived - created.timestamp())
            except ValueError:
                pass
        at = payload.find(b'"seq":')
        if at >= 0:
            end = at + 6
            while end < len(payload) and 48 <= payload[end] <= 57:
                end += 1
            if end > at + 6:
                seq = int(payload[at + 6:end])
                if seq <= self.last_seq and b'"type":"message"' in payload:
                    self.out_of_order += 1
                self.last_seq = max(seq, self.last_seq)

    def send_frame(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size <= 0xFFFF:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        self.transport.write(header + ZERO_MASK + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(0x81, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame(0x88, struct.pack("!H", 1000))
            self.transport.close()


async def connect(host: str, port: int, path: str, wait: float = 20.0, **kwargs) -> WsClient:
    """Open a socket and wait for the server's first text frame (it has joined)."""
    loop = asyncio.get_running_loop()
    _transport, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(host, port, path, **kwargs), host, port), wait)
    try:
        await asyncio.wait_for(client.ready, wait)
    except BaseException:
        client.close()
        raise
    return client
