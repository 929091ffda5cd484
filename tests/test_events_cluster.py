"""Room events across two server processes on the real RabbitMQ and nx-27017:
edits, deletes, reactions and bans made on one process reach the other's
sockets exactly once and in order, replay with since, and keep the room's
seq gap-free when they interleave with posts under concurrency."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import urllib.parse

import pymongo
import pytest
import websockets

from tests.helpers import Api, Listener, next_frame, probe_joined, refused_status, two_members, wait_for

pytestmark = pytest.mark.slow

LOG_TYPES = ("message", "edit", "delete", "reaction", "member")


def log_of(listener: Listener) -> list[dict]:
    return [f for f in listener.frames if f["type"] in LOG_TYPES]


def full_history(api: Api, uri: str) -> list[dict]:
    events, after = [], 0
    while True:
        page = api.history(uri, after=after, limit=200, events=1)
        events += page["messages"]
        if not page["has_more"]:
            return events
        after = events[-1]["seq"]


def current_messages(api: Api, uri: str) -> dict[int, dict]:
    messages, after = {}, 0
    while True:
        page = api.history(uri, after=after, limit=200)
        messages.update({m["seq"]: m for m in page["messages"]})
        if not page["has_more"]:
            return messages
        after = page["messages"][-1]["seq"]


def folded(events: list[dict]) -> dict[int, dict]:
    """Each message's state from the log alone, as a client keeping its own state has it."""
    state: dict[int, dict] = {}
    for event in events:
        if event["type"] == "message":
            state[event["seq"]] = {"message": event["message"], "reactions": {}, "deleted": False,
                                   "last_event_seq": event["seq"], "version": 0}
            continue
        message = state.get(event.get("target_seq"))
        if message is None:
            continue
        message["last_event_seq"] = event["seq"]
        if message["deleted"]:
            continue
        if event["type"] == "edit":
            message.update(message=event["message"], version=event["version"])
        elif event["type"] == "delete":
            message.update(message="", deleted=True, reactions={})
        elif event["type"] == "reaction":
            users = message["reactions"].setdefault(event["emoji"], [])
            name = event["user"]["username"]
            if event["op"] == "add" and name not in users:
                users.append(name)
            elif event["op"] == "remove" and name in users:
                users.remove(name)
            if not users:
                del message["reactions"][event["emoji"]]
    return state


def as_shown(message: dict) -> dict:
    return {"message": message["message"], "reactions": message.get("reactions", {}),
            "deleted": bool(message.get("deleted")), "last_event_seq": message["last_event_seq"],
            "version": message.get("version", 0)}


def react(api: Api, uri: str, message: dict, emoji: str, on: bool = True) -> int:
    path = f"/api/chats/{uri}/messages/{message['id']}/reactions/{urllib.parse.quote(emoji)}/"
    return api.request("PUT" if on else "DELETE", path).status_code


def test_changes_on_one_process_reach_the_other_once_in_order_and_a_ban_holds_everywhere(
        two_servers, record_property):
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)
    carol = Api(b.url).signup()
    carol.join(uri)
    carol_on_a = Api(a.url, carol.username).login()

    async def scenario():
        full = Listener(bob, uri).start(since=0)  # bob's sockets are on b
        carol_socket = Listener(carol, uri).start(since=0)
        await wait_for(lambda: full.ready.is_set() and carol_socket.ready.is_set(), 10, "ready")
        async with websockets.connect(bob.ws_url(uri)) as plain:
            await probe_joined(plain)
            # Everything happens on a.
            posted = await asyncio.to_thread(alice.post, uri, "the plan: secret draft")
            base = f"/api/chats/{uri}/messages/{posted['id']}/"
            edit = await asyncio.to_thread(alice.request, "PATCH", base,
                                           json={"message": "the plan, v2: also secret"})
            assert edit.status_code == 200
            assert await asyncio.to_thread(react, alice, uri, posted, "👍") == 204
            assert (await asyncio.to_thread(alice.request, "DELETE", base)).status_code == 204
            banned_at = time.monotonic()
            banned = await asyncio.to_thread(alice.request, "POST", f"/api/chats/{uri}/bans/",
                                             json={"username": carol.username})
            assert banned.status_code == 204
            # Issue 13 wants it within 1 s: the time is recorded below, not asserted,
            # since a loaded CI machine must not fail a correct server.
            await wait_for(lambda: carol_socket.closes, 10, "carol's socket closed on b")
            closed_in = time.monotonic() - banned_at
            later = await asyncio.to_thread(alice.post, uri, "after the ban")
            await wait_for(lambda: later["seq"] in full.seqs, 10, "the last message on b")
            plain_frames = []
            while True:
                frame = await next_frame(plain)
                plain_frames.append(frame)
                if frame.get("seq") == later["seq"]:
                    break
        await asyncio.sleep(0.3)  # anything doubled would have arrived
        await full.stop()
        return full, carol_socket, plain_frames, posted, closed_in

    full, carol_socket, plain_frames, posted, closed_in = asyncio.run(scenario())
    record_property("ban_closed_socket_on_other_process_s", round(closed_in, 3))
    print(f"a ban requested on a closed carol's socket on b in {closed_in:.3f} s")

    got = log_of(full)
    assert [(f["type"], f.get("op")) for f in got] == [
        ("member", "join"), ("member", "join"), ("message", None), ("edit", None),
        ("reaction", "add"), ("delete", None), ("member", "ban"), ("message", None)]
    assert [f["seq"] for f in got] == list(range(1, len(got) + 1))  # once each, in order
    assert got[3]["message"] == "the plan, v2: also secret"  # live, before the delete
    assert [f["type"] for f in plain_frames] == ["message", "message"]
    assert carol_socket.closes == [1008]
    # A socket that was away replays the same log; the message comes in its current state.
    replayed = log_of(asyncio.run(replay_from_zero(bob, uri)))
    assert [(f["type"], f["seq"]) for f in replayed] == [(f["type"], f["seq"]) for f in got]
    assert replayed[2]["deleted"] is True and replayed[2]["message"] == ""
    assert replayed[3]["message"] == ""  # the edit's text went with the message
    assert full_history(bob, uri) == replayed  # ?events=1 is the same log
    shown = current_messages(bob, uri)[posted["seq"]]
    assert shown["deleted"] is True and shown["last_event_seq"] == got[5]["seq"]

    # Gone from MongoDB, every version of it.
    client = pymongo.MongoClient(a.mongo_url)
    try:
        stored = list(client.get_default_database().messages.find({"room": uri}))
    finally:
        client.close()
    assert "secret" not in repr(stored)

    # Carol is refused on both processes, on every path.
    for api in (carol, carol_on_a):
        for method, path, body in (("GET", f"/api/chats/{uri}/", None),
                                   ("GET", f"/api/chats/{uri}/messages/", None),
                                   ("POST", f"/api/chats/{uri}/messages/", {"message": "hi"}),
                                   ("PATCH", f"/api/chats/{uri}/", None)):
            reply = api.request(method, path, json=body)
            assert reply.status_code == 403, (api.base_url, method, path, reply.text)
        assert asyncio.run(refused_status(api.ws_url(uri, since=0))) == 403


