"""Files (issue 22): uploads streamed into GridFS, safe downloads, attachments,
deletion and sweeping, the fetch guard and link previews on two processes."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import websockets
from bson import ObjectId

from chat.fetch import Fetcher, Refused
from tests.conftest import serve
from tests.helpers import Api, next_frame, two_members

MiB = 1024 * 1024
QUOTA = 30 * MiB
PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
                      "53de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082")


def png(width: int, height: int, color="red", exif: bool = False, kind: str = "PNG") -> bytes:
    from PIL import Image
    image = Image.new("RGB", (width, height), color)
    out = io.BytesIO()
    options = {}
    if exif:
        data = Image.Exif()
        data[0x010F] = "SecretCam"  # Make
        data[0x0112] = 1  # Orientation
        options["exif"] = data.tobytes()
    image.save(out, kind, **options)
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


class Site(http.server.BaseHTTPRequestHandler):
    """The local site previews are made of (on the allow list)."""

    port = 0
    release: threading.Event
    hits: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        Site.hits[self.path] = Site.hits.get(self.path, 0) + 1
        if self.path.startswith("/page"):
            body = (b'<html><head><title>Plain title</title>'
                    b'<meta property="og:title" content="The OpenGraph title">'
                    b'<meta property="og:description" content="What the page is about">'
                    b'<meta property="og:site_name" content="Local site">'
                    b'<meta property="og:image" content="/image.png">'
                    b'</head><body>hello</body></html>')
            self.answer(200, "text/html; charset=utf-8", body)
        elif self.path == "/image.png":
            self.answer(200, "image/png", png(1200, 600, "blue"))
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(5 * MiB))
            self.end_headers()
            try:
                self.wfile.write(b"<html><head><title>big</title></head>")
                for _ in range(5 * 16):
                    self.wfile.write(b"x" * (64 * 1024))
            except OSError:
                pass  # the guard hung up at 1 MiB
        elif self.path == "/hang":
            Site.release.wait(30)
        elif self.path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{Site.port}/page")
            self.end_headers()
        else:
            self.answer(404, "text/plain", b"no")

    def answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def site():
    Site.release = threading.Event()  # each module's site holds /hang until its end
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    httpd.daemon_threads = True
    Site.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{Site.port}"
    Site.release.set()
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, site, tmp_path_factory):
    """One server for the module: a small quota, the local site allowed."""
    yield from serve(mongo_base, amqp_url, tmp_path_factory, upload_quota_bytes=QUOTA,
                     link_preview_allow=f"127.0.0.1:{Site.port}")


def upload(api: Api, uri: str, data: bytes, name: str = "f.bin", **kwargs) -> httpx.Response:
    return api.request("POST", f"/api/chats/{uri}/files/", params={"name": name}, content=data,
                       **kwargs)


def uploaded(api: Api, uri: str, data: bytes, name: str = "f.bin") -> dict:
    reply = upload(api, uri, data, name)
    assert reply.status_code == 201, reply.text
    return reply.json()


def download(api: Api, uri: str, file_id: str, **kwargs) -> httpx.Response:
    return api.request("GET", f"/api/chats/{uri}/files/{file_id}/", **kwargs)


def gridfs_ids(db) -> set:
    """Every file GridFS holds, by its files documents and its chunks."""
    return ({doc["_id"] for doc in db["fs.files"].find({}, {"_id": 1})}
            | {doc.get("files_id") for doc in db["fs.chunks"].find({}, {"files_id": 1})} - {None})


def chunks_of(db, file_id) -> list:
    return list(db["fs.chunks"].find({"files_id": ObjectId(file_id)}))


def raw_request(port: int, head: str, body_pieces=()) -> bytes:
    """Send a request by hand and read the answer (the server may stop reading early)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for piece in body_pieces:
                sock.sendall(piece)
        except OSError:
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + 10:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return answer


def rss_peak_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# Uploading --------------------------------------------------------------

