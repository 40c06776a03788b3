"""The quota daemon: never more than the convention's 10 flows, slots freed when holders stop, fail closed,
and a restart that never puts more than 10 on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from halfbridge.quotad import Quota, QuotaClient, QuotaDaemon, QuotadConfig, QuotaError
from tests.support.fakes import Clock
from tests.support.pki import TestCA
from tests.support.waiting import wait_for

QUOTAD = Path(sys.executable).parent / "halfbridge-quotad"
# The fake clock's first reading.
START = 1000.0


def flow(n: int, mode: str = "live") -> dict:
    return {"op": "acquire", "agent": f"agent-{n}", "camera": "ver-gare-01", "mode": mode}


def test_the_eleventh_flow_is_refused_with_the_sentence_and_a_release_admits_one():
    quota = Quota(limit=10, ttl=15)
    granted = [quota.handle(flow(n, "live" if n % 2 else "playback")) for n in range(10)]
    assert all(answer["ok"] for answer in granted)
    refused = quota.handle(flow(10))
    assert refused["ok"] is False and refused["error"] == "quota_full"
    assert "all 10 of 10 simultaneous flows" in refused["message"]
    assert quota.handle({"op": "release", "lease": granted[3]["lease"]})["ok"]
    assert quota.handle(flow(11))["ok"]
    assert quota.handle(flow(12))["error"] == "quota_full"


def test_another_partners_limit_comes_from_the_configuration_and_its_sentences_say_it(tmp_path):
    path = tmp_path / "quotad.json"
    path.write_text(json.dumps({"socket": str(tmp_path / "quotad.sock"), "limit": 6, "ttl": 15}))
    config = QuotadConfig.load(path)
    clock = Clock(START)
    daemon = QuotaDaemon(config, clock=clock)
    daemon.restore()  # no state file: new flows wait one ttl
    starting = daemon.answer(flow(0))
    assert starting["error"] == "starting" and "never to exceed the 6 simultaneous flows" in starting["message"]
    clock.now += 16
    assert [daemon.answer(flow(n))["ok"] for n in range(6)] == [True] * 6
    refused = daemon.answer(flow(6))
    assert (refused["error"], refused["in_use"], refused["limit"]) == ("quota_full", 6, 6)
    assert refused["message"].startswith("all 6 of 6 simultaneous flows allowed by the convention are in use")


def test_a_lease_not_renewed_expires_and_frees_its_slot():
    clock = Clock(START)
    quota = Quota(limit=1, ttl=15, clock=clock)
    kept = quota.handle(flow(1))["lease"]
    clock.now += 10
    assert quota.handle({"op": "renew", "lease": kept})["ok"]
    clock.now += 10  # 20 s after the grant, 10 after the renewal: still held
    assert quota.handle(flow(2))["error"] == "quota_full"
    clock.now += 6  # 16 s without renewal
    assert quota.handle(flow(2))["ok"]
    assert quota.handle({"op": "renew", "lease": kept})["error"] == "unknown_lease"


def test_the_list_says_who_which_camera_which_mode_and_since_when():
    quota = Quota(limit=10, ttl=15, wall=lambda: 1795080600.0)
    quota.handle({"op": "acquire", "agent": "Jeanne Martin", "camera": "sqy-mairie-03", "mode": "playback"})
    answer = quota.handle({"op": "list"})
    assert answer["in_use"] == 1 and answer["limit"] == 10
    (lease,) = answer["leases"]
    assert (lease["agent"], lease["camera"], lease["mode"], lease["since"]) == (
        "Jeanne Martin",
        "sqy-mairie-03",
        "playback",
        "2026-11-19T09:30:00Z",
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"op": "acquire", "agent": "a", "camera": "c"}, "acquire needs mode"),
        ({"op": "acquire", "agent": "a", "camera": "c", "mode": "export"}, "live, playback or download"),
        ({"op": "renew"}, "renew needs the lease id"),
        ({"op": "grab"}, "unknown op"),
    ],
)
def test_a_bad_request_is_a_sentence_and_takes_no_slot(request_, message):
    quota = Quota(limit=1, ttl=15)
    answer = quota.handle(request_)
    assert answer["error"] == "bad_request" and message in answer["message"]
    assert quota.handle(flow(1))["ok"]


def test_a_package_download_takes_a_slot_like_any_flow_and_a_restart_keeps_it():
    clock = Clock(START)
    quota = Quota(limit=10, ttl=15, clock=clock)
    held(quota, 9)
    download = quota.handle(flow(9, "download"))
    assert download["ok"] and download["in_use"] == 10
    assert quota.handle(flow(10, "download"))["error"] == "quota_full"
    assert quota.handle(flow(10, "live"))["error"] == "quota_full"
    restarted = Quota(limit=10, ttl=15, clock=clock)
    restarted.restore(quota.snapshot())  # a saved download lease is one the daemon wrote: it is taken back
    listed = restarted.handle({"op": "list"})
    assert "starting" not in listed and listed["in_use"] == 10
    assert [x["mode"] for x in listed["leases"]].count("download") == 1
    assert restarted.handle({"op": "release", "lease": download["lease"]})["ok"]
    assert restarted.handle(flow(11, "playback"))["ok"]


# -- a start: the leases of the earlier run taken back, or none granted for a ttl -----------


def held(quota: Quota, n: int = 10) -> list[str]:
    leases = [quota.handle(flow(k, "live" if k % 2 else "playback")) for k in range(n)]
    assert all(answer["ok"] for answer in leases)
    return [answer["lease"] for answer in leases]


def test_after_a_start_that_knows_nothing_no_flow_is_granted_for_a_ttl_and_old_renewals_are_refused():
    clock = Clock(START)
    quota = Quota(limit=10, ttl=15, clock=clock)
    quota.hold_back("no state_file is configured")
    refused = quota.handle(flow(1))
    assert (refused["ok"], refused["error"], refused["retry_after"]) == (False, "starting", 15)
    assert "cannot know which flows of its earlier run are still on the wire" in refused["message"]
    assert "never to exceed the 10 simultaneous flows" in refused["message"]
    assert refused["message"].endswith("try again in 15 s")
    renewal = quota.handle({"op": "renew", "lease": "0123456789abcdef"})
    assert renewal["error"] == "unknown_lease" and "restarted without it" in renewal["message"]
    clock.now += 14.2
    assert quota.handle(flow(1))["retry_after"] == 1
    assert quota.handle({"op": "list"})["starting"] == 1
    clock.now += 0.8  # one ttl after the start: every lease of the earlier run has expired
    assert "starting" not in quota.handle({"op": "list"})
    held(quota)
    assert quota.handle(flow(10))["error"] == "quota_full"


def test_saved_leases_count_until_renewed_or_a_ttl_has_gone_by_and_a_renewal_re_adopts_one():
    clock = Clock(START)
    before = Quota(limit=10, ttl=15, clock=clock, wall=lambda: 1795080600.0)
    leases = held(before)
    restarted = Quota(limit=10, ttl=15, clock=clock)
    restarted.restore(before.snapshot())
    listed = restarted.handle({"op": "list"})
    assert listed["in_use"] == 10 and "starting" not in listed
    assert {x["lease"] for x in listed["leases"]} == set(leases)
    assert listed["leases"][0]["since"] == "2026-11-19T09:30:00Z"
    assert restarted.handle(flow(10))["error"] == "quota_full"  # the saved leases count: no grace needed
    kept, ended = leases[:6], leases[6:]  # four flows ended while the daemon was down: their release was lost
    for _ in range(2):
        clock.now += 5
        assert all(restarted.handle({"op": "renew", "lease": x})["ok"] for x in kept)
        assert restarted.handle(flow(10))["error"] == "quota_full"
    clock.now += 5  # 15 s after the start the four not renewed have expired; the six renewed are held
    assert all(restarted.handle({"op": "renew", "lease": x})["ok"] for x in kept)
    assert [restarted.handle(flow(k))["ok"] for k in range(10, 16)] == [True] * 4 + [False] * 2
    assert {x["lease"] for x in restarted.handle({"op": "list"})["leases"]} >= set(kept)
    assert restarted.handle({"op": "renew", "lease": ended[0]})["error"] == "unknown_lease"
    assert restarted.handle({"op": "release", "lease": kept[0]})["ok"]
    assert restarted.handle(flow(20))["ok"]


def test_saved_leases_count_for_the_earlier_runs_ttl_when_it_was_longer():
    clock = Clock(START)
    before = Quota(limit=1, ttl=60, clock=clock)
    held(before, 1)
    restarted = Quota(limit=1, ttl=15, clock=clock)
    restarted.restore(before.snapshot())
    clock.now += 59
    assert restarted.handle(flow(1))["error"] == "quota_full"
    clock.now += 1
    assert restarted.handle(flow(1))["ok"]


def ten_saved() -> dict:
    quota = Quota(limit=10, ttl=15)
    held(quota)
    return json.loads(quota.snapshot())


def hostile(change) -> bytes:
    state = ten_saved()
    change(state)
    return json.dumps(state).encode()


def over_the_limit(state: dict) -> None:
    state["leases"].append({**state["leases"][0], "lease": "f" * 16})


HOSTILE = {
    "empty": b"",
    "torn": json.dumps(ten_saved()).encode()[:-40],
    "not JSON": b"\x00\xff leases \x89PNG",
    "not an object": b"[1, 2, 3]",
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
    "too large": b" " * 10_000_000,
    "eleven leases": hostile(over_the_limit),
    "a lease twice": hostile(lambda s: s["leases"].__setitem__(1, s["leases"][0])),
    "an id that is not one": hostile(lambda s: s["leases"][0].update(lease="../../etc")),
    "a mode that is not one": hostile(lambda s: s["leases"][0].update(mode="export")),
    "a start out of range": hostile(lambda s: s["leases"][0].update(since=1e308)),
    "a start that is not a number": hostile(lambda s: s["leases"][0].update(since=True)),
    "an agent that is not text": hostile(lambda s: s["leases"][0].update(agent=["a"])),
    "a key more": hostile(lambda s: s["leases"][0].update(expires=0)),
    "leases not a list": hostile(lambda s: s.update(leases={"a": 1})),
    "a ttl out of range": hostile(lambda s: s.update(ttl=10**6)),
    "another version": hostile(lambda s: s.update(version=2)),
    "a version that is true": hostile(lambda s: s.update(version=True)),
}


@pytest.mark.parametrize("saved", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_damaged_or_hostile_state_is_not_trusted_nothing_is_taken_back_and_no_flow_is_granted_for_a_ttl(saved):
    clock = Clock(START)
    quota = Quota(limit=10, ttl=15, clock=clock)
    quota.restore(saved, "the state file")
    assert quota.handle({"op": "list"})["in_use"] == 0
    assert quota.handle(flow(1))["error"] == "starting"
    clock.now += 15
    held(quota)
    assert quota.handle(flow(10))["error"] == "quota_full"


def test_no_saved_state_at_all_is_a_start_that_knows_nothing():
    quota = Quota(limit=10, ttl=15, clock=Clock(START))
    quota.restore(None, "the state file")
    assert quota.handle(flow(1))["error"] == "starting"


def mutations(seed: int, count: int):
    """States a disk or a hand could leave: bytes flipped, cut or added, values swapped for others of any kind."""
    rng = random.Random(seed)
    good = json.dumps(ten_saved()).encode()
    values = [None, True, 0, -1, 1e308, float("nan"), "", "x" * 5000, "live", [], {}, [[[]]], 15, "f" * 16]
    for _ in range(count):
        data = bytearray(good)
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            del data[rng.randrange(len(data)) :]
        elif kind == 2:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 50)))
        else:
            state = json.loads(good)
            target = state if rng.random() < 0.3 else rng.choice(state["leases"])
            target[rng.choice([*target, "extra"])] = rng.choice(values)
            data = bytearray(json.dumps(state).encode())
        yield bytes(data)


def test_whatever_the_state_file_holds_the_start_never_fails_and_never_admits_more_than_the_limit():
    for saved in mutations(seed=4, count=2000):
        clock = Clock(START)
        quota = Quota(limit=10, ttl=15, clock=clock)
        quota.restore(saved, "the state file")
        listed = quota.handle({"op": "list"})  # shows every lease taken back (`since` as a date)
        assert listed["in_use"] <= 10
        if "starting" in listed:  # not trusted: nothing taken back, nothing granted
            assert listed["in_use"] == 0 and quota.handle(flow(99))["error"] == "starting"
            continue
        answers = [quota.handle(flow(n)) for n in range(11)]
        assert sum(answer["ok"] for answer in answers) == 10 - listed["in_use"]
        assert answers[-1]["error"] == "quota_full"


# -- the daemon on its socket ------------------------------------------------


def held_nothing(path: Path, ttl: float = 15) -> Path:
    """The state an earlier run that held no lease leaves: the daemon grants at once."""
    path.write_bytes(Quota(limit=10, ttl=ttl).snapshot())
    return path


class Served:
    """A `QuotaDaemon` serving its socket from a thread of its own (with `clock`, time stands still).

    Leaving the block stops it as SIGTERM does; entering another on the same configuration restarts it.
    """

    def __init__(self, config: QuotadConfig, clock: Clock | None = None) -> None:
        self.daemon = QuotaDaemon(config, clock=clock or time.monotonic)
        self.loop = asyncio.new_event_loop()
        self.listening = threading.Event()
        self.task = self.loop.create_task(self.daemon.serve(self.listening))  # serve() only calls ready.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(self.task)
            connections = asyncio.all_tasks(self.loop)  # those still open when it stopped, as asyncio.run ends them
            for task in connections:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*connections, return_exceptions=True))
        finally:
            self.listening.set()  # also when serve() failed: __enter__ raises what it raised
            self.loop.close()

    def __enter__(self) -> QuotaDaemon:
        self.thread.start()
        assert self.listening.wait(60), "the quota daemon did not listen"
        if self.task.done():
            self.task.result()
        return self.daemon

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the quota daemon did not stop"


def together(path: Path, requests: list[dict]) -> list[dict]:
    """Each request on a connection of its own, all sent before any answer is read: they are at the daemon at once.

    The connections block (no timeout) while the daemon's listen backlog is full, where a
    connection with a timeout would fail: a loaded machine makes this slower, never wrong.
    """
    with contextlib.ExitStack() as stack:
        connections = []
        for _ in requests:
            connection = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            connection.connect(str(path))
            connections.append(connection)
        for connection, request in zip(connections, requests, strict=True):
            connection.sendall(json.dumps(request).encode() + b"\n")
        answers = []
        for connection in connections:
            connection.settimeout(60)  # against a daemon that hangs; not a measure
            answers.append(json.loads(connection.makefile("rb").readline()))
    return answers


def ask(path: Path, request: dict) -> dict:
    return QuotaClient(path, timeout=60).ask(request)


@pytest.fixture
def daemon(tmp_path):
    """The real daemon on a Unix socket, in a thread of its own; its clock stands still, so no lease expires."""
    state = held_nothing(tmp_path / "leases.json")
    config = QuotadConfig(socket=tmp_path / "quotad.sock", limit=10, ttl=15, state_file=state)
    with Served(config, Clock(START)):
        yield config


def test_a_hundred_concurrent_requests_admit_exactly_ten(daemon):
    answers = together(daemon.socket, [flow(n) for n in range(100)])
    granted = {answer["lease"] for answer in answers if answer["ok"]}
    assert len(granted) == 10
    assert {answer["error"] for answer in answers if not answer["ok"]} == {"quota_full"}
    listed = ask(daemon.socket, {"op": "list"})
    assert listed["in_use"] == 10 and {lease["lease"] for lease in listed["leases"]} == granted


def test_garbage_on_the_socket_is_answered_and_the_daemon_goes_on(daemon):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon.socket))
        sock.settimeout(60)
        sock.sendall(b"not json\n" + b"x" * 10000 + b"\n")
        answers = sock.makefile().readline(), sock.makefile().readline()
    assert json.loads(answers[0])["error"] == "bad_request"
    assert ask(daemon.socket, flow(1))["ok"]


def test_without_the_daemon_no_flow_is_admitted(tmp_path):
    with pytest.raises(QuotaError, match=r"cannot be reached.*no flow is admitted"):
        QuotaClient(tmp_path / "absent.sock").acquire("a", "ver-gare-01", "live")


class Wire:
    """The leases that may have a flow on the wire, at the clock's time, whatever the holders do.

    A lease counts from its grant until it is released or a ttl after its last renewal the
    daemon accepted; a holder told its lease is unknown stops, but it is counted until then.
    """

    def __init__(self, clock: Clock, ttl: float) -> None:
        self.clock, self.ttl = clock, ttl
        self.until: dict[str, float] = {}

    def granted(self, answers: list[dict]) -> list[str]:
        leases = [answer["lease"] for answer in answers if answer["ok"]]
        self.until.update((lease, self.clock.now + self.ttl) for lease in leases)
        self.check()
        return leases

    def renew(self, path: Path, leases: list[str]) -> list[dict]:
        answers = together(path, [{"op": "renew", "lease": lease} for lease in leases])
        self.until.update(
            (lease, self.clock.now + self.ttl) for lease, a in zip(leases, answers, strict=True) if a["ok"]
        )
        return answers

    def release(self, path: Path, leases: list[str]) -> None:
        assert all(answer["ok"] for answer in together(path, [{"op": "release", "lease": x} for x in leases]))
        self.until.update((lease, self.clock.now) for lease in leases)

    def on(self) -> int:
        return sum(1 for until in self.until.values() if until > self.clock.now)

    def check(self) -> None:
        assert self.on() <= 10, f"{self.on()} flows on the wire"


def unknowable(config: QuotadConfig) -> QuotadConfig:
    return QuotadConfig(socket=config.socket, limit=10, ttl=15)


def removed(config: QuotadConfig) -> QuotadConfig:
    config.state_file.unlink()
    return config


def torn(config: QuotadConfig) -> QuotadConfig:
    config.state_file.write_bytes(config.state_file.read_bytes()[:-30])
    return config


def swollen(config: QuotadConfig) -> QuotadConfig:
    state = json.loads(config.state_file.read_bytes())
    over_the_limit(state)
    config.state_file.write_text(json.dumps(state))
    return config


def linked(config: QuotadConfig) -> QuotadConfig:
    target = config.state_file.with_name("elsewhere.json")
    config.state_file.rename(target)
    config.state_file.symlink_to(target)
    return config


@pytest.mark.parametrize("restart", [unknowable, removed, torn, swollen, linked])
def test_a_restart_that_cannot_trust_its_state_grants_nothing_until_the_old_flows_are_off_the_wire(tmp_path, restart):
    """Ten flows on the wire, the daemon restarted, ten new requests racing in: never more than ten."""
    clock = Clock(START)
    state = held_nothing(tmp_path / "leases.json")
    config = QuotadConfig(socket=tmp_path / "quotad.sock", limit=10, ttl=15, state_file=state)
    wire = Wire(clock, ttl=15)
    with Served(config, clock):
        old = wire.granted(together(config.socket, [flow(n) for n in range(10)]))
        assert len(old) == 10
        clock.now += 5
        assert all(answer["ok"] for answer in wire.renew(config.socket, old))
    clock.now += 1  # down for a second; the relay's flows go on meanwhile
    with Served(restart(config), clock):
        started = clock.now
        while clock.now < started + 15:
            answers = together(config.socket, [flow(n) for n in range(10, 20)])
            assert {answer["error"] for answer in answers} == {"starting"}
            assert {answer["retry_after"] for answer in answers} == {math.ceil(started + 15 - clock.now)}
            assert all(answer["message"].endswith(f"try again in {answers[0]['retry_after']} s") for answer in answers)
            wire.granted(answers)
            renewals = wire.renew(config.socket, old)  # the relay renews: its flows end
            assert {answer["error"] for answer in renewals} == {"unknown_lease"}
            clock.now += 2.5
        new = wire.granted(together(config.socket, [flow(n) for n in range(10, 20)]))
        assert len(new) == 10 and wire.on() == 10
        assert ask(config.socket, flow(20))["error"] == "quota_full"


def test_a_restart_with_its_state_keeps_the_flows_on_the_wire_and_counts_them(tmp_path):
    """Ten flows on the wire, the daemon restarted, ten new requests racing in: the ten old flows go on."""
    clock = Clock(START)
    state = held_nothing(tmp_path / "leases.json")
    config = QuotadConfig(socket=tmp_path / "quotad.sock", limit=10, ttl=15, state_file=state)
    wire = Wire(clock, ttl=15)
    with Served(config, clock):
        old = wire.granted(together(config.socket, [flow(n) for n in range(10)]))
        clock.now += 5
        assert all(answer["ok"] for answer in wire.renew(config.socket, old))
    clock.now += 1
    kept = old[:6]  # four flows ended while the daemon was down: their releases were lost
    with Served(config, clock):
        started = clock.now
        while clock.now < started + 15:
            answers = together(config.socket, [flow(n) for n in range(10, 20)])
            assert {answer["error"] for answer in answers} == {"quota_full"}
            wire.granted(answers)
            assert all(answer["ok"] for answer in wire.renew(config.socket, kept))  # re-adopted
            clock.now += 5
        new = wire.granted(together(config.socket, [flow(n) for n in range(10, 20)]))
        assert len(new) == 4 and wire.on() == 10  # the four not renewed have expired
        wire.release(config.socket, kept)
        assert len(wire.granted(together(config.socket, [flow(n) for n in range(20, 30)]))) == 6


def test_a_grant_that_cannot_be_written_is_taken_back_and_refused(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    config = QuotadConfig(
        socket=tmp_path / "quotad.sock", limit=10, ttl=15, state_file=held_nothing(directory / "leases.json")
    )
    with Served(config, Clock(START)):
        assert ask(config.socket, flow(1))["ok"]
        shutil.rmtree(directory)
        refused = ask(config.socket, flow(2))
        assert refused["error"] == "state_unwritable" and "would forget this flow" in refused["message"]
        assert ask(config.socket, {"op": "list"})["in_use"] == 1
        directory.mkdir()
        granted = ask(config.socket, flow(3))["lease"]
        assert granted in {x["lease"] for x in json.loads(config.state_file.read_bytes())["leases"]}


def test_a_state_file_in_a_directory_that_does_not_exist_stops_the_start_with_a_sentence(tmp_path):
    config = tmp_path / "quotad.json"
    config.write_text(json.dumps({"socket": "q.sock", "limit": 10, "state_file": str(tmp_path / "no" / "s.json")}))
    with pytest.raises(SystemExit, match=r"the directory of state_file .* does not exist"):
        QuotadConfig.load(config)


# -- the process -------------------------------------------------------------


def quotad(tmp_path: Path, **settings) -> tuple[subprocess.Popen, Path, Path]:
    """The daemon as its service runs it; returns it once it answers, with its socket and its log."""
    sock, config, log = tmp_path / "quotad.sock", tmp_path / "quotad.json", tmp_path / "quotad.log"
    config.write_text(json.dumps({"socket": str(sock), "limit": 10, **settings}))
    with log.open("ab") as stderr:
        process = subprocess.Popen([str(QUOTAD), str(config)], stderr=stderr)

    def answers() -> bool:
        assert process.poll() is None, f"the quota daemon stopped: {log.read_text()}"
        with contextlib.suppress(QuotaError):
            return ask(sock, {"op": "list"})["ok"]
        return False

    wait_for(answers, 60, "the quota daemon to answer", 0.05)
    return process, sock, log


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_daemon_killed_with_sigkill_keeps_every_lease_it_granted(tmp_path):
    """A grant is on disk before it is answered: killed at any moment, the next run counts it."""
    state = held_nothing(tmp_path / "leases.json", ttl=300)
    process, sock, _ = quotad(tmp_path, ttl=300, state_file=str(state))  # 300 s: nothing expires during the test
    try:
        old = [answer["lease"] for answer in together(sock, [flow(n) for n in range(10)])]
        process.send_signal(signal.SIGKILL)
        process.wait(60)
        process, sock, _ = quotad(tmp_path, ttl=300, state_file=str(state))
        assert {answer["error"] for answer in together(sock, [flow(n) for n in range(10, 20)])} == {"quota_full"}
        assert all(answer["ok"] for answer in together(sock, [{"op": "renew", "lease": x} for x in old]))
        together(sock, [{"op": "release", "lease": x} for x in old])
        assert all(answer["ok"] for answer in together(sock, [flow(n) for n in range(10, 20)]))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)


def test_a_state_file_over_the_limit_does_not_stop_the_daemon_nor_admit_more(tmp_path):
    state = tmp_path / "leases.json"
    quota = Quota(limit=12, ttl=300)
    held(quota, 12)
    state.write_bytes(quota.snapshot())
    process, sock, log = quotad(tmp_path, ttl=300, state_file=str(state))
    try:
        answers = together(sock, [flow(n) for n in range(10)])
        assert {answer["error"] for answer in answers} == {"starting"}
        assert all(1 <= answer["retry_after"] <= 300 for answer in answers)
        assert ask(sock, {"op": "list"})["in_use"] == 0
        assert f"the state file {state} cannot be trusted (12 leases, more than the limit of 10)" in log.read_text()
    finally:
        stop(process)


def test_a_holder_killed_with_sigkill_frees_its_slots_within_the_lease_ttl(tmp_path):
    """Ten flows held by a process that renews them; SIGKILL it and the slots come back within the ttl."""
    state = held_nothing(tmp_path / "leases.json", ttl=2)
    quotad_process, sock, _ = quotad(tmp_path, ttl=2, state_file=str(state))
    holder = None
    try:
        holder_code = (
            "import sys, time\n"
            "from halfbridge.quotad import QuotaClient\n"
            "c = QuotaClient(sys.argv[1])\n"
            "leases = [c.acquire(f'agent-{n}', 'ver-gare-01', 'live')['lease'] for n in range(10)]\n"
            "print('held', flush=True)\n"
            "while True:\n"
            "    [c.renew(x) for x in leases]\n"
            "    time.sleep(0.5)\n"
        )
        holder = subprocess.Popen([sys.executable, "-c", holder_code, str(sock)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        client = QuotaClient(sock)
        time.sleep(3)  # longer than the ttl: the renewals keep the slots
        assert client.acquire("agent-x", "ver-gare-01", "live")["error"] == "quota_full"
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        killed = time.monotonic()
        wait_for(lambda: client.acquire("agent-x", "ver-gare-01", "live")["ok"], 10, "a slot after the kill", 0.1)
        assert time.monotonic() - killed <= 2 + 1.5
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        stop(quotad_process)


def test_a_client_stops_reading_an_answer_longer_than_64_kib_and_admits_nothing(tmp_path):
    """Whatever listens on the socket, a blocking client's memory is bounded: a flood without a newline is refused."""
    path = tmp_path / "flood.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def flood() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            conn.sendall(b"x" * (1 << 20))

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        with pytest.raises(QuotaError, match="longer than 64 KiB"):
            QuotaClient(path, timeout=5).acquire("agent-lab-01", "ver-gare-01", "live")
    finally:
        server.close()
        thread.join(5)


# -- the etcd backend's configuration ------------------------------------------


@pytest.fixture
def cluster_files(tmp_path: Path) -> dict:
    """A quotad.json's etcd section whose files exist (a CA, a client certificate and its key)."""
    ca = TestCA(tmp_path)
    cert, key = ca.issue("quotad-gw1")
    return {
        "endpoints": ["https://10.0.0.1:2379", "https://gw2.example:2379"],
        "ca_file": str(ca.path),
        "cert_file": str(cert),
        "key_file": str(key),
        "gateway": "gw1",
    }


def configured(tmp_path: Path, **settings) -> Path:
    path = tmp_path / "quotad.json"
    path.write_text(json.dumps({"socket": str(tmp_path / "q.sock"), "limit": 10, **settings}))
    return path


def test_the_etcd_backend_loads_with_its_defaults_and_the_memory_backend_stays_the_default(tmp_path, cluster_files):
    assert QuotadConfig.load(configured(tmp_path)).backend == "memory"
    config = QuotadConfig.load(configured(tmp_path, backend="etcd", etcd=cluster_files))
    assert (config.etcd.prefix, config.etcd.timeout, config.etcd.gateway) == ("/halfbridge/quota", 2.0, "gw1")
    assert config.etcd.settings().endpoints == cluster_files["endpoints"]


