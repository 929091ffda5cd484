"""Search (GET /api/search/) and history around a seq, against a real server on
RabbitMQ and nx-27017 (or the MongoDB of CHAT_TEST_MONGO_URL).

nx-27017's $text is SQLite FTS5 under MongoDB's syntax: it does not stem
("deploy" does not find "deployment"), keeps stop words in its index and
ignores -exclusions (the engine applies them itself). Where MongoDB would
answer otherwise, the test says so and asserts what the server under test does.
"""

from __future__ import annotations

import html
import uuid

import httpx
import pytest

from chat import search as search_engine
from tests.conftest import serve
from tests.helpers import Api, server_in_thread, two_members
from tests.test_commands import in_process, sign_up
from tests.test_sweeper import failing_saves

__all__ = ["in_process"]  # test_commands' fixture: a server in this process, its commands counted

MAX_SCAN = 30


@pytest.fixture(scope="module")
def server(mongo_base, amqp_url, tmp_path_factory):
    """One server for the module, with a small search.max_scan so that the bound shows."""
    yield from serve(mongo_base, amqp_url, tmp_path_factory, search_max_scan=MAX_SCAN)


def word() -> str:
    """A word no other test posts (letters only: a token of its own to every index)."""
    return "w" + "".join(chr(ord("a") + int(c, 16) % 26) for c in uuid.uuid4().hex[:10])


def search(api: Api, status: int = 200, **params) -> dict:
    reply = api.request("GET", "/api/search/", params=params)
    assert reply.status_code == status, reply.text
    return reply.json()


def found(api: Api, q: str, **params) -> list[tuple[str, int]]:
    return [(r["uri"], r["seq"]) for r in search(api, q=q, **params)["results"]]


def test_only_rooms_i_am_in_now(server):
    owner, bob, shared = two_members(server.url)
    mine = bob.new_chat()
    theirs = owner.new_chat()  # bob is not a member
    key = word()
    in_shared = owner.post(shared, f"{key} in the shared chat")
    in_mine = bob.post(mine, f"{key} in mine")
    in_theirs = owner.post(theirs, f"{key} where bob is not")
    assert sorted(found(bob, key)) == sorted([(shared, in_shared["seq"]), (mine, in_mine["seq"])])
    # A chat that is not one of mine, named: 403, and nothing of it.
    assert search(bob, 403, q=key, uri=theirs)["detail"]
    assert found(bob, key, uri=mine) == [(mine, in_mine["seq"])]

    # Bob leaves the shared chat: the next search does not show it.
    reply = bob.request("DELETE", f"/api/chats/{shared}/members/{bob.username}/")
    assert reply.status_code == 204, reply.text
    assert found(bob, key) == [(mine, in_mine["seq"])]
    assert (shared, in_shared["seq"]) in found(owner, key)
    # Nor after being removed by the owner.
    carol = Api(server.url).signup()
    carol.join(theirs)
    assert found(carol, key) == [(theirs, in_theirs["seq"])]
    reply = owner.request("DELETE", f"/api/chats/{theirs}/members/{carol.username}/")
    assert reply.status_code == 204, reply.text
    assert found(carol, key) == []


def test_result_fields(server):
    alice, bob, uri = two_members(server.url)
    key = word()
    posted = bob.post(uri, f"Deploy {key} now")
    [result] = search(alice, q=key)["results"]
    assert result["uri"] == uri
    # Rooms get a name elsewhere; until then (or unnamed) it is null.
    assert "name" in result and result["name"] is None
    assert result["seq"] == posted["seq"]
    assert result["id"] == posted["id"]
    assert result["user"]["username"] == bob.username
    assert result["created"] == posted["created"]
    assert result["message"] == f"Deploy {key} now"
    assert result["highlight"] == f"Deploy <mark>{key}</mark> now"


def test_edit_and_delete_show_at_once(server):
    alice, bob, uri = two_members(server.url)
    old, new = word(), word()
    posted = alice.post(uri, f"first {old}")
    assert found(bob, old) == [(uri, posted["seq"])]
    reply = alice.request("PATCH", f"/api/chats/{uri}/messages/{posted['id']}/",
                          json={"message": f"second {new}"})
    assert reply.status_code == 200, reply.text
    # The edit event keeps the old text in the log: it is never a result.
    assert found(bob, old) == []
    [result] = search(bob, q=new)["results"]
    assert (result["seq"], result["message"]) == (posted["seq"], f"second {new}")
    reply = alice.request("DELETE", f"/api/chats/{uri}/messages/{posted['id']}/")
    assert reply.status_code == 204, reply.text
    assert found(bob, new) == []
    assert found(bob, old) == []


