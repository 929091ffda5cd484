"""chat/render.py: Markdown to safe HTML once per message, mentions, the bound."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import chat.render
from chat.render import Renderer, escaped, render_now
from tests.xss_payloads import markdown_payloads, unsafe

PEOPLE = {"bob": "Bob", "ann.b": "ann.b"}


@pytest.mark.parametrize("payload", markdown_payloads())
def test_no_xss_payload_survives(payload):
    html = render_now(payload, PEOPLE).html
    assert unsafe(html) == [], (payload, html)


def test_the_checker_sees_what_it_must():
    assert unsafe("&lt;img src=x onerror=alert(1)&gt;") == []  # text, not a tag
    assert unsafe('<img src=x onerror="alert(1)">')
    assert unsafe('<a href="javascript:alert(1)">x</a>')
    assert unsafe('<a href=" data:text/html,x">x</a>')
    assert unsafe('<p style="x">y</p>')
    assert unsafe("<svg>")
    assert unsafe('<a href="https://example.com" target="_blank" rel="x">ok</a>') == []


def test_markdown_renders_as_commonmark_with_strikethrough_and_bare_links():
    html = render_now("**b** _i_ ~~s~~ `c` http://example.com\n\n> q\n\n- a\n- b\n\n"
                      "```py\nprint('<b>')\n```", PEOPLE).html
    for part in ("<strong>b</strong>", "<em>i</em>", "<s>s</s>", "<code>c</code>",
                 '<a href="http://example.com" target="_blank" rel="noopener noreferrer nofollow">',
                 "<blockquote>", "<li>a</li>", '<pre><code class="language-py">',
                 "print('&lt;b&gt;')"):
        assert part in html, (part, html)


def test_raw_html_and_images_stay_text():
    html = render_now("<b>x</b> ![i](https://example.com/i.png)", PEOPLE).html
    assert "&lt;b&gt;" in html and "<img" not in html


def test_relative_links_are_dropped():
    html = render_now("[out](/auth/logout/)", PEOPLE).html
    assert "href" not in html


def test_mentions_of_members_and_the_room_are_found_and_rendered():
    found = render_now("hi @BOB. and @ann.b, @room, @nobody, a@bob.com, `@bob` "
                       "[@bob](https://x.example)", PEOPLE)
    assert found.mentions == ["Bob", "ann.b"]
    assert found.mentions_room
    assert '<span class="mention" data-user="Bob">@BOB</span>.' in found.html
    assert '<span class="mention" data-user="ann.b">@ann.b</span>,' in found.html
    assert '<span class="mention" data-user="@room">@room</span>' in found.html
    assert "<code>@bob</code>" in found.html
    assert "@nobody" in found.html
    assert render_now("`@room` and code only: ```@bob```", PEOPLE).mentions_room is False


def pathological(size: int) -> dict[str, str]:
    """The slowest inputs found for markdown-it-py, of `size` characters."""
    shapes = {
        "open brackets": "[",
        "unclosed links": "[a](",
        "emphasis runs": "*a **",
        "mixed openers": "*[`",
        "angle brackets": "<",
        "bare URLs": "http://a.b ",
        "quotes": "> ",
        "list items": "- ",
        "entities": "&amp;",
        "backticks": "`a``",
    }
    return {name: (unit * (size // len(unit) + 1))[:size] for name, unit in shapes.items()}


def test_pathological_inputs_render_or_fall_back_to_escaped_text():
    """Each worst input renders (how long it takes is for the bench,
    bench/render.py, not an assert); rendered or not, no text is lost."""
    async def scenario():
        renderer = Renderer(timeout=5.0)
        try:
            for name, text in pathological(2000).items():
                rendered = await renderer.render(text + " @bob", PEOPLE)
                # Nested past markdown-it's limit: escaped rather than cut short.
                assert rendered.fallback == (name in ("quotes", "list items")), name
                assert rendered.mentions == ["Bob"] or name == "backticks", name
                assert "@bob" in rendered.html
        finally:
            renderer.close()

    asyncio.run(scenario())


def slow_render(monkeypatch, busy: float = 0.0, release: threading.Event | None = None):
    """render_now made slow: `busy` seconds of CPU, or waiting (no CPU) for `release`."""
    real = chat.render.render_now

    def slow(text, people):
        until = time.thread_time() + busy
        while time.thread_time() < until:
            pass
        if release is not None:
            release.wait(10)
        return real(text, people)

    monkeypatch.setattr(chat.render, "render_now", slow)


def test_a_render_that_costs_too_much_cpu_falls_back(monkeypatch):
    slow_render(monkeypatch, busy=0.08)

    async def scenario():
        renderer = Renderer(timeout=0.05)
        try:
            return await renderer.render("**a** @bob <script>", PEOPLE)
        finally:
            renderer.close()

    rendered = asyncio.run(scenario())
    assert rendered.fallback and rendered.mentions == ["Bob"]
    assert rendered.html == ('<p>**a** <span class="mention" data-user="Bob">@bob</span> '
                             '&lt;script&gt;</p>')


def test_a_render_slow_on_the_clock_only_is_kept(monkeypatch):
    """A loaded machine: the render waits (no CPU of its own) longer than its
    budget, but finishes within WALL_FACTOR of it, so it is not thrown away."""
    release = threading.Event()
    slow_render(monkeypatch, release=release)

    async def scenario():
        renderer = Renderer(timeout=0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, release.set)
        try:
            return await renderer.render("**a** @bob", PEOPLE)
        finally:
            renderer.close()

    rendered = asyncio.run(scenario())
    assert not rendered.fallback and "<strong>a</strong>" in rendered.html


def test_a_render_stuck_on_the_clock_or_behind_others_falls_back(monkeypatch):
    """Not done within WALL_FACTOR times its budget, or no thread free within
    queue_seconds: the escaped text, with its mentions."""
    release = threading.Event()
    slow_render(monkeypatch, release=release)

    async def scenario():
        renderer = Renderer(timeout=0.01, threads=1)
        renderer.queue_seconds = 0.05
        try:
            return await asyncio.gather(renderer.render("**a** @bob", PEOPLE),
                                        renderer.render("*b* @room", PEOPLE))
        finally:
            release.set()
            renderer.close()

    stuck, queued = asyncio.run(scenario())
    assert stuck.fallback and queued.fallback
    assert stuck.mentions == ["Bob"] and queued.mentions_room


def test_a_slow_render_does_not_hold_the_event_loop():
    """The render runs in a thread: the loop keeps turning while it does."""
    async def scenario():
        renderer = Renderer(timeout=5.0)
        turns = 0

        async def count():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.ensure_future(count())
        started = time.perf_counter()
        for text in pathological(2000).values():
            await renderer.render(text, PEOPLE)
        counter.cancel()
        renderer.close()
        return turns, time.perf_counter() - started

    turns, _ = asyncio.run(scenario())
    assert turns > 10


def test_the_escaped_fallback_finds_mentions_as_the_render_does():
    text = "@room <b>hi</b> @bob, @bob again\n@nobody @ann.b."
    fallback, rendered = escaped(text, PEOPLE), render_now(text, PEOPLE)
    assert (fallback.mentions, fallback.mentions_room) == (rendered.mentions, rendered.mentions_room) == \
        (["Bob", "ann.b"], True)
    assert fallback.html == (
        '<p><span class="mention" data-user="@room">@room</span> &lt;b&gt;hi&lt;/b&gt; '
        '<span class="mention" data-user="Bob">@bob</span>, '
        '<span class="mention" data-user="Bob">@bob</span> again<br>\n@nobody '
        '<span class="mention" data-user="ann.b">@ann.b</span>.</p>')
