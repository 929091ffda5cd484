"""Login tokens: HS256 JWTs (PyJWT) whose id (jti) must also be live in MongoDB.

The signature rejects forged or garbled tokens without a database round
trip; the stored id makes logout, refresh and expiry real. A token this
process has found live stays known for a while, so a storm of sockets and
requests by the same people costs no MongoDB round trip: logout and refresh
reach every process through the control exchange and drop the token at once
(Hub.on_control), expiry ends it by its `exp`, and after a broker outage,
when notices may have been lost, every process forgets them all.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import secrets

import jwt

from chat.store import Store, now, remember

ALGORITHM = "HS256"
# Tokens known live per process; the least recently used are forgotten.
KNOWN_TOKENS = 100_000
# How long a token found live is believed without asking MongoDB again: a
# bound on what a lost logout notice could cost, should one be lost while the
# broker connection looked healthy.
RECHECK_SECONDS = 300.0


class Tokens:
    def __init__(self, store: Store, secret: str, ttl_days: float):
        self.store = store
        self.key = hashlib.sha256(b"chat token key:" + secret.encode()).digest()
        self.ttl = datetime.timedelta(days=ttl_days)
        # jti -> (user, event loop time until which it is believed live)
        self.live: collections.OrderedDict[str, tuple[dict, float]] = collections.OrderedDict()

    async def issue(self, user: dict) -> str:
        issued = now()
        expires = issued + self.ttl
        token_id = secrets.token_urlsafe(16)
        claims = {"user_id": user["id"], "username": user["username"], "jti": token_id,
                  "iat": int(issued.timestamp()), "exp": int(expires.timestamp())}
        await self.store.add_token(token_id, user, expires)
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def claims(self, token: str) -> dict | None:
        """The claims of a well-signed, unexpired HS256 token, else None. No I/O."""
        try:
            claims = jwt.decode(token, self.key, algorithms=[ALGORITHM],
                                options={"require": ["exp", "jti", "user_id"]})
        except jwt.InvalidTokenError:
            return None
        return claims if isinstance(claims.get("jti"), str) else None

    async def verify(self, token: str) -> tuple[dict, str] | None:
        """(user, token id) for a live token, else None."""
        claims = self.claims(token)
        if claims is None:
            return None
        token_id = claims["jti"]
        moment = asyncio.get_running_loop().time()
        known = self.live.get(token_id)
        if known is not None and known[1] > moment:
            self.live.move_to_end(token_id)
            return known[0], token_id
        user = await self.store.token_user(token_id)
        if user is None:
            self.live.pop(token_id, None)
            return None
        # Believed until the recheck, and never past its expiry.
        until = min(moment + RECHECK_SECONDS, moment + claims["exp"] - now().timestamp())
        remember(self.live, token_id, (user, until), KNOWN_TOKENS)
        return user, token_id

    async def rotate(self, token: str) -> tuple[dict, str, str] | None:
        """Refresh: (user, a new token, the old token's id) for a live token, which
        stops working. Of two refreshes of one token, only one succeeds."""
        claims = self.claims(token)
        if claims is None:
            return None
        self.forget(claims["jti"])
        user = await self.store.take_token(claims["jti"])
        if user is None:
            return None
        return user, await self.issue(user), claims["jti"]

    async def revoke(self, token_id: str) -> None:
        self.forget(token_id)
        await self.store.revoke_token(token_id)

    def forget(self, token_id: str) -> None:
        """This process no longer believes token_id live (logged out or rotated elsewhere)."""
        self.live.pop(token_id, None)

    def forget_user(self, user_id: str, keep: str | None = None) -> None:
        """Forget every token of the user but keep (rare: a scan of those known)."""
        for token_id in [t for t, (user, _) in self.live.items()
                         if user["id"] == user_id and t != keep]:
            del self.live[token_id]

    def forget_all(self) -> None:
        self.live.clear()
