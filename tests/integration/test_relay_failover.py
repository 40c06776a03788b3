"""The relay follows recording that fails over: live from the gateway that records the camera now, recordings and
playback from every gateway that recorded a part of the range.

Two gateways on loopback (`tests.integration.test_relay_peers.cluster`). Which gateway holds a camera is what its
recorder on each gateway says in its status file (`cluster.holder`, as `halfbridge.recorder` writes it in a
cluster), written here; each gateway's live tap of the camera is a stand-in that sends one clip of its own grey
level, so the frames say which gateway sent them. The recorded range is split between the two stores as a
failover leaves it: gw1 recorded the first three segments, gw2 the last three, 6 s later.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from halfbridge.store import iso
from tests.integration.test_relay import (  # noqa: F401 (clips: a fixture)
    LEVELS,
    RECORDED,
    _put_segments,
    clips,
    grey_levels,
    level_of,
    when,
)
from tests.integration.test_relay_peers import cluster
from tests.support.relay import RelayLab

LIVE = "cam-live-01"
CAMERAS = [
    {"id": LIVE, "name": "Live", "site": "Test", "recorded_by": "gw1"},
    {"id": RECORDED, "name": "Recorded", "site": "Test", "recorded_by": "gw1"},
]


class Tap:
    """A recorder's live tap, stood in for: each connection gets one clip, then the end of the stream."""

    def __init__(self, path: Path, clip: Path) -> None:
        self.data = clip.read_bytes()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                connection, _ = self.server.accept()
                with connection, contextlib.suppress(OSError):
                    connection.sendall(self.data)

    def close(self) -> None:
        self.server.close()


def holds(lab: RelayLab, camera: str, holder: str, age: float = 0.0) -> None:
    """The camera's recorder on `lab` says that `holder` records it (written `age` seconds ago)."""
    state = lab.workdir / "recorder"
    state.mkdir(exist_ok=True)
    here = lab.gateway == holder
    status = {
        "camera": camera,
        "state": "recording" if here else "standby",
        "since": None,
        "last_error": None,
        "updated": iso(time.time() - age),
        "cluster": {"gateway": lab.gateway, "role": "holder" if here else "standby", "holder": holder,
                    "held_since": iso(time.time() - 60) if here else None},
    }  # fmt: skip
    (state / f"{camera}.status.json").write_text(json.dumps(status))


@pytest.fixture
def gateways(tmp_path, clips):  # noqa: F811 (the fixture imported above)
    with cluster(tmp_path, CAMERAS) as (gw1, gw2):
        # A failover's recordings: gw1 recorded the first three segments, gw2 took over 6 s after their end.
        first = time.time() - 600
        gw1.segments = _put_segments(gw1.store, clips[:3], first)
        gw2.segments = _put_segments(gw2.store, clips[3:], first + 12)
        taps = [
            Tap(gw1.workdir / "live" / f"{LIVE}.sock", clips[0]),
            Tap(gw2.workdir / "live" / f"{LIVE}.sock", clips[-1]),
        ]
        try:
            yield gw1, gw2
        finally:
            for tap in taps:
                tap.close()


def _events(lab: RelayLab, event: str) -> list[dict]:
    return [e for e in lab.audit() if e["event"] == event]


def _levels(data: bytes) -> list[int]:
    return [level_of(grey) for grey in grey_levels(data)]


def test_live_comes_from_the_gateway_that_records_the_camera_now(gateways):
    gw1, gw2 = gateways
    # The referential says gw1; both recorders say gw2 holds the camera (it took it over): gw1 serves gw2's.
    for lab in gateways:
        holds(lab, LIVE, "gw2")
    through = gw1.get(f"/v1/cameras/{LIVE}/live")
    assert through.status == 200 and set(_levels(through.body)) == {LEVELS[-1]}
    [start] = _events(gw1, "flow.start")
    assert start["recorded_by"] == "gw2"
    [node_start] = _events(gw2, "node.flow.start")
    assert (node_start["lease"], node_start["camera"], node_start["mode"]) == (start["lease"], LIVE, "live")
    listed = {c["id"]: c for c in gw1.get("/v1/cameras").json()["cameras"]}
    assert listed[LIVE]["recorded_by"] == "gw2" and listed[RECORDED]["recorded_by"] == "gw1"
    # The camera goes to gw1: gw1 serves its own tap, and gw2 serves gw1's.
    for lab in gateways:
        holds(lab, LIVE, "gw1")
    here = gw1.get(f"/v1/cameras/{LIVE}/live")
    assert here.status == 200 and set(_levels(here.body)) == {LEVELS[0]}
    assert "recorded_by" not in _events(gw1, "flow.start")[1]
    from_gw2 = gw2.get(f"/v1/cameras/{LIVE}/live")
    assert from_gw2.status == 200 and set(_levels(from_gw2.body)) == {LEVELS[0]}
    [node_start] = _events(gw1, "node.flow.start")
    assert node_start["lease"] == _events(gw2, "flow.start")[0]["lease"]
    assert len(_events(gw2, "node.flow.start")) == 1
    # gw1's recorder says gw2 again, but its status is 60 s old (the recorder stopped): the referential says gw1.
    holds(gw1, LIVE, "gw2", age=60)
    stale = gw1.get(f"/v1/cameras/{LIVE}/live")
    assert stale.status == 200 and set(_levels(stale.body)) == {LEVELS[0]}
    assert len(_events(gw2, "node.flow.start")) == 1


