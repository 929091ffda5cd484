"""Profile pictures: an uploaded image, checked by its content and stored
re-encoded as a small PNG (Pillow, in a thread pool so it never blocks the
event loop). Re-encoding keeps nothing of the upload but its pixels: no
metadata (locations), no polyglot payload, one type to serve."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

# The types taken, by their first bytes (what the content is, not what it claims).
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}
# The stored picture fits in this square (pixels).
SIZE = 256
# Larger images are refused before their pixels are decoded (decompression bombs).
MAX_PIXELS = 40_000_000


class NotAnImage(ValueError):
    """The upload is not a PNG, JPEG, GIF or WebP image Pillow can read; says why."""


def image_type(data: bytes) -> str | None:
    """The image format the content starts with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in SIGNATURES.items() if data.startswith(magic)), None)


def to_png(data: bytes) -> bytes:
    kind = image_type(data)
    if kind is None:
        raise NotAnImage("Upload a PNG, JPEG, GIF or WebP image.")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise NotAnImage(f"The image is too large: at most {MAX_PIXELS} pixels.")
            image.thumbnail((SIZE, SIZE))
            picture = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if isinstance(error, NotAnImage):
            raise
        raise NotAnImage("The image could not be read.") from None
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=True)
    return out.getvalue()


class Avatars:
    def __init__(self, threads: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="avatars")

    async def convert(self, data: bytes) -> bytes:
        """The upload as a PNG at most SIZE pixels square; NotAnImage otherwise."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, to_png, data)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
