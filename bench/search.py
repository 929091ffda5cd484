"""What search costs: latency of GET /api/search/ over a generated corpus, and
what the text index adds to every post.

    python -m bench.search [--mode quick|full] [--messages N] [--rooms R] [--mine M]

Starts nx-27017 on a free port and one server process (the memory broker: the
embedded store, one process). The corpus (words drawn from a Zipf
distribution over a generated vocabulary, as natural language's are) goes
straight into MongoDB with insert_many in large batches; the searcher is a
member of `mine` of its `rooms`. Then, per query kind (a rare word, a common
word, a phrase, a common word from one person), p50/p99 of the answer's
latency with 1 and with 10 searchers at once; then posts/s through the API
and CPU per post with the text index and without it (dropped), on a fresh
database; and the index's size on disk. Prints one JSON object and writes the
"Search" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime
import itertools
import json
import os
import random
import re
import sqlite3
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from pymongo import MongoClient

from bench.loadgen import Http, cpu_seconds, ms, percentile
from bench.report import replace_section
from chat.store.search import TEXT_INDEX
from tests.conftest import MongoServer, database_url
from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Search"
PASSWORD = "bench-password-1"
MODES = {
    "quick": {"messages": 20_000, "rooms": 1000, "mine": 50, "queries": 12, "post_seconds": 2.0},
    "full": {"messages": 1_000_000, "rooms": 1000, "mine": 50, "queries": 100, "post_seconds": 8.0},
}
VOCABULARY = 30_000
ZIPF = 1.07
BATCH = 10_000
AUTHORS = 20
SEARCHERS = (1, 10)
POSTERS = 8
# Limits out of the way; a MongoDB budget long enough to measure a slow answer
# rather than a 503 (the tests' servers get 2 s).
SETTINGS = {"user_messages_per_minute": 10_000_000, "mongo_timeout_ms": 10_000}


def vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words, key=lambda w: rng.random())


class Corpus:
    """Messages of generated text; the word at rank r is drawn with weight 1/r^ZIPF."""

    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.words = vocabulary(self.rng)
        weights = [1 / (rank + 1) ** ZIPF for rank in range(VOCABULARY)]
        self.cumulative = list(itertools.accumulate(weights))
        self.rank = {word: rank for rank, word in enumerate(self.words)}

    def text(self) -> str:
        total = self.cumulative[-1]
        count = self.rng.randint(4, 16)
        return " ".join(self.words[bisect.bisect(self.cumulative, self.rng.random() * total)]
                        for _ in range(count))


def sign_up(http_port: int, username: str) -> tuple[str, str]:
    """(user id, token) of a new account."""
    async def run() -> tuple[str, str]:
        http = Http(http_port)
        status, user = await http.request("POST", "/auth/users/create/",
                                          {"username": username, "password": PASSWORD})
        assert status == 201, user
        status, reply = await http.request("POST", "/auth/jwt/create/",
                                           {"username": username, "password": PASSWORD})
        assert status == 200, reply
        http.close()
        return user["id"], reply["token"]
    return asyncio.run(run())


def fill(db, corpus: Corpus, messages: int, rooms: int, mine: int, me: str,
         author: dict) -> dict:
    """Rooms and messages straight into MongoDB; returns the queries to run."""
    moment = datetime.datetime.now(datetime.UTC)
    uris = [uuid.uuid4().hex[:15] for _ in range(rooms)]
    db.rooms.insert_many([{"uri": uri, "owner": author["id"], "seq": 0, "created": moment,
                           "updated": moment.timestamp(),
                           "members": [author["id"], me] if i < mine else [author["id"]]}
                          for i, uri in enumerate(uris)])
    authors = [author] + [{"id": uuid.uuid4().hex[:24], "username": f"author{i}", "email": "",
                           "first_name": "", "last_name": ""} for i in range(1, AUTHORS)]
    seqs = dict.fromkeys(uris, 0)
    start = moment - datetime.timedelta(days=365)
    step = datetime.timedelta(days=365) / messages
    mine_texts: list[str] = []
    began = time.monotonic()
    for first in range(0, messages, BATCH):
        batch = []
        for n in range(first, min(messages, first + BATCH)):
            uri = uris[corpus.rng.randrange(rooms)]
            seqs[uri] += 1
            who = authors[corpus.rng.randrange(AUTHORS)]
            text = corpus.text()
            if uri in uris[:mine] and len(mine_texts) < 20_000:
                mine_texts.append(text)
            batch.append({"room": uri, "seq": seqs[uri], "user": who, "user_id": who["id"],
                          "message": text, "created": start + n * step})
        db.messages.insert_many(batch, ordered=False)
    seconds = time.monotonic() - began
    for uri, seq in seqs.items():
        db.rooms.update_one({"uri": uri}, {"$set": {"seq": seq}})
    ranks = corpus.rank
    in_mine = {word for text in mine_texts for word in text.split()}
    rare = min((w for w in in_mine if ranks[w] >= VOCABULARY // 3), key=lambda w: -ranks[w])
    bigrams = [pair for text in mine_texts for pair in zip(text.split(), text.split()[1:], strict=False)
               if all(50 <= ranks[w] < 2000 for w in pair)]
    phrase = " ".join(corpus.rng.choice(bigrams))
    return {
        "insert_seconds": round(seconds, 1),
        "inserts_per_s": round(messages / seconds),
        "queries": {
            "rare word": {"q": rare},
            # About 5% of messages hold the word of rank 8; the first, most of them.
            "common word": {"q": corpus.words[8]},
            "very common word": {"q": corpus.words[0]},
            "phrase": {"q": f'"{phrase}"'},
            "from: filter": {"q": corpus.words[8], "from": author["username"]},
        },
    }


async def searches(port: int, token: str, params: dict, searchers: int, each: int) -> dict:
    latencies: list[float] = []
    answers: list[dict] = []
    errors: list[int] = []
    path = "/api/search/?" + urllib.parse.urlencode(params)

    async def searcher() -> None:
        http = Http(port)
        for _ in range(each):
            began = time.perf_counter()
            status, reply = await http.request("GET", path, token=token)
            latencies.append(time.perf_counter() - began)
            if status == 200:
                answers.append(reply)
            else:
                errors.append(status)
        http.close()

    await asyncio.gather(*(searcher() for _ in range(searchers)))
    return {"searchers": searchers, "n": len(latencies), "p50_ms": ms(percentile(latencies, 0.5)),
            "p99_ms": ms(percentile(latencies, 0.99)),
            "results": len(answers[0]["results"]) if answers else None,
            "partial": answers[0]["partial"] if answers else None, "errors": len(errors)}


def posting(server: ServerProcess, mongo: MongoServer, seconds: float) -> dict:
    """Posts/s through the API with POSTERS posting at once, and CPU per post."""
    _, token = sign_up(server.port, f"poster{uuid.uuid4().hex[:8]}")
    corpus = Corpus(seed=11)

    async def run() -> int:
        http = Http(server.port)
        rooms = []
        for _ in range(POSTERS):
            status, reply = await http.request("POST", "/api/chats/", token=token)
            assert status == 200, reply
            rooms.append(reply["uri"])
        http.close()
        deadline = time.monotonic() + seconds
        counts = []

        async def poster(uri: str) -> None:
            conn, sent = Http(server.port), 0
            while time.monotonic() < deadline:
                status, reply = await conn.request("POST", f"/api/chats/{uri}/messages/",
                                                   {"message": corpus.text()}, token=token)
                assert status == 200, reply
                sent += 1
            conn.close()
            counts.append(sent)

        await asyncio.gather(*(poster(uri) for uri in rooms))
        return sum(counts)

    cpu = cpu_seconds(server.process.pid), cpu_seconds(mongo.process.pid)
    began = time.monotonic()
    posts = asyncio.run(run())
    elapsed = time.monotonic() - began
    server_cpu = cpu_seconds(server.process.pid) - cpu[0]
    mongo_cpu = cpu_seconds(mongo.process.pid) - cpu[1]
    return {"posts_per_s": round(posts / elapsed), "posts": posts,
            "server_cpu_ms_per_post": round(1000 * server_cpu / posts, 2),
            "mongo_cpu_ms_per_post": round(1000 * mongo_cpu / posts, 2)}


def drop_text_index(mongo: MongoServer, database: str) -> None:
    """Drop the text index. nx-27017's dropIndex leaves its FTS5 table and the
    triggers that keep it up to date in place (inserts still pay for it), so
    the triggers are dropped in its SQLite file as well."""
    client = MongoClient(mongo.url)
    client[database].messages.drop_index(TEXT_INDEX)
    client.close()
    connection = sqlite3.connect(database_file(mongo.data_dir, database), timeout=30)
    try:
        triggers = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_fts_%'")]
        for name in triggers:
            connection.execute(f'DROP TRIGGER "{name}"')
        connection.commit()
    finally:
        connection.close()
    assert triggers, "no FTS triggers found to drop"


def database_file(data_dir: Path, database: str) -> Path:
    return data_dir / f"{database}.db"


def index_bytes(data_dir: Path, database: str) -> dict:
    """The text index's pages in nx-27017's SQLite file (its FTS5 tables), and the file."""
    path = database_file(data_dir, database)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page = connection.execute("PRAGMA page_size").fetchone()[0]
        rows = connection.execute("SELECT name, count(*) FROM dbstat GROUP BY name").fetchall()
    finally:
        connection.close()
    fts = sum(pages for name, pages in rows if re.search(r"_fts", name)) * page
    return {"text_index_bytes": fts, "file_bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--rooms", type=int)
    parser.add_argument("--mine", type=int)
    args = parser.parse_args()
    plan = {**MODES[args.mode], **{k: v for k, v in vars(args).items() if v and k != "mode"}}
    load = {"cpus": os.cpu_count(), "before": os.getloadavg()}
    result: dict = {"mode": args.mode, "plan": plan}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        mongo = MongoServer(Path(folder) / "mongo")
        mongo.start()
        try:
            url = database_url(mongo.url)
            database = url.rsplit("/", 1)[1]
            server = ServerProcess(url, "memory://", log_dir=Path(folder), **SETTINGS).start()
            try:
                me, token = sign_up(server.port, f"searcher{uuid.uuid4().hex[:8]}")
                author_id, _ = sign_up(server.port, f"author{uuid.uuid4().hex[:8]}")
                client = MongoClient(mongo.url)
                db = client[database]
                author = db.users.find_one({"username": {"$regex": "^author"}})
                author = {"id": author_id, "username": author["username"], "email": "",
                          "first_name": "", "last_name": ""}
                filled = fill(db, Corpus(), plan["messages"], plan["rooms"], plan["mine"], me,
                              author)
                result["corpus"] = {k: v for k, v in filled.items() if k != "queries"}
                result["queries"] = filled["queries"]
                result["index"] = index_bytes(Path(folder) / "mongo", database)
                result["search"] = []
                for kind, params in filled["queries"].items():
                    for searchers in SEARCHERS:
                        each = plan["queries"] if searchers == 1 else max(3, plan["queries"] // 4)
                        row = asyncio.run(searches(server.port, token, params, searchers, each))
                        result["search"].append({"kind": kind, **row})
                        print(json.dumps(result["search"][-1]), flush=True)
                client.close()
            finally:
                server.stop()
            # Posting, with the index and without, each on a fresh database.
            result["posting"] = []
            for indexed in (True, False, True, False):
                url = database_url(mongo.url)
                server = ServerProcess(url, "memory://", log_dir=Path(folder), **SETTINGS).start()
                try:
                    if not indexed:
                        drop_text_index(mongo, url.rsplit("/", 1)[1])
                    row = {"text_index": indexed, **posting(server, mongo, plan["post_seconds"])}
                    result["posting"].append(row)
                    print(json.dumps(row), flush=True)
                finally:
                    server.stop()
        finally:
            mongo.stop()
    load["after"] = os.getloadavg()
    result["load"] = load
    print(json.dumps(result), flush=True)
    write_section(result)


def write_section(result: dict) -> None:
    plan, corpus, load = result["plan"], result["corpus"], result["load"]
    queries = result["queries"]
    lines = [
        SECTION, "",
        f"`python -m bench.search --mode {result['mode']}` (part of `make bench`): one server "
        f"process on the embedded store (nx-27017, memory broker); {plan['messages']:,} "
        f"generated messages (4-16 words drawn from a Zipf distribution over "
        f"{VOCABULARY:,} words) in {plan['rooms']:,} rooms, the searcher a member of "
        f"{plan['mine']} of them; `search.max_scan` at its default (1,000). Inserting the corpus "
        f"(insert_many, {BATCH:,} a batch, text index in place) took "
        f"{corpus['insert_seconds']} s ({corpus['inserts_per_s']:,} messages/s). The machine "
        f"({load['cpus']} cores) is shared with other people's test runs: load average "
        f"{load['before'][0]:.1f} before and {load['after'][0]:.1f} after.", "",
        "| query | searchers | requests | p50 (ms) | p99 (ms) | results (page of 20) | partial "
        "| errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["search"]:
        params = queries[row["kind"]]
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"| {row['kind']} (`{shown}`) | {row['searchers']} | {row['n']} | "
                     f"{row['p50_ms']} | {row['p99_ms']} | {row['results']} | "
                     f"{'yes' if row['partial'] else 'no'} | {row['errors']} |")
    index = result["index"]
    lines += [
        "", f"Text index on disk (nx-27017 keeps it as SQLite FTS5 tables): "
        f"{index['text_index_bytes'] / 2**20:.1f} MiB of a {index['file_bytes'] / 2**20:.1f} MiB "
        f"database file, {index['text_index_bytes'] / plan['messages']:.0f} bytes per message.",
        "", f"Posting through the API, {POSTERS} posters at once for {plan['post_seconds']:g} s "
        "each run, on a fresh database, with the text index and with it dropped (alternately):",
        "", "| text index | posts/s | server CPU per post (ms) | nx-27017 CPU per post (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["posting"]:
        lines.append(f"| {'yes' if row['text_index'] else 'no'} | {row['posts_per_s']} | "
                     f"{row['server_cpu_ms_per_post']} | {row['mongo_cpu_ms_per_post']} |")
    lines += [
        "", "Notes: on nx-27017 a search reads every posting of its words in C (SQLite FTS5: "
        "about 20 ms for a word in 700,000 messages), then fetches the matching documents one "
        "by one, checking room and filters, until `search.max_scan` of the caller's rooms "
        "matched: about 0.1 ms a document, so a common word costs about max_scan x 0.1 ms, "
        "and a `from:` filter that keeps few of a common word's matches fetches them all; a "
        "partial answer also reads the last 25 events of the 20 chats active last (about "
        "40 ms here), so that the newest matches are in it. "
        "nx-27017 answers one query at a time: 10 searchers queue, so their p50 is about 10 "
        "times one searcher's. Without the index means its SQLite triggers dropped too "
        "(nx-27017's dropIndex leaves them, and the index maintained). Posts/s swing with "
        "the machine's other load; CPU per post is the steadier figure. Full mode (`make "
        "bench MODE=full`: 1,000,000 messages) is the issue's size; see docs/scaling.md for "
        "what these mean at scale.",
    ]
    replace_section(DOCS, SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
