"""Files of a room: upload (streamed into GridFS), download (members only,
served so that no file can run as this origin), and a message's link preview."""

from __future__ import annotations

import logging
import re
import urllib.parse

import tornado.web

from chat.files import TooLarge, served_type
from chat.store import REQUEST_DEADLINE, NotFound, NotMember, Unavailable, background
from handlers import models
from handlers.base import ApiError, ApiHandler, api_error, detail, endpoint, field_error

log = logging.getLogger("chat.files")

# What a multipart body may add to its one file (boundaries, part headers).
MULTIPART_SLACK = 16 * 1024
# Past the limit, the rest of a body is read and dropped (so that the client
# reads the 413) up to this much more; beyond, the connection is cut.
DRAIN_SLACK = 1024 * 1024
# The headers of a multipart part, at most.
PART_HEADERS_BYTES = 8192
# Every file answer: never rendered or run as this origin's document.
FILE_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "private, max-age=86400",
}
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class MultipartFile:
    """The one part named `file` of a multipart/form-data body, streamed:
    `feed` returns the file's bytes in what it was given, holding back only
    what could be the start of the closing boundary."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self.buffer = bytearray(b"\r\n")  # the first boundary has no line break before it
        self.state = "preamble"
        self.name = ""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while True:
            if self.state == "preamble":
                found = self.buffer.find(self.delimiter)
                if found < 0:
                    del self.buffer[:-len(self.delimiter)]
                    return out
                del self.buffer[:found + len(self.delimiter)]
                self.state = "headers"
            elif self.state == "headers":
                found = self.buffer.find(b"\r\n\r\n")
                if found < 0:
                    if len(self.buffer) > PART_HEADERS_BYTES:
                        raise field_error("file", "The part's headers are too long.")
                    return out
                self.read_headers(bytes(self.buffer[:found]))
                del self.buffer[:found + 4]
                self.state = "data"
            elif self.state == "data":
                found = self.buffer.find(self.delimiter)
                if found < 0:
                    keep = len(self.delimiter) - 1
                    if len(self.buffer) > keep:
                        out.append(bytes(self.buffer[:-keep]))
                        del self.buffer[:-keep]
                    return out
                out.append(bytes(self.buffer[:found]))
                del self.buffer[:found + len(self.delimiter)]
                self.state = "after"
            elif self.state == "after":
                if len(self.buffer) < 2:
                    return out
                if self.buffer[:2] != b"--":
                    raise field_error("file", "Send one part, named file.")
                self.state = "done"
            else:
                self.buffer.clear()  # the epilogue
                return out

    def read_headers(self, block: bytes) -> None:
        text = block.decode("utf-8", "replace")
        disposition = next((line.split(":", 1)[1] for line in text.split("\r\n")
                            if line.lower().startswith("content-disposition:")), "")
        name = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        if name is None or name.group(1) != "file":
            raise field_error("file", "Send one part, named file.")
        filename = re.search(r'filename="([^"]*)"', disposition)
        self.name = filename.group(1) if filename else ""

    def finished(self) -> bool:
        return self.state == "done"


def boundary_of(content_type: str) -> bytes | None:
    found = re.search(r'boundary="?([^";]{1,70})"?', content_type)
    return found.group(1).encode() if found else None


def disposition(kind: str, name: str) -> str:
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", name) or "file"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name)}"


@tornado.web.stream_request_body
class UploadHandler(ApiHandler):
    """The body goes to GridFS as it arrives, in chunks (chat/store/files.py)."""

    upload = None
    parser: MultipartFile | None = None
    failure: ApiError | None = None
    done = False

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        self.services.store.begin_request()
        declared = self.request.headers.get("Content-Length")
        size = int(declared) if declared and declared.isdigit() else None
        try:
            await self.begin(size)
        except Exception as error:
            refused = api_error(error)
            if refused is None or refused.status == 413 or (size or 0) > DRAIN_SLACK:
                raise
            # Answered once the (small) body is read: closing a connection
            # with unread bytes resets it, and the client might never read why.
            self.failure = refused
            self.request.connection.set_max_body_size(DRAIN_SLACK)
            return
        self.request.connection.set_max_body_size(self.services.files.max_upload_bytes
                                                  + MULTIPART_SLACK + DRAIN_SLACK)

    async def begin(self, size: int | None) -> None:
        """Authenticate, check the query, and begin the upload (refused early
        when its declared size is too large)."""
        self.current_user = await self.authenticate()
        user = self.require_user()
        query = self.parse_query(models.UploadQuery)
        uri = self.path_args[0]
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            boundary = boundary_of(content_type)
            if boundary is None:
                raise field_error("file", "A multipart body needs a boundary.")
            self.parser = MultipartFile(boundary)
            if size is not None:
                size = max(0, size - MULTIPART_SLACK)
        try:
            self.upload = await self.services.files.begin(user, uri, query.name or "", size)
        except TooLarge as error:
            raise detail(413, str(error)) from None
        except NotMember:
            raise NotFound(uri) from None

    async def data_received(self, chunk: bytes) -> None:
        if self.failure is not None:
            return  # dropped: the answer is an error already
        try:
            pieces = self.parser.feed(chunk) if self.parser is not None else [chunk]
            for piece in pieces:
                await self.upload.write(piece)
        except TooLarge as error:
            await self.fail(detail(413, str(error)))
        except ApiError as error:
            await self.fail(error)
        except Unavailable:
            await self.fail(detail(503, "The database is unavailable; try again shortly.",
                                   {"Retry-After": "5"}))

    async def fail(self, error: ApiError) -> None:
        self.failure = error
        try:
            await self.upload.abort()
        except Exception:  # its chunks have no files document: nobody can read them
            log.warning("removing the chunks of a refused upload failed", exc_info=True)

    @endpoint("Upload a file: the raw body (?name= its name) or multipart/form-data with one "
              "part `file`; streamed into storage. Its type is found from its content; images "
              "get width, height and a thumbnail", "uploadFile", query=models.UploadQuery,
              response=models.FileInfo, status=201, errors=(404, 413, 429, 503))
    async def post(self, uri: str, query: models.UploadQuery) -> None:
        if self.failure is not None:
            raise self.failure
        if self.parser is not None:
            if not self.parser.finished():
                await self.fail(field_error("file", "The multipart body has no complete part "
                                                    "named file."))
                raise self.failure
            self.upload.name = self.upload.name or self.parser.name
        self.upload.name = self.upload.name or "file"
        self.services.store.begin_request()  # the budget starts again after the body
        try:
            public = await self.upload.finish()
        except Exception:  # a decompression bomb, MongoDB gone: nothing is kept
            await self.fail(detail(400, "The upload failed."))
            raise
        self.done = True
        self.reply(public, 201)

    def on_connection_close(self) -> None:
        if self.upload is not None and not self.done and self.failure is None:
            self.failure = detail(400, "The connection closed.")
            background(self.upload.abort())
        super().on_connection_close()


class FileHandler(ApiHandler):
    @endpoint("Download a file (?thumb=1: its thumbnail): members only; Range and ETag",
              "getFile", query=models.FileQuery, content_type="application/octet-stream",
              errors=(404, 503), responses={416: ("Range not satisfiable", models.Detail)})
    async def get(self, uri: str, file_id: str, query: models.FileQuery) -> None:
        user = self.require_user()
        store = self.services.store
        try:
            await store.check_member(uri, user["id"])
        except NotMember:
            raise NotFound(uri) from None  # whether the room exists is not said either
        doc = await store.room_file(uri, file_id)
        if doc is not None and query.thumb:
            doc = await store.room_file(uri, doc["thumb"]) if doc.get("thumb") else None
        if doc is None:
            raise NotFound(file_id)
        kind, inline = served_type(doc["type"])
        etag = f'"{doc["_id"]}"'
        for name, value in FILE_SECURITY.items():
            self.set_header(name, value)
        self.set_header("Content-Type", kind)
        self.set_header("Content-Disposition",
                        disposition("inline" if inline else "attachment", doc["name"]))
        self.set_header("ETag", etag)
        self.set_header("Accept-Ranges", "bytes")
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        size = doc["size"]
        start, end = 0, size  # end exclusive
        wanted = self.request.headers.get("Range")
        if wanted and self.request.headers.get("If-Range", etag) == etag:
            start, end = self.byte_range(wanted, size)
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Length", str(end - start))
        # A large file takes longer than one request's budget: each read gets its own.
        REQUEST_DEADLINE.set(None)
        async for piece in store.read_file(doc, start, end):
            self.write(piece)
            await self.flush()
        self.finish()

    def byte_range(self, header: str, size: int) -> tuple[int, int]:
        """One range of bytes=a-b, a- or -n: (start, end exclusive), or a 416."""
        found = RANGE.fullmatch(header.strip())
        if found is not None and (found.group(1) or found.group(2)):
            first, last = found.groups()
            if not first:
                start, end = max(0, size - int(last)), size
            else:
                start = int(first)
                end = min(size, int(last) + 1) if last else size
            if start < end:
                return start, end
        raise detail(416, "Range not satisfiable: give one range within the file.",
                     {"Content-Range": f"bytes */{size}"})


class PreviewHandler(ApiHandler):
    @endpoint("Remove your message's link preview", "removePreview", status=204,
              errors=(404, 503))
    async def delete(self, uri: str, message_id: str) -> None:
        user = self.require_user()
        await self.services.previews.remove(user, uri, message_id)
        self.set_status(204)
        self.finish()
