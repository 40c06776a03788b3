"""The recorder's live tap, fed a real clip in the pieces a pipe gives, read by real Unix sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from halfbridge import live, ts
from halfbridge.live import LiveTap
from tests.support.media import make_clip
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    """3 s at 25 fps, a keyframe every second."""
    return Path(make_clip(tmp_path_factory.mktemp("live") / "clip.ts", seconds=3, gop=25)).read_bytes()


@pytest.fixture
def tap(tmp_path):
    tap = LiveTap(tmp_path / "cam.sock", "cam-test-01")
    tap.open()
    yield tap
    tap.close()


def join(tap: LiveTap) -> socket.socket:
    before = tap.connected()
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(5)
    conn.connect(str(tap.path))
    wait_for(lambda: tap.connected() > before, 5, "the tap to take the flow", interval=0.01)
    return conn


def receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def feed(tap: LiveTap, data: bytes, piece: int = 1000) -> None:
    """In pieces that cut packets, as a pipe does."""
    for offset in range(0, len(data), piece):
        tap.feed(data[offset : offset + piece])


def test_a_flow_joining_midstream_gets_the_tables_then_the_last_keyframe_on(tap, clip):
    keyframes = ts.keyframes(clip)
    middle = keyframes[1].offset + 40 * ts.PACKET
    feed(tap, clip[:middle])
    conn = join(tap)
    got = receive(conn, 2 * ts.PACKET + middle - keyframes[1].offset)
    assert got[: 2 * ts.PACKET] == ts.tables(clip)
    assert ts.keyframes(got[2 * ts.PACKET :])[0].offset == 0
    assert got[2 * ts.PACKET :] == clip[keyframes[1].offset : middle]
    # Then the stream as it comes, whole packets only, nothing lost at the cuts.
    feed(tap, clip[middle:])
    tail = clip[middle:]
    rest = receive(conn, len(tail) - len(tail) % ts.PACKET)
    assert got[2 * ts.PACKET :] + rest == clip[keyframes[1].offset : len(clip) - len(clip) % ts.PACKET]


def test_nothing_streaming_closes_a_connection_at_once(tap, clip):
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(5)
    conn.connect(str(tap.path))
    assert conn.recv(100) == b""


def test_a_run_that_ends_ends_its_flows(tap, clip):
    feed(tap, clip[: 50 * ts.PACKET])
    conn = join(tap)
    receive(conn, 10)
    tap.run_ended()
    conn.settimeout(5)
    while chunk := conn.recv(65536):
        assert chunk
    assert tap.connected() == 0


def test_a_flow_that_does_not_read_is_dropped_and_the_others_go_on(tap, clip, monkeypatch, caplog):
    monkeypatch.setattr(live, "MAX_PENDING", 64 * 1024)
    feed(tap, clip[:1000])
    stuck, reader = join(tap), join(tap)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    received = bytearray()
    for _ in range(150):  # 6 MB, the clip again and again: the tap never blocks
        tap.feed(clip)
        reader.setblocking(False)
        try:
            while chunk := reader.recv(1 << 20):
                received += chunk
        except BlockingIOError:
            pass
    assert tap.connected() == 1
    assert "fell" in caplog.text and "behind the camera; it is dropped" in caplog.text
    assert len(received) > 140 * len(clip)


def test_a_flow_that_leaves_is_forgotten(tap, clip):
    feed(tap, clip[:1000])
    conn = join(tap)
    conn.close()
    tap.feed(clip)
    tap.feed(clip)
    assert tap.connected() == 0


def test_a_group_larger_than_the_lag_allowed_is_still_given_to_a_joining_flow(monkeypatch):
    monkeypatch.setattr(live, "MAX_PENDING", 64 * 1024)
    group = bytes(ts.PACKET) * (3 * 64 * 1024 // ts.PACKET)  # three times the lag allowed, as a long GOP
    joining, viewer = socket.socketpair()
    lagging, other = socket.socketpair()
    for sock in (joining, lagging):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
    flow, behind = live._Flow(joining), live._Flow(lagging)
    assert flow.join(group) is None, "what a flow is given at its join does not count as lag"
    assert behind.send(group).startswith("fell"), "the same bytes as lag drop a flow"
    viewer.settimeout(5)
    got = 0
    while got < len(group):  # the viewer reads; the tap sends what is pending at each feed
        got += len(viewer.recv(1 << 16))
        assert flow.send(b"") is None
    assert got == len(group) and not flow.pending
    assert flow.allowed == live.MAX_PENDING, "once caught up, the flow is held to the usual lag"
    for sock in (joining, viewer, lagging, other):
        sock.close()
