"""Limits that protect accounts and the database: shared by every process
(counted in MongoDB), failed logins that slow a username down without locking
it, and usernames that are one account whatever their case."""

from __future__ import annotations

import asyncio
import datetime

import httpx
import pytest
from pymongo import AsyncMongoClient, monitoring

from chat.limits import Limit
from chat.store import Store, Unavailable
from tests.helpers import Api, wait_until

# Store semantics: these run on nx-27017 and on SecantusDB (tests/conftest.py).
pytestmark = pytest.mark.store_semantics


class CountingStore:
    """The store's two counter methods over a dict; `fail` makes them raise like
    a MongoDB that does not answer, and while `answer` is cleared they hang."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.fail = False
        self.commands = 0
        self.answer = asyncio.Event()
        self.answer.set()
        self.asked = 0  # count_hit calls, answered or not

    async def count_hit(self, key: str, expires: datetime.datetime, hits: int = 1) -> int:
        self.asked += 1
        await self.answer.wait()
        if self.fail:
            raise Unavailable("down")
        self.counts[key] = self.counts.get(key, 0) + hits
        self.commands += 1
        return self.counts[key]

    async def hit_count(self, key: str) -> int:
        if self.fail:
            raise Unavailable("down")
        return self.counts.get(key, 0)


class CountedCommands(monitoring.CommandListener):
    """The commands a Store sends, by name."""

    def __init__(self):
        self.names: list[str] = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def hits(limit: Limit, key: str, count: int) -> list[float]:
    async def run():
        return [await limit.hit(key) for _ in range(count)]
    return asyncio.run(run())


def test_a_limit_allows_its_number_then_says_how_long_to_wait():
    clock = Clock(6000.0)  # the start of a window
    limit = Limit(CountingStore(), "t", 3, 60.0, clock)
    waits = hits(limit, "a", 4)
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0 < waits[3] <= 120
    assert hits(limit, "b", 1) == [0.0]  # per key


def test_two_processes_share_one_count():
    store, clock = CountingStore(), Clock(6000.0)
    first, second = Limit(store, "t", 3, 60.0, clock), Limit(store, "t", 3, 60.0, clock)
    assert hits(first, "a", 2) + hits(second, "a", 1) == [0.0, 0.0, 0.0]
    assert hits(second, "a", 1)[0] > 0 and hits(first, "a", 1)[0] > 0


def test_a_burst_across_a_windows_edge_is_still_limited():
    clock = Clock(6059.0)  # a second before the window ends
    limit = Limit(CountingStore(), "t", 3, 60.0, clock)
    assert hits(limit, "a", 3) == [0.0, 0.0, 0.0]
    clock.now = 6061.0  # two seconds later, in the next window
    wait = hits(limit, "a", 1)[0]
    assert wait > 0
    clock.now += wait + 0.01
    assert hits(limit, "a", 1) == [0.0]


@pytest.mark.parametrize("limit_size", [3, 10, 100])
def test_the_wait_it_gives_is_enough_and_not_much_more(limit_size):
    clock = Clock(6030.0)
    limit = Limit(CountingStore(), "t", limit_size, 60.0, clock)
    assert set(hits(limit, "a", limit_size)) == {0.0}
    wait = hits(limit, "a", 1)[0]
    assert wait > 0
    clock.now += wait - 1
    assert hits(limit, "a", 1)[0] > 0  # too early
    clock.now += hits(limit, "a", 1)[0] + 0.01
    assert hits(limit, "a", 1) == [0.0]


def test_a_process_reserves_a_share_and_never_lets_the_total_pass_the_limit():
    store, clock = CountingStore(), Clock(6000.0)
    processes = [Limit(store, "t", 100, 60.0, clock) for _ in range(3)]
    first = [w for _ in range(30) for p in processes for w in hits(p, "a", 1)]
    assert set(first) == {0.0}
    assert store.commands == 3 * 6  # a command per share of 5, not per hit
    more = [w for _ in range(30) for p in processes for w in hits(p, "a", 1)]
    allowed = len(first) + more.count(0.0)
    assert 96 <= allowed <= 100  # what a process reserved and did not spend is lost


def test_mongodb_down_is_unavailable_not_allowed():
    store = CountingStore()
    store.fail = True
    with pytest.raises(Unavailable):
        hits(Limit(store, "t", 3, 60.0), "a", 1)


def test_concurrent_hits_that_find_a_reservation_failing_all_fail_and_the_key_recovers():
    """One reservation in flight when MongoDB gives up: every hit waiting for it
    gets Unavailable (no hit is allowed, none waits for a retry of its own), and
    the next hit reserves again."""
    async def scenario():
        store = CountingStore()
        store.answer.clear()
        limit = Limit(store, "t", 100, 60.0, Clock(6000.0))
        waiting = [asyncio.ensure_future(limit.hit("a")) for _ in range(50)]
        await wait_for_calls(store, 1)
        store.fail = True
        store.answer.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        asked = store.asked
        store.fail = False
        return outcomes, asked, await limit.hit("a"), store.counts

    outcomes, asked, after, counts = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [Unavailable] * 50
    assert asked == 1
    assert after == 0.0 and list(counts.values()) == [5]


def test_a_cancelled_reservation_hands_over_to_a_waiting_hit():
    async def scenario():
        store = CountingStore()
        store.answer.clear()
        limit = Limit(store, "t", 100, 60.0, Clock(6000.0))
        first = asyncio.ensure_future(limit.hit("a"))
        await wait_for_calls(store, 1)
        others = [asyncio.ensure_future(limit.hit("a")) for _ in range(9)]
        await asyncio.sleep(0)
        first.cancel()
        await wait_for_calls(store, 2)  # a waiting hit reserves in its place
        store.answer.set()
        return await asyncio.gather(*others), store.asked

    waits, asked = asyncio.run(scenario())
    assert waits == [0.0] * 9
    assert asked == 3  # the cancelled one, then two shares of 5 for 9 hits


async def wait_for_calls(store: CountingStore, count: int) -> None:
    """Let the event loop run until the store has been asked count times."""
    for _ in range(1000):
        if store.asked >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the store was asked {store.asked} times, not {count}")


# Across real processes -----------------------------------------------------------

# Two server processes over HTTP: the shared counter is proven on SecantusDB at the
# store (test_mongo_semantics: concurrent first hits from several processes).
@pytest.mark.store_semantics(False)
def test_sign_up_and_message_limits_hold_across_processes(start_server, fresh_db):
    limits = {"signup_per_ip_per_minute": 3, "user_messages_per_minute": 4}
    a, b = start_server(mongo_url=fresh_db, **limits), start_server(mongo_url=fresh_db, **limits)

    def sign_up(server, n: int) -> int:
        return httpx.post(f"{server.url}/auth/users/create/", timeout=10,
                          json={"username": f"u{n}", "password": "pw"}).status_code

    statuses = [sign_up(server, n) for n, server in enumerate((a, b, a, b), 1)]
    assert statuses == [201, 201, 201, 429]

    alice = Api(a.url, "u1", "pw").login()
    uri = alice.new_chat()
    alice_on_b = Api(b.url, "u1", "pw").login()
    posted = [alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": "m"}),
              alice_on_b.request("POST", f"/api/chats/{uri}/messages/", json={"message": "m"}),
              alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": "m"}),
              alice_on_b.request("POST", f"/api/chats/{uri}/messages/", json={"message": "m"}),
              alice.request("POST", f"/api/chats/{uri}/messages/", json={"message": "m"})]
    assert [r.status_code for r in posted] == [200, 200, 200, 200, 429]
    assert int(posted[-1].headers["Retry-After"]) > 0
    assert len(alice.history(uri)["messages"]) == 4


def test_the_shared_limit_costs_one_mongodb_command_per_share_of_posts(fresh_db):
    """The per-user message limit (100 a minute) takes a 5-post share of it in
    one findAndModify, and reads the previous window's count once per user and
    minute: 10 posts cost 2 commands."""
    commands = CountedCommands()

    async def scenario():
        store = Store(fresh_db, fresh_db.rsplit("/", 1)[1], 2000, event_listeners=[commands])
        await store.ensure_indexes()
        limit = Limit(store, "messages", 100, 60.0)
        await limit.hit("user")  # reserves a share and reads the previous window once
        for _ in range(4):  # the rest of that share
            assert await limit.hit("user") == 0.0
        commands.names.clear()
        for _ in range(10):
            assert await limit.hit("user") == 0.0
        counted = list(commands.names)
        await store.close()
        return counted

    assert asyncio.run(scenario()) == ["findAndModify"] * 2


def concurrent_hits(fresh_db: str, limit_size: int, count: int) -> tuple[list[float], list[str], int]:
    """count hits at once for one key on a fresh limit over real MongoDB: their
    waits, the commands sent, and the key's count in MongoDB afterwards."""
    commands = CountedCommands()

    async def scenario():
        store = Store(fresh_db, fresh_db.rsplit("/", 1)[1], 5000, event_listeners=[commands])
        await store.ensure_indexes()
        limit = Limit(store, "messages", limit_size, 60.0)
        commands.names.clear()
        waits = await asyncio.gather(*(limit.hit("user") for _ in range(count)))
        sent = list(commands.names)
        number = int(limit.clock() // limit.window)
        counted = await store.hit_count(limit.counter("user", number))
        await store.close()
        return list(waits), sent, counted

    return asyncio.run(scenario())


def test_concurrent_hits_for_one_key_share_one_reservation(fresh_db):
    """200 posts at once by one user, far below the limit: all allowed, for one
    reservation (a findAndModify) and one read of the previous window's count,
    not one reservation per post that pushes the shared count past the limit."""
    waits, sent, counted = concurrent_hits(fresh_db, 10_000_000, 200)
    assert waits == [0.0] * 200
    assert sent == ["findAndModify", "find"]
    assert counted == 10_000_000 // 20


@pytest.mark.parametrize("limit_size", [10, 100])
def test_more_concurrent_hits_than_the_limit_allow_exactly_the_limit(fresh_db, limit_size):
    waits, sent, counted = concurrent_hits(fresh_db, limit_size, 3 * limit_size)
    assert waits.count(0.0) == limit_size
    assert all(0 < wait <= 120 for wait in waits if wait)
    assert counted == limit_size  # refused hits gave back what they reserved
    # A command per share while it lasts; the refusal is shared by those waiting.
    assert sent.count("findAndModify") <= 20 + 2


# Failed logins slow a username down; they never lock it ------------------------------

def login(server, username: str, password: str, address: str) -> httpx.Response:
    return httpx.post(f"{server.url}/auth/jwt/create/", timeout=10,
                      headers={"X-Real-IP": address},
                      json={"username": username, "password": password})


@pytest.mark.store_semantics(False)  # the login delays over HTTP, not the store
def test_a_guesser_cannot_lock_the_owner_out(start_server):
    server = start_server(behind_proxy=True, login_max_failures=3, login_delay_max_seconds=1)
    owner = Api(server.url).signup()
    attacker = "198.51.100.66"
    answers = [login(server, owner.username, "guess", attacker) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert answers[0].json() == {"non_field_errors": ["Unable to log in with provided credentials."]}
    # The guesser's address is stopped for this username...
    stopped = login(server, owner.username, owner.password, attacker)
    assert stopped.status_code == 429 and int(stopped.headers["Retry-After"]) > 1
    # ...while the owner, elsewhere, logs in (after at most login_delay_max_seconds).
    owner_login = wait_until(
        lambda: (r := login(server, owner.username, owner.password, "203.0.113.7"))
        .status_code == 200 and r, 10, "the owner's login")
    assert owner_login.json()["token"]


def test_concurrent_guesses_from_one_address_get_no_more_tries_than_one_by_one(start_server):
    """Guesses sent at once all used to read the failures before any was
    recorded, so each had its password checked: login_max_failures did not
    hold for a guesser who does not wait for the answers."""
    server = start_server(behind_proxy=True, login_max_failures=3, login_delay_max_seconds=30)
    owner = Api(server.url).signup()

    async def guesses():
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            return await asyncio.gather(*(
                http.post("/auth/jwt/create/", headers={"X-Real-IP": "198.51.100.66"},
                          json={"username": owner.username, "password": f"guess{n}"})
                for n in range(20)))

    statuses = [answer.status_code for answer in asyncio.run(guesses())]
    assert statuses.count(400) <= 3 and statuses.count(400) + statuses.count(429) == 20


@pytest.mark.store_semantics(False)  # the login delays over HTTP, not the store
def test_guesses_from_many_addresses_are_slowed_per_username(start_server):
    server = start_server(behind_proxy=True, login_max_failures=3, login_delay_max_seconds=30)
    owner = Api(server.url).signup()
    for n in range(3):
        assert login(server, owner.username, "guess", f"198.51.100.{n}").status_code == 400
    slowed = login(server, owner.username, "guess", "198.51.100.200")
    assert slowed.status_code == 429, slowed.text
    assert 1 <= int(slowed.headers["Retry-After"]) <= 30


# Usernames: one account whatever the case -------------------------------------------

def test_usernames_are_unique_ignoring_case_and_keep_their_spelling(server):
    name = f"Mixed{Api(server.url).username}"
    first = Api(server.url, name).signup()
    for other in (name.lower(), name.upper()):
        reply = httpx.post(f"{server.url}/auth/users/create/",
                           json={"username": other, "password": "pw"})
        assert reply.status_code == 400
        assert reply.json() == {"username": ["A user with that username already exists."]}
    again = Api(server.url, name.upper(), first.password).login()
    me = again.request("GET", "/auth/me/").json()
    assert me["username"] == name and me["id"] == first.user["id"]
    # The owner adds a member by any spelling of the name.
    owner = Api(server.url).signup()
    uri = owner.new_chat()
    added = owner.request("PATCH", f"/api/chats/{uri}/", json={"username": name.lower()})
    assert added.status_code == 200 and added.json()["user"]["username"] == name


def test_accounts_from_before_keep_working_even_two_that_differ_only_in_case(fresh_db):
    async def scenario():
        client = AsyncMongoClient(fresh_db)
        users = client.get_default_database().users
        await users.insert_many([{"username": n, "email": "", "password": b"x", "first_name": "",
                                  "last_name": "", "created": datetime.datetime.now(datetime.UTC)}
                                 for n in ("Bob", "bob", "Carol")])
        await client.close()
        store = Store(fresh_db, fresh_db.rsplit("/", 1)[1], 2000)
        await store.ensure_indexes()
        found = [(await store.user_by_name(n))["username"] for n in ("Bob", "bob", "CAROL")]
        taken = []
        for n in ("carol", "BOB"):
            try:
                await store.create_user(n, "", b"x")
            except Exception as error:
                taken.append(type(error).__name__)
        await store.close()
        return found, taken

    found, taken = asyncio.run(scenario())
    assert found == ["Bob", "bob", "Carol"]
    assert taken == ["UsernameTaken", "UsernameTaken"]
