"""The bytes a socket is sent: JSON encoded once, framed once per process.

Every socket of a room gets the same bytes, so the hub and the signals encode
an event or a signal here once and frame it once, not once per socket.
"""

from __future__ import annotations

import json
import struct
from typing import Any


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented RFC 6455 text frame (server to client)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload
