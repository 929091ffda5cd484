"""Unit tests of chat/signals.py: several processes' Signals joined by a fake
control exchange, with short expiries. The real thing (two server processes on
RabbitMQ and nx-27017) is in tests/test_signals_live.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from chat.signals import Signals
from chat.store import Unavailable
from tests.helpers import wait_for

ALICE = {"id": "a1", "username": "alice"}
BOB = {"id": "b2", "username": "bob"}
CAROL = {"id": "c3", "username": "carol"}
DAVE = {"id": "d4", "username": "dave"}


class Bus:
    """The control exchange: every notice reaches every process (its sender too),
    on a later turn of the loop, `delay` seconds later when set; `cut` drops what
    a process publishes."""

    def __init__(self):
        self.processes: list[Signals] = []
        self.published: list[dict] = []
        self.cut: set[Signals] = set()
        self.delay = 0.0

    def publish_for(self, signals_ref: list):
        def publish(body: bytes) -> None:
            notice = json.loads(body)
            self.published.append(notice)
            if signals_ref[0] in self.cut:
                return
            for process in self.processes:
                asyncio.get_running_loop().call_later(self.delay, process.on_notice,
                                                      json.loads(body))
        return publish


class ReadStore:
    """read_positions / save_read_positions over a dict; `down` makes them fail."""

    def __init__(self):
        self.saved: dict[str, dict[str, int]] = {}
        self.writes: list[dict] = []
        self.down = False

    async def read_positions(self, uri: str) -> dict[str, int]:
        if self.down:
            raise Unavailable("down")
        return dict(self.saved.get(uri, {}))

    async def save_read_positions(self, positions: dict) -> None:
        await asyncio.sleep(0.01)
        if self.down:
            raise Unavailable("down")
        self.writes.append(positions)
        for uri, users in positions.items():
            room = self.saved.setdefault(uri, {})
            for user_id, seq in users.items():
                room[user_id] = max(seq, room.get(user_id, 0))


class Process:
    """One server process's Signals and the frames its room's sockets got."""

    def __init__(self, bus: Bus, store: ReadStore, **settings):
        ref: list = [None]
        self.signals = Signals(store, bus.publish_for(ref), **{
            "presence_grace": 0.3, "presence_ttl": 0.6, "typing_ttl": 1.0, "read_flush": 0.2,
            **settings})
        ref[0] = self.signals
        bus.processes.append(self.signals)
        self.frames: list[dict] = []
        self.signals.send = lambda uri, payload, spare_slow=True: self.frames.append(
            json.loads(payload))

    def of(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]

    def start(self) -> Process:
        self.signals.start()
        return self


def online(process: Process, uri: str = "room") -> list[str]:
    return process.signals.online(uri)


def shown(process: Process, uri: str = "room") -> list[str]:
    """Who the process's sockets in uri were last told is online (a diff goes
    out some time after the change)."""
    return sorted(process.signals.shown.get(uri, {}).values())


@pytest.fixture
def world():
    bus, store = Bus(), ReadStore()
    return bus, store, lambda **settings: Process(bus, store, **settings)


def run(bus: Bus, scenario) -> None:
    """Run scenario, then stop every process it started."""
    async def run_and_stop():
        try:
            await scenario()
        finally:
            for signals in bus.processes:
                await signals.stop()
    asyncio.run(asyncio.wait_for(run_and_stop(), 20))


def alice_and_bob(process, b_settings: dict | None = None, **a_settings) -> tuple[Process, Process]:
    """Two started processes: alice has a socket to the room on a, bob on b."""
    a, b = process(**a_settings).start(), process(**(b_settings or {})).start()
    a.signals.joined("room", ALICE)
    b.signals.joined("room", BOB)
    return a, b


def test_presence_is_the_same_on_every_process_and_changes_come_as_diffs(world):
    bus, _store, process = world

    async def scenario():
        a, b = alice_and_bob(process)
        await wait_for(lambda: shown(a) == shown(b) == ["alice", "bob"], 5, "both online")
        assert {u["username"] for f in a.of("presence") for u in f["joined"]} == {"alice", "bob"}
        [welcome] = [json.loads(p) for p in b.signals.welcome("room")]
        assert welcome == {"type": "presence", "uri": "room", "users": [
            {"id": "b2", "username": "bob"}, {"id": "a1", "username": "alice"}]}
        b.signals.left("room", BOB, room_empty=False)
        await wait_for(lambda: shown(a) == ["alice"], 5, "bob gone after the grace")
        assert a.of("presence")[-1] == {"type": "presence", "uri": "room", "joined": [],
                                        "left": [{"id": "b2", "username": "bob"}]}

    run(bus, scenario)


def test_a_reconnect_within_the_grace_announces_nothing(world):
    bus, _store, process = world

    async def scenario():
        a, b = alice_and_bob(process, presence_grace=0.5)
        a.signals.joined("room", CAROL)
        await wait_for(lambda: shown(b) == ["alice", "bob", "carol"], 5, "all online")
        frames, notices = len(b.frames), len(bus.published)
        a.signals.left("room", ALICE, room_empty=False)
        a.signals.left("room", CAROL, room_empty=True)  # her grace ends after alice's would
        a.signals.joined("room", ALICE)  # back within the grace
        # Once carol is announced gone, alice's leave would have been too, had her
        # reconnect not cancelled it: proven by the order of events, not by sleeps.
        await wait_for(lambda: shown(b) == ["alice", "bob"], 5, "carol gone after the grace")
        assert b.frames[frames:] == [{"type": "presence", "uri": "room", "joined": [], "left": [CAROL]}]
        told = [n for n in bus.published[notices:] if n["type"] == "signal.presence"]
        assert told and all(["a1", "alice"] in n["users"] for n in told)

    run(bus, scenario)


def test_a_process_that_goes_silent_has_its_members_expire(world):
    bus, _store, process = world
    now = [0.0]  # b's clock, moved by hand: the expiry does not depend on the machine's speed

    def snapshots_of(process: Process) -> int:
        return len([n for n in bus.published if n["type"] == "signal.snapshot"
                    and n["process"] == process.signals.process])

    async def scenario():
        a, b = process().start(), process(clock=lambda: now[0]).start()
        a.signals.joined("room", ALICE)
        b.signals.joined("room", BOB)
        await wait_for(lambda: online(b) == ["alice", "bob"], 5, "both online")
        a.signals.ticker.cancel()  # killed: no more snapshots, no goodbye
        bus.cut.add(a.signals)
        await asyncio.sleep(0)  # what a published before the cut is delivered now
        # Her process last spoke at b's time 0: she holds until ttl (0.6 s) after it,
        now[0] = 0.59
        ticks = snapshots_of(b)
        await wait_for(lambda: snapshots_of(b) >= ticks + 2, 5, "two of b's ticks")
        assert online(b) == ["alice", "bob"]
        # and is gone at b's next tick (every ttl / 3) once that has passed.
        now[0] = 0.6
        await wait_for(lambda: shown(b) == ["bob"], 5, "alice expired")
        assert b.of("presence")[-1]["left"] == [{"id": "a1", "username": "alice"}]

    run(bus, scenario)


def test_a_new_process_hears_everyone_at_once_and_a_goodbye_keeps_members_for_the_grace(world):
    bus, _store, process = world

    async def scenario():
        a = process(presence_ttl=30).start()  # snapshots far apart: only hello can tell c
        a.signals.joined("room", ALICE)
        await asyncio.sleep(0.05)
        c = process(presence_ttl=30).start()
        c.signals.joined("room", BOB)
        await wait_for(lambda: online(c) == ["alice", "bob"], 2, "c hears of alice")
        await a.signals.stop()  # says bye: alice may be reconnecting to c
        await asyncio.sleep(0.05)
        assert online(c) == ["alice", "bob"]

    run(bus, scenario)


def test_members_who_connect_together_are_one_presence_notice(world):
    bus, _store, process = world

    def notices_of(process: Process) -> list[dict]:
        return [n for n in bus.published if n["type"] == "signal.presence"
                and n["process"] == process.signals.process]

    async def scenario():
        a, b = process().start(), process().start()
        b.signals.joined("room", BOB)
        await wait_for(lambda: notices_of(b), 2, "bob announced")
        members = [{"id": f"m{i}", "username": f"member{i}"} for i in range(50)]
        for member in members:  # a connect storm: all in one turn of the loop
            a.signals.joined("room", member)
        everyone = sorted(["bob", *(member["username"] for member in members)])
        await wait_for(lambda: online(b) == everyone, 5, "b sees them all")
        # one notice with the 50 of them, not 50 notices of 1, 2, ... 50 entries
        [notice] = notices_of(a)
        assert len(notice["users"]) == 50
        a.signals.left("room", members[0], room_empty=False)
        a.signals.joined("room", members[0])  # back before anyone was told: nothing to tell
        a.signals.forget_member("room", members[1]["id"])
        a.signals.forget_member("room", members[2]["id"])
        await wait_for(lambda: len(notices_of(a)) == 2, 5, "their leaving told")
        assert len(notices_of(a)[-1]["users"]) == 48
        await wait_for(lambda: len(online(b)) == 49, 5, "two gone on b")
        await asyncio.sleep(0.3)  # past the pace: nothing else was waiting to be told
        assert len(notices_of(a)) == 2

    run(bus, scenario)


def test_members_who_join_together_are_one_diff_to_the_sockets_here(world):
    bus, _store, process = world

    async def scenario():
        a = process().start()
        a.signals.joined("room", ALICE)
        await wait_for(lambda: a.of("presence"), 2, "alice shown")
        before = len(a.frames)
        members = [{"id": f"m{i}", "username": f"member{i}"} for i in range(50)]
        for member in members:  # a connect storm: all in one turn of the loop
            a.signals.joined("room", member)
        a.signals.forget_member("room", ALICE["id"])  # and one leaving: the next diff
        # one frame to every socket with the 51 changes, not 51 frames
        await wait_for(lambda: len(a.frames) > before, 2, "the storm's diff")
        assert a.frames[before:] == [{"type": "presence", "uri": "room", "joined": members, "left": [ALICE]}]

    run(bus, scenario)


def test_a_socket_welcomed_while_a_diff_waits_gets_every_change_once(world):
    bus, _store, process = world

    async def scenario():
        a, b = process().start(), process().start()
        a.signals.joined("room", ALICE)
        await wait_for(lambda: a.of("presence"), 2, "alice shown")
        a.signals.joined("room", CAROL)  # waits for the room's next diff
        b.signals.joined("room", BOB)  # reaches a on a later turn
        a.signals.joined("room", DAVE)  # dave's socket opens and gets its welcome
        [welcome] = [json.loads(p) for p in a.signals.welcome("room")]
        after_welcome = len(a.frames)
        a.signals.forget_member("room", CAROL["id"])  # gone before the diff went out
        # What dave's page shows: the welcome, then every diff after it. Nobody
        # joins twice or leaves unseen, and it ends as the room is.
        page = {user["id"] for user in welcome["users"]}
        wrong: list[dict] = []

        def dave_sees_everyone() -> bool:
            for frame in a.frames[after_welcome:]:
                wrong.extend(u for u in frame["joined"] if u["id"] in page)
                wrong.extend(u for u in frame["left"] if u["id"] not in page)
                page.update(u["id"] for u in frame["joined"])
                page.difference_update(u["id"] for u in frame["left"])
            del a.frames[after_welcome:]
            return page == {"a1", "b2", "d4"}

        await wait_for(dave_sees_everyone, 2, "alice, bob and dave on dave's page")
        assert wrong == [] and online(a) == ["alice", "bob", "dave"]

    run(bus, scenario)


def test_a_leave_and_rejoin_before_the_diff_goes_out_is_no_diff(world):
    bus, _store, process = world

    async def scenario():
        a = process().start()
        a.signals.joined("room", ALICE)
        a.signals.joined("room", BOB)
        await wait_for(lambda: a.of("presence"), 2, "alice and bob shown")
        before = len(a.frames)
        a.signals.forget_member("room", BOB["id"])  # removed with no grace,
        a.signals.joined("room", BOB)  # and added back
        a.signals.joined("room", CAROL)
        # carol's join is the only change the sockets see
        await wait_for(lambda: len(a.frames) > before, 2, "carol's diff")
        assert a.frames[before:] == [{"type": "presence", "uri": "room", "joined": [CAROL], "left": []}]

    run(bus, scenario)


def test_a_process_new_to_a_room_hears_who_was_already_typing(world):
    bus, _store, process = world

    async def scenario():
        bus.delay = 0.05  # the exchange answers late, as a loaded broker does
        a = process(typing_ttl=60).start()  # far past the test: only a stop ends it
        b = process(typing_ttl=60).start()
        a.signals.joined("room", ALICE)
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: a.of("typing"), 2, "alice typing on a")
        await asyncio.sleep(0.1)  # her typing notice has passed b, which had no room yet
        b.signals.joined("room", BOB)  # b's first socket in the room, after she started
        await wait_for(lambda: b.of("typing"), 2, "b hears she types")
        assert b.of("typing") == [{"type": "typing", "uri": "room", "users": ["alice"]}]
        assert json.loads(b.signals.welcome("room")[-1]) == {"type": "typing", "uri": "room",
                                                             "users": ["alice"]}
        [told] = [n for n in bus.published if n["type"] == "signal.typers"]
        assert told["users"][0][:2] == ["a1", "alice"] and told["users"][0][2] < 60
        # her entry on b ends when hers on a does (give or take the transit), not a
        # full ttl after b heard of it
        assert b.signals.typing["room"]["a1"].expires < a.signals.typing["room"]["a1"].expires + 1
        a.signals.typing_frame("room", ALICE, stop=True)
        await wait_for(lambda: b.of("typing")[-1]["users"] == [], 2, "stop on b")

    run(bus, scenario)


def test_a_typer_told_with_little_left_expires_on_time(world):
    bus, _store, process = world

    async def scenario():
        b = process(typing_ttl=5).start()
        b.signals.joined("room", BOB)
        b.signals.typing_frame("room", BOB, stop=False)  # b's typing timer: in 5 s
        # carol's entry, told with 0.1 s left after bob's: it must not wait for his
        b.signals.on_notice({"type": "signal.typers", "uri": "room", "process": "p",
                             "users": [["c3", "carol", 0.1]]})
        assert set(b.signals.typing["room"]) == {"b2", "c3"}
        await wait_for(lambda: set(b.signals.typing["room"]) == {"b2"}, 2,
                       "carol expired, bob still typing")

    run(bus, scenario)


def test_typing_is_throttled_and_ends_with_a_stop(world):
    bus, _store, process = world

    async def scenario():
        # Entries far outliving the test: only the stop can end them.
        a, b = alice_and_bob(process, {"typing_ttl": 60}, typing_ttl=60)
        for _ in range(5):
            a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: b.of("typing"), 2, "typing on b")
        assert b.of("typing") == [{"type": "typing", "uri": "room", "users": ["alice"]}]
        assert len([n for n in bus.published if n["type"] == "signal.typing"]) == 1
        a.signals.typing_frame("room", ALICE, stop=True)
        await wait_for(lambda: len(b.of("typing")) == 2, 2, "stop on b")
        assert b.of("typing")[-1]["users"] == []
        await asyncio.sleep(1.0)  # past the throttle
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: len(b.of("typing")) == 3, 2, "typing again")
        assert b.of("typing")[-1]["users"] == ["alice"]

    run(bus, scenario)


def test_a_typing_stop_does_not_reset_the_throttle(world):
    """Alternating start and stop frames cost what starts alone do: one start
    notice per TYPING_THROTTLE (and the one stop that ends it)."""
    bus, _store, process = world
    now = [1000.0]

    async def scenario():
        a, _b = alice_and_bob(process, {"typing_ttl": 60}, typing_ttl=60, clock=lambda: now[0])
        for _ in range(1000):
            a.signals.typing_frame("room", ALICE, stop=False)
            a.signals.typing_frame("room", ALICE, stop=True)
        told = [n for n in bus.published if n["type"] == "signal.typing"]
        assert [bool(n.get("stop")) for n in told] == [False, True]
        # A start after the stop is taken once the throttle allows (unless
        # another stop comes first): one notice more.
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: len([n for n in bus.published if n["type"] == "signal.typing"]) == 3,
                       3, "the start after the stop")
        await asyncio.sleep(0.1)
        told = [n for n in bus.published if n["type"] == "signal.typing"]
        assert [bool(n.get("stop")) for n in told] == [False, True, False]

    run(bus, scenario)


def test_a_burst_of_reads_is_one_frame_a_second_to_other_sockets_and_no_rise_tells_nobody(world):
    bus, _store, process = world

    async def scenario():
        a, b = alice_and_bob(process)
        c = process().start()  # no socket in the room: an HTTP read lands here
        await asyncio.sleep(0.05)
        for seq in range(1, 202):
            a.signals.read("room", ALICE, seq)
        await wait_for(lambda: b.of("read") and b.of("read")[-1]["seq"] == 201, 3, "201 on b")
        assert [f["seq"] for f in b.of("read")] == [1, 201]
        assert [f["seq"] for f in a.of("read")] == [1, 201]
        def notices() -> int:
            return len([n for n in bus.published if n["type"] == "signal.read"])
        assert notices() == 2
        c.signals.read("room", BOB, 5)
        await wait_for(lambda: a.of("read")[-1]["seq"] == 5, 2, "bob's read on a")
        for _ in range(10):
            c.signals.read("room", BOB, 5)  # no rise: no notice
        await asyncio.sleep(1.2)
        assert notices() == 3 and len(b.of("read")) == 3

    run(bus, scenario)


def test_typing_expires_without_a_stop(world):
    bus, _store, process = world

    async def scenario():
        a, b = alice_and_bob(process)  # typing_ttl 1 s
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: b.of("typing"), 2, "typing on b")
        # no stop: it ends by itself typing_ttl after the last frame, on both
        await wait_for(lambda: len(b.of("typing")) == 2 and len(a.of("typing")) == 2, 5,
                       "typing expired")
        assert a.of("typing")[-1]["users"] == b.of("typing")[-1]["users"] == []

    run(bus, scenario)


def test_typing_changes_that_come_together_go_out_together(world):
    bus, _store, process = world

    async def scenario():
        a, b = alice_and_bob(process)
        typers = [{"id": f"t{i}", "username": f"typer{i}"} for i in range(20)]
        for typer in typers:
            a.signals.joined("room", typer)
            a.signals.typing_frame("room", typer, stop=False)
        everyone = [typer["username"] for typer in typers]
        await wait_for(lambda: b.of("typing") and b.of("typing")[-1]["users"] == everyone, 2,
                       "all typing on b")
        # the first at once, the other 19 together: not a frame to every socket per typer
        assert len(b.of("typing")) == 2 and len(a.of("typing")) == 2

    run(bus, scenario)


def test_closing_the_last_socket_or_leaving_the_room_ends_typing_and_presence(world):
    bus, _store, process = world

    async def scenario():
        # Entries far outliving the test: only the stops under test can end them.
        a, b = alice_and_bob(process, {"typing_ttl": 60}, presence_grace=10, typing_ttl=60)
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: b.of("typing"), 2, "typing on b")
        a.signals.joined("room", ALICE)  # a second tab
        a.signals.left("room", ALICE, room_empty=False)
        await asyncio.sleep(0.05)
        assert len(b.of("typing")) == 1  # one tab still open: still typing
        a.signals.left("room", ALICE, room_empty=True)
        await wait_for(lambda: b.of("typing")[-1]["users"] == [], 2, "typing ended")
        assert online(b) == ["alice", "bob"]  # within the grace
        a.signals.joined("room", ALICE)
        await asyncio.sleep(0.05)
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: b.of("typing")[-1]["users"] == ["alice"], 2, "typing again")
        for side in (a, b):  # left the room: every process hears it, no grace
            side.signals.forget_member("room", ALICE["id"])
        await wait_for(lambda: online(b) == ["bob"] and online(a) == ["bob"], 2, "alice gone")
        await wait_for(lambda: a.of("typing")[-1]["users"] == b.of("typing")[-1]["users"] == [],
                       2, "no longer typing")

    run(bus, scenario)


def test_a_post_through_a_process_without_the_room_ends_typing_everywhere(world):
    bus, _store, process = world

    async def scenario():
        a = process(typing_ttl=60).start()  # far past the test: only a stop ends it
        b = process(typing_ttl=60).start()  # no socket in the room
        a.signals.joined("room", ALICE)
        a.signals.typing_frame("room", ALICE, stop=False)
        await wait_for(lambda: a.of("typing"), 2, "alice typing")
        b.signals.stop_typing("room", ALICE)  # her post over HTTP, through b (hub.post)
        await wait_for(lambda: a.of("typing")[-1]["users"] == [], 5, "typing ended on a")

    run(bus, scenario)


def test_read_positions_are_coalesced_only_rise_and_reach_every_process(world):
    bus, store, process = world

    async def scenario():
        a, b = process().start(), process().start()
        a.signals.joined("room", ALICE)
        b.signals.joined("room", ALICE)
        await asyncio.sleep(0.05)
        for seq in range(1, 51):
            a.signals.read("room", ALICE, seq)
        a.signals.read("room", ALICE, 20)  # lower: ignored
        await wait_for(lambda: store.saved.get("room", {}).get("a1") == 50, 2, "saved")
        assert len(store.writes) <= 2  # the first at once, the rest together
        # Paced: the first at once, the highest of the rest a second later.
        await wait_for(lambda: b.of("read") and b.of("read")[-1]["seq"] == 50, 3, "read on b")
        assert len([n for n in bus.published if n["type"] == "signal.read"]) == 2
        assert [f["seq"] for f in b.of("read")] == [1, 50]
        seqs = [f["seq"] for f in b.of("read")]
        assert seqs == sorted(seqs) and all(f["user"] == "alice" for f in b.of("read"))
        def reads_told() -> int:
            return len([n for n in bus.published if n["type"] == "signal.read"])
        notices, frames = reads_told(), len(b.of("read"))
        a.signals.posted("room", BOB, 60)  # his post: stored, but no notice and no frame
        await wait_for(lambda: store.saved["room"].get("b2") == 60, 2, "bob's post as his read")
        assert reads_told() == notices and len(b.of("read")) == frames
        b.signals.read("room", ALICE, 30)  # another device, behind: nobody hears of it
        await asyncio.sleep(0.1)
        assert [f["seq"] for f in a.of("read")][-1] == 50 and b.of("read")[-1]["seq"] == 50

    run(bus, scenario)


def test_read_positions_known_here_never_go_down_while_one_waits_to_be_saved(world):
    bus, store, process = world

    async def scenario():
        a, b = process().start(), process().start()
        a.signals.joined("room", ALICE)
        b.signals.joined("room", ALICE)
        store.down = True  # a's read waits to be saved
        a.signals.read("room", ALICE, 10)
        b.signals.read("room", ALICE, 20)  # her other device, on b
        await wait_for(lambda: a.of("read") and a.of("read")[-1]["seq"] == 20, 2, "20 on a")
        assert a.signals.read_positions("room") == {"a1": 20}
        assert a.signals.read_positions("room", {"a1": 15, "b2": 3}) == {"a1": 20, "b2": 3}
        store.down = False

    run(bus, scenario)


def test_read_positions_wait_for_mongodb_and_are_saved_on_stop(world):
    bus, store, process = world

    async def scenario():
        a = process().start()
        a.signals.joined("room", ALICE)
        store.down = True
        a.signals.read("room", ALICE, 7)
        await asyncio.sleep(0.3)
        assert store.saved == {} and a.signals.read_positions("room") == {"a1": 7}
        store.down = False
        a.signals.read("room", BOB, 3)
        await a.signals.stop()
        assert store.saved == {"room": {"a1": 7, "b2": 3}}

    run(bus, scenario)