def test_a_25_mib_upload_streams_and_comes_back_whole_with_ranges(server):
    alice, bob, uri = two_members(server.url)
    data = os.urandom(25 * MiB)
    uploaded(alice, uri, b"warm-up")  # the handler's code paths loaded before measuring
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS starts again from now
    before, _ = rss_peak_kib(pid)

    def pieces():
        for start in range(0, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]

    reply = alice.request("POST", f"/api/chats/{uri}/files/", params={"name": "big.bin"},
                          content=pieces(), headers={"Content-Length": str(len(data))})
    assert reply.status_code == 201, reply.text
    _, peak = rss_peak_kib(pid)
    grown = (peak - before) * 1024
    assert grown < 8 * MiB, f"the server's RSS grew by {grown / MiB:.1f} MiB for a 25 MiB upload"
    shown = reply.json()
    assert shown["size"] == len(data) and shown["type"] == "application/octet-stream"
    assert "width" not in shown and "thumb" not in shown

    whole = download(bob, uri, shown["id"])
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(data).digest()
    assert whole.headers["content-disposition"].startswith("attachment;")
    assert whole.headers["cache-control"].startswith("private")
    etag = whole.headers["etag"]

    middle = download(bob, uri, shown["id"], headers={"Range": "bytes=300000-1300000"})
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 300000-1300000/{len(data)}"
    assert middle.content == data[300000:1300001]
    tail = download(bob, uri, shown["id"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = download(bob, uri, shown["id"], headers={"Range": f"bytes={len(data) - 5}-"})
    assert rest.content == data[-5:]
    past = download(bob, uri, shown["id"], headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert download(bob, uri, shown["id"], headers={"If-None-Match": etag}).status_code == 304


def test_one_byte_over_the_limit_is_413_and_leaves_nothing(server, db):
    alice, _, uri = two_members(server.url)
    limit = 25 * MiB
    before = gridfs_ids(db)
    head = (f"POST /api/chats/{uri}/files/?name=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: JWT {alice.token}\r\n")
    # Declared: refused from its Content-Length, before the body is sent.
    answer = raw_request(server.port, head + f"Content-Length: {limit + 1}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_upload_bytes" in answer
    # Not declared (chunked): refused as it streams, the partial file removed.
    piece = b"y" * (1024 * 1024)
    body = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 25 + [b"1\r\nz\r\n", b"0\r\n\r\n"]
    answer = raw_request(server.port, head + "Transfer-Encoding: chunked\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert gridfs_ids(db) == before
    assert db.files.find_one({"kind": "partial"}) is None
    # Exactly the limit is fine.
    assert upload(alice, uri, b"\0" * limit).status_code == 201


def test_the_type_comes_from_the_content_and_html_never_runs(server):
    alice, bob, uri = two_members(server.url)
    image = uploaded(alice, uri, png(1600, 900), "screenshot.txt")
    assert image["type"] == "image/png" and (image["width"], image["height"]) == (1600, 900)
    thumb = bob.request("GET", image["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    from PIL import Image
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 800
    shown = download(bob, uri, image["id"])
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"].startswith("inline;")

    page = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    html = uploaded(alice, uri, page, "cat.png")
    assert html["type"] == "text/html" and "thumb" not in html
    svg = uploaded(alice, uri, b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">'
                               b'<script>alert(1)</script></svg>', "logo.svg")
    assert svg["type"] == "image/svg+xml"
    for file in (html, svg):
        answer = download(bob, uri, file["id"])
        assert answer.headers["content-type"] == "application/octet-stream"
        assert answer.headers["content-disposition"].startswith("attachment;")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"] == "sandbox; default-src 'none'"

    # Says it is a PNG, does not decode: a plain file.
    broken = uploaded(alice, uri, PIXEL[:40] + b"\0" * 100, "broken.png")
    assert broken["type"] == "application/octet-stream" and "width" not in broken

    # Multipart, one part named file: the part's name is the file's.
    reply = alice.request("POST", f"/api/chats/{uri}/files/",
                          files={"file": ("photo.jpg", png(640, 480, exif=True, kind="JPEG"),
                                          "text/plain")})
    assert reply.status_code == 201, reply.text
    photo = reply.json()
    assert photo["name"] == "photo.jpg" and photo["type"] == "image/jpeg"
    served = Image.open(io.BytesIO(download(bob, uri, photo["id"]).content))
    assert not served.getexif() and b"SecretCam" not in served.info.get("exif", b"")
    two_parts = alice.request("POST", f"/api/chats/{uri}/files/",
                              files={"file": ("a", b"1"), "other": ("b", b"2")})
    assert two_parts.status_code == 400 and "file" in two_parts.json()


def test_a_decompression_bomb_is_refused(server, db):
    alice, _, uri = two_members(server.url)
    before = gridfs_ids(db)
    reply = upload(alice, uri, png_bomb(), "bomb.png")
    assert reply.status_code == 400 and "file" in reply.json(), reply.text
    assert gridfs_ids(db) == before


def test_only_members_see_a_rooms_files(server):
    alice, bob, uri = two_members(server.url)
    outsider = Api(server.url).signup()
    other_room = outsider.new_chat()
    file = uploaded(alice, uri, b"members only")
    assert download(outsider, uri, file["id"]).status_code == 404
    assert download(outsider, other_room, file["id"]).status_code == 404  # another room's id
    assert download(alice, other_room, file["id"]).status_code == 404
    assert upload(outsider, uri, b"x").status_code == 404
    assert download(bob, uri, "0" * 24).status_code == 404
    # The page's login cookie works too (no header).
    with httpx.Client(base_url=server.url, cookies={"chat_token": bob.token}) as browser:
        assert browser.get(f"/api/chats/{uri}/files/{file['id']}/").content == b"members only"
    assert httpx.get(f"{server.url}/api/chats/{uri}/files/{file['id']}/").status_code == 401


def test_the_quota_counts_what_a_user_keeps(server):
    alice, _, uri = two_members(server.url)
    first = uploaded(alice, uri, b"\0" * (20 * MiB))
    over = upload(alice, uri, b"\0" * (11 * MiB))
    assert over.status_code == 413 and "upload_quota_bytes" in over.json()["detail"]
    posted = alice.request("POST", f"/api/chats/{uri}/messages/",
                           json={"attachments": [first["id"]]}).json()
    assert alice.request("DELETE", f"/api/chats/{uri}/messages/{posted['id']}/").status_code == 204
    assert upload(alice, uri, b"\0" * (11 * MiB)).status_code == 201  # freed by the delete


def test_uploads_count_against_the_write_limit(server, start_server):
    strict = start_server(mongo_url=server.mongo_url, user_messages_per_minute=3)
    alice, _, uri = two_members(strict.url)
    statuses = [upload(alice, uri, b"x").status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    assert alice.request("POST", f"/api/chats/{uri}/messages/",
                         json={"message": "and posts share it"}).status_code == 429


# Attachments ------------------------------------------------------------

def test_attachments_ride_frames_and_history_and_go_with_their_message(server, db):
    alice, bob, uri = two_members(server.url)
    image = uploaded(alice, uri, png(300, 200), "a.png")
    note = uploaded(alice, uri, b"log line\n", "log.txt")

    async def scenario():
        async with websockets.connect(bob.ws_url(uri, since=0)) as ws:
            await next_frame(ws, "ready")
            async with websockets.connect(alice.ws_url(uri, since=0)) as mine:
                await next_frame(mine, "ready")
                await mine.send(json.dumps({"type": "message", "attachments": ["nope"],
                                            "client_id": "c0"}))
                refused = await next_frame(mine, "error")
                assert refused["client_id"] == "c0" and refused["detail"].startswith("attachments:")
                await mine.send(json.dumps({"type": "message", "attachments": [note["id"]],
                                            "client_id": "c1"}))
                return await next_frame(ws, "message")

    frame = asyncio.run(scenario())
    assert frame["attachments"] == [note] and frame["message"] == ""
    posted = alice.request("POST", f"/api/chats/{uri}/messages/",
                           json={"message": "look", "attachments": [image["id"]]})
    assert posted.status_code == 200, posted.text
    message = posted.json()
    assert message["attachments"] == [image]
    history = bob.history(uri)["messages"]
    assert history[-1]["attachments"] == [image] and history[-2]["attachments"] == [note]

    # Refused, naming the field: attached already, someone else's, another room's, bad ids, too many.
    other = Api(server.url).signup()
    other.join(uri)
    theirs = uploaded(other, uri, b"theirs")
    elsewhere_room = alice.new_chat()
    elsewhere = uploaded(alice, elsewhere_room, b"elsewhere")
    for attachments in ([image["id"]], [theirs["id"]], [elsewhere["id"]], ["nope"],
                        [theirs["id"]] * 2, ["0" * 24] * 11):
        reply = alice.request("POST", f"/api/chats/{uri}/messages/",
                              json={"attachments": attachments})
        assert reply.status_code == 400 and "attachments" in reply.json(), (attachments, reply.text)
    assert alice.request("POST", f"/api/chats/{uri}/messages/", json={}).json() == {
        "message": ["This field is required."]}
    # A refused post released what it claimed: theirs can still be attached by them.
    assert other.request("POST", f"/api/chats/{uri}/messages/",
                         json={"attachments": [theirs["id"]]}).status_code == 200

    assert chunks_of(db, image["id"])
    thumb_id = db.files.find_one({"_id": ObjectId(image["id"])})["thumb"]
    assert alice.request("DELETE", f"/api/chats/{uri}/messages/{message['id']}/").status_code == 204
    assert chunks_of(db, image["id"]) == [] and chunks_of(db, thumb_id) == []
    assert download(bob, uri, image["id"]).status_code == 404
    deleted = next(m for m in bob.history(uri)["messages"] if m["id"] == message["id"])
    assert deleted["deleted"] and "attachments" not in deleted
    assert download(bob, uri, note["id"]).status_code == 200  # another message's file stays


def test_uploads_never_attached_are_swept_after_a_day(server, db):
    from chat.files import Files
    from chat.store import Store

    alice, _, uri = two_members(server.url)
    kept = uploaded(alice, uri, b"attached")
    alice.request("POST", f"/api/chats/{uri}/messages/", json={"attachments": [kept["id"]]})
    left = uploaded(alice, uri, png(100, 100), "left.png")
    clock = {"now": time.time()}

    async def crashed_upload() -> str:
        """An upload whose process died after its first chunks."""
        store = Store(server.mongo_url, db.name)
        try:
            stream = store.upload_stream()
            await store.record_partial(stream, uri, alice.user["id"])
            await stream.write(b"p" * 600_000)
            return str(stream.id)
        finally:
            await store.close()

    async def sweep() -> int:
        store = Store(server.mongo_url, db.name)
        files = Files(store, None, None, 0, 0, clock=lambda: clock["now"])
        try:
            return await files.sweep()
        finally:
            await files.stop()
            await store.close()

    partial = asyncio.run(crashed_upload())
    assert len(chunks_of(db, partial)) == 2
    assert download(alice, uri, partial).status_code == 404  # never shown
    assert asyncio.run(sweep()) == 0  # not a day old yet
    clock["now"] += 25 * 3600
    assert asyncio.run(sweep()) >= 2
    assert download(alice, uri, left["id"]).status_code == 404
    assert chunks_of(db, left["id"]) == [] and chunks_of(db, partial) == []
    assert db.files.find_one({"_id": ObjectId(partial)}) is None
    assert download(alice, uri, kept["id"]).status_code == 200


# The fetch guard --------------------------------------------------------

def test_the_fetch_guard_refuses_what_is_not_public(site):
    allowed = f"127.0.0.1:{Site.port}"
    guard = Fetcher(allow=(allowed,), timeout=1.0)

    async def refusal(url: str) -> str:
        try:
            await guard.fetch(url)
        except Refused as refused:
            return str(refused)
        raise AssertionError(f"{url} was fetched")

    async def scenario():
        # Refused for what they are, before any connection (a failed connection
        # is a refusal too, so the reason is what proves the check).
        for url in ("http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.1/", "http://192.168.1.1/", "http://[::ffff:127.0.0.1]/",
                    "http://[fe80::1]/", "http://0.0.0.0/", "http://224.0.0.1/",
                    f"http://localhost:{Site.port}/page"):  # a name resolving to loopback
            assert "non-public" in await refusal(url), url
        assert "credentials" in await refusal("http://user:pw@example.com/")
        assert "only http" in await refusal("file:///etc/passwd")
        # Allowed host, redirected to a loopback name that is not: refused.
        assert "non-public" in await refusal(f"{site}/to-loopback")
        page = await guard.fetch(f"{site}/page")
        assert page.status == 200 and b"og:title" in page.body
        big = await guard.fetch(f"{site}/big")
        assert big.truncated and len(big.body) == 1024 * 1024
        assert "no answer" in await refusal(f"{site}/hang")

    asyncio.run(scenario())


# Link previews ----------------------------------------------------------

def test_a_link_preview_reaches_both_processes_and_its_author_can_remove_it(server, site, start_server):
    second = start_server(mongo_url=server.mongo_url, link_preview_allow=f"127.0.0.1:{Site.port}")
    alice, bob, uri = two_members(server.url, second.url)
    url = f"{site}/page?{os.urandom(4).hex()}"
    before = bob.history(uri)

    async def scenario():
        async with websockets.connect(alice.ws_url(uri, since=1)) as here, \
                websockets.connect(bob.ws_url(uri, since=1)) as there:
            await next_frame(here, "ready")
            await next_frame(there, "ready")
            message = alice.post(uri, f"have a look: {url} !")
            seen = [await next_frame(ws, "preview", wait=15) for ws in (here, there)]
            return message, seen

    message, seen = asyncio.run(scenario())
    assert seen[0] == seen[1]
    event = seen[0]
    assert event["id"] == message["id"] and event["target_seq"] == message["seq"]
    preview = event["preview"]
    assert preview["url"] == url and preview["title"] == "The OpenGraph title"
    assert preview["description"] == "What the page is about" and preview["site_name"] == "Local site"
    image = bob.request("GET", preview["image"])  # stored here, never hot-linked
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"

    # What bob fetched before, plus the events he got, is what he fetches now.
    after = bob.history(uri)
    shown = {m["seq"]: m for m in before["messages"]}
    shown[message["seq"]] = {**{k: v for k, v in message.items() if k != "status"}, "type": "message"}
    shown[message["seq"]].update(preview=event["preview"], last_event_seq=event["seq"])
    assert list(shown.values()) == after["messages"]

    # One fetch per URL: a second message with the link is previewed from the cache.
    fetched = Site.hits.get(url.removeprefix(site), 0)
    again = alice.post(uri, url)

    async def second_preview():
        async with websockets.connect(bob.ws_url(uri, since=again["seq"])) as ws:
            return await next_frame(ws, "preview", wait=15)

    assert asyncio.run(second_preview())["preview"]["title"] == "The OpenGraph title"
    assert Site.hits.get(url.removeprefix(site), 0) == fetched == 1

    # An edit that changes the link gets the new link's preview.
    edited_url = f"{site}/page?edited"

    async def edited_preview():
        async with websockets.connect(bob.ws_url(uri, since=again["seq"] + 1)) as ws:
            await next_frame(ws, "ready")
            edit = alice.request("PATCH", f"/api/chats/{uri}/messages/{again['id']}/",
                                 json={"message": f"better: {edited_url}"})
            assert edit.status_code == 200, edit.text
            while True:
                frame = await next_frame(ws, "preview", wait=15)
                if frame["target_seq"] == again["seq"]:
                    return frame

    assert asyncio.run(edited_preview())["preview"]["url"] == edited_url

    path = f"/api/chats/{uri}/messages/{message['id']}/preview/"
    assert bob.request("DELETE", path).status_code == 403
    assert alice.request("DELETE", path).status_code == 204
    removal = bob.history(uri, events=1)["messages"][-1]
    assert removal["type"] == "preview" and removal["preview"] is None
    assert "preview" not in next(m for m in bob.history(uri)["messages"] if m["id"] == message["id"])
    assert bob.request("GET", preview["image"]).status_code == 404


def test_the_settings_and_their_environment_variables():
    from chat import config as chat_config
    config = chat_config.load(None, env={"CHAT_LINK_PREVIEW_ALLOW": "a:1, b:2",
                                         "CHAT_LINK_PREVIEW_TIMEOUT_SECONDS": "0.5",
                                         "CHAT_LINK_PREVIEWS": "off"})
    assert config.link_preview_allow == ("a:1", "b:2")
    assert config.link_preview_timeout_seconds == 0.5 and config.link_previews is False
    assert config.max_upload_bytes == 25 * MiB and config.upload_quota_bytes == 1024 * MiB
