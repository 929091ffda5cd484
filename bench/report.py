"""Turn a results JSON into the Markdown table, the PNG plot and docs/benchmarks.md.

    python -m bench.report bench/results/<date>.json   (bench/run.py calls write())
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def fmt2(value) -> str:
    """A ratio: two decimals, so 0.006 does not print as 0.0."""
    return "-" if value is None else f"{value:.2f}"


def ratio(ours, ref) -> float | None:
    if ours is None or ref is None or not ref:
        return None
    return round(ours / ref, 3)


def step_at(steps: list[dict], offered: float, key: str = "offered_deliveries_per_s") -> dict | None:
    """The step whose offered rate is nearest to `offered` (and not above it by more than 20%)."""
    near = [s for s in steps if s[key] <= offered * 1.2]
    return min(near, key=lambda s: abs(s[key] - offered)) if near else None


def latency_cell(step: dict | None) -> str:
    if step is None:
        return "-"
    return f"{fmt(step['latency_p50_ms'])} / {fmt(step['latency_p99_ms'])}"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def rows(results: dict) -> list[tuple]:
    """(scenario, measure, ours, reference, ratio, target, met)."""
    out: list[tuple] = []
    sc = results["scenarios"]

    idle = sc.get("idle")
    if idle:
        ref_levels = {r["sockets"]: r for r in idle["ref"]["levels"]}
        top = max(r["sockets"] for r in idle["ours"]["levels"])
        for row in idle["ours"]["levels"]:
            ref = ref_levels.get(row["sockets"], {})
            n = f"{row['sockets']:,}"
            kib, ref_kib = row["rss_per_socket_kib"], ref.get("rss_per_socket_kib")
            is_top = row["sockets"] == top
            out.append(("1 idle", f"{n} sockets ({row['open']:,} open): server RSS per socket, KiB",
                        fmt(kib), fmt(ref_kib), fmt2(ratio(kib, ref_kib)),
                        "<= 24 KiB" if is_top else "", verdict(kib <= 24) if is_top else ""))
            out.append(("1 idle", f"{n} sockets: connects/s; connect p99 ms",
                        f"{fmt(row['connects_per_s'])}; {fmt(row['connect_p99_ms'])}",
                        f"{fmt(ref.get('connects_per_s'))}; {fmt(ref.get('connect_p99_ms'))}",
                        fmt2(ratio(row["connects_per_s"], ref.get("connects_per_s"))), "", ""))

    for key, label in (("broadcast", "2 broadcast 1x1,000"), ("two", "5 two processes 1x1,000")):
        ramp = sc.get(key)
        if not ramp:
            continue
        ours, ref = ramp["ours"], ramp["ref"]
        r = ratio(ours["max_deliveries_per_s"], ref["max_deliveries_per_s"])
        main = key == "broadcast"
        out.append((label, "deliveries/s, most sustained", fmt(ours["max_deliveries_per_s"]),
                    fmt(ref["max_deliveries_per_s"]), fmt2(r),
                    ">= 1.5x" if main else "", verdict(r >= 1.5) if main and r else ""))
        cpu_r = ratio(ref["server_cpu_us_per_delivery"], ours["server_cpu_us_per_delivery"])
        out.append((label, "server CPU per delivery, us (ratio: deliveries per CPU-second)",
                    fmt(ours["server_cpu_us_per_delivery"]), fmt(ref["server_cpu_us_per_delivery"]),
                    fmt2(cpu_r), "", ""))
        at = step_at(ours["steps"], 30000)
        ref_at = step_at(ref["steps"], 30000)
        p99 = at["latency_p99_ms"] if at else None
        offered = fmt(at["offered_deliveries_per_s"]) if at else "30,000"
        out.append((label, f"latency p50 / p99 ms at {offered} deliveries/s offered",
                    latency_cell(at), latency_cell(ref_at),
                    fmt2(ratio(p99, ref_at["latency_p99_ms"] if ref_at else None)),
                    "p99 < 50 ms" if key == "broadcast" else "",
                    verdict(p99 is not None and p99 < 50) if key == "broadcast" else ""))

    rooms = sc.get("rooms")
    if rooms:
        ours, ref = rooms["ours"], rooms["ref"]
        label = f"3 many rooms {ours['rooms']:,}x10"
        out.append((label, "deliveries/s, most sustained",
                    fmt(ours["max_deliveries_per_s"]), fmt(ref["max_deliveries_per_s"]),
                    fmt2(ratio(ours["max_deliveries_per_s"], ref["max_deliveries_per_s"])), "", ""))
        at = step_at(ours["steps"], 500, "offered_posts_per_s")
        ref_at = step_at(ref["steps"], 500, "offered_posts_per_s")
        p99 = at["latency_p99_ms"] if at else None
        out.append((label, "post-to-delivery p50 / p99 ms at 500 posts/s offered",
                    latency_cell(at), latency_cell(ref_at),
                    fmt2(ratio(p99, ref_at["latency_p99_ms"] if ref_at else None)), "p99 < 20 ms",
                    verdict(p99 is not None and p99 < 20)))
        if at:
            out.append((label, "at 500 posts/s offered: posts stored/s; stored-to-delivery p50 / p99 ms",
                        f"{fmt(at['posts_stored_per_s'])}; {fmt(at['stored_to_delivery_p50_ms'])} / "
                        f"{fmt(at['stored_to_delivery_p99_ms'])}", "-", "", "", ""))

    post = sc.get("post")
    if post:
        for via in ("http", "ws"):
            ours, base = post.get(f"ours_{via}"), post.get(f"mongo_ops_{via}")
            if not ours or not base:
                continue
            name = "HTTP" if via == "http" else "WebSocket"
            out.append(("4 post path", f"{name}: posts stored/s; delivered/s (4 posters)",
                        f"{fmt(ours['posts_per_s'])}; {fmt(ours['delivered_per_s'])}",
                        f"{fmt(base['posts_per_s'])} (MongoDB ops alone)", "", "", ""))
            r = ratio(ours["server_cpu_ms_per_post"], base["cpu_ms_per_post"])
            out.append(("4 post path", f"{name}: server CPU ms per post vs the MongoDB ops alone",
                        fmt(ours["server_cpu_ms_per_post"], 3), fmt(base["cpu_ms_per_post"], 3),
                        fmt2(r), "<= 1.3x", verdict(r is not None and r <= 1.3)))
            sys_ours = ours["server_cpu_ms_per_post"] + ours["mongo_server_cpu_ms_per_post"]
            sys_base = base["cpu_ms_per_post"] + base["mongo_server_cpu_ms_per_post"]
            out.append(("4 post path", f"{name}: the same with the MongoDB server's CPU in both",
                        fmt(sys_ours, 3), fmt(sys_base, 3), fmt2(ratio(sys_ours, sys_base)), "", ""))
            ref = post.get(f"ref_{via}")
            if ref:
                beyond = ours["server_cpu_ms_per_post"] - base["cpu_ms_per_post"]
                out.append(("4 post path", f"{name}: server CPU ms per post beyond the MongoDB ops; "
                            "the reference's whole post (Tornado's own share)",
                            fmt(beyond, 3), fmt(ref["server_cpu_ms_per_post"], 3),
                            fmt2(ratio(beyond, ref["server_cpu_ms_per_post"])), "", ""))
    return out


def table(results: dict) -> str:
    head = ("| Scenario | Measure | Ours | Reference | Ratio | Target | Met |\n"
            "| --- | --- | ---: | ---: | ---: | --- | --- |\n")
    return head + "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in rows(results))


def plot(results: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("broadcast", "2: broadcast, 1 room x 1,000 sockets"),
                                  ("two", "5: two processes on RabbitMQ, 1 x 1,000"),
                                  ("rooms", "3: many rooms x 10 sockets"))
              if k in results["scenarios"]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for side, label, color in (("ours", "chat server", "tab:blue"),
                                   ("ref", "bare Tornado", "tab:orange")):
            steps = results["scenarios"][key].get(side, {}).get("steps", [])
            steps = [s for s in steps if s["latency_p99_ms"] is not None]
            x = [s["offered_deliveries_per_s"] for s in steps]
            ax.plot(x, [s["latency_p99_ms"] for s in steps], "o-", color=color, label=f"{label} p99")
            ax.plot(x, [s["latency_p50_ms"] for s in steps], "x--", color=color, label=f"{label} p50")
        ax.set_yscale("log")
        ax.set_xlabel("offered deliveries per second")
        ax.set_ylabel("latency, ms")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency against offered rate ({results['mode']} mode, {results['date']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


NOTES = """\
How to read it:

- Every scenario runs against our server and, in the same run, against `bench/reference.py`, a
  bare Tornado server that broadcasts each message with a plain `write_message` loop. In the
  ramps (2, 5) both servers are up at once and the load generator alternates their steps, so a
  change in the machine's load hits both alike. The machines are shared and noisy: compare
  ratios within one run, not absolute numbers across runs.
- Deliveries/s is message frames received by all sockets per second, from the first post of a
  step to its last delivery; "most sustained" is the best step. A step is saturated when it
  delivers under 90% of the offered rate. Server CPU per delivery (from /proc) is the steadier
  measure on a busy machine: its ratio is how many more deliveries one CPU-second buys.
- Latency is from the send timestamp in the message text to its arrival, on every 10th socket
  (every socket in many rooms). Ours includes storing the message in MongoDB, and for sockets
  on another process (5) the hop through RabbitMQ; the reference has neither.
- Post path: 4 closed-loop posters, each in its own room with a socket counting deliveries; the
  base is the same MongoDB operations (`Store.token_user` for HTTP, `Store.post_message`) run
  alone by one process on asyncio's own loop, like the server. Ours and the base alternate for
  a few rounds and the cheapest round of each counts. The reference takes the same posts (a
  frame, or a POST it answers with JSON), which gives Tornado's own share of a post.
  The MongoDB server here is `nx-27017`, a Python wire server on SQLite sharing the same
  two cores, so posts/s are bounded by it: its own CPU per post is in the JSON
  (`mongo_server_cpu_ms_per_post`).
