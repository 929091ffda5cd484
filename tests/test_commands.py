"""How many MongoDB commands each operation sends, counted with a pymongo
CommandListener on an in-process server: a regression in round trips fails
here, whatever the machine's noise."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
from pathlib import Path

import httpx
import pymongo.monitoring
import pytest
import websockets

from chat import config as chat_config
from server import ChatServer
from tests.helpers import free_port, next_frame, wait_for

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics

SECRET = "command-count-test-secret-0123456789"


class Commands(pymongo.monitoring.CommandListener):
    """The commands the server sent to its database, by name."""

    def __init__(self, database: str):
        self.database = database
        self.names: list[str] = []

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.names.append(event.command_name)

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


@pytest.fixture
def in_process(fresh_db):
    """Run scenario(server, base_url, commands) against a server in this process."""

    def run(scenario, listeners=(), **settings):
        config = chat_config.load(None, env={}, mongo_url=fresh_db, broker_url="memory://",
                                  secret=SECRET, port=free_port(), bcrypt_rounds=4, **settings)
        commands = Commands(config.mongo_db)

        async def main():
            server = ChatServer(config.validate(), mongo_listeners=[commands, *listeners])
            await server.start()
            # The notifier's dispatcher polls `notifications` once per interval
            # per process, whatever the traffic: counted apart (bench.notifications).
            await server.notifier.stop()
            try:
                return await scenario(server, f"http://127.0.0.1:{config.port}", commands)
            finally:
                await server.stop()

        return asyncio.run(main())

    return run


async def sign_up(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """A new account's (id, token); the client then authenticates by header, as an API client."""
    created = await http.post("/auth/users/create/", json={"username": name, "password": "pw-12345"})
    assert created.status_code == 201, created.text
    token = (await http.post("/auth/jwt/create/",
                             json={"username": name, "password": "pw-12345"})).json()["token"]
    http.cookies.clear()
    return created.json()["id"], token


def test_round_trips_of_a_post_a_handshake_and_a_history_page(in_process):
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await sign_up(http, "ann")
            auth = {"Authorization": f"JWT {token}"}
            uri = (await http.post("/api/chats/", headers=auth)).json()["uri"]
            ws_url = f"{base.replace('http', 'ws')}/ws/chats/{uri}/?token={token}"
            async with websockets.connect(f"{ws_url}&since=0") as first:
                await next_frame(first, "ready")
                posted = await http.post(f"/api/chats/{uri}/messages/", headers=auth,
                                         json={"message": "warm", "client_id": "w"})
                assert posted.status_code == 200
                await next_frame(first, "message")
                commands.take()

                # A post by a known member in an open room: the insert, the room's seq.
                # (The per-user message limit shared by every process takes one more
                # command per share of posts, 5 of the default 100 a minute: not here,
                # where the share taken by the "warm" post is not spent yet.)
                posted = await http.post(f"/api/chats/{uri}/messages/", headers=auth,
                                         json={"message": "hello", "client_id": "c1"})
                assert posted.status_code == 200
                post = commands.take()

                # Handshakes by a token and member this process has seen: a plain
                # socket, and one resuming at the room's last seq (as the page does).
                async with websockets.connect(ws_url) as second:
                    room = server.hub.rooms[uri]
                    await wait_for(lambda: len(room) == 2, 5, "the socket to join")
                    handshake = commands.take()
                    await second.close()
                last = posted.json()["seq"]
                async with websockets.connect(f"{ws_url}&since={last}") as third:
                    ready = await next_frame(third, "ready")
                    resumed = commands.take()

                # A page of history.
                page = await http.get(f"/api/chats/{uri}/messages/", headers=auth)
                assert [m["message"] for m in page.json()["messages"]] == ["warm", "hello"]
                history = commands.take()
                await first.close()
        return post, handshake, ready, last, resumed, history

    post, handshake, ready, last, resumed, history = in_process(scenario)
    assert sorted(post) == ["insert", "update"]
    assert handshake == []
    assert ready["seq"] == last and resumed == []
    assert history == ["find"]


