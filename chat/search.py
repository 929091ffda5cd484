"""Search: find messages of the caller's rooms by their words.

The edge talks to a `SearchEngine` (one method); `MongoTextSearch` is the one
behind it today, on MongoDB's `$text` index over the messages, so that an
external engine (Atlas `$search`, OpenSearch) can take its place where a
deployment outgrows it (docs/scaling.md). What the engine does not depend on
lives here too: the query language, the highlight and the cursor.

The query language: words (all must match), "a phrase", -excluded (a word or a
"phrase"). Scope: the rooms the caller is a member of when the search runs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import html
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chat.events import InvalidField
from chat.store import NotMember, iso

MIN_QUERY_CHARS = 2
# A partial answer (a word in more than max_scan of the caller's messages) is
# drawn from the index's first matches, which need not be the newest (nx-27017
# gives the oldest first): the last RECENT_EVENTS events of the RECENT_ROOMS
# rooms active last are read too, by index, so the newest matches are there:
# about 33 ms more on nx-27017 at 1,000,000 messages, for common words only.
RECENT_ROOMS = 20
RECENT_EVENTS = 25
# Words, phrases and exclusions together: each is a term of the $text search.
MAX_TERMS = 10
# MongoDB's English stop words (src/mongo/db/fts/stop_words_english.txt): never
# indexed, so a query of nothing else can find nothing.
ENGLISH_STOP_LIST = """
a about above after again against all am an and any are aren't as at be because been before
being below between both but by can't cannot could couldn't did didn't do does doesn't doing
don't down during each few for from further had hadn't has hasn't have haven't having he he'd
he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in
into is isn't it it's its itself let's me more most mustn't my myself no nor not of off on once
only or other ought our ours ourselves out over own same shan't she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those through to too under until up very was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while
who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours
yourself yourselves
"""
ENGLISH_STOP_WORDS = frozenset(ENGLISH_STOP_LIST.split())
TOKEN = re.compile(r'(-?)(?:"([^"]*)"?|(\S+))')
WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class Query:
    words: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    excluded_words: tuple[str, ...] = ()
    excluded_phrases: tuple[str, ...] = ()


def parse(text: str, language: str = "english") -> Query:
    """The query language, or InvalidField naming `q`."""
    if len(text.strip()) < MIN_QUERY_CHARS:
        raise InvalidField("q", f"Enter at least {MIN_QUERY_CHARS} characters.")
    stop_words = ENGLISH_STOP_WORDS if language == "english" else frozenset()
    words: list[str] = []
    phrases: list[str] = []
    excluded_words: list[str] = []
    excluded_phrases: list[str] = []
    for minus, quoted, bare in TOKEN.findall(text):
        if quoted:
            phrase = " ".join(quoted.split())
            if WORD.search(phrase):
                (excluded_phrases if minus else phrases).append(phrase)
            continue
        core = bare.strip("!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~-")
        if not WORD.fullmatch(core or "-"):
            if WORD.search(core):  # "foo-bar", "alert(1)": a phrase as MongoDB matches it
                (excluded_phrases if minus else phrases).append(core)
            continue
        if len(core) < MIN_QUERY_CHARS or core.casefold() in stop_words:
            continue
        (excluded_words if minus else words).append(core)
    query = Query(*(tuple(dict.fromkeys(part)) for part in
                    (words, phrases, excluded_words, excluded_phrases)))
    if not query.words and not query.phrases:
        raise InvalidField("q", "Search for at least one word of 2 characters or more that "
                                "is not a stop word (like 'the' or 'and').")
    if sum(map(len, dataclasses.astuple(query))) > MAX_TERMS:
        raise InvalidField("q", f"Use at most {MAX_TERMS} words, phrases and exclusions.")
    return query


def text_search(query: Query) -> str:
    """The query's words and phrases as a MongoDB $search string.

    MongoDB ORs a $search's words but ANDs its phrases, so every word is sent
    as a phrase too (all must match) and also bare, so that the index lookup
    is stemmed ("deployments" -> "deploy"); nx-27017 ANDs words by itself and
    does not stem. Exclusions are not sent: nx-27017 reads "-word" as a word
    that must match; they are applied to the matches instead (`excluded`).
    """
    terms = [*query.words, *(f'"{term}"' for term in query.words + query.phrases)]
    return " ".join(terms)


def excluded(query: Query, text: str) -> bool:
    """Whether text holds an excluded word (a whole word, any case: not its
    stems, as MongoDB's own -word would) or phrase."""
    folded = text.casefold()
    words = set(WORD.findall(folded))
    return (any(word.casefold() in words for word in query.excluded_words)
            or any(phrase.casefold() in folded for phrase in query.excluded_phrases))


def matches(query: Query, text: str) -> bool:
    """Whether text still holds every word (a word beginning with it, as a
    stemmed match may) and phrase of the query, in any case: the check of a
    message whose text changed after the index matched it."""
    folded = " ".join(text.casefold().split())
    words = WORD.findall(folded)
    return (all(any(found.startswith(word.casefold()) for found in words) for word in query.words)
            and all(" ".join(phrase.casefold().split()) in folded for phrase in query.phrases))


def highlight(query: Query, text: str) -> str:
    """text as HTML: `<mark>` around what the query matched, everything else
    escaped. A word marks each word that begins with it (what a stemmed match
    looks like: "deploy" marks "deployment"); a phrase marks itself."""
    patterns = [re.escape(phrase) for phrase in query.phrases]
    patterns += [rf"\b{re.escape(word)}\w*" for word in query.words]
    patterns.sort(key=len, reverse=True)
    out: list[str] = []
    position = 0
    for match in re.finditer("|".join(patterns), text, re.IGNORECASE):
        if match.end() == match.start():
            continue
        out.append(html.escape(text[position:match.start()]))
        out.append(f"<mark>{html.escape(match.group())}</mark>")
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Filters:
    uri: str | None = None
    username: str | None = None
    after: datetime.datetime | None = None
    before: datetime.datetime | None = None


@dataclasses.dataclass
class Page:
    results: list[dict[str, Any]]
    next: str | None
    partial: bool


class SearchEngine(Protocol):
    async def search(self, user_id: str, query: Query, filters: Filters, limit: int,
                     cursor: str | None, relevance: bool) -> Page:
        """Up to `limit` messages (current state) of the rooms `user_id` is in
        now, newest first (best first when `relevance`), after `cursor` (a
        previous page's `next`). NotMember when filters.uri is not one of them;
        InvalidField naming `cursor` for a cursor it did not give."""


def sort_key(doc: dict, relevance: bool) -> tuple:
    key = (doc["created"].timestamp(), str(doc["_id"]))
    return (doc["score"], *key) if relevance else key


def encode_cursor(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, relevance: bool) -> tuple:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        size = 3 if relevance else 2
        if (isinstance(key, list) and len(key) == size
                and all(isinstance(part, (int, float)) for part in key[:-1])
                and isinstance(key[-1], str)):
            return tuple(key)
    except (binascii.Error, ValueError):
        pass
    raise InvalidField("cursor", "Not a cursor from this search (use the previous page's "
                                 "`next`, with the same sort).")


class MongoTextSearch:
    """SearchEngine on MongoDB's text index, its work bounded by `max_scan`.

    One query per page: $text, the caller's rooms (read from `rooms` as the
    search runs, so a room left is out of the next search), messages only,
    not deleted. It stops at `max_scan` matching documents (then `partial`):
    those are ordered and paged here, so that one query never makes the
    server read a common word's whole posting list. Messages are updated in
    place by their edits and deletes, so the index holds their current text
    once they are saved; a match with a change in flight (its event stored,
    its state not yet saved) is folded by `current` and checked again, so that
    text an edit or a delete replaced is never found.
    """

    def __init__(self, store, current: Callable[[list[dict]], Awaitable[list[dict]]],
                 max_scan: int):
        self.store = store
        self.current = current
        self.max_scan = max_scan

    async def search(self, user_id: str, query: Query, filters: Filters, limit: int,
                     cursor: str | None, relevance: bool) -> Page:
        after_key = decode_cursor(cursor, relevance) if cursor else None
        rooms = await self.store.member_rooms(user_id)
        names = {room["uri"]: room.get("name") for room in rooms}
        if filters.uri is not None and filters.uri not in names:
            raise NotMember(filters.uri)
        scope = [filters.uri] if filters.uri is not None else list(names)
        author = None
        if filters.username is not None:
            author = await self.store.user_by_name(filters.username)
            if author is None:
                return Page([], None, False)
        if not scope:
            return Page([], None, False)
        docs = await self.store.text_candidates(
            text_search(query), scope, self.max_scan + 1,
            user_id=str(author["_id"]) if author else None, score=relevance)
        partial = len(docs) > self.max_scan
        matched = docs[:self.max_scan]
        if partial and not relevance:
            matched += await self.recent_matches(query, rooms, scope, author, matched)
        docs = [doc for doc, indexed in zip(await self.current(matched), matched, strict=True)
                if not doc.get("deleted") and not excluded(query, doc["message"])
                and (doc["message"] == indexed["message"] or matches(query, doc["message"]))
                and (filters.after is None or doc["created"] > filters.after)
                and (filters.before is None or doc["created"] < filters.before)]
        docs.sort(key=lambda doc: sort_key(doc, relevance), reverse=True)
        if after_key is not None:
            docs = [doc for doc in docs if sort_key(doc, relevance) < after_key]
        page = docs[:limit]
        following = encode_cursor(sort_key(page[-1], relevance)) if len(docs) > limit else None
        return Page([self.result(doc, names, query) for doc in page], following, partial)

    async def recent_matches(self, query: Query, rooms: list[dict], scope: list[str],
                             author: dict | None, matched: list[dict]) -> list[dict]:
        """The matches among the recent events of the rooms in scope active last,
        that are not in `matched` already."""
        scoped = set(scope)
        active = sorted((room for room in rooms if room["uri"] in scoped and room.get("seq")),
                        key=lambda room: room.get("updated") or 0, reverse=True)[:RECENT_ROOMS]
        recent = await self.store.recent_messages(
            {room["uri"]: room["seq"] for room in active}, RECENT_EVENTS)
        seen = {doc["_id"] for doc in matched}
        return [doc for doc in recent if doc["_id"] not in seen and matches(query, doc["message"])
                and (author is None or doc.get("user_id") == str(author["_id"]))]

    @staticmethod
    def result(doc: dict, names: dict[str, str | None], query: Query) -> dict[str, Any]:
        return {"id": str(doc["_id"]), "uri": doc["room"], "name": names.get(doc["room"]),
                "seq": doc["seq"], "user": doc["user"], "created": iso(doc["created"]),
                "message": doc["message"], "highlight": highlight(query, doc["message"])}
