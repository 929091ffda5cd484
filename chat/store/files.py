"""Files: their bytes in GridFS (the `fs` bucket), what the chat knows of
them in `files`, and what each user's take in `file_usage`; also the link
preview cache (`link_previews`).

The bytes are in GridFS's own documents (any driver's GridFSBucket reads
them), written and read here: an upload writes its `fs.chunks` documents
itself, each as soon as it fills, and its `fs.files` document last (pymongo's
AsyncGridIn would hold up to 48 MB of chunks before writing them, so twenty
concurrent uploads would hold a gigabyte); a download reads a few chunks at a
time, only those its range covers; an image is read back before its files
document exists (a GridOut needs one).

A file's `files` document (same _id) holds room, user_id, name, type, size,
uploaded (epoch seconds), width/height, thumb (its thumbnail's id), kind
("upload", "thumb", "preview", or "partial" while an upload is being written:
recorded before its first chunk, so that the sweep finds what a dead process
left) and attached (the seq of the message that carries it; None until then).
It is a collection of its own rather than fields of fs.files because those are
GridFS's; nx-27017 also keeps fs.files in a table of fixed columns that takes
no conditional update.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING
from pymongo.errors import OperationFailure

from chat.store.base import Unavailable, eq, guarded, now

# GridFS's default chunk size: what every driver reads.
CHUNK_BYTES = 255 * 1024
# Chunks read per command when serving a file (1 MiB).
READ_BATCH = 4


def object_id(value: Any) -> ObjectId | None:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


class UploadStream:
    """One file being written: chunks go to fs.chunks as they fill, the files
    document last (`finish`); `abort` removes what was written."""

    def __init__(self, store: Files):
        self.store = store
        self.id = ObjectId()
        self.buffer = bytearray()
        self.chunks = 0
        self.size = 0
        self.recorded = False  # a "partial" document names it while it is written

    async def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= CHUNK_BYTES:
            await self.write_chunk(bytes(self.buffer[:CHUNK_BYTES]))
            del self.buffer[:CHUNK_BYTES]

    @guarded
    async def write_chunk(self, data: bytes) -> None:
        await self.store.fs_chunks.insert_one({"files_id": self.id, "n": self.chunks, "data": data})
        self.chunks += 1

    async def flush(self) -> None:
        """Write the last, partial chunk: the file is then whole in fs.chunks."""
        if self.buffer:
            await self.write_chunk(bytes(self.buffer))
            self.buffer.clear()

    async def finish(self, metadata: dict[str, Any]) -> dict:
        await self.flush()
        return await self.store.insert_file_doc(self, metadata)

    async def rewrite(self, data: bytes) -> None:
        """Replace what was written with data (an image without its EXIF)."""
        await self.discard_chunks()
        self.size = 0
        await self.write(data)

    async def discard_chunks(self) -> None:
        self.buffer.clear()
        if self.chunks:
            await self.store.delete_chunks([self.id])
            self.chunks = 0

    async def abort(self) -> None:
        """Remove everything written, and the document that named it."""
        await self.discard_chunks()
        if self.recorded:
            await self.store.forget_partial(self.id)
            self.recorded = False


class Files:
    """The fs.files / fs.chunks collections."""

    def init_files(self, db) -> None:
        self.files = db.files
        self.fs_files = db["fs.files"]
        self.fs_chunks = db["fs.chunks"]
        self.file_usage = db.file_usage
        self.link_previews = db.link_previews

    async def ensure_file_indexes(self) -> None:
        # GridFS's own index (drivers create it on a bucket's first write).
        await self.fs_chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)],
                                          unique=True, name="files_id_n")
        await self.files.create_index([("room", ASCENDING), ("attached", ASCENDING)],
                                      name="room_attached")
        await self.files.create_index([("attached", ASCENDING), ("uploaded", ASCENDING)],
                                      name="attached_uploaded")
        # One fetch per URL per hour, over all processes.
        await self.link_previews.create_index("expires", expireAfterSeconds=0, name="expires")

    def upload_stream(self) -> UploadStream:
        return UploadStream(self)

    @guarded
    async def record_partial(self, stream: UploadStream, room: str, user_id: str) -> None:
        """Name an upload before its first chunk: if its process dies before it
        ends, the sweep of uploads never attached finds its chunks by this."""
        await self.files.insert_one({"_id": stream.id, "room": room, "user_id": user_id,
                                     "kind": "partial", "attached": None, "size": 0,
                                     "uploaded": now().timestamp()})
        stream.recorded = True

    @guarded
    async def forget_partial(self, file_id: ObjectId) -> None:
        await self.files.delete_one({"_id": file_id, "kind": "partial"})

    @guarded
    async def insert_file_doc(self, stream: UploadStream, metadata: dict[str, Any]) -> dict:
        """The file's GridFS document, then the chat's: the file exists from then on."""
        uploaded = now()
        await self.fs_files.insert_one({"_id": stream.id, "length": stream.size,
                                        "chunkSize": CHUNK_BYTES, "uploadDate": uploaded,
                                        "filename": metadata.get("name", "")})
        # Epoch seconds: some wire servers store a datetime of a replacement as a string.
        doc = {"_id": stream.id, "size": stream.size, "uploaded": uploaded.timestamp(), **metadata}
        if stream.recorded:
            await self.files.replace_one({"_id": stream.id, "kind": "partial"}, doc)
        else:
            await self.files.insert_one(doc)
        if metadata.get("kind") == "upload":
            await self.count_usage(metadata["user_id"], stream.size)
        return doc

    @guarded
    async def delete_chunks(self, file_ids: list[ObjectId]) -> None:
        """A file's bytes: its chunks, then its GridFS document (one file per
        command: nx-27017 deletes GridFS documents by exact id only)."""
        for file_id in file_ids:
            await self.fs_chunks.delete_many({"files_id": file_id})
            try:
                await self.fs_files.delete_one({"_id": file_id})
            except OperationFailure as error:
                # nx-27017 refuses to delete a GridFS document that does not
                # exist (an upload that ended before its files document).
                if "not found" not in str(error):
                    raise

    @guarded
    async def bytes_used(self, user_id: str) -> int:
        """What the user's uploads take (thumbnails and preview images aside):
        one counter per user, raised when a file is stored and lowered when it
        is deleted, so a quota check is one read however many files there are."""
        usage = await self.file_usage.find_one({"_id": user_id})
        return int(usage["bytes"]) if usage else 0

    async def count_usage(self, user_id: str, change: int) -> None:
        await self.file_usage.update_one({"_id": user_id}, {"$inc": {"bytes": change}}, upsert=True)

    @guarded
    async def room_file(self, uri: str, file_id: Any) -> dict | None:
        """A file of this room (an upload, thumbnail or preview image)."""
        found = object_id(file_id)
        if found is None:
            return None
        return await self.files.find_one({"_id": found, "room": uri, "kind": {"$ne": "partial"}})

    @guarded
    async def user_upload(self, user_id: str, file_id: Any) -> dict | None:
        """One of the user's own uploads, in any room (a profile picture, say)."""
        found = object_id(file_id)
        if found is None:
            return None
        return await self.files.find_one({"_id": found, "user_id": user_id, "kind": "upload"})

    async def read_file(self, doc: dict, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes start..end (exclusive) of a file, a few chunks per read: a
        range is a range of chunks, and nothing more than a batch is held."""
        end = doc["size"] if end is None else end
        n = start // CHUNK_BYTES
        while n * CHUNK_BYTES < end:
            batch = await self.chunks_from(doc["_id"], n, READ_BATCH)
            if not batch:
                raise Unavailable(f"file {doc['_id']}: chunk {n} is missing")
            for chunk in batch:
                if chunk["n"] != n:
                    raise Unavailable(f"file {doc['_id']}: chunk {n} is missing")
                first = n * CHUNK_BYTES
                data = chunk["data"][max(0, start - first):max(0, end - first)]
                n += 1
                if data:
                    yield data
                if n * CHUNK_BYTES >= end:
                    return

    @guarded
    async def chunks_from(self, file_id: ObjectId, n: int, count: int) -> list[dict]:
        cursor = self.fs_chunks.find({"files_id": file_id, "n": {"$gte": n, "$lt": n + count}})
        return await cursor.sort("n", ASCENDING).to_list(None)

    async def read_whole(self, doc: dict) -> bytes:
        return b"".join([piece async for piece in self.read_file(doc)])

    @guarded
    async def claim_files(self, uri: str, user_id: str, ids: list[ObjectId], claim: str) -> int:
        """Mark the user's unattached uploads in uri as being attached (by `claim`):
        how many were."""
        result = await self.files.update_many(
            {"_id": {"$in": ids}, "room": uri, "user_id": user_id, "kind": "upload",
             "attached": None},
            {"$set": {"attached": claim}})
        return result.modified_count

    @guarded
    async def set_attached(self, ids: list[ObjectId], claim: str, attached: int | None) -> None:
        """Settle a claim: attached to the message at that seq, or (None) released."""
        await self.files.update_many({"_id": {"$in": ids}, "attached": claim},
                                     {"$set": {"attached": attached}})

    @guarded
    async def files_by_id(self, ids: list[ObjectId]) -> list[dict]:
        return await self.files.find({"_id": {"$in": ids}}).to_list(None)

    @guarded
    async def delete_files(self, query: dict) -> int:
        """Delete the files matching query (on `files`), their thumbnails and
        every chunk: how many."""
        docs = await self.files.find(query).to_list(None)
        for doc in docs:
            extra = [doc["thumb"]] if doc.get("thumb") else []
            # Bytes first, then the document that names them: a failure in
            # between leaves a document the next delete or sweep finds.
            await self.delete_chunks([doc["_id"], *extra])
            if extra:
                await self.files.delete_many({"_id": {"$in": extra}})
            deleted = await self.files.delete_one({"_id": doc["_id"]})
            if doc["kind"] == "upload" and deleted.deleted_count:  # freed once, whoever deletes
                await self.count_usage(doc["user_id"], -doc["size"])
        return len(docs)

    async def delete_message_files(self, uri: str, seq: int) -> int:
        """A deleted message's files: its attachments and its preview image."""
        return await self.delete_files({"room": eq(uri), "attached": eq(seq)})

    async def sweep_unattached(self, before: datetime.datetime) -> int:
        """Uploads never attached to a message, and the remains of uploads that
        never ended, begun before `before`."""
        return await self.delete_files({"kind": {"$in": ["upload", "partial"]}, "attached": None,
                                        "uploaded": {"$lt": before.timestamp()}})

    # The link preview cache ---------------------------------------------

    @guarded
    async def cached_preview(self, url: str) -> dict | None:
        """{"preview": ... or None} when url was fetched within the hour."""
        # `until` (epoch seconds) is compared, `expires` only ends the document
        # (TTL): some wire servers store a datetime given to $set as a string.
        return await self.link_previews.find_one({"_id": url, "until": {"$gt": now().timestamp()}})

    @guarded
    async def cache_preview(self, url: str, preview: dict | None, expires: datetime.datetime) -> None:
        # $set, not a replacement: nx-27017 upserts no document for replace_one.
        await self.link_previews.update_one(
            {"_id": url}, {"$set": {"preview": preview, "expires": expires,
                                    "until": expires.timestamp()}}, upsert=True)