@pytest.mark.store_semantics(False)  # a socket option, not the store
def test_the_listen_backlog_is_the_configured_one(in_process):
    async def scenario(server, base, commands):
        port = int(base.rsplit(":", 1)[1])
        listing = await asyncio.to_thread(subprocess.run, ["ss", "-ltnH", f"sport = :{port}"],
                                          capture_output=True, text=True, check=True)
        return int(listing.stdout.split()[2])  # State Recv-Q Send-Q: a listener's Send-Q is its backlog

    assert in_process(scenario, listen_backlog=700) == 700
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert in_process(scenario) == min(4096, somaxconn)


def test_round_trips_of_an_edit_a_reaction_and_a_history_page_after_them(in_process):
    """A change: the room and the message read; the change counted; the event's
    insert and the room's seq; the message's events read and its state saved.
    History after it: one find, as before (no change is in flight)."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await sign_up(http, "ann")
            auth = {"Authorization": f"JWT {token}"}
            uri = (await http.post("/api/chats/", headers=auth)).json()["uri"]
            posted = (await http.post(f"/api/chats/{uri}/messages/", headers=auth,
                                      json={"message": "helo"})).json()
            commands.take()
            edited = await http.patch(f"/api/chats/{uri}/messages/{posted['id']}/", headers=auth,
                                      json={"message": "hello"})
            assert edited.status_code == 200
            edit = commands.take()
            reacted = await http.put(f"/api/chats/{uri}/messages/{posted['id']}/reactions/%F0%9F%91%8D/",
                                     headers=auth)
            assert reacted.status_code == 204
            reaction = commands.take()
            page = await http.get(f"/api/chats/{uri}/messages/", headers=auth)
            assert page.json()["messages"][0]["reactions"] == {"👍": ["ann"]}
            history = commands.take()
        return edit, reaction, history

    edit, reaction, history = in_process(scenario)
    # (the rate limit's findAndModify comes once per reserved share, not per change)
    # An edit is counted and given its version by a findAndModify; a reaction
    # holds its emoji's place (an update when another holds it, two when new).
    edited = ["find", "find", "insert", "update", "find", "update"]
    assert sorted(c for c in edit if c != "findAndModify") == sorted(edited), edit
    assert edit.count("findAndModify") in (1, 2), edit
    reacted = ["find", "find", "update", "update", "insert", "update", "find", "update"]
    assert sorted(c for c in reaction if c != "findAndModify") == sorted(reacted), reaction
    # The membership and the page: with no socket in the room here, this process
    # does not follow its events, so a cached membership is not believed.
    assert history == ["find", "find"]


def test_the_chat_list_sends_four_commands_for_3_chats_as_for_30(in_process):
    """Each chat's unread count, latest message and names, in one request."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            auth = {}
            for name in ("ann", "bob"):
                _, token = await sign_up(http, name)
                auth[name] = {"Authorization": f"JWT {token}"}
            counts = []
            for chats in (3, 27):
                for _ in range(chats):
                    uri = (await http.post("/api/chats/", headers=auth["ann"])).json()["uri"]
                    await http.patch(f"/api/chats/{uri}/", headers=auth["bob"], json={})
                    await http.post(f"/api/chats/{uri}/messages/", headers=auth["bob"],
                                    json={"message": "hi"})
                await http.get("/api/chats/", headers=auth["ann"])  # the token, cached
                # bob's posts are his reads, written in the background within a
                # read_flush: not part of the list (a slower MongoDB showed it)
                await wait_for(lambda: server.hub.signals.flushing is None, 5, "reads written")
                commands.take()
                listed = (await http.get("/api/chats/", headers=auth["ann"])).json()
                counts.append((len(listed), commands.take(), {c["unread"] for c in listed}))
        return counts

    few, many = in_process(scenario, read_flush_seconds=0.05)
    # the rooms, their unread counts, their latest messages, the members who name them
    assert few == (3, ["find", "aggregate", "aggregate", "find"], {1})
    assert many == (30, ["find", "aggregate", "aggregate", "find"], {1})