def test_recordings_and_playback_across_a_failover_come_from_both_gateways(gateways):
    gw1, gw2 = gateways
    old_end, new_start = gw1.segments[-1].end, gw2.segments[0].start
    first, last = gw1.segments[0], gw2.segments[-1]
    recordings = f"/v1/cameras/{RECORDED}/recordings?from={when(first.start - 10)}&to={when(last.end + 10)}"
    through_gw1, through_gw2 = gw1.get(recordings), gw2.get(recordings)
    assert (through_gw1.status, through_gw2.status) == (200, 200)
    body = through_gw1.json()
    assert through_gw2.json() == body
    assert [(s["from"], s["to"]) for s in body["spans"]] == [
        (iso(first.start), iso(old_end)), (iso(new_start), iso(last.end)),
    ]  # fmt: skip
    inner = [(g["from"], g["to"]) for g in body["gaps"] if g["from"] != body["from"] and g["to"] != body["to"]]
    assert inner == [(iso(old_end), iso(new_start))]  # the failover's gap, and no other
    assert body["recorded_seconds"] == pytest.approx(12.0) and body["missing"] == []
    # A playback from 1 s into gw1's first segment to 1 s into gw2's last: gw1's part, then gw2's.
    playback = f"/v1/cameras/{RECORDED}/playback?from={when(first.start + 1)}&to={when(last.start + 1)}&pace=fast"
    through_gw1, through_gw2 = gw1.get(playback), gw2.get(playback)
    assert (through_gw1.status, through_gw2.status) == (200, 200)
    assert through_gw1.body == through_gw2.body
    levels = _levels(through_gw1.body)
    # 25 frames of the first segment (from its keyframe at 1 s), 50 of each of the next four, 26 of the last.
    assert len(levels) == 25 + 4 * 50 + 26
    assert levels == sorted(levels) and levels[0] == LEVELS[0] and levels[-1] == LEVELS[-1]
    assert [levels.count(level) for level in LEVELS] == [25, 50, 50, 50, 50, 26]
    assert f"{iso(old_end)}/{iso(new_start)}" in through_gw1.headers["X-Halfbridge-Gaps"]
    assert "X-Halfbridge-Missing" not in through_gw1.headers
    # Each relay read the other's part through its node listener, with the flow's lease.
    [start1] = _events(gw1, "flow.start")
    [node_on_gw2] = _events(gw2, "node.flow.start")
    assert (node_on_gw2["lease"], node_on_gw2["range"]) == (start1["lease"], [iso(new_start), iso(last.start + 1)])
    assert start1["recorded_by"] == "gw1, gw2"
    [start2] = _events(gw2, "flow.start")
    [node_on_gw1] = _events(gw1, "node.flow.start")
    assert (node_on_gw1["lease"], node_on_gw1["range"]) == (start2["lease"], [iso(first.start + 1), iso(old_end)])


def test_a_gateway_down_its_part_is_missing_and_named(gateways):
    gw1, gw2 = gateways
    gw2.stop()
    first, last = gw1.segments[0], gw2.segments[-1]
    answer = gw1.get(f"/v1/cameras/{RECORDED}/recordings?from={when(first.start)}&to={when(last.end)}")
    assert answer.status == 200
    body = answer.json()
    assert [(s["from"], s["to"]) for s in body["spans"]] == [(iso(first.start), iso(gw1.segments[-1].end))]
    assert [(g["from"], g["to"]) for g in body["gaps"]] == [(iso(gw1.segments[-1].end), iso(last.end))]
    [missing] = body["missing"]
    assert missing["gateway"] == "gw2" and "gateway gw2, which cannot be reached" in missing["detail"]
    assert "127.0.0.1" not in answer.body.decode()
    # A playback of the range: what gw1 has, the missing gateway named.
    played = gw1.get(f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(last.end)}&pace=fast")
    assert played.status == 200 and played.headers["X-Halfbridge-Missing"] == "gw2"
    assert sorted(set(_levels(played.body))) == LEVELS[:3]
