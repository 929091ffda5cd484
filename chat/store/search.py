"""Full-text search over the messages collection: its text index and the one
bounded query behind chat.search.MongoTextSearch."""

from __future__ import annotations

import asyncio
import logging

from pymongo.errors import OperationFailure

from chat.store.base import Unavailable, eq, guarded

log = logging.getLogger("chat.store")

TEXT_INDEX = "message_text"
# What a search shows of a message, with what folding a change in flight needs
# (chat.events.current).
CANDIDATE_FIELDS = {"room": 1, "seq": 1, "user": 1, "user_id": 1, "created": 1, "message": 1,
                    "type": 1, "changing": 1, "last_event_seq": 1}
# MongoDB's codes for an index that exists with other options (another language).
INDEX_CONFLICTS = (85, 86)
# A server that has no text indexes at all (SecantusDB, some MongoDB-compatible ones).
CANNOT_CREATE_INDEX = 67


class MessageSearch:
    """The text index on messages (owned here; the collection is the event log's)."""

    search_language: str = "english"
    # False when the server cannot keep a text index: searches answer 503, the rest works.
    text_search = True

    async def ensure_search_indexes(self) -> None:
        # One text index per collection (MongoDB allows no more). Edit events
        # carry a `message` too and are indexed with it: the query keeps to
        # messages (type None). A deleted message's text is erased, so it has
        # no entries left.
        try:
            await self.messages.create_index([("message", "text")], name=TEXT_INDEX,
                                             default_language=self.search_language)
        except OperationFailure as error:
            if error.code is None and "constraint failed" in str(error):
                # nx-27017 lists no text index in listIndexes and refuses to
                # create one that exists (MongoDB takes it as a no-op): it is there.
                return
            if error.code == CANNOT_CREATE_INDEX:
                self.text_search = False
                log.warning("this MongoDB server keeps no text index (%s): search is off", error)
                return
            if error.code not in INDEX_CONFLICTS:
                raise
            log.warning("the text index %s exists with another language than %r: drop it "
                        "(db.messages.dropIndex(%r)) to rebuild it in the configured one",
                        TEXT_INDEX, self.search_language, TEXT_INDEX)

    @guarded
    async def member_rooms(self, user_id: str) -> list[dict]:
        """Every room the user is a member of now, {uri, name, seq, updated}: the
        scope of a search."""
        cursor = self.rooms.find({"members": user_id},
                                 {"_id": 0, "uri": 1, "name": 1, "seq": 1, "updated": 1})
        return await cursor.to_list(None)

    @guarded
    async def recent_messages(self, last_seqs: dict[str, int], events: int) -> list[dict]:
        """The messages (not deleted) among the last `events` events of each room
        ({uri: its last seq}): a bounded index range per room, read at once."""
        async def recent(uri: str, last: int) -> list[dict]:
            cursor = self.messages.find(
                {"room": eq(uri), "seq": {"$gt": last - events}, "type": None,
                 "deleted": {"$ne": True}}, CANDIDATE_FIELDS)
            return await cursor.to_list(None)
        found = await asyncio.gather(*(recent(uri, last) for uri, last in last_seqs.items()))
        return [doc for docs in found for doc in docs]

    @guarded
    async def text_candidates(self, search: str, rooms: list[str], limit: int,
                              user_id: str | None = None, score: bool = False) -> list[dict]:
        """At most `limit` messages (not deleted, current text) of `rooms` that
        match the $text `search`, in the index's order, with their textScore as
        `score` when asked.

        No sort on the server: a sort would make MongoDB read every entry of
        every term before answering (RocketChat#23052); unsorted, the scan
        stops once `limit` documents matched. The caller orders and pages them.
        Ranges (dates, cursors) are left to the caller too: nx-27017 answers
        nothing when $text is combined with $lt/$gte on _id or created, or
        with $nor (MongoDB would take them here).
        """
        if not self.text_search:
            raise Unavailable("search needs a text index, which this MongoDB server does not keep")
        query: dict = {"$text": {"$search": search, "$language": self.search_language},
                       "room": {"$in": rooms}, "type": None, "deleted": {"$ne": True}}
        if user_id is not None:
            query["user_id"] = eq(user_id)  # nx-27017: 318 -> 218 ms for a common word at 1M
        fields = dict(CANDIDATE_FIELDS)
        if score:
            fields["score"] = {"$meta": "textScore"}
        return await self.messages.find(query, fields).limit(limit).to_list(None)