async def long_logs(server, owner_id: str, member_id: str, rooms: int, last_seq: int) -> list[str]:
    """`rooms` chats of owner's with member in, each a message at seq 1 and a
    member event at last_seq, written straight to MongoDB: what a script could
    make in a minute. (The events between are left out: the chat list's
    queries go by the room's seq, and nx-27017 takes seconds to scan a
    thousand rooms' worth of events.)"""
    store, uris, docs = server.store, [], []
    for _ in range(rooms):
        uri = (await store.create_room(owner_id))["uri"]
        await store.add_member(uri, member_id)
        uris.append(uri)
        created = datetime.datetime.now(datetime.UTC)
        docs.append({"room": uri, "seq": 1, "user_id": owner_id, "message": f"hello {uri}",
                     "user": {"id": owner_id, "username": "ann"}, "created": created})
        if last_seq > 1:
            docs.append({"room": uri, "seq": last_seq, "type": "member", "op": "join",
                         "created": created, "user": {"id": member_id, "username": "bob"},
                         "by": {"id": member_id, "username": "bob"}})
            await store.rooms.update_one({"uri": uri}, {"$set": {"seq": last_seq}})
    await store.messages.insert_many(docs)
    return uris


def test_the_chat_list_costs_five_commands_for_200_chats_with_long_logs(in_process):
    """Rooms whose last 50 events hold no message cost one more command for
    all of them, not one each."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            ann, token = await sign_up(http, "ann")
            bob, _ = await sign_up(http, "bob")
            auth = {"Authorization": f"JWT {token}"}
            await long_logs(server, ann, bob, 200, 1000)
            await http.get("/api/chats/", headers=auth)  # the token, cached
            commands.take()
            listed = (await http.get("/api/chats/", headers=auth)).json()
            return listed, commands.take()

    # nx-27017 takes about a second for each 200-branch aggregate on a busy machine.
    listed, commands = in_process(scenario, mongo_timeout_ms=20_000)
    assert len(listed) == 200
    assert all(chat["last_message"]["text"] == f"hello {chat['uri']}" for chat in listed)
    # the rooms, unread counts, latest messages (the last 50 events, then further
    # back for the rooms with none there), the members who name them
    assert commands == ["find", "aggregate", "aggregate", "aggregate", "find"]


def test_the_chat_list_pages_through_every_chat(in_process):
    """A script that makes 230 chats and adds its victim pushes none of the
    victim's own chats out of reach: they are on the next page."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            victim, token = await sign_up(http, "vic")
            auth = {"Authorization": f"JWT {token}"}
            mine = (await http.post("/api/chats/", headers=auth)).json()["uri"]
            spammer, _ = await sign_up(http, "spam")
            spam = await long_logs(server, spammer, victim, 230, 1)
            first = (await http.get("/api/chats/", headers=auth)).json()
            pages = [(await http.get("/api/chats/?paged=1&limit=100", headers=auth)).json()]
            while pages[-1]["has_more"]:
                cursor = pages[-1]["chats"][-1]["cursor"]
                pages.append((await http.get(f"/api/chats/?before={cursor}&limit=100",
                                             headers=auth)).json())
            bad = await http.get("/api/chats/?before=yesterday", headers=auth)
            return mine, spam, first, pages, bad

    mine, spam, first, pages, bad = in_process(scenario, mongo_timeout_ms=20_000)
    assert isinstance(first, list) and len(first) == 200  # the first page, as ever
    assert [len(page["chats"]) for page in pages] == [100, 100, 31]
    listed = [chat["uri"] for page in pages for chat in page["chats"]]
    assert listed[-1] == mine and sorted(listed) == sorted([*spam, mine])
    assert bad.status_code == 400 and "before" in bad.json()



