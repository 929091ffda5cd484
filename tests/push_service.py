"""A local Web Push service for tests: a loopback HTTP server that checks each
push's VAPID JWT (RFC 8292) against the server's public key and decrypts its
aes128gcm payload (RFC 8291) with the test subscription's private key."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import threading
import time

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Device:
    """A browser's push subscription: its key pair, auth secret and endpoint."""

    def __init__(self, service: PushService, name: str):
        self.name = name
        self.endpoint = f"{service.url}/push/{name}"
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.subscription = {"endpoint": self.endpoint,
                             "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}


class PushService:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.devices: dict[str, Device] = {}
        self.received: list[tuple[str, dict, dict]] = []  # (device name, payload, headers)
        self.refused: list[str] = []  # what failed the checks, to show in asserts
        self.status: dict[str, int] = {}  # device name -> the answer to give (201 otherwise)
        self.hold: set[str] = set()  # device names whose pushes hang until released
        self.vapid_key = ""  # the server's public key, base64url
        self.changed = threading.Condition()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                name = self.path.rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = service.check(name, self.headers, body)
                except Exception as error:  # the push is refused: say why in the test
                    with service.changed:
                        service.refused.append(f"{name}: {error!r}")
                        service.changed.notify_all()
                    self.send_response(400)
                    self.end_headers()
                    return
                while name in service.hold:
                    time.sleep(0.02)
                with service.changed:
                    service.received.append((name, payload, dict(self.headers)))
                    service.changed.notify_all()
                self.send_response(service.status.get(name, 201))
                self.end_headers()

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def start(self) -> PushService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.hold.clear()
        self.http.shutdown()

    def device(self, name: str) -> Device:
        self.devices[name] = Device(self, name)
        return self.devices[name]

    def check(self, name: str, headers, body: bytes) -> dict:
        """Verify the VAPID signature and decrypt: the payload, or raise."""
        auth = headers.get("Authorization", "")
        assert auth.startswith("vapid "), auth
        fields = dict(part.split("=", 1) for part in auth[len("vapid "):].split(","))
        assert fields["k"] == self.vapid_key, "not the server's VAPID key"
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(fields["k"]))
        claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience=self.url)
        assert claims["sub"].startswith(("mailto:", "https://")) and claims["exp"] > time.time()
        assert headers.get("Content-Encoding") == "aes128gcm" and int(headers.get("TTL", 0)) > 0
        assert headers.get("Urgency") in ("high", "normal", "low")
        # RFC 8030 §5.4: a Topic is at most 32 characters of base64url.
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", headers.get("Topic", "-")), headers.get("Topic")
        device = self.devices[name]
        plain = http_ece.decrypt(body, private_key=device.private_key, auth_secret=device.auth,
                                 version="aes128gcm")
        return json.loads(plain)

    def wait_for(self, predicate, seconds: float = 15, what: str = "pushes") -> list:
        with self.changed:
            ok = self.changed.wait_for(lambda: predicate(self.received), seconds)
            assert ok, f"no {what} within {seconds} s; got {self.received}, refused {self.refused}"
            return list(self.received)

    def of(self, name: str, kind: str = "message") -> list[dict]:
        return [p for n, p, _ in self.received if n == name and p.get("type") == kind]

    def header(self, name: str, field: str) -> list[str | None]:
        """A header of each push to the device, in order."""
        return [h.get(field) for n, _, h in self.received if n == name]