async def replay_from_zero(api: Api, uri: str) -> Listener:
    listener = Listener(api, uri).start(since=0)
    await wait_for(listener.ready.is_set, 10, "the replay")
    await listener.stop()
    return listener


def test_the_seq_stays_gap_free_with_events_interleaved_with_posts(two_servers):
    """Posts, edits and reactions from both processes at once, many in flight:
    the log is 1..N with no gap or repeat, every socket on either process got
    it exactly so, and each message's stored state is the fold of its events."""
    a, b = two_servers
    alice, bob, uri = two_members(a.url, b.url)
    alice_on_b = Api(b.url, alice.username).login()
    bob_on_a = Api(a.url, bob.username).login()
    targets = [alice.post(uri, f"target {i}") for i in range(6)]
    emojis = ["👍", "🎉", "👀"]

    def poster(api: Api, tag: str) -> None:
        for i in range(25):
            api.post(uri, f"{tag} {i}", f"{tag}-{i}")

    def reactor(api: Api, offset: int) -> None:
        for i in range(24):
            target = targets[(i + offset) % len(targets)]
            emoji = emojis[i % len(emojis)]
            assert react(api, uri, target, emoji, on=(i // len(emojis)) % 2 == 0) == 204

    def editor(api: Api, tag: str) -> None:
        for i in range(12):
            target = targets[i % len(targets)]
            reply = api.request("PATCH", f"/api/chats/{uri}/messages/{target['id']}/",
                                json={"message": f"target edited {i} on {tag}"})
            assert reply.status_code == 200, reply.text

    async def scenario():
        listeners = [Listener(bob, uri).start(since=0),
                     Listener(alice, uri, base_url=b.url).start(since=0)]
        await wait_for(lambda: all(lst.ready.is_set() for lst in listeners), 10, "ready")
        work = [(poster, alice, "a1"), (poster, alice_on_b, "b1"), (poster, bob_on_a, "a2"),
                (poster, bob, "b2"), (reactor, alice, 0), (reactor, bob, 3),
                (reactor, bob_on_a, 1), (reactor, alice_on_b, 4), (editor, alice, "a"),
                (editor, alice_on_b, "b")]
        with concurrent.futures.ThreadPoolExecutor(len(work)) as pool:
            futures = [pool.submit(job, *args) for job, *args in work]
            await asyncio.to_thread(lambda: [f.result() for f in futures])
        last = (await asyncio.to_thread(alice.history, uri, limit=1, events=1))["messages"][-1]["seq"]
        await wait_for(lambda: all(log_of(lst) and log_of(lst)[-1]["seq"] >= last
                                   for lst in listeners), 20, "every event on every socket")
        await asyncio.sleep(0.3)
        for listener in listeners:
            await listener.stop()
        return listeners, last

    listeners, last = asyncio.run(scenario())
    log = full_history(alice, uri)
    assert [e["seq"] for e in log] == list(range(1, last + 1))  # no gap, no repeat
    kinds = [e["type"] for e in log]
    assert kinds.count("message") == 6 + 4 * 25
    assert kinds.count("edit") == 24
    for listener in listeners:  # live frames: each event once, in order
        frames = log_of(listener)
        assert [(f["type"], f["seq"]) for f in frames] == [(e["type"], e["seq"]) for e in log]
        # (a message frame is the message as posted; history has it as it is now)
        assert [f for f in frames if f["type"] != "message"] == \
            [e for e in log if e["type"] != "message"]
    # What history shows of each message is what the log folds to.
    shown = current_messages(alice, uri)
    expected = folded(log)
    assert {seq: as_shown(m) for seq, m in shown.items()} == expected

