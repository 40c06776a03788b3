"""The audit log's copy off the gateway: two real rsyslogd on this machine, each configured by its role's template
(roles/audit_forwarder, roles/log_collector), RELP over TLS on loopback with a throw-away CA.

The gateway side is played by appending lines to the files, as the audit writer does (one line a write, rotation by
renaming); the collector's copy must be the same bytes, in the same order, each line once.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from tests.support.rsyslog import RSYSLOGD, Forwarding
from tests.support.waiting import wait_for

# The outage of the killed collector (at least 20 s: several of the forwarder's retries).
OUTAGE = 20


@pytest.fixture(scope="module")
def rsyslog_available() -> None:
    if not RSYSLOGD.exists():
        pytest.fail("the forwarding tests need rsyslog, rsyslog-relp and rsyslog-gnutls: run `make deps`")


@pytest.fixture
def lab(tmp_path, rsyslog_available):
    forwarding = Forwarding(tmp_path)
    forwarding.start()
    yield forwarding
    forwarding.stop()


class Writer:
    """Appends entries as the audit writer does: one JSON line a write, keys sorted, UTF-8; rotates by renaming."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seq = 0
        self.rotations = 0

    def line(self, **fields) -> bytes:
        self.seq += 1
        entry = {"seq": self.seq, "time": f"2026-12-01T09:00:00.{self.seq:06d}Z", "event": "auth.accepted", **fields}
        return json.dumps(entry, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def append(self, count: int, pause: float = 0.0, name: str = "audit.log", **fields) -> None:
        with (self.directory / name).open("ab") as log:
            for _ in range(count):
                log.write(self.line(**fields))
                log.flush()
                if pause:
                    time.sleep(pause)

    def checkpoint(self) -> None:
        line = {"checkpoint": True, "time": "2026-12-01T09:00:00Z", "host": "gw", "file": "audit.log",
                "seq": self.seq, "hash": "a" * 64, "mac": "b" * 64}  # fmt: skip
        with (self.directory / "audit.checkpoints").open("ab") as checkpoints:
            checkpoints.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def rotate(self) -> None:
        """audit.log renamed audit-<UTC time>.log, as the writer does; the next append makes a new audit.log."""
        self.rotations += 1
        (self.directory / "audit.log").rename(self.directory / f"audit-20261201T0900{self.rotations:02d}Z.log")

    def everything(self) -> bytes:
        """The gateway's log, oldest first: the renamed files in name (time) order, then the current one."""
        files = [*sorted(self.directory.glob("audit-*.log")), self.directory / "audit.log"]
        return b"".join(f.read_bytes() for f in files if f.exists())


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def arrived(lab: Forwarding, expected: bytes, timeout: float, name: str = "audit.log") -> bytes:
    """The collector's copy once it has as many lines as `expected` (it may then hold more)."""
    count = len(lines(expected))
    wait_for(
        lambda: len(lines(lab.copy(name))) >= count,
        timeout,
        f"{count} lines in the collector's {name}",
        interval=0.2,
        detail=lambda: f" (it has {len(lines(lab.copy(name)))}){lab.said()}",
    )
    time.sleep(1)  # nothing more comes: a repeat would show
    return lab.copy(name)


def replays(copy: list[bytes], expected: list[bytes], near: int | None = 16) -> int:
    """Check a copy made through a crash: without its repeats it is `expected` (nothing lost, in order), and the
    repeats replay earlier entries in their order (RELP delivers at least once: what was in flight at the crash
    comes again). With `near`, each repeat is one of the `near` lines just before it, and there are at most
    `near` of them. Returns how many repeats there were."""
    seen: set[bytes] = set()
    repeated = [i for i, line in enumerate(copy) if line in seen or seen.add(line)]
    assert [line for i, line in enumerate(copy) if i not in repeated] == expected
    order = {line: n for n, line in enumerate(expected)}
    runs = [(i, order[copy[i]]) for i in repeated]
    assert all(b[1] == a[1] + 1 for a, b in itertools.pairwise(runs) if b[0] == a[0] + 1), "a replay out of order"
    if near is not None:
        assert all(copy[i] in copy[max(0, i - near) : i] for i in repeated), [copy[i] for i in repeated]
        assert len(repeated) <= near, len(repeated)
    return len(repeated)


def test_entries_arrive_in_order_byte_for_byte(lab):
    writer = Writer(lab.gateway)
    writer.append(150, agent="Jeanne Martin", peer="198.51.100.30")
    writer.append(1, agent="Éloïse Dupré-Nguyễn", note='quotes " and \\ backslashes, %msg% and $hostname')
    writer.append(1, agent="  leading spaces in a value")
    # The longest entry the writer allows: 4096 bytes, then its newline.
    padding = 4096 - len(writer.line(pad="").rstrip(b"\n"))
    writer.seq -= 1
    writer.append(1, pad="x" * padding)
    assert len(lines(writer.everything())[-1]) == 4096 + 1
    writer.append(50)
    assert arrived(lab, writer.everything(), 30) == writer.everything()
    # Nothing of it went anywhere else on the collector.
    assert sorted(p.name for p in lab.collected.iterdir()) == ["gw"]


def test_a_rotation_by_renaming_loses_nothing_even_while_rsyslog_is_down(lab):
    writer = Writer(lab.gateway)
    # Renamed while imfile is still reading it, a new file at once.
    writer.append(400)
    writer.rotate()
    writer.append(200)
    assert arrived(lab, writer.everything(), 30) == writer.everything()
    # The gateway's rsyslog stopped (an upgrade, a reboot): lines appended, the file renamed, a new one begun.
    lab.forwarder.stop()
    writer.append(100)
    writer.rotate()
    writer.append(100)
    lab.forwarder.start()
    assert arrived(lab, writer.everything(), 30) == writer.everything()


def test_a_collector_killed_for_twenty_seconds_gets_every_line_once_in_order(lab):
    writer = Writer(lab.gateway)
    writer.append(100)
    assert arrived(lab, writer.everything(), 30) == writer.everything()
    # The gateway is quiet for a heartbeat or two, then the collector dies.
    time.sleep(2)
    lab.collector.stop(kill=True)
    killed = time.monotonic()
    # 600 entries while the collector is away, with a rotation among them.
    writer.append(300, pause=0.005)
    writer.rotate()
    writer.append(300, pause=0.005)
    time.sleep(max(0.0, killed + OUTAGE - time.monotonic()))
    assert lines(lab.copy()) == lines(writer.everything())[:100], "lines arrived at a dead collector"
    lab.start_collector()
    assert arrived(lab, writer.everything(), 60) == writer.everything()


def test_a_collector_that_crashes_mid_transfer_loses_nothing_and_repeats_only_what_it_had(lab):
    """RELP is at least once: entries the collector wrote but whose acknowledgement the crash lost come again,
    byte for byte, right after the reconnection. Nothing is missing, nothing else is out of order."""
    writer = Writer(lab.gateway)
    appending = threading.Thread(target=writer.append, args=(3000,))
    appending.start()
    wait_for(lambda: len(lines(lab.copy())) >= 300, 30, "the transfer to be under way", interval=0.05)
    lab.collector.stop(kill=True)
    appending.join(timeout=60)
    time.sleep(3)
    lab.start_collector()
    expected = lines(writer.everything())
    wait_for(lambda: {*lines(lab.copy())} >= {*expected}, 60, "every entry at the collector", detail=lambda: lab.said())
    time.sleep(1)
    replays(lines(lab.copy()), expected)


def test_a_gateway_rsyslog_killed_while_sending_loses_nothing(lab):
    """imfile saves its place after each line it queued, and the queue is on disk: a crash loses nothing. It
    usually sends again only the entries in flight; a kill that cuts imfile's rewrite of its place makes it read
    the file again from its start (docs/collector.md): those entries come again, in order, and
    `halfbridge-audit verify --against` counts each once."""
    writer = Writer(lab.gateway)
    writer.append(3000)
    wait_for(lambda: len(lines(lab.copy())) >= 300, 30, "the transfer to be under way", interval=0.05)
    lab.forwarder.stop(kill=True)
    assert len(lines(lab.copy())) < 3000, "the transfer was over before the crash"
    lab.forwarder.start()
    expected = lines(writer.everything())
    wait_for(lambda: {*lines(lab.copy())} >= {*expected}, 60, "every entry at the collector", detail=lambda: lab.said())
    time.sleep(1)
    replays(lines(lab.copy()), expected, near=None)


def test_a_gateway_rsyslog_restarted_while_the_collector_is_away_loses_nothing(lab):
    """Once a heartbeat has found the collector gone, the queue on disk holds everything through a restart
    of the gateway's rsyslog (entries written in the very first second of the outage would not: see
    docs/collector.md)."""
    writer = Writer(lab.gateway)
    writer.append(100)
    assert arrived(lab, writer.everything(), 30) == writer.everything()
    lab.collector.stop()
    time.sleep(3)
    writer.append(200, pause=0.005)
    lab.forwarder.stop()
    lab.forwarder.start()
    writer.append(100)
    lab.start_collector()
    assert arrived(lab, writer.everything(), 60) == writer.everything()


def test_checkpoints_go_to_their_own_file(lab):
    writer = Writer(lab.gateway)
    for _ in range(5):
        writer.append(20)
        writer.checkpoint()
    checkpoints = (lab.gateway / "audit.checkpoints").read_bytes()
    assert arrived(lab, checkpoints, 30, "audit.checkpoints") == checkpoints
    assert arrived(lab, writer.everything(), 30) == writer.everything()
    assert b"checkpoint" not in lab.copy()


def test_a_gateway_whose_certificate_is_not_permitted_gets_nothing_in(tmp_path, rsyslog_available):
    refusing = Forwarding(tmp_path, log_collector_permitted_peers=["gw2"])
    refusing.start()
    try:
        Writer(refusing.gateway).append(10)
        wait_for(lambda: "no permited name found" in refusing.collector.said(), 20, "the collector to refuse gw")
        assert not (refusing.collected / "gw").exists()
        assert "DNSname: gw" in refusing.collector.said()
    finally:
        refusing.stop()
