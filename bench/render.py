"""How long a message's Markdown takes to render (chat/render.py), for the
worst inputs found and for ordinary messages, at max_message_chars.

    python -m bench.render [--chars 2000] [--rounds 20]

Prints, per input, the median and the slowest of `rounds` renders in this
thread (markdown-it-py, mentions and nh3 together), and whether it renders or
falls back to escaped text. Rendering runs in a thread pool in the server and
falls back past render_timeout_seconds (0.05 by default): these are the
figures that setting is judged against. Quick: a few seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from chat.render import escaped, render_now
from tests.test_render import pathological

PEOPLE = {f"user{i}": f"User{i}" for i in range(200)}


def ordinary(size: int) -> dict[str, str]:
    chat = ("Hey @user1, the **deploy** is done: see https://example.com/builds/42 and "
            "`make test` passed.\n")
    code = "```python\ndef main():\n    return {'ok': True}\n```\n"
    return {"chat text": (chat * (size // len(chat) + 1))[:size],
            "code block": ("```\n" + "x = 1  # a line of code\n" * (size // 24))[:size - 4] + "\n```",
            "mixed": ((chat + code) * (size // len(chat + code) + 1))[:size]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    inputs = {**ordinary(args.chars), **pathological(args.chars)}
    print(f"{'input':<16} {'median ms':>10} {'max ms':>8}  result")
    for name, text in inputs.items():
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            rendered = render_now(text, PEOPLE)
            times.append((time.perf_counter() - started) * 1000)
        result = "escaped (nested too deep)" if rendered.fallback else "rendered"
        print(f"{name:<16} {statistics.median(times):>10.2f} {max(times):>8.2f}  {result}")
    started = time.perf_counter()
    escaped(inputs["chat text"], PEOPLE)
    print(f"{'(the fallback)':<16} {(time.perf_counter() - started) * 1000:>10.2f}")


if __name__ == "__main__":
    main()
