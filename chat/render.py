"""Formatted text: a message's Markdown as safe HTML, rendered once when it is
posted or edited, with its mentions found on the way.

CommonMark (markdown-it-py) with strikethrough and bare URLs made links; no raw
HTML and no images. The output goes through nh3 with an explicit allow-list,
so even a parser bug cannot let a tag, attribute or URL scheme through that is
not listed here. `@username` of a room member and `@room` become
`<span class="mention" ...>`; inside code they stay text.

Bounded: rendering runs in a small thread pool, off the event loop. A render
that takes more than `timeout` seconds of its thread's CPU time (a
pathological input) is shown as escaped text instead, and so is one not done
WALL_FACTOR times as long on the clock, or that waits for a thread longer
than QUEUE_SECONDS (a pool busy with slow inputs). CPU time, not the clock,
decides for renders that finish: on a loaded machine an ordinary message that
costs 3 ms of CPU can take 50 ms on the clock, and its fallback would be
stored for good. The worst inputs measured (runs of `[`, bare URLs, nested
emphasis; bench/render.py) take about 25 ms at the longest message. Blocks
nested deeper than markdown-it's maxNesting (20), which it would cut short,
are shown as escaped text too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import html
import re
import time
from collections.abc import Iterator, Mapping

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

ROOM = "room"
# `@name` not glued to a word before it (an email address is no mention). A
# username may hold . + - _ @, so trailing punctuation is tried off in turn.
MENTION = re.compile(r"(?<![\w@.+-])@([A-Za-z0-9@.+_-]+)")
TRAILING = ".+-_@"
# How long a render may wait for a free thread before the text is shown escaped.
QUEUE_SECONDS = 0.5
# A render is waited for at most this many times its CPU budget on the clock.
WALL_FACTOR = 10

TAGS = {"p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "a", "ul", "ol", "li",
        "blockquote", "span", "h1", "h2", "h3", "h4", "h5", "h6"}
ATTRIBUTES = {"a": {"href", "title"}, "span": {"class", "data-user"}, "code": {"class"},
              "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}  # and no relative URL: none points into this site
LINK_REL = "noopener noreferrer nofollow"


@dataclasses.dataclass(frozen=True)
class Rendered:
    html: str
    mentions: list[str]  # members' usernames, as spelled on their accounts, in order
    mentions_room: bool
    fallback: bool = False  # shown as escaped text: it took too long to render


def resolve(word: str, people: Mapping[str, str]) -> str | None:
    """The member's username (or ROOM) that `@word` names: case ignored,
    trailing punctuation tried off ("@bob." names bob)."""
    while word:
        key = word.casefold()
        if key == ROOM:
            return ROOM
        if key in people:
            return people[key]
        if word[-1] not in TRAILING:
            return None
        word = word[:-1]
    return None


def mention_html(written: str, username: str) -> str:
    if username == ROOM:
        return f'<span class="mention" data-user="@room">@{html.escape(written)}</span>'
    return (f'<span class="mention" data-user="{html.escape(username)}">'
            f'@{html.escape(written)}</span>')


class Mentions:
    """What one render found; a core rule (`mention_rule`) makes mentions in
    the text tokens (not in code or links) spans."""

    def __init__(self, people: Mapping[str, str]):
        self.people = people
        self.names: list[str] = []
        self.room = False

    def found(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, span) of each mention of someone known (or @room) in
        text, noted in names and room as it is found."""
        for match in MENTION.finditer(text):
            name = resolve(match.group(1), self.people)
            if name is None:
                continue
            written = match.group(1) if name == ROOM else match.group(1)[:len(name)]
            if name == ROOM:
                self.room = True
            elif name not in self.names:
                self.names.append(name)
            yield match.start(), match.start() + 1 + len(written), mention_html(written, name)

    def split(self, tokens: list[Token]) -> list[Token]:
        result: list[Token] = []
        in_link = 0
        for token in tokens:
            if token.type == "link_open":
                in_link += 1
            elif token.type == "link_close":
                in_link -= 1
            if token.type != "text" or in_link or "@" not in token.content:
                result.append(token)
                continue
            text, start = token.content, 0
            for begin, end, span_html in self.found(text):
                if begin > start:
                    result.append(self.text(text[start:begin]))
                span = Token("html_inline", "", 0)
                span.content = span_html
                result.append(span)
                start = end
            if start < len(text):
                result.append(self.text(text[start:]))
        return result

    @staticmethod
    def text(content: str) -> Token:
        token = Token("text", "", 0)
        token.content = content
        return token


