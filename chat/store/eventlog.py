"""The rooms' event log (the messages collection): ordered inserts, history,
and the state of a message as the fold of its events."""

from __future__ import annotations

import time
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError

from chat.store.base import GroupCommit, NotAttempted, Unavailable, eq, guarded, write_error


def began() -> dict:
    """When the latest change to a message began (epoch seconds: some wire
    servers store a datetime given to $set as a string): the sweeper finishes
    changes older than any request could be."""
    return {"changing_since": time.time()}


class EventLog:
    """The messages collection: one document per (room, seq)."""

    def init_event_log(self) -> None:
        self.event_inserts = GroupCommit(self.insert_batches, self.timeout)

    async def ensure_event_indexes(self) -> None:
        await self.messages.create_index([("room", ASCENDING), ("seq", ASCENDING)],
                                         unique=True, name="room_seq")
        # The events about one message (edits, deletes, reactions), in seq order.
        await self.messages.create_index(
            [("room", ASCENDING), ("target_seq", ASCENDING), ("seq", ASCENDING)],
            name="room_target_seq", partialFilterExpression={"target_seq": {"$exists": True}})
        await self.messages.create_index(
            [("room", ASCENDING), ("user_id", ASCENDING), ("client_id", ASCENDING)],
            unique=True, name="room_user_client_id",
            partialFilterExpression={"client_id": {"$type": "string"}},
        )
        # Messages with changes in flight, for the sweeper: few at any time.
        await self.messages.create_index(
            [("changing", ASCENDING), ("changing_since", ASCENDING)], name="changing",
            partialFilterExpression={"changing": {"$gt": 0}})

    @guarded
    async def insert_events(self, docs: list[dict], deadline: float | None = None) -> list:
        """Insert one room's consecutive events in order: a result per event,
        None when stored, else SeqTaken, ClientIdTaken, NotAttempted (an earlier
        one failed) or another exception. What is stored is always a prefix."""
        return await self.event_inserts.submit(docs, deadline)

    async def insert_batches(self, batches: list[list[dict]]) -> list[list]:
        """One ordered insert command for the batches of several rooms.

        Ordered, so a room's events are stored as a prefix and never with a
        hole. When one event fails the command stops there: the rest of its
        room is reported NotAttempted (its sequencer renumbers them) and the
        rest of the other rooms is sent again at once.
        """
        results: list[list] = [[NotAttempted()] * len(batch) for batch in batches]
        todo = [(b, i) for b, batch in enumerate(batches) for i in range(len(batch))]
        first = True
        while todo:
            try:
                failure = await self.insert_ordered([batches[b][i] for b, i in todo])
            except Exception as error:
                if first:
                    raise  # nothing is stored
                for b, i in todo:  # what an earlier command stored stays reported stored
                    results[b][i] = error
                break
            first = False
            failed = len(todo) if failure is None else failure["index"]
            for b, i in todo[:failed]:
                results[b][i] = None
            if failure is None:
                break
            b, i = todo[failed]
            results[b][i] = write_error(batches[b][i], failure)
            room = batches[b][0]["room"]
            todo = [(b, i) for b, i in todo[failed + 1:] if batches[b][0]["room"] != room]
        return results

    async def insert_ordered(self, docs: list[dict]) -> dict | None:
        """Insert docs in order, stopping at the first failure; returns its writeError."""
        try:
            await self.messages.insert_many(docs, ordered=True)
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                # Not acknowledged as configured: it may vanish in a failover,
                # and its seq be given again. Not stored, as far as anyone knows.
                raise Unavailable(f"write concern not satisfied: "
                                  f"{error.details['writeConcernErrors']}") from error
            failures = error.details.get("writeErrors")
            if not failures:
                raise
            return failures[0]
        return None

    @guarded
    async def event_by_client_id(self, uri: str, user_id: str, client_id: str) -> dict | None:
        return await self.messages.find_one({"room": eq(uri), "user_id": user_id,
                                             "client_id": client_id})

    @guarded
    async def last_seq(self, uri: str) -> int:
        last = await self.messages.find_one({"room": eq(uri)}, {"seq": 1},
                                            sort=[("seq", DESCENDING)])
        return last["seq"] if last else 0

    @guarded
    async def messages_after(self, uri: str, after: int, limit: int,
                             events: bool = True) -> list[dict]:
        """The room's events after seq `after`, oldest first; its messages alone
        unless `events`."""
        query: dict[str, Any] = {"room": eq(uri), "seq": {"$gt": after}}
        if not events:
            query["type"] = None
        cursor = self.messages.find(query)
        return await cursor.sort("seq", ASCENDING).limit(limit).to_list(None)

    @guarded
    async def messages_before(self, uri: str, before: int | None, limit: int,
                              events: bool = True) -> list[dict]:
        """The `limit` events just below `before` (the latest when None), oldest
        first; messages alone unless `events`."""
        query: dict[str, Any] = {"room": eq(uri)}
        if not events:
            query["type"] = None
        if before is not None:
            query["seq"] = {"$lt": before}
        cursor = self.messages.find(query).sort("seq", DESCENDING).limit(limit)
        docs = await cursor.to_list(None)
        docs.reverse()
        return docs



    # A message's state: the fold of its events --------------------------

    @guarded
    async def message_by_id(self, uri: str, message_id: str) -> dict | None:
        """The message (not another kind of event) with this id in this room."""
        try:
            object_id = ObjectId(message_id)
        except (InvalidId, TypeError):
            return None
        return await self.messages.find_one({"_id": object_id, "room": eq(uri), "type": None})

    @guarded
    async def message_at(self, uri: str, seq: int) -> dict | None:
        return await self.messages.find_one({"room": eq(uri), "seq": eq(seq), "type": None})

    @guarded
    async def events_about(self, uri: str, target_seq: int, after: int) -> list[dict]:
        """The events about the message at target_seq after seq `after`, in order."""
        cursor = self.messages.find({"room": eq(uri), "target_seq": eq(target_seq),
                                     "seq": {"$gt": after}})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def unsaved_events(self, messages: list[dict]) -> list[dict]:
        """The events about these messages (of one room or several) that their
        saved state may not include yet, in seq order."""
        # A query per room (few: messages with changes in flight), not one
        # $or of them: nx-27017 evaluates an $or over every message.
        after = {(m["room"], m["seq"]): m.get("last_event_seq", m["seq"]) for m in messages}
        events: list[dict] = []
        for uri in dict.fromkeys(m["room"] for m in messages):
            seqs = [seq for room, seq in after if room == uri]
            cursor = self.messages.find({"room": eq(uri), "target_seq": {"$in": seqs},
                                         "seq": {"$gt": min(after[uri, seq] for seq in seqs)}})
            events += [event for event in await cursor.to_list(None)
                       if event["seq"] > after[uri, event["target_seq"]]]
        events.sort(key=lambda event: (event["room"], event["seq"]))
        return events

    @guarded
    async def count_change(self, message: dict, step: int) -> None:
        """Count a change to the message as begun (1) or saved (-1)."""
        update: dict[str, Any] = {"$inc": {"changing": step}}
        if step > 0:
            update["$set"] = began()
        await self.messages.update_one({"_id": message["_id"]}, update)

    @guarded
    async def stale_changes(self, before: float, limit: int) -> list[dict]:
        """Messages with changes counted in flight, the last begun before
        `before` (epoch seconds): left by a save that failed or a process that
        died, since no request lives that long."""
        # The oldest first (none before any), the rest of the filter here: an
        # $or is a scan of every message on nx-27017 (15 s at 1,000,000).
        cursor = self.messages.find({"changing": {"$gt": 0}}).sort("changing_since", ASCENDING)
        stale = []
        async for message in cursor.limit(limit):
            since = message.get("changing_since")
            if isinstance(since, (int, float)) and since >= before:
                break
            stale.append(message)
        return stale

    @guarded
    async def end_changes(self, message: dict) -> bool:
        """Count no change of the message in flight, unless one began since it was read."""
        result = await self.messages.update_one(
            {"_id": message["_id"], "changing_since": message.get("changing_since")},
            {"$set": {"changing": 0}})
        return result.modified_count > 0

    @guarded
    async def begin_edit(self, message: dict) -> int:
        """Count an edit of the message as begun: its version, one higher than
        any other edit's begun before, whatever process began it."""
        after = await self.messages.find_one_and_update(
            {"_id": message["_id"]}, {"$inc": {"changing": 1, "edits": 1}, "$set": began()},
            {"edits": 1}, return_document=ReturnDocument.AFTER)
        if after is None:
            raise Unavailable(f"message {message['_id']} vanished")
        return after["edits"]

    @guarded
    async def begin_reaction(self, message: dict, emoji: str, most: int) -> bool:
        """Count a reaction to the message as begun, holding one of its `most`
        places for distinct emoji (`emojis`, `emoji_count`): False when they
        are all held by other emoji. Held before the event is stored, so
        concurrent reactions from any process cannot pass `most`."""
        held = await self.messages.update_one({"_id": message["_id"], "emojis": emoji},
                                              {"$inc": {"changing": 1}, "$set": began()})
        if held.matched_count:
            return True
        taken = await self.messages.update_one(
            {"_id": message["_id"], "emojis": {"$nin": [emoji]},
             "emoji_count": {"$in": [None, *range(most)]}},
            {"$push": {"emojis": emoji}, "$inc": {"changing": 1, "emoji_count": 1},
             "$set": began()})
        return taken.matched_count > 0

    @guarded
    async def save_message_state(self, message: dict, state: dict, saves_change: bool) -> bool:
        """Write a message's new state if it is still as read (same last_event_seq),
        counting one change as saved when `saves_change`: False when another
        writer moved it on first. Emoji no longer among its reactions give
        their places back (begin_reaction)."""
        last = message.get("last_event_seq", message["seq"])
        seen = [last, None] if last == message["seq"] else [last]
        update: dict[str, Any] = {"$set": state}
        increments = {"changing": -1} if saves_change else {}
        gone = [emoji for emoji in message.get("reactions", {}) if emoji not in state["reactions"]]
        if gone:
            update["$pull"] = {"emojis": {"$in": gone}}
            increments["emoji_count"] = -len(gone)
        if increments:
            update["$inc"] = increments
        result = await self.messages.update_one(
            {"_id": message["_id"], "last_event_seq": {"$in": seen}}, update)
        return result.matched_count > 0

    @guarded
    async def erase_edits(self, uri: str, target_seq: int) -> None:
        """Remove the text of every edit of a deleted message."""
        await self.messages.update_many(
            {"room": eq(uri), "target_seq": eq(target_seq), "type": eq("edit"),
             "message": {"$exists": True}},
            {"$unset": {"message": "", "html": "", "mentions": "", "mentions_room": ""}})

    @guarded
    async def disown_events(self, user_id: str, name: str, erase: bool) -> None:
        """A deleted account's events show `name` as their author; with erase,
        its messages become deleted-message tombstones and its edits lose their text."""
        await self.messages.update_many({"user.id": user_id}, {"$set": {"user.username": name},
                                                               "$unset": {"user.email": "",
                                                                          "user.display_name": "",
                                                                          "user.avatar": ""}})
        await self.messages.update_many({"by.id": user_id}, {"$set": {"by.username": name}})
        if erase:
            await self.messages.update_many(
                {"user_id": user_id, "type": {"$exists": False}},
                {"$set": {"message": "", "deleted": True, "reactions": {}}})
            await self.messages.update_many(
                {"user_id": user_id, "type": "edit", "message": {"$exists": True}},
                {"$unset": {"message": ""}})
