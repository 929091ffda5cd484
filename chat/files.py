"""Files: uploads (type from the content, images decoded off the event loop,
EXIF stripped, thumbnails), attaching them to messages, and sweeping those
never attached. The bytes are in GridFS (chat/store/files.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import io
import logging
import time
import uuid
import warnings
from typing import Any

import filetype
from PIL import Image, ImageOps

from chat.events import InvalidField
from chat.store import UploadStream, background, object_id

log = logging.getLogger("chat.files")

# Decoded by Pillow; everything else is stored as it came.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Served inline (shown by the browser); everything else is an attachment.
INLINE_PREFIXES = ("image/png", "image/jpeg", "image/gif", "image/webp", "audio/", "video/",
                   "application/pdf")
# Types a browser would run as our origin's document: always served as bytes.
ACTIVE_TYPES = ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml")
THUMB_SIDE = 800
# Decompression-bomb limit: an image of more pixels is refused before it is decoded.
MAX_PIXELS = 40_000_000
# What a file's type is decided from.
HEAD_BYTES = 8192
MAX_ATTACHMENTS = 10
UNATTACHED_TTL = datetime.timedelta(hours=24)
SWEEP_EVERY = 3600.0
# Images decoded at once by this process: each holds its file in memory.
IMAGE_WORKERS = 2


class TooLarge(Exception):
    """A 413: the file, or the user's quota, is exceeded."""


def sniff(head: bytes) -> str:
    """The type of a file from its first bytes, never its name or header."""
    kind = filetype.guess_mime(head)
    if kind:
        return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe")):
        return "text/html"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "image/svg+xml"
    if text.startswith(b"<?xml"):
        return "text/xml"
    try:
        head.decode()
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a character cut at the end
            return "application/octet-stream"
    return "text/plain"


def served_type(kind: str) -> tuple[str, bool]:
    """(Content-Type, inline?) for a stored type."""
    if kind in ACTIVE_TYPES or kind.startswith("text/html"):
        return "application/octet-stream", False
    return kind, kind.startswith(INLINE_PREFIXES)


