"""The rooms' event log (the messages collection): ordered inserts, history,
and the state of a message as the fold of its events."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError

from chat.store.base import GroupCommit, NotAttempted, Unavailable, guarded, write_error


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
        return await self.messages.find_one({"room": uri, "user_id": user_id,
                                             "client_id": client_id})

    @guarded
    async def last_seq(self, uri: str) -> int:
        last = await self.messages.find_one({"room": uri}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return last["seq"] if last else 0

    @guarded
    async def messages_after(self, uri: str, after: int, limit: int,
                             events: bool = True) -> list[dict]:
        """The room's events after seq `after`, oldest first; its messages alone
        unless `events`."""
        query: dict[str, Any] = {"room": uri, "seq": {"$gt": after}}
        if not events:
            query["type"] = None
        cursor = self.messages.find(query)
        return await cursor.sort("seq", ASCENDING).limit(limit).to_list(None)

    @guarded
    async def messages_before(self, uri: str, before: int | None, limit: int,
                              events: bool = True) -> list[dict]:
        """The `limit` events just below `before` (the latest when None), oldest
        first; messages alone unless `events`."""
        query: dict[str, Any] = {"room": uri}
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
        return await self.messages.find_one({"_id": object_id, "room": uri, "type": None})

    @guarded
    async def message_at(self, uri: str, seq: int) -> dict | None:
        return await self.messages.find_one({"room": uri, "seq": seq, "type": None})

    @guarded
    async def events_about(self, uri: str, target_seq: int, after: int) -> list[dict]:
        """The events about the message at target_seq after seq `after`, in order."""
        cursor = self.messages.find({"room": uri, "target_seq": target_seq, "seq": {"$gt": after}})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def unsaved_events(self, messages: list[dict]) -> list[dict]:
        """The events about these messages (of one room) that their saved state
        may not include yet, in seq order."""
        cursor = self.messages.find({"room": messages[0]["room"], "$or": [
            {"target_seq": m["seq"], "seq": {"$gt": m.get("last_event_seq", m["seq"])}}
            for m in messages]})
        return await cursor.sort("seq", ASCENDING).to_list(None)

    @guarded
    async def count_change(self, message: dict, step: int) -> None:
        """Count a change to the message as begun (1) or saved (-1)."""
        await self.messages.update_one({"_id": message["_id"]}, {"$inc": {"changing": step}})

    @guarded
    async def save_message_state(self, message: dict, state: dict, saves_change: bool) -> bool:
        """Write a message's new state if it is still as read (same last_event_seq),
        counting one change as saved when `saves_change`: False when another
        writer moved it on first."""
        last = message.get("last_event_seq", message["seq"])
        seen = [last, None] if last == message["seq"] else [last]
        update: dict[str, Any] = {"$set": state}
        if saves_change:
            update["$inc"] = {"changing": -1}
        result = await self.messages.update_one(
            {"_id": message["_id"], "last_event_seq": {"$in": seen}}, update)
        return result.matched_count > 0

    @guarded
    async def erase_edits(self, uri: str, target_seq: int) -> None:
        """Remove the text of every edit of a deleted message."""
        await self.messages.update_many(
            {"room": uri, "target_seq": target_seq, "type": "edit", "message": {"$exists": True}},
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