NO_FILES = {"ca_file": None, "cert_file": None, "key_file": None, "gateway": None}


@pytest.mark.parametrize(
    ("settings", "etcd", "sentence"),
    [
        (
            {"backend": "mysql"},
            None,
            r"backend must be memory \(this gateway's own quota, the default\) or etcd .*'mysql'",
        ),
        ({}, {}, "an etcd section with the memory backend would count this gateway's flows alone"),
        ({"backend": "etcd"}, None, "the etcd backend needs its etcd section"),
        ({"backend": "etcd"}, NO_FILES, "etcd: lacks ca_file, cert_file, key_file, gateway"),
        ({"backend": "etcd", "state_file": "leases.json"}, {}, "state_file is the memory backend's"),
        ({"backend": "etcd"}, {"gateway": "../x"}, "gateway '../x' must be this gateway's name"),
        ({"backend": "etcd"}, {"endpoints": "https://a:2379"}, "endpoints must be a list"),
        ({"backend": "etcd"}, {"endpoints": ["http://a:2379"]}, "'http://a:2379' is not https://HOST:PORT"),
        ({"backend": "etcd"}, {"endpoints": ["https://a:x"]}, "not https://HOST:PORT"),
        ({"backend": "etcd"}, {"endpoints": ["https://a:2379/v3"]}, "not https://HOST:PORT"),
        ({"backend": "etcd"}, {"ca_file": "/nowhere/ca.pem"}, "ca_file '/nowhere/ca.pem' is not a file"),
        ({"backend": "etcd"}, {"key_file": "."}, "key_file '.' is not a file this daemon can read"),
        ({"backend": "etcd"}, {"timeout": 15}, r"timeout 15 must be .* less than the ttl \(15 s\)"),
        ({"backend": "etcd"}, {"prefix": "halfbridge"}, "prefix 'halfbridge' must be a key such as"),
        ({"backend": "etcd"}, {"retries": 3}, "etcd: has unknown keys retries"),
    ],
)
def test_a_cluster_configuration_that_cannot_work_stops_the_start_with_a_sentence(
    tmp_path, cluster_files, settings, etcd, sentence
):
    """`etcd` changes a section whose files exist (None: no section; a key set to None: left out)."""
    if etcd is not None:
        section = {**cluster_files, **etcd}
        settings = {**settings, "etcd": {key: value for key, value in section.items() if value is not None}}
    with pytest.raises(SystemExit, match=sentence):
        QuotadConfig.load(configured(tmp_path, **settings))


def test_a_key_that_is_not_the_certificates_stops_the_start_with_a_sentence(tmp_path, cluster_files):
    (tmp_path / "elsewhere").mkdir()
    _, stranger_key = TestCA(tmp_path / "elsewhere").issue("stranger")
    with pytest.raises(SystemExit, match=r"etcd: cannot use the CA .* to reach etcd"):
        QuotadConfig.load(configured(tmp_path, backend="etcd", etcd={**cluster_files, "key_file": str(stranger_key)}))