# What a message may hold that must come back as text, never markup.
HOSTILE_TEXTS = [
    '<script>alert("x")</script>',
    '<img src=x onerror=alert(1)>',
    '"><svg onload=alert(1)>',
    "<a href='javascript:alert(1)'>link</a>",
    "&lt;mark&gt; already escaped &amp;",
    "<mark>fake</mark>",
    "</mark><script>1</script>",
]


def test_text_replaced_is_not_found_while_the_change_is_being_saved(fresh_db):
    """An edit or a delete stores its event, then saves the message (whose text
    the index holds). Between the two, or when the save fails, the index still
    has the old text: a search must not show it."""
    state = {"down": False}
    with server_in_thread(fresh_db, failing_saves(state), changes_sweep_seconds=3600) as \
            (_, url):
        alice = Api(url).signup()
        uri = alice.new_chat()
        old, new, kept, gone = word(), word(), word(), word()
        edited = alice.post(uri, f"{old} {kept} draft")
        deleted = alice.post(uri, f"{gone} by mistake")
        state["down"] = True  # each change's event is stored, its save fails
        path = f"/api/chats/{uri}/messages/"
        reply = alice.request("PATCH", f"{path}{edited['id']}/", json={"message": f"{new} {kept}"})
        assert reply.status_code == 503, reply.text
        assert alice.request("DELETE", f"{path}{deleted['id']}/").status_code == 503
        state["down"] = False

        assert found(alice, old) == []
        assert found(alice, gone) == []
        # Still matched by a word it kept: shown as it is now, highlighted so.
        [result] = search(alice, q=kept)["results"]
        assert result["message"] == f"{new} {kept}"
        assert result["highlight"] == f"{new} <mark>{kept}</mark>"
        # The new text is found once the change is saved (the sweeper's job, or
        # the next change's): not asserted here.


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_highlight_escapes_everything_but_its_marks(server, text):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    alice.post(uri, f"{text} {key} {text}")
    [result] = search(alice, q=key)["results"]
    escaped = html.escape(text)
    assert result["highlight"] == f"{escaped} <mark>{key}</mark> {escaped}"
    assert result["message"] == f"{text} {key} {text}"


