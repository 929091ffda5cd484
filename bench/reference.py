"""The bare-Tornado reference: rooms of WebSockets and a plain `write_message` loop.

    python bench/reference.py --port 9000

No accounts, no storage, no broker: a text frame from a client (or a POST to
/api/chats/<room>/messages/) is wrapped in the same kind of JSON the chat
server sends (encoded once) and written to every socket of the room with
`write_message`, which frames it per socket. It is the limit the chat server
is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import signal

import tornado.web
import tornado.websocket

ROOMS: dict[str, set[RoomSocket]] = {}
SEQS: dict[str, int] = {}


def broadcast(room: str, text) -> dict:
    seq = SEQS[room] = SEQS.get(room, 0) + 1
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    message = {"type": "message", "seq": seq, "uri": room, "message": text, "created": created}
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    for sock in list(ROOMS.get(room, ())):
        try:
            sock.write_message(payload)
        except tornado.websocket.WebSocketClosedError:
            pass
    return message


class RoomSocket(tornado.websocket.WebSocketHandler):
    def open(self, room: str) -> None:
        self.room = room
        ROOMS.setdefault(room, set()).add(self)
        self.write_message('{"type":"ready","seq":0}')

    def on_message(self, text: str | bytes) -> None:
        broadcast(self.room, json.loads(text).get("message"))

    def on_close(self) -> None:
        sockets = ROOMS.get(self.room)
        if sockets is not None:
            sockets.discard(self)
            if not sockets:
                del ROOMS[self.room]


class Messages(tornado.web.RequestHandler):
    def post(self, room: str) -> None:
        message = broadcast(room, json.loads(self.request.body).get("message"))
        self.write({"status": "SUCCESS", **message})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    app = tornado.web.Application([(r"/ws/([0-9a-z]+)/", RoomSocket),
                                   (r"/api/chats/([0-9a-z]+)/messages/", Messages)],
                                  websocket_ping_interval=20, websocket_ping_timeout=20)
    server = app.listen(args.port, "127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"reference listening on {args.port}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
