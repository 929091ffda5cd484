"""Reaching people who are away (issue 21): levels, Web Push to a local push
service (VAPID checked, payload decrypted), the clear push, email to a local
aiosmtpd, leases across processes. Real RabbitMQ and nx-27017; delays are
fractions of a second so the tests wait for events, never for time."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse

import httpx
import pytest
import websockets
from pymongo import MongoClient

from tests.conftest import database_url
from tests.helpers import PROBE, Api, ServerProcess, metric, next_frame, probe_answer, wait_until
from tests.mailbox import DROP, smtp_inbox
from tests.push_service import PushService

# Read positions are written within read_flush_seconds: well inside the push delay.
SETTINGS = {"push_delay_seconds": "0.5", "notify_lease_seconds": "1", "read_flush_seconds": "0.05",
            "email_delay_minutes": "0.01", "email_min_interval_minutes": "0.02",
            "smtp_security": "none", "smtp_from": "chat@example.test",
            "public_url": "http://chat.example.test"}


@pytest.fixture(scope="module")
def inbox():
    with smtp_inbox() as running:
        yield running


@pytest.fixture(scope="module")
def push():
    service = PushService().start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def servers(mongo_base, amqp_url, tmp_path_factory, inbox, push):
    """Two processes on one database: A and B."""
    logs = tmp_path_factory.mktemp("logs")
    db_url = database_url(mongo_base)
    started = [ServerProcess(db_url, amqp_url, log_dir=logs, smtp_host="127.0.0.1",
                             smtp_port=inbox[1], **SETTINGS).start() for _ in range(2)]
    push.vapid_key = httpx.get(f"{started[0].url}/api/push/key").json()["key"]
    yield started
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def db(servers):
    client = MongoClient(servers[0].mongo_url)
    yield client.get_default_database()
    client.close()


def dm(me: Api, other: Api) -> str:
    reply = me.request("POST", "/api/dms/", json={"username": other.username})
    assert reply.status_code == 200, reply.text
    return reply.json()["uri"]


def subscribe(api: Api, push: PushService, name: str) -> None:
    reply = api.request("POST", "/api/push/subscriptions/", json=push.device(name).subscription)
    assert reply.status_code == 204, reply.text


def docs(db, **query) -> list[dict]:
    return list(db.notifications.find(query))


def settled(db, **query) -> list[dict]:
    """Wait until the notifications matching query are all done; them."""
    def done():
        found = docs(db, **query)
        return found and all(d["state"] != "pending" for d in found)
    wait_until(done, 15, f"notifications {query} done")
    return docs(db, **query)


async def handled(ws) -> None:
    """Wait until the frames sent so far are handled: a socket handles its frames
    in order, so the answer to a probe frame comes after them."""
    await ws.send(PROBE)
    while not probe_answer(await next_frame(ws, "error")):
        pass


def read(api: Api, uri: str, seq: int) -> None:
    assert api.request("PUT", f"/api/chats/{uri}/read/", json={"seq": seq}).status_code == 204


def test_levels_are_set_checked_and_listed(servers):
    a, _ = servers
    worker = httpx.get(f"{a.url}/sw.js")
    assert worker.status_code == 200 and "showNotification" in worker.text
    assert worker.headers["Service-Worker-Allowed"] == "/"
    assert worker.headers["Content-Type"].startswith("text/javascript")
    alice, bob = Api(a.url).signup(), Api(a.url).signup()
    room = alice.new_chat()
    bob.join(room)
    direct = dm(alice, bob)
    levels = {c["uri"]: c["notifications"] for c in bob.request("GET", "/api/chats/").json()}
    assert levels == {room: "mentions", direct: "all"}
    for bad in ({"level": "loud"}, {"level": None}, {}, {"level": 1}):
        reply = bob.request("PUT", f"/api/chats/{room}/notifications/", json=bad)
        assert reply.status_code == 400 and "level" in reply.json(), (bad, reply.text)
    outsider = Api(a.url).signup()
    assert outsider.request("PUT", f"/api/chats/{room}/notifications/",
                            json={"level": "all"}).status_code == 404
    assert bob.request("PUT", f"/api/chats/{room}/notifications/",
                       json={"level": "none"}).json() == {"level": "none"}
    listed = {c["uri"]: c["notifications"] for c in bob.request("GET", "/api/chats/").json()}
    assert listed[room] == "none"
    assert {c["uri"]: c["notifications"] for c in alice.request("GET", "/api/chats/").json()} \
        == {room: "mentions", direct: "all"}


def test_levels_mentions_and_blocks_decide_who_is_notified(servers, db):
    """Posted on A while the levels were set through B: B's change reaches A's cache."""
    a, b = servers
    alice = Api(a.url).signup()
    bob, cid, dan, eve = (Api(b.url).signup() for _ in range(4))
    room = alice.new_chat()
    for member in (bob, cid, dan, eve):
        member.join(room)
    cid.request("PUT", f"/api/chats/{room}/notifications/", json={"level": "all"})
    dan.request("PUT", f"/api/chats/{room}/notifications/", json={"level": "none"})
    assert eve.request("PUT", f"/api/blocks/{alice.username}/").status_code == 204
    plain = alice.post(room, "hello all")["seq"]
    named = alice.post(room, f"@{bob.username} @{dan.username} @{eve.username} look")["seq"]
    everyone = alice.post(room, "@room lunch")["seq"]
    own = bob.post(room, "me too")["seq"]
    settled(db, uri=room, kind="push", seq=everyone)

    def notified(seq):
        return sorted(d["user_id"] for d in docs(db, uri=room, kind="push", seq=seq))
    ids = {api.username: api.user["id"] for api in (alice, bob, cid, dan, eve)}
    assert notified(plain) == sorted([ids[cid.username]])
    assert notified(named) == sorted([ids[bob.username], ids[cid.username]])
    assert notified(everyone) == sorted([ids[bob.username], ids[cid.username]])
    settled(db, uri=room, kind="push", seq=own)
    assert notified(own) == [ids[cid.username]]  # never one's own
    # Nobody here registered a device: each push ends there, nothing more read.
    assert {(d["state"], d.get("reason")) for d in docs(db, uri=room, kind="push")} \
        == {("skipped", "no device")}


def test_an_unread_dm_is_pushed_once_and_cleared_by_a_later_read(servers, db, push):
    a, b = servers
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = dm(alice, bob)
    subscribe(bob, push, f"bob-{bob.username}")
    name = f"bob-{bob.username}"
    seq = alice.post(uri, "x" * 150)["seq"]
    push.wait_for(lambda got: len(push.of(name)) == 1)
    [doc] = settled(db, uri=uri, kind="push")
    assert doc["state"] == "sent"
    [payload] = push.of(name)
    assert payload == {"type": "message", "uri": uri, "seq": seq, "room": "Direct message",
                       "sender": alice.username, "text": "x" * 100,
                       "url": f"http://chat.example.test/chats/{uri}/"}
    read(bob, uri, seq)
    push.wait_for(lambda got: len(push.of(name, "clear")) == 1, what="clear push")
    assert push.of(name, "clear") == [{"type": "clear", "uri": uri, "seq": seq}]
    assert len(push.of(name)) == 1  # never twice
    # One Topic per room: the push service keeps only the newest undelivered one
    # (a push sent twice, or one the clear overtook, is not delivered as well).
    [message_topic, clear_topic] = push.header(name, "Topic")
    assert message_topic == clear_topic and message_topic is not None
    # The fresh fetch after the read agrees with what the pushes said.
    listed = {c["uri"]: c for c in bob.request("GET", "/api/chats/").json()}
    assert listed[uri]["unread"] == 0 and listed[uri]["last_read_seq"] == seq


def test_nothing_is_pushed_when_read_within_the_delay_or_open_and_visible(servers, db, push):
    a, b = servers
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = dm(alice, bob)
    name = f"bob-{bob.username}"
    subscribe(bob, push, name)
    first = alice.post(uri, "read at once")["seq"]
    read(bob, uri, first)
    [doc] = settled(db, uri=uri, kind="push", seq=first)
    assert (doc["state"], doc.get("reason")) == ("skipped", "read"), doc

    on_b = Api(b.url, alice.username).login()  # the focus is known where the post is made

    async def focused():
        url = f"{b.ws_url}/ws/?token={bob.token}"
        async with websockets.connect(url) as ws:
            await next_frame(ws, "chats")
            await ws.send(json.dumps({"type": "focus", "uri": uri}))
            await handled(ws)
            seen = on_b.post(uri, "while it is open")["seq"]
            await next_frame(ws, "message")
            await ws.send(json.dumps({"type": "focus", "uri": None}))
            await handled(ws)
            unseen = on_b.post(uri, "while hidden")["seq"]
            await next_frame(ws, "message")
            return seen, unseen
    seen, unseen = asyncio.run(focused())
    push.wait_for(lambda got: len(push.of(name)) == 1)
    assert [p["seq"] for p in push.of(name)] == [unseen]
    assert docs(db, uri=uri, kind="push", seq=seen) == []  # no cost for who is reading


def test_a_gone_subscription_is_removed_and_logout_removes_the_device(servers, db, push):
    a, b = servers
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    uri = dm(alice, bob)
    gone, kept = f"gone-{bob.username}", f"kept-{bob.username}"
    subscribe(bob, push, gone)
    push.status[gone] = 410
    subscribe(bob, push, kept)
    alice.post(uri, "one")
    push.wait_for(lambda got: push.of(gone) and push.of(kept))
    wait_until(lambda: db.push_subscriptions.count_documents({"user_id": bob.user["id"]}) == 1,
               10, "the 410 subscription removed")
    assert bob.request("DELETE", "/api/push/subscriptions/",
                       json={"endpoint": push.devices[gone].endpoint}).status_code == 404
    # A password change keeps this token's devices and drops the others'.
    phone = Api(b.url, bob.username).login()
    subscribe(phone, push, f"phone-{bob.username}")
    assert bob.request("POST", "/auth/password/", json={
        "old_password": bob.password, "new_password": "pass-word-2"}).status_code in (200, 204)
    assert [d["endpoint"] for d in db.push_subscriptions.find({"user_id": bob.user["id"]})] \
        == [push.devices[kept].endpoint]
    assert bob.request("POST", "/auth/logout/").status_code == 204
    assert db.push_subscriptions.count_documents({"user_id": bob.user["id"]}) == 0
    reply = alice.request("POST", "/api/push/subscriptions/",
                          json={"endpoint": "not a url", "keys": {"p256dh": "x", "auth": "y"}})
    assert reply.status_code == 400 and "endpoint" in reply.json()


def test_a_process_killed_holding_the_lease_loses_no_push(mongo_base, amqp_url, tmp_path, push):
    db_url = database_url(mongo_base)
    first = ServerProcess(db_url, amqp_url, log_dir=tmp_path, **SETTINGS).start()
    second = None
    try:
        push.vapid_key = httpx.get(f"{first.url}/api/push/key").json()["key"]
        alice, bob = Api(first.url).signup(), Api(first.url).signup()
        uri = dm(alice, bob)
        name = f"held-{bob.username}"
        subscribe(bob, push, name)
        push.hold.add(name)  # the push hangs in the push service: the lease is held
        seq = alice.post(uri, "do not lose me")["seq"]
        client = MongoClient(db_url)
        notes = client.get_default_database().notifications
        wait_until(lambda: (notes.find_one({"uri": uri, "kind": "push"}) or {}).get("lease"),
                   10, "the push claimed")
        first.kill()
        push.hold.discard(name)
        second = ServerProcess(db_url, amqp_url, log_dir=tmp_path, **SETTINGS).start()
        wait_until(lambda: notes.find_one({"uri": uri, "kind": "push"})["state"] == "sent",
                   15, "sent by the second process after the lease")
        assert seq in [p["seq"] for p in push.of(name)]
        client.close()
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_three_processes_send_each_push_once(mongo_base, amqp_url, tmp_path, push):
    db_url = database_url(mongo_base)
    three = [ServerProcess(db_url, amqp_url, log_dir=tmp_path, **SETTINGS).start()
             for _ in range(3)]
    try:
        push.vapid_key = httpx.get(f"{three[2].url}/api/push/key").json()["key"]  # one key for all
        alice, bob = Api(three[0].url).signup(), Api(three[1].url).signup()
        uri = dm(alice, bob)
        name = f"three-{bob.username}"
        subscribe(bob, push, name)
        posters = [Api(p.url, alice.username).login() for p in three]
        seqs = [posters[i % 3].post(uri, f"m{i}")["seq"] for i in range(9)]
        push.wait_for(lambda got: len(push.of(name)) >= 9)
        client = MongoClient(db_url)
        notes = client.get_default_database().notifications
        wait_until(lambda: notes.count_documents({"uri": uri, "kind": "push", "state": "sent"}) == 9,
                   15, "all marked sent")
        client.close()
        assert sorted(p["seq"] for p in push.of(name)) == seqs
        assert len(set(push.header(name, "Topic"))) == 1 and None not in push.header(name, "Topic")
        # Each process signs its VAPID JWT once for the push service, not once per push.
        assert len(set(push.header(name, "Authorization"))) <= 3
    finally:
        for process in three:
            process.stop()


def test_one_email_with_the_unread_in_their_current_state_and_one_click_unsubscribe(
        servers, db, inbox):
    a, b = servers
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    address = f"{bob.username}@example.test"
    assert bob.request("PATCH", "/auth/me/", json={"email": address}).status_code == 200
    uri = dm(alice, bob)
    first = alice.post(uri, "first draft")
    alice.post(uri, "second")
    gone = alice.post(uri, "to be deleted")
    assert alice.request("PATCH", f"/api/chats/{uri}/messages/{first['id']}/",
                         json={"message": "first, edited"}).status_code == 200
    assert alice.request("DELETE", f"/api/chats/{uri}/messages/{gone['id']}/").status_code == 204
    [mail] = inbox[0].wait_for(address)
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "first, edited" in text and "second" in text and "first draft" not in text
    assert "to be deleted" not in text and "first, edited" in html
    assert f"http://chat.example.test/chats/{uri}/" in text
    settled(db, uri=uri, kind="email")
    assert len(inbox[0].to(address)) == 1  # one email for the three messages
    link = mail["List-Unsubscribe"].strip("<>")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = urllib.parse.urlsplit(link)
    reply = httpx.post(f"{b.url}{path.path}?{path.query}", data="List-Unsubscribe=One-Click")
    assert reply.status_code == 200, reply.text
    assert db.rooms.find_one({"uri": uri})["email_off"] == {bob.user["id"]: True}
    later = alice.post(uri, "after the unsubscribe")["seq"]
    [doc] = settled(db, uri=uri, kind="email", seq=later)
    assert (doc["state"], doc.get("reason")) == ("skipped", "unsubscribed"), doc
    forged = httpx.get(f"{b.url}{path.path}?token=x{path.query[7:]}")
    assert forged.status_code == 400 and "token" in forged.json()


def test_no_email_when_read_in_time(servers, db, inbox):
    a, b = servers
    alice, bob = Api(a.url).signup(), Api(b.url).signup()
    address = f"{bob.username}@example.test"
    bob.request("PATCH", "/auth/me/", json={"email": address})
    uri = dm(alice, bob)
    seq = alice.post(uri, "read me soon")["seq"]
    read(bob, uri, seq)
    [doc] = settled(db, uri=uri, kind="email")
    assert (doc["state"], doc.get("reason")) == ("skipped", "read"), doc
    assert inbox[0].to(address) == []


def test_a_failed_email_is_retried_with_growing_backoff_and_a_refused_one_is_not(
        mongo_base, amqp_url, tmp_path):
    """The mail server fails as they fail: a 451, then a connection dropped in
    DATA; the email goes out once on the third attempt, each failure counted and
    each wait twice the last. A 550 for the recipient is final: one attempt."""
    with smtp_inbox() as (inbox, port):
        server = ServerProcess(database_url(mongo_base), amqp_url, log_dir=tmp_path,
                               smtp_host="127.0.0.1", smtp_port=port,
                               **{**SETTINGS, "notify_retry_first_seconds": "0.05"}).start()
        try:
            client = MongoClient(server.mongo_url)
            notes = client.get_default_database().notifications
            alice, bob, cid = (Api(server.url).signup() for _ in range(3))
            flaky, refused = f"{bob.username}@example.test", f"{cid.username}@example.test"
            for api, address in ((bob, flaky), (cid, refused)):
                assert api.request("PATCH", "/auth/me/", json={"email": address}).status_code == 200
            inbox.failures[flaky] = ["451 4.3.0 Try again later", DROP]
            inbox.refused[refused] = "550 5.1.1 No such user here"

            def failures() -> float:
                return metric(httpx.get(f"{server.url}/metrics").text,
                              'chat_notification_failures_total{kind="email"}')
            to_bob = dm(alice, bob)
            alice.post(to_bob, "are you there?")
            [mail] = inbox.wait_for(flaky)
            assert "are you there?" in mail.get_body(("plain",)).get_content()
            wait_until(lambda: notes.find_one({"uri": to_bob, "kind": "email"})["state"] == "sent",
                       10, "the email marked sent")
            assert notes.find_one({"uri": to_bob, "kind": "email"})["attempts"] == 3
            assert inbox.data[flaky] == 3 and len(inbox.to(flaky)) == 1
            assert failures() == 2
            waits = [float(w) for w in re.findall(r"email to \S+ failed .*; again in (\S+) s",
                                                  server.log_path.read_text())]
            assert waits == [0.05, 0.1], waits

            to_cid = dm(alice, cid)
            alice.post(to_cid, "nobody home")
            wait_until(lambda: (notes.find_one({"uri": to_cid, "kind": "email"}) or {}).get("state")
                       not in (None, "pending"), 10, "the refused email closed")
            doc = notes.find_one({"uri": to_cid, "kind": "email"})
            assert (doc["state"], doc["attempts"]) == ("failed", 1), doc
            assert "550" in doc["error"] and inbox.rcpt[refused] == 1
            assert failures() == 3
            assert "refused for good" in server.log_path.read_text()
            client.close()
        finally:
            server.stop()
