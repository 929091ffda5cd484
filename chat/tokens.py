"""Login tokens: HS256 JWTs whose id (jti) must also be live in MongoDB.

The signature rejects forged or garbled tokens without a database round
trip; the stored id makes logout and expiry real.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets

from chat.store import Store, now

HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    def __init__(self, store: Store, secret: str, ttl_days: float):
        self.store = store
        self.key = hashlib.sha256(b"chat token key:" + secret.encode()).digest()
        self.ttl = datetime.timedelta(days=ttl_days)

    def sign(self, signing_input: str) -> str:
        return b64(hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest())

    async def issue(self, user: dict) -> str:
        issued = now()
        expires = issued + self.ttl
        token_id = secrets.token_urlsafe(16)
        payload = {"user_id": user["id"], "username": user["username"], "jti": token_id,
                   "iat": int(issued.timestamp()), "exp": int(expires.timestamp())}
        await self.store.add_token(token_id, user, expires)
        body = f"{HEADER}.{b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{self.sign(body)}"

    def claims(self, token: str) -> dict | None:
        """The payload of a well-signed, unexpired token, else None. No I/O."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != HEADER:
            return None
        if not hmac.compare_digest(self.sign(f"{parts[0]}.{parts[1]}"), parts[2]):
            return None
        try:
            claims = json.loads(unb64(parts[1]))
        except ValueError:
            return None
        if not isinstance(claims, dict) or claims.get("exp", 0) <= now().timestamp():
            return None
        return claims

    async def verify(self, token: str) -> tuple[dict, str] | None:
        """(user, token id) for a live token, else None."""
        claims = self.claims(token)
        if claims is None:
            return None
        user = await self.store.token_user(claims["jti"])
        return (user, claims["jti"]) if user else None

    async def revoke(self, token_id: str) -> None:
        await self.store.revoke_token(token_id)