class TooDeep(ValueError):
    """Blocks nested so deep that markdown-it would drop what is inside them."""


def depth_rule(state: StateCore) -> None:
    # Past maxNesting markdown-it skips the rest of a block silently: a message
    # must never lose text, so one nested that deep is shown as escaped text.
    limit = state.md.options.maxNesting - 1
    if any(token.level >= limit for token in state.tokens):
        raise TooDeep()


def mention_rule(state: StateCore) -> None:
    mentions = state.env["mentions"]
    for block in state.tokens:
        if block.type == "inline" and block.children:
            block.children = mentions.split(block.children)


def markdown() -> MarkdownIt:
    # breaks: a new line in a chat message is a line break, as people type them.
    parser = MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False,
                                       "breaks": True})
    parser.enable(["strikethrough", "linkify"]).disable("image")
    parser.core.ruler.after("block", "depth", depth_rule)
    parser.core.ruler.push("mentions", mention_rule)
    return parser


# One parser for every thread: a render keeps its state in its own StateCore and env.
PARSER = markdown()


def sanitize(fragment: str) -> str:
    return nh3.clean(fragment, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel=LINK_REL, set_tag_attribute_values={"a": {"target": "_blank"}},
                     url_relative="deny", strip_comments=True)


def render_now(text: str, people: Mapping[str, str]) -> Rendered:
    """Render in this thread (the thread pool's work)."""
    mentions = Mentions(people)
    try:
        fragment = PARSER.render(text, {"mentions": mentions})
    except (TooDeep, RecursionError):
        return escaped(text, people)
    return Rendered(sanitize(fragment), mentions.names, mentions.room)


def escaped(text: str, people: Mapping[str, str]) -> Rendered:
    """The text as it was written, escaped, its mentions still spans: what a
    message that took too long shows."""
    mentions = Mentions(people)
    parts, start = [], 0
    for begin, end, span_html in mentions.found(text):
        parts += [html.escape(text[start:begin]), span_html]
        start = end
    parts.append(html.escape(text[start:]))
    body = "".join(parts).replace("\n", "<br>\n")
    return Rendered(f"<p>{body}</p>", mentions.names, mentions.room, fallback=True)


class Renderer:
    """Renders in its own threads: each may cost `timeout` seconds of CPU."""

    def __init__(self, timeout: float = 0.05, threads: int = 2):
        self.timeout = timeout
        self.queue_seconds = QUEUE_SECONDS
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="render")

    async def render(self, text: str, people: Mapping[str, str]) -> Rendered:
        """`people`: {casefolded username: username} of the room's members."""
        loop = asyncio.get_running_loop()
        begun = loop.create_future()

        def work() -> tuple[Rendered, float]:
            loop.call_soon_threadsafe(lambda: begun.done() or begun.set_result(None))
            started = time.thread_time()
            rendered = render_now(text, people)
            return rendered, time.thread_time() - started

        job = loop.run_in_executor(self.pool, work)
        try:
            # Time spent queued is not the render's.
            await asyncio.wait_for(asyncio.shield(begun), self.queue_seconds)
            rendered, cpu = await asyncio.wait_for(job, self.timeout * WALL_FACTOR)
        except TimeoutError:
            job.cancel()  # still queued: it never starts, and the queue does not grow
            return escaped(text, people)
        return escaped(text, people) if cpu > self.timeout else rendered

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
