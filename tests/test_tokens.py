"""Tokens: PyJWT with HS256 pinned, a per-process cache of live tokens that
logout, refresh and expiry invalidate, and refresh that rotates."""

from __future__ import annotations

import asyncio
import datetime
import json

import httpx
import jwt
import pytest

from chat.store import Store, Unavailable, now
from chat.tokens import Tokens
from tests.helpers import Api, wait_until

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics

USER = {"id": "u1", "username": "ann"}


class FakeTokenStore:
    """The store's token methods over a dict; counts lookups; `down` makes them raise."""

    def __init__(self):
        self.tokens: dict[str, tuple[dict, datetime.datetime]] = {}
        self.lookups = 0
        self.down = False

    def check(self) -> None:
        if self.down:
            raise Unavailable("MongoDB does not answer")

    async def add_token(self, token_id, user, expires):
        self.check()
        self.tokens[token_id] = (user, expires)

    async def token_user(self, token_id):
        self.lookups += 1
        self.check()
        found = self.tokens.get(token_id)
        return found[0] if found and found[1] > now() else None

    async def take_token(self, token_id):
        self.check()
        found = self.tokens.pop(token_id, None)
        return found[0] if found and found[1] > now() else None

    async def revoke_token(self, token_id):
        self.check()
        self.tokens.pop(token_id, None)


def run(scenario):
    store = FakeTokenStore()
    return asyncio.run(scenario(store, Tokens(store, "s3cret", 1)))


def test_a_token_verified_once_is_known_without_a_lookup():
    async def scenario(store, tokens):
        token = await tokens.issue(USER)
        first = await tokens.verify(token)
        store.down = True  # a second verify must not even ask
        second = await tokens.verify(token)
        return first, second, store.lookups

    first, second, lookups = run(scenario)
    assert first == second and first[0] == USER
    assert lookups == 1


def test_logout_and_a_forgotten_token_are_asked_again():
    async def scenario(store, tokens):
        token = await tokens.issue(USER)
        _, token_id = await tokens.verify(token)
        await tokens.revoke(token_id)
        after_logout = await tokens.verify(token)
        other = await tokens.issue(USER)
        _, other_id = await tokens.verify(other)
        await store.revoke_token(other_id)  # revoked by another process
        cached = await tokens.verify(other)
        tokens.forget(other_id)  # ... whose notice arrives
        return after_logout, cached, await tokens.verify(other)

    after_logout, cached, after_notice = run(scenario)
    assert after_logout is None
    assert cached is not None  # until the notice, as with an open socket
    assert after_notice is None


def test_refresh_rotates_and_only_once():
    async def scenario(store, tokens):
        token = await tokens.issue(USER)
        await tokens.verify(token)
        first, second = await asyncio.gather(tokens.rotate(token), tokens.rotate(token))
        return first, second, await tokens.verify(token), token

    first, second, old, token = run(scenario)
    assert (first is None) != (second is None)
    user, fresh, _ = first or second
    assert user == USER and fresh != token and old is None


def test_only_hs256_signed_with_our_key_is_accepted():
    async def scenario(store, tokens):
        token = await tokens.issue(USER)
        claims = jwt.decode(token, options={"verify_signature": False})
        store.tokens[claims["jti"]] = (USER, now() + datetime.timedelta(days=1))
        forged = [
            jwt.encode(claims, None, algorithm="none"),
            jwt.encode(claims, tokens.key * 2, algorithm="HS512"),
            jwt.encode(claims, b"another key of thirty-two bytes!", algorithm="HS256"),
            jwt.encode({**claims, "exp": int(now().timestamp()) - 1}, tokens.key,
                       algorithm="HS256"),
            jwt.encode({k: v for k, v in claims.items() if k != "jti"}, tokens.key,
                       algorithm="HS256"),
            "a.b.c",
        ]
        return [await tokens.verify(t) for t in forged], await tokens.verify(token)

    refused, good = run(scenario)
    assert refused == [None] * 6
    assert good is not None


def test_a_cached_token_ends_at_its_expiry():
    async def scenario(store, tokens):
        tokens.ttl = datetime.timedelta(seconds=1.5)
        token = await tokens.issue(USER)
        await tokens.verify(token)
        _, until = next(iter(tokens.live.values()))
        return until - asyncio.get_running_loop().time()

    assert run(scenario) <= 1.5


@pytest.mark.store_semantics(False)  # control notices between processes, not the store
@pytest.mark.slow
def test_logout_and_refresh_reach_the_other_process_cache(start_server):
    """Process B has the tokens cached; logout of one and refresh of another
    through process A make both stop working on B (control notices)."""
    a = start_server()
    b = start_server(mongo_url=a.mongo_url)
    alice = Api(a.url).signup()
    carol = Api(a.url).signup()
    for api in (alice, carol):
        assert httpx.get(f"{b.url}/auth/me/", headers=api.auth).status_code == 200  # cached on B
    assert alice.request("POST", "/auth/logout/").status_code == 204
    refreshed = httpx.post(f"{a.url}/auth/jwt/refresh/", json={"token": carol.token})
    assert refreshed.status_code == 200
    fresh = refreshed.json()["token"]
    for token in (alice.token, carol.token):
        wait_until(lambda t=token: httpx.get(f"{b.url}/auth/me/", headers={
            "Authorization": f"JWT {t}"}).status_code == 401, 10, "B to forget the token")
    assert httpx.get(f"{a.url}/auth/me/", headers=carol.auth).status_code == 401
    me = httpx.get(f"{b.url}/auth/me/", headers={"Authorization": f"JWT {fresh}"})
    assert me.status_code == 200 and me.json()["username"] == carol.username
    again = httpx.post(f"{b.url}/auth/jwt/refresh/", json={"token": carol.token})
    assert again.status_code == 400 and json.loads(again.text)


def test_refresh_rotates_once_across_processes_on_the_test_mongodb(fresh_db):
    """Three processes refresh one token at once against the real store (on
    SecantusDB the commands really run concurrently): one gets a fresh token,
    the others nothing, and the old one is gone; a token is stored with its
    expiry as a date under the TTL index that lets MongoDB drop it."""
    database = fresh_db.rsplit("/", 1)[1]

    async def main():
        stores = [Store(fresh_db, database) for _ in range(3)]
        try:
            await stores[0].ensure_indexes()
            token = await Tokens(stores[0], "s3cret", 1).issue(USER)
            stored = await stores[0].tokens.find().to_list(None)
            rotated = await asyncio.gather(*(Tokens(s, "s3cret", 1).rotate(token) for s in stores))
            indexes = await stores[0].tokens.index_information()
            return stored, rotated, await Tokens(stores[1], "s3cret", 1).verify(token), indexes
        finally:
            for store in stores:
                await store.close()

    stored, rotated, old, indexes = asyncio.run(main())
    assert len(stored) == 1 and isinstance(stored[0]["expires"], datetime.datetime)
    assert sum(r is not None for r in rotated) == 1 and old is None
    assert [i.get("expireAfterSeconds") for i in indexes.values() if i["key"] == [("expires", 1)]] == [0]