def test_highlight_of_a_phrase_and_of_words_in_any_case(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    alice.post(uri, f"The {key.upper()} ships <today>, ships soon")
    [result] = search(alice, q=f'"{key} ships" soon')["results"]
    assert result["highlight"] == (f"The <mark>{key.upper()} ships</mark> &lt;today&gt;, "
                                   f"ships <mark>soon</mark>")


def test_words_phrases_and_exclusions(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    texts = {"fox": f"{key} quick brown fox", "swapped": f"{key} brown quick fox",
             "dog": f"{key} quick brown dog", "cat": f"{key} lazy cat"}
    seqs = {name: alice.post(uri, text)["seq"] for name, text in texts.items()}

    def names(q: str) -> set[str]:
        hits = {seq for _, seq in found(alice, q)}
        return {name for name, seq in seqs.items() if seq in hits}

    assert names(f"{key} quick") == {"fox", "swapped", "dog"}  # every word must match
    assert names(f"{key} fox quick") == {"fox", "swapped"}
    assert names(f'"quick brown" {key}') == {"fox", "dog"}  # the phrase, in order
    assert names(f"{key} -quick") == {"cat"}
    assert names(f"{key} quick -dog") == {"fox", "swapped"}
    assert names(f'{key} -"brown quick"') == {"fox", "dog", "cat"}
    assert names(f"{key} -QUICK -cat") == set()
    assert names(f"{key} the quick") == {"fox", "swapped", "dog"}  # stop words are dropped


def test_stemming_is_the_engine_s(server, mongo_kind):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    alice.post(uri, f"{key} deployment failed")
    hits = found(alice, f"{key} deploy")
    if mongo_kind == "url":  # a real MongoDB
        # MongoDB stems "deploy" and "deployment" alike (search.language english).
        assert len(hits) == 1
    else:
        # nx-27017 does not stem: only the word as written matches.
        assert hits == []
    assert len(found(alice, f"{key} deployment")) == 1


def test_cursor_pages_without_repeats_or_gaps(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    other = alice.new_chat()
    key = word()
    posted = []
    for i in range(23):
        room = uri if i % 3 else other
        posted.append((room, alice.post(room, f"{key} number {i}" + " " + key * (i % 4 == 0))["seq"]))
    for sort in ("newest", "relevance"):
        pages, cursor = [], None
        while True:
            params = {"q": key, "limit": 5, "sort": sort}
            if cursor:
                params["cursor"] = cursor
            page = search(alice, **params)
            assert not page["partial"]
            pages.append([(r["uri"], r["seq"]) for r in page["results"]])
            cursor = page["next"]
            if cursor is None:
                break
        seen = [hit for page in pages for hit in page]
        assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
        assert sorted(seen) == sorted(posted), sort  # each once, none missed
        if sort == "newest":
            assert seen == posted[::-1]
    # A cursor of the other sort, or made up, is refused naming it.
    first = search(alice, q=key, limit=5)["next"]
    assert "cursor" in search(alice, 400, q=key, limit=5, sort="relevance", cursor=first)
    assert "cursor" in search(alice, 400, q=key, cursor="not-a-cursor")


def test_filters_room_person_and_dates(server):
    alice, bob, uri = two_members(server.url)
    other = alice.new_chat()
    key = word()
    a = alice.post(uri, f"{key} from alice")
    b = bob.post(uri, f"{key} from bob")
    c = alice.post(other, f"{key} elsewhere")
    assert found(alice, key, **{"from": bob.username}) == [(uri, b["seq"])]
    assert found(alice, key, **{"from": alice.username.upper()}) == [(other, c["seq"]), (uri, a["seq"])]
    assert found(alice, key, **{"from": "nobody-" + key}) == []
    assert found(alice, key, uri=other) == [(other, c["seq"])]
    assert found(alice, key, after=b["created"]) == [(other, c["seq"])]
    assert found(alice, key, before=b["created"]) == [(uri, a["seq"])]
    assert found(alice, key, after="2000-01-01", before="2999-01-01") == \
        [(other, c["seq"]), (uri, b["seq"]), (uri, a["seq"])]


def test_a_common_word_answers_within_the_bound(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    posts = 100
    for i in range(posts):
        alice.post(uri, f"{key} n{i}")
    page = search(alice, q=key, limit=100)
    # It read search.max_scan matches from the index, and the last RECENT_EVENTS
    # events of the chat, no more, and says there may be others.
    assert page["partial"] is True
    results = [r["message"] for r in page["results"]]
    assert MAX_SCAN < len(results) <= MAX_SCAN + search_engine.RECENT_EVENTS < posts
    assert len(set(results)) == len(results)
    # The newest first, though the index's first matches need not be the newest
    # (on nx-27017 they are the oldest).
    assert results[:3] == [f"{key} n{i}" for i in (posts - 1, posts - 2, posts - 3)]
    narrower = search(alice, q=f"{key} n7")
    assert not narrower["partial"]
    assert [r["message"] for r in narrower["results"]] == [f"{key} n7"]


BAD_QUERIES = [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "a"}, "q"),
    ({"q": "  x  "}, "q"),
    ({"q": "the and of"}, "q"),
    ({"q": "-excluded -only"}, "q"),
    ({"q": "x y z"}, "q"),
    ({"q": '""'}, "q"),
    ({"q": "a" * 201}, "q"),
    ({"q": " ".join(f"w{i}x" for i in range(11))}, "q"),
    ({"q": "word", "limit": "0"}, "limit"),
    ({"q": "word", "limit": "101"}, "limit"),
    ({"q": "word", "limit": "ten"}, "limit"),
    ({"q": "word", "after": "yesterday"}, "after"),
    ({"q": "word", "before": "2026-13-45"}, "before"),
    ({"q": "word", "sort": "oldest"}, "sort"),
    ({"q": "word", "uri": "not-a-uri"}, "uri"),
    ({"q": "word", "cursor": "!!!"}, "cursor"),
    ({"q": "null\x00byte"}, "q"),
]


@pytest.mark.parametrize("params,field", BAD_QUERIES)
def test_bad_queries_are_400_naming_the_field(server, params, field):
    alice = Api(server.url).signup()
    body = search(alice, 400, **params)
    assert list(body) == [field], body
    assert body[field][0]


# Query text that means something to $text, to FTS5 (nx-27017) or to a regex:
# each is searched as text: never an error, never a message of a chat the
# caller is not in, and the message that holds it is found.
HOSTILE_QUERIES = ['"unclosed phrase', 'NEAR(a b)', "col:value", "term*", "^start",
                   "a OR b", "AND NOT", "(grouped)", '\\"escaped\\"', "{$gt: ''}",
                   ".* [a-z]+ (?i)", "'; DROP TABLE messages; --", "bell\x07ring",
                   "emoji 🦊 ünïcödé", "-", "$where: sleep(1000)", "/.*/i", "message:*",
                   "rowid > 0", "%_%", "\\u0000", "x" * 60]


@pytest.fixture(scope="module")
def outsider(server):
    """Someone whose chat holds every hostile text too: none of it may reach others."""
    api = Api(server.url).signup()
    return api, api.new_chat()


@pytest.mark.parametrize("q", HOSTILE_QUERIES)
def test_hostile_queries_are_text(server, outsider, q):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    text = f"{key} {q}"
    posted = alice.post(uri, text)
    stranger, theirs = outsider
    stranger.post(theirs, text)
    reply = alice.request("GET", "/api/search/", params={"q": text})
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 400:
        assert list(reply.json()) == ["q"]
        return
    results = reply.json()["results"]
    assert {r["uri"] for r in results} <= {uri}
    assert (uri, posted["seq"]) in [(r["uri"], r["seq"]) for r in results]
    # The text is also not a way to reach everything: matching the hostile part alone
    # finds nothing of the stranger's either.
    alone = alice.request("GET", "/api/search/", params={"q": q})
    assert alone.status_code in (200, 400), alone.text
    if alone.status_code == 200:
        assert {r["uri"] for r in alone.json()["results"]} <= {uri}


def test_history_around_a_seq(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    seqs = [alice.post(uri, f"message {i}")["seq"] for i in range(30)]
    page = alice.history(uri, around=seqs[15], limit=9)
    got = [m["seq"] for m in page["messages"]]
    assert got == seqs[11:20]
    assert got[len(got) // 2] == seqs[15]
    assert page["has_more"] is True and page["has_more_after"] is True
    # Near the start: what there is before, the rest after.
    page = alice.history(uri, around=seqs[1], limit=6)
    assert [m["seq"] for m in page["messages"]] == seqs[:6]
    assert page["has_more"] is False and page["has_more_after"] is True
    # Near the end.
    page = alice.history(uri, around=seqs[-1], limit=5)
    assert [m["seq"] for m in page["messages"]] == seqs[-3:]
    assert page["has_more"] is True and page["has_more_after"] is False
    reply = alice.request("GET", f"/api/chats/{uri}/messages/",
                          params={"around": seqs[3], "after": seqs[1]})
    assert reply.status_code == 400 and "around" in reply.json()
    reply = alice.request("GET", f"/api/chats/{uri}/messages/", params={"around": "0"})
    assert reply.status_code == 400 and "around" in reply.json()


def test_openapi_documents_search(server):
    alice = Api(server.url).signup()
    document = alice.request("GET", "/api/openapi.json").json()
    operation = document["paths"]["/api/search/"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"q", "uri", "from", "after", "before", "limit", "cursor", "sort"} <= names
    listing = document["paths"]["/api/chats/{uri}/messages/"]["get"]
    assert "around" in {p["name"] for p in listing["parameters"]}


def test_a_restart_finds_the_index_in_place(server):
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    key = word()
    posted = alice.post(uri, f"{key} before the restart")
    # The module's server, on its database with the text index in place: creating
    # the index again must not stop it from starting.
    assert server.stop() == 0
    server.start()
    assert found(alice, key) == [(uri, posted["seq"])]


def test_a_search_is_two_reads_however_many_rooms(in_process):
    """The caller's rooms (read as the search runs), then one $text query over
    all of them: not a read per room, nor per result."""
    async def scenario(server, base, commands):
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await sign_up(http, "ann")
            auth = {"Authorization": f"JWT {token}"}
            counts = []
            for rooms in (1, 4):
                while len((await http.get("/api/chats/", headers=auth)).json()) < rooms:
                    uri = (await http.post("/api/chats/", headers=auth)).json()["uri"]
                    for i in range(3):
                        await http.post(f"/api/chats/{uri}/messages/", headers=auth,
                                        json={"message": f"needle {i}"})
                await http.get("/api/search/", headers=auth, params={"q": "needle"})
                commands.take()
                page = (await http.get("/api/search/", headers=auth,
                                       params={"q": "needle"})).json()
                assert len(page["results"]) == 3 * rooms
                counts.append(commands.take())
            await http.get("/api/search/", headers=auth, params={"q": "needle", "from": "ann"})
            counts.append(commands.take())
        return counts

    one, four, by_person = in_process(scenario)
    assert one == four == ["find", "find"]
    assert by_person == ["find", "find", "find"]  # and the person's account
