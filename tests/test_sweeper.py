"""What is erased stays erased: a delete whose save fails after its event was
stored (MongoDB gone between the two writes) is finished by the sweeper, on a
server in this process whose store is made to fail."""

from __future__ import annotations

import asyncio
import time

import pymongo
import websockets
from bson import ObjectId

from chat.store import Unavailable
from tests.helpers import Api, next_frame, server_in_thread


def failing_saves(state: dict):
    """prepare(): while state["down"], the store's writes after the event
    insert (erasing edits, saving the message's state) raise Unavailable."""
    def prepare(server):
        state["loop"] = asyncio.get_running_loop()
        store = server.store
        for name in ("save_message_state", "erase_edits"):
            real = getattr(store, name)

            async def failing(*args, real=real, **kwargs):
                if state["down"]:
                    raise Unavailable("MongoDB went away after the event was stored")
                return await real(*args, **kwargs)
            setattr(store, name, failing)
    return prepare


def on_loop(state: dict, coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, state["loop"]).result(30)


async def replay(api: Api, uri: str) -> list[dict]:
    async with websockets.connect(api.ws_url(uri, since=0)) as ws:
        frames = []
        while (frame := await next_frame(ws))["type"] != "ready":
            frames.append(frame)
        return frames


def test_a_delete_whose_save_failed_is_finished_by_the_sweeper(fresh_db):
    state = {"down": False}
    # A sweep every hour: this test runs it, with its clock moved by hand.
    with server_in_thread(fresh_db, failing_saves(state), changes_sweep_seconds=3600) as \
            (server, url):
        alice = Api(url).signup()
        uri = alice.new_chat()
        posted = alice.post(uri, "secret")
        path = f"/api/chats/{uri}/messages/{posted['id']}/"
        assert alice.request("PATCH", path, json={"message": "secret v2"}).status_code == 200

        state["down"] = True
        assert alice.request("DELETE", path).status_code == 503
        state["down"] = False
        db = pymongo.MongoClient(fresh_db).get_default_database()
        left = db.messages.find_one({"_id": ObjectId(posted["id"])})
        assert left["message"] == "secret v2" and left["changing"] == 1  # as left
        # Read meanwhile, the folded state: the page and the chat list show it deleted.
        shown = alice.history(uri)["messages"][-1]
        assert shown["deleted"] and shown["message"] == ""
        assert alice.request("GET", "/api/chats/").json()[0]["last_message"] is None

        sweeper = server.sweeper
        assert on_loop(state, sweeper.sweep()) == 0  # not stale yet: a request may be saving it
        sweeper.clock = lambda: time.time() + 60
        assert on_loop(state, sweeper.sweep()) == 1
        assert on_loop(state, sweeper.sweep()) == 0  # finished: nothing left to sweep

        saved = db.messages.find_one({"_id": ObjectId(posted["id"])})
        assert saved["deleted"] and saved["message"] == "" and saved["changing"] == 0
        assert all("secret" not in str(doc) for doc in db.messages.find({"room": uri}))
        assert "secret" not in str(alice.history(uri, events=1))
        assert "secret" not in str(alice.request("GET", "/api/chats/").json())
        frames = asyncio.run(replay(alice, uri))
        assert [f["type"] for f in frames] == ["message", "edit", "delete"]
        assert "secret" not in str(frames)
        # Finishing again (another process sweeping the same message) changes nothing.
        on_loop(state, server.services.events.finish(left))
        assert db.messages.find_one({"_id": ObjectId(posted["id"])}) == saved