def process_image(data: bytes) -> dict[str, Any] | None:
    """In a worker thread: width, height, the thumbnail (WebP), and the image
    without its metadata when it had EXIF; None when it does not decode.
    Raises InvalidField for a decompression bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidField("file", f"The image has {width}x{height} pixels; at most "
                                           f"{MAX_PIXELS} are accepted.")
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidField("file", f"The image has more than {MAX_PIXELS} pixels.") from None
        except InvalidField:
            raise
        except Exception:
            return None
        result: dict[str, Any] = {"width": width, "height": height, "clean": None}
        exif = image.info.get("exif") or image.getexif()
        if exif and image.format in ("JPEG", "WEBP", "PNG"):
            # Served without EXIF (location, camera): turned upright as the
            # EXIF said, then saved without it.
            upright = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            options = {"quality": 92} if image.format in ("JPEG", "WEBP") else {}
            upright.save(out, image.format, **options)
            result["clean"] = out.getvalue()
            result["width"], result["height"] = upright.size
            image = upright
        thumb = image.copy()
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        if thumb.mode not in ("RGB", "RGBA"):
            thumb = thumb.convert("RGBA" if "transparency" in image.info or "A" in thumb.mode
                                  else "RGB")
        out = io.BytesIO()
        thumb.save(out, "WEBP", quality=80)
        result["thumb"] = out.getvalue()
        result["thumb_size"] = thumb.size
        return result


def file_url(uri: str, file_id: Any, thumb: bool = False) -> str:
    return f"/api/chats/{uri}/files/{file_id}/" + ("?thumb=1" if thumb else "")


def public_file(doc: dict) -> dict[str, Any]:
    """A file as uploads answer and messages carry it."""
    shown: dict[str, Any] = {"id": str(doc["_id"]), "name": doc["name"], "type": doc["type"],
                             "size": doc["size"]}
    if doc.get("width"):
        shown["width"], shown["height"] = doc["width"], doc["height"]
    if doc.get("thumb"):
        shown["thumb"] = file_url(doc["room"], doc["_id"], thumb=True)
    return shown


class Upload:
    """One upload being received: size and quota checked as bytes arrive."""

    def __init__(self, files: Files, user: dict, uri: str, name: str, quota_left: int):
        self.files = files
        self.user = user
        self.uri = uri
        self.name = name
        self.quota_left = quota_left
        self.stream: UploadStream = files.store.upload_stream()
        self.head = bytearray()

    async def write(self, data: bytes) -> None:
        size = self.stream.size + len(data)
        if size > self.files.max_upload_bytes:
            raise TooLarge(f"The file is larger than max_upload_bytes "
                           f"({self.files.max_upload_bytes} bytes).")
        if size > self.quota_left:
            raise TooLarge(self.files.quota_message())
        if len(self.head) < HEAD_BYTES:
            self.head += data[:HEAD_BYTES - len(self.head)]
        await self.stream.write(data)

    async def abort(self) -> None:
        await self.stream.abort()

    async def finish(self) -> dict[str, Any]:
        """Store the file (made an image's thumbnail first): its public object."""
        kind = sniff(bytes(self.head))
        meta: dict[str, Any] = {"room": self.uri, "user_id": self.user["id"], "name": self.name,
                                "type": kind, "kind": "upload", "attached": None}
        if kind in IMAGE_TYPES:
            image = await self.files.inspect_image(self.stream)
            if image is not None:
                meta["width"], meta["height"] = image["width"], image["height"]
                if image["clean"] is not None:
                    await self.stream.rewrite(image["clean"])
                thumb = self.files.store.upload_stream()
                await thumb.write(image["thumb"])
                await thumb.finish({"room": self.uri, "user_id": self.user["id"],
                                    "name": "thumb.webp", "type": "image/webp", "kind": "thumb",
                                    "thumb_of": self.stream.id})
                meta["thumb"] = thumb.id
            else:
                meta["type"] = "application/octet-stream"  # says it is an image, does not decode
        return public_file(await self.stream.finish(meta))


class Files:
    def __init__(self, store, hub, previews, max_upload_bytes: int, upload_quota_bytes: int,
                 clock=time.time):
        self.store = store
        self.hub = hub
        self.previews = previews
        self.max_upload_bytes = max_upload_bytes
        self.upload_quota_bytes = upload_quota_bytes
        self.clock = clock
        self.pool = concurrent.futures.ThreadPoolExecutor(IMAGE_WORKERS, "image")
        self.decoding = asyncio.Semaphore(IMAGE_WORKERS)
        self.sweeper: asyncio.Task | None = None

    def quota_message(self) -> str:
        return (f"Your files would exceed your upload_quota_bytes "
                f"({self.upload_quota_bytes} bytes): delete some messages with files first.")

    async def begin(self, user: dict, uri: str, name: str, declared: int | None) -> Upload:
        """A member's upload, refused early when its declared size is too large."""
        await self.store.check_member(uri, user["id"])
        if declared is not None and declared > self.max_upload_bytes:
            raise TooLarge(f"The file is larger than max_upload_bytes ({self.max_upload_bytes} bytes).")
        used = await self.store.bytes_used(user["id"])
        if used + (declared or 0) > self.upload_quota_bytes:
            raise TooLarge(self.quota_message())
        await self.hub.check_rate(user)
        upload = Upload(self, user, uri, name, self.upload_quota_bytes - used)
        await self.store.record_partial(upload.stream, uri, user["id"])
        return upload

    async def inspect_image(self, stream: UploadStream) -> dict | None:
        """Read the image back and decode it in a worker thread, IMAGE_WORKERS at a time."""
        async with self.decoding:
            await stream.flush()
            data = await self.store.read_whole({"_id": stream.id, "size": stream.size})
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, process_image, data)

    # Messages with files ----------------------------------------------

    async def post(self, user: dict, uri: str, text: Any, client_id: str | None,
                   attachments: list[str] | None) -> dict[str, Any]:
        """Post a message carrying the user's uploads to this room; its first link
        gets a preview."""
        if not attachments:
            public = await self.hub.post(user, uri, text, client_id)
        else:
            ids = self.check_ids(attachments)
            claim = uuid.uuid4().hex
            if await self.store.claim_files(uri, user["id"], ids, claim) != len(ids):
                await self.store.set_attached(ids, claim, None)
                raise InvalidField("attachments", "Each must be a file you uploaded to this chat "
                                                  "and not yet attached to a message.")
            by_id = {doc["_id"]: doc for doc in await self.store.files_by_id(ids)}
            try:
                public = await self.hub.post(user, uri, text, client_id,
                                             [public_file(by_id[i]) for i in ids])
            except BaseException:
                await self.store.set_attached(ids, claim, None)
                raise
            await self.store.set_attached(ids, claim, public["seq"])
        self.previews.schedule(user, uri, public)
        return public

    @staticmethod
    def check_ids(attachments: list[str]) -> list:
        if len(attachments) > MAX_ATTACHMENTS:
            raise InvalidField("attachments", f"At most {MAX_ATTACHMENTS} files per message.")
        ids = [object_id(value) for value in attachments]
        if None in ids:
            raise InvalidField("attachments", "Each must be the id of an uploaded file.")
        if len(set(ids)) != len(ids):
            raise InvalidField("attachments", "A file can be attached once.")
        return ids

    # Sweeping -----------------------------------------------------------

    def start(self) -> None:
        self.sweeper = background(self.sweep_forever())

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def sweep(self) -> int:
        """Remove the uploads never attached for UNATTACHED_TTL: how many."""
        moment = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        return await self.store.sweep_unattached(moment - UNATTACHED_TTL)

    async def sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("swept %d uploads never attached", swept)
            except Exception:
                log.warning("sweeping unattached uploads failed", exc_info=True)
            await asyncio.sleep(SWEEP_EVERY)