@pytest.mark.store_semantics(False)  # signals and sockets, not the store
def test_typing_and_presence_cost_no_command_and_reads_are_written_together(in_process):
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            auth, ids = {}, {}
            for name in ("ann", "bob"):
                ids[name], auth[name] = await sign_up(http, name)
            ann = {"Authorization": f"JWT {auth['ann']}"}
            uri = (await http.post("/api/chats/", headers=ann)).json()["uri"]
            await http.patch(f"/api/chats/{uri}/", json={},
                             headers={"Authorization": f"JWT {auth['bob']}"})
            for i in range(20):
                await http.post(f"/api/chats/{uri}/messages/", json={"message": f"m{i}"}, headers=ann)
            ws_url = f"{base.replace('http', 'ws')}/ws/chats/{uri}/?token="
            async with websockets.connect(f"{ws_url}{auth['bob']}&since=0") as ws:
                last = (await next_frame(ws, "ready"))["seq"]
                ws_url += f"{auth['ann']}&since={last}"  # ann's page, resuming at the end
                await asyncio.sleep(1.5)  # ann's posts count as her reads: written by now
                commands.take()
                for _ in range(3):  # ann's tab comes and goes: presence, no write
                    async with websockets.connect(ws_url) as tab:
                        await next_frame(tab, "ready")
                for _ in range(5):
                    await ws.send('{"type": "typing"}')
                    await asyncio.sleep(0.3)
                await ws.send('{"type": "typing", "stop": true}')
                await asyncio.sleep(1.2)
                quiet = commands.take()
                for seq in range(last - 19, last + 1):  # twenty reads within one read_flush
                    await ws.send(f'{{"type": "read", "seq": {seq}}}')
                signals = server.hub.signals
                await wait_for(lambda: signals.read_positions(uri).get(ids["bob"]) == last
                               and signals.flushing is None, 5, "the reads written")
                reads = commands.take()
        return quiet, reads

    quiet, reads = in_process(scenario, read_flush_seconds=1.0)
    # The signals limit reserves a share of 30 frames at a time: a findAndModify
    # (and a find of the last window's count), not a command per frame.
    limit = ("findAndModify", "find")
    assert [c for c in quiet if c not in limit] == [] and quiet.count("findAndModify") <= 1
    # the first at once, the other nineteen together
    assert 1 <= reads.count("update") <= 2 and set(reads) - set(limit) == {"update"}
    assert reads.count("findAndModify") <= 1