- Many rooms: "stored-to-delivery" is from the message's `created` time (taken just before
  MongoDB's insert) to its arrival, so it leaves out the wait for the database before that.
- RSS per socket is (server RSS with N sockets - RSS before any) / N, read from /proc.
"""


PROFILE = """\
## What the profile showed (py-spy on the server process)

- Broadcast, 1 room x 1,000 sockets, before any change: 44% of the server's samples were under
  `Hub.deliver` -> `ChatSocket.send_frame` -> `IOStream.write`. Only about half of that was the
  `send()` itself; the rest was Tornado's per-write bookkeeping: a `Future` per call, resolved
  by a loop callback, per socket per message. `send_frame` now hands the frame straight to the
  socket when the stream has nothing queued (anything else still goes through `IOStream.write`,
  so the 4008 limit, ordering and close handling are unchanged): server CPU per delivery went
  from 47 to 22 us at 40 posts/s, and the `send()` system call is now most of what is left. The
  reference spends 60-90 us per delivery in its `write_message` loop, since it frames each
  message again for every socket and pays for the same `Future`.
- Post path (WebSocket), first profile: `Store.post_message` (pymongo: `find_one`,
  `insert_one`, `update_one`) about 38% of the server's samples, the event loop's `select` about
  11%, pika's publish and consume about 10%, Tornado's frame reading about 5%; `chat/hub.py` and
  `handlers/socket.py` under 5%. HTTP adds Tornado's request parsing and response (about 25%) and
  the access log line (about 5%). The server on uvloop measured the same within noise.
- What that changed: a known member posting in a room the process has open no longer reads the
  room before the insert, and the publish no longer waits for the room's update (commit
  "Post path: publish before the room update ..."). Posts stored per second rose from 293 to 377
  over the socket and from 202 to 267 over HTTP; the server's CPU per post fell, but so did the
  MongoDB-alone base (one operation fewer), so the ratio did not improve.
- Post path (WebSocket), profile after it (py-spy, 4 closed-loop posters, 349 posts/s; shares of
  the event-loop thread): the two MongoDB operations about 36%, pika about 28% (delivering the
  message back: socket reads and frame decoding about 14%; publishing: its deferred socket
  writes about 10%, `basic_publish` about 4%), the hub's fan-out and `send_frame` about 7%.
- Group commit (`chat.store.GroupCommit`): message inserts and room updates that arrive while one
  is in flight go out together as one unordered `insert_many` / `bulk_write`; alone, a write
  goes at once. Measured on nx-27017 beforehand, per document: pymongo's CPU 0.57 ms for
  `insert_one`, 0.18 ms in batches of 4, 0.09 ms in batches of 16; the wire server's 0.63, 0.32
  and 0.29 ms. Many rooms (quick, 200 x 10) at 500 posts/s offered: 282 -> 492 posts/s stored,
  p99 1,719 -> 43.5 ms; WebSocket post path 1.72 -> 1.04 ms server CPU per post.
