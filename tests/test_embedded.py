"""The embedded default (`make run`): in-process broker, generated secret, own MongoDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import websockets

from tests.helpers import ROOT, Api, free_port, probe_joined, wait_until


def start_embedded(tmp_path, mongo_url: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update({"CHAT_MONGO_URL": mongo_url, "CHAT_DATA_DIR": str(tmp_path / "data"),
                "CHAT_BCRYPT_ROUNDS": "4", "PYTHONUNBUFFERED": "1"})
    log = open(tmp_path / "embedded.log", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--embedded",
                                "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    log.close()

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "embedded.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 40, "the embedded server")
    return process, port


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def chat_round_trip(port: int) -> dict:
    """Sign up, start a chat, post over the socket, read it back."""
    base = f"http://127.0.0.1:{port}"
    alice = Api(base).signup()
    uri = alice.new_chat()

    async def scenario() -> dict:
        async with websockets.connect(alice.ws_url(uri)) as ws:
            await probe_joined(ws)
            await ws.send(json.dumps({"type": "message", "message": "hi", "client_id": "c1"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

    frame = asyncio.run(scenario())
    assert alice.history(uri)["messages"][0]["seq"] == frame["seq"] == 1
    return frame


def test_embedded_uses_a_mongodb_that_answers(tmp_path, mongo_base):
    process, port = start_embedded(tmp_path, f"{mongo_base}/embedded")
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health == {"mongo": "ok", "broker": "ok"}
        assert chat_round_trip(port)["message"] == "hi"
        secret = (tmp_path / "data" / "secret").read_text()
        assert len(secret) >= 32 and oct((tmp_path / "data" / "secret").stat().st_mode)[-3:] == "600"
    finally:
        assert stop(process) == 0


def test_embedded_starts_its_own_mongodb_when_none_answers(tmp_path):
    mongo_port = free_port()
    process, port = start_embedded(tmp_path, f"mongodb://127.0.0.1:{mongo_port}/chat")
    try:
        assert chat_round_trip(port)["message"] == "hi"
        assert (tmp_path / "data" / "mongo").is_dir()
    finally:
        assert stop(process) == 0
    # Ctrl-C stopped the wire server too: nothing answers on its port any more.
    wait_until(lambda: _closed(mongo_port), 10, "nx-27017 to stop")


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