def test_a_user_streams_snapshot_costs_the_same_commands_for_3_chats_as_for_30(in_process):
    """The user stream: the user's rooms (one find), the room starts this process
    needs (each room's last seq, once per room, not per stream), then the chat
    list's four commands."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            auth = {}
            for name in ("ann", "bob"):
                _, token = await sign_up(http, name)
                auth[name] = token
            counts = []
            for chats in (3, 27):
                for _ in range(chats):
                    headers = {"Authorization": f"JWT {auth['ann']}"}
                    uri = (await http.post("/api/chats/", headers=headers)).json()["uri"]
                    await http.patch(f"/api/chats/{uri}/", json={},
                                     headers={"Authorization": f"JWT {auth['bob']}"})
                stream_url = f"{base.replace('http', 'ws')}/ws/?token={auth['ann']}"
                async with websockets.connect(stream_url) as first:  # starts the rooms here
                    await next_frame(first, "chats")
                    commands.take()
                    async with websockets.connect(stream_url) as second:
                        snapshot = await next_frame(second, "chats")
                        counts.append((len(snapshot["chats"]), sorted(commands.take())))
        return counts

    few, many = in_process(scenario)
    # the user's rooms; then the chat list: rooms, unread counts, latest messages, names
    assert few == (3, sorted(["find", "find", "aggregate", "aggregate", "find"]))
    assert many == (30, sorted(["find", "find", "aggregate", "aggregate", "find"]))


def test_a_post_that_mentions_people_costs_what_any_post_costs(in_process):
    """The room's members come from the process's cache (chat/mentions.py): a
    post's mentions and @room's rule read nothing; a member who joins through
    this process is known at once."""
    async def scenario(server, base, commands):
        # Whom a post notifies is counted in the 1,000-member test below.
        server.hub.on_posted = None
        async with httpx.AsyncClient(base_url=base) as http:
            auth = {}
            for name in ("ann", "bob", "cid"):
                _, token = await sign_up(http, name)
                auth[name] = {"Authorization": f"JWT {token}"}
            uri = (await http.post("/api/chats/", headers=auth["ann"])).json()["uri"]
            await http.patch(f"/api/chats/{uri}/", headers=auth["bob"], json={})
            await http.post(f"/api/chats/{uri}/messages/", headers=auth["ann"],
                            json={"message": "warm"})
            commands.take()
            counted = []
            for text in ("plain", "@BOB and @room", "`@bob` in code, @nobody"):
                posted = await http.post(f"/api/chats/{uri}/messages/", headers=auth["ann"],
                                         json={"message": text})
                assert posted.status_code == 200, posted.text
                counted.append((posted.json()["mentions"], commands.take()))
            await http.patch(f"/api/chats/{uri}/", headers=auth["cid"], json={})
            commands.take()
            posted = await http.post(f"/api/chats/{uri}/messages/", headers=auth["ann"],
                                     json={"message": "hi @cid"})
            counted.append((posted.json()["mentions"], None))
        return counted

    counted = in_process(scenario)
    # (and the membership: no socket in the room here, so no cached membership is believed)
    assert [(names, sorted(c)) for names, c in counted[:2]] == [
        ([], ["find", "insert", "update"]), (["bob"], ["find", "insert", "update"])]
    # An @word nobody answers to reads the room again, at most every 2 s.
    assert counted[2][0] == [] and len(counted[2][1]) <= 4
    assert counted[3][0] == ["cid"]



@pytest.mark.parametrize("notify", [True, False], ids=["notifying", "without-notifier"])
def test_a_post_in_a_1000_member_room_notifies_at_the_cost_of_two_commands_at_most(in_process, notify):
    """Reaching people (issue 21): who a post notifies comes from the cached levels
    and members. A post that notifies nobody (default levels, no mention) costs
    what it did before; one that notifies adds one find (blocks against the
    sender) and one insert (all pending pushes), however many it notifies; a
    mentioned member with the room open and visible adds nothing."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await sign_up(http, "ann")
            auth = {"Authorization": f"JWT {token}"}
            uri = (await http.post("/api/chats/", headers=auth)).json()["uri"]
            users = [{"username": f"m{i:04d}", "username_key": f"m{i:04d}", "email": "",
                      "password": b"", "created": 0, "active": True} for i in range(999)]
            await server.store.users.insert_many(users)
            await server.store.rooms.update_one(
                {"uri": uri}, {"$push": {"members": {"$each": [str(u["_id"]) for u in users]}}})
            server.people.forget(uri)
            if not notify:  # what a post cost before this change
                server.hub.on_posted = None
            await http.post(f"/api/chats/{uri}/messages/", headers=auth, json={"message": "warm"})
            await wait_for(lambda: not server.hub.tasks, 5, "post tasks")
            counted = {}
            for name, text in (("plain", "hello all"), ("mention", "hi @m0001"),
                               ("room", "@room lunch")):
                commands.take()
                posted = await http.post(f"/api/chats/{uri}/messages/", headers=auth,
                                         json={"message": text})
                assert posted.status_code == 200, posted.text
                await wait_for(lambda: not server.hub.tasks, 5, "post tasks")
                counted[name] = sorted(commands.take())
            server.notifier.set_focus(str(users[1]["_id"]), "tab", uri)
            commands.take()
            await http.post(f"/api/chats/{uri}/messages/", headers=auth, json={"message": "@m0001 ?"})
            await wait_for(lambda: not server.hub.tasks, 5, "post tasks")
            counted["mention, reading"] = sorted(commands.take())
            counted["pending"] = await server.store.notifications.count_documents({"uri": uri})
        return counted

    counted = in_process(scenario)
    # What a post in this room cost before this change (the without-notifier
    # run shows the same): a find (the membership: no socket here), the insert,
    # the room's update.
    before = ["find", "insert", "update"]
    assert counted["plain"] == before
    assert counted["mention, reading"] == before
    if notify:
        assert counted["mention"] == sorted([*before, "find", "insert"])
        assert counted["room"] == sorted([*before, "find", "insert"])
        assert counted["pending"] == 1 + 999  # m0001's push, then everyone's for @room
    else:
        assert counted["mention"] == counted["room"] == before