- Room updates by `_id`: the update after each post filtered rooms by `uri`, and nx-27017 scans
  the collection for an update by a secondary key (1.2 ms of its CPU per update with 1,000
  rooms, 1.5 ms with 5,000, against 0.66 ms by `_id` at any count); it was most of the
  database's CPU per post. The process now remembers the `_id` of rooms it has read. Many rooms
  (full, 1,000 x 10) at 500 posts/s offered: 406 -> 498 posts/s stored, p99 1,841 -> 21 ms, and
  1,000 posts/s is now carried (it saturated at about 535 before).
- Local delivery: a post is written to this process's sockets of the room as soon as it is
  stored (when it is next in order), without waiting for RabbitMQ's round trip; the broker's
  copy is dropped as a repeat. It saves a hop of latency, not CPU.
- Post path (WebSocket), profile after these (441 posts/s): what is left is mostly system calls
  -- pika's `send()` of each publish about 12% of the loop thread, pymongo's writes about 11%,
  the frame to the socket about 5% -- then Tornado's frame reading about 9%. The reference
  now takes the same posts: Tornado's own share of a post (frame or request in, JSON, the
  broadcast) is in the table, next to our CPU beyond the MongoDB operations.
- HTTP: Tornado's request cycle, our authentication (the JWT and the token's lookup, which the
  base has too), the access log line and the JSON reply are spread evenly; no one part stands
  out.
- Many rooms at 500 posts/s runs the two cores near full: per second (sampled each second over
  20 s holds) the server takes 0.74 of a core, nx-27017 0.48, RabbitMQ 0.15 and the load
  generator about 0.18, so the p99 swings between about 20 and 150 ms from run to run with the
  machine's other load.
- Connecting 10,000 sockets: CPython's full (generation 2) garbage collections while the heap
  grows took up to 0.7 s each (13 of them, 15 to 708 ms), which is most of the connect p99.
- Connecting a socket: `authorise` is a third (the token lookup 20%, the membership check 10%),
  the WebSocket handshake 17%.
"""


def write(results: dict, stem: Path, docs: Path | None = None) -> list[Path]:
    """Write <stem>.md and <stem>.png, and docs/benchmarks.md when docs is given."""
    md = table(results)
    stem.with_suffix(".md").write_text(md)
    paths = [stem.with_suffix(".md")]
    png = plot(results, stem.with_suffix(".png"))
    if png:
        paths.append(png)
    if docs is not None:
        page = docs / "benchmarks.md"
        image = os.path.relpath(png, docs) if png else None
        cfg = results["params"]
        text = (f"# Benchmarks\n\nLatest run: {results['date']}, {results['mode']} mode, "
                f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
                f"Tornado {results['machine']['tornado']}; took {results.get('seconds', '-')} s.\n\n"
                f"Made by:\n\n```sh\n{results['command']}\n```\n\n"
                f"(`make bench` is the quick mode, under 3 minutes; `make bench MODE=full` ramps further "
                f"and holds each step longer. Results: `{os.path.relpath(stem, docs.parent)}.json`.)\n\n"
                f"{md}\n")
        if image:
            text += f"![latency against offered rate]({image})\n\n"
        text += NOTES
        text += (f"\nIdle levels: {', '.join(f'{n:,}' for n in cfg['idle_levels'])} sockets (cut to the "
                 f"file-descriptor limit of the machine when it is lower); ramp steps of "
                 f"{cfg['step_seconds']} s.\n")
        if results.get("fd_limit", 1 << 20) < max(cfg["idle_levels"]) + 100:
            text += (f"\nThis machine's hard limit on open files is {results['fd_limit']:,} per process and "
                     "cannot be raised here (no CAP_SYS_RESOURCE), so the largest idle level is "
                     "cut to fit under it, leaving the server room for its own connections; the "
                     "load generator spreads its sockets over helper processes.\n")
        if results.get("notes"):
            text += "\n" + results["notes"] + "\n"
        text += "\n" + PROFILE
        page.write_text(text)
        paths.append(page)
    return paths


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    docs = Path(__file__).resolve().parent.parent / "docs" if "--docs" in sys.argv else None
    print("\n".join(str(p) for p in write(data, source.with_suffix(""), docs)))
