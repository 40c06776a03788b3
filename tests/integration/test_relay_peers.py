"""Any camera from any node: gw1's relay serves the cameras recorded on gw2, through gw2's node listener.

Two gateways on loopback, each a relay with its quota daemon and its audit writer, joined by a servers CA
of their own (mutual TLS between the node listeners). A simulated camera and a recorded range exist on gw2
only; the PP asks gw1. The flow is gw1's (its admission, its slot, its `flow.start` and `flow.end`); gw2
records what it served its peer (`node.flow.start`, `node.flow.end`, with the same lease and agent) and
authenticates no agent.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from halfbridge.quotad import QuotaClient
from tests.integration.test_relay import RECORDED, _put_segments, clips, grey_levels, when  # noqa: F401 (a fixture)
from tests.support.pki import TestCA
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for

SIMULATED = "cam-test-01"  # the simulated camera's id (tests.support.camera), started by the tests that need it


@contextlib.contextmanager
def cluster(tmp_path, cameras: list[dict]) -> Iterator[tuple[RelayLab, RelayLab]]:
    """gw1 and gw2, each a relay of `cameras` with its quota daemon and audit writer, their node listeners joined
    by a servers CA of their own; started, and stopped after."""
    servers_dir = tmp_path / "servers"
    servers_dir.mkdir()
    servers = TestCA(servers_dir, cn="Servers CA")
    labs = []
    for name in ("gw1", "gw2"):
        (tmp_path / name).mkdir()
        labs.append(RelayLab(tmp_path / name, cameras, retention_days=10, convention_retention_days=10))
    gw1, gw2 = labs
    gw1.join("gw1", servers, {"gw2": gw2})
    gw2.join("gw2", servers, {"gw1": gw1})
    try:
        gw2.start()
        gw1.start()
        yield gw1, gw2
    finally:
        gw1.stop()
        gw2.stop()


@pytest.fixture
def gateways(tmp_path, clips):  # noqa: F811 (the fixture imported above)
    """gw1 and gw2; the simulated camera and RECORDED are gw2's: recorded there (`gw2.record(camera)`), and only
    there."""
    cameras = [
        {"id": SIMULATED, "name": "Simulated", "site": "Test", "recorded_by": "gw2"},
        {"id": RECORDED, "name": "Recorded", "site": "Test", "recorded_by": "gw2"},
    ]
    with cluster(tmp_path, cameras) as (gw1, gw2):
        gw2.segments = _put_segments(gw2.store, clips, time.time() - 600)
        yield gw1, gw2


def _flows(lab: RelayLab, event: str) -> list[dict]:
    return [e for e in lab.audit() if e["event"] == event]


def test_a_live_flow_of_a_camera_recorded_on_gw2_asked_of_gw1(gateways, camera):
    gw1, gw2 = gateways
    assert camera.id == SIMULATED
    gw2.record(camera)
    response = gw1.open(f"/v1/cameras/{camera.id}/live")
    try:
        assert response.status == 200 and response.headers["Content-Type"] == "video/mp2t"
        data = b""
        while len(data) < 150_000:
            data += response.read1(65536)
        assert QuotaClient(gw1.socket).leases()["in_use"] == 1  # the slot is gw1's...
        assert QuotaClient(gw2.socket).leases()["in_use"] == 0  # ...and gw2 takes none for it
    finally:
        response.close()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert probe.stdout.decode().strip().startswith("h264,640,360")
    # The frames decode: gw2's camera, seen through gw1.
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "null", "-"], input=data, capture_output=True, timeout=60
    )
    assert decoded.returncode == 0
    wait_for(lambda: QuotaClient(gw1.socket).leases()["in_use"] == 0, 10, "gw1's slot to be released")
    [start] = _flows(gw1, "flow.start")
    [end] = wait_for(lambda: _flows(gw1, "flow.end"), 10, "gw1's flow.end")
    assert (start["agent"], start["recorded_by"], start["mode"]) == ("agent-dupont", "gw2", "live")
    assert end["lease"] == start["lease"] and end["bytes"] >= 150_000
    [node_start] = _flows(gw2, "node.flow.start")
    [node_end] = wait_for(lambda: _flows(gw2, "node.flow.end"), 10, "gw2's node.flow.end")
    for entry in (node_start, node_end):
        assert (entry["lease"], entry["agent"], entry["gateway"], entry["camera"]) == (
            start["lease"], "agent-dupont", "gw1-node", camera.id,
        )  # fmt: skip
    assert node_end["bytes"] >= end["bytes"]
    # gw2 authenticated no agent and served no request of the PP's: gw1's admission and history stand.
    assert [e for e in gw2.audit() if e["event"].startswith("auth.") or e["event"] == "relay.request"] == []
    # gw1's referential says what gw2's recorder says of its cameras.

    def recording():
        cameras = {c["id"]: c for c in gw1.get("/v1/cameras").json()["cameras"]}
        return cameras if cameras[camera.id]["state"] == "recording" else None

    cameras = wait_for(recording, 20, "gw2's recorder's report, through gw1")
    assert cameras[camera.id]["video"].startswith("h264") and cameras[camera.id]["last_error"] is None
    assert {c["recorded_by"] for c in cameras.values()} == {"gw2"}
    assert cameras[RECORDED]["recording"] is False and cameras[RECORDED]["last_recorded"]


def test_playback_and_recordings_of_gw2_through_gw1_are_gw2s_own(gateways):
    gw1, gw2 = gateways
    first, last = gw2.segments[0], gw2.segments[-1]
    recordings = f"/v1/cameras/{RECORDED}/recordings?from={when(first.start - 10)}&to={when(last.end + 10)}"
    through, direct = gw1.get(recordings), gw2.get(recordings)
    assert (through.status, direct.status) == (200, 200)
    assert through.json() == direct.json() and len(direct.json()["spans"]) == 2
    second = gw2.segments[1]
    playback = f"/v1/cameras/{RECORDED}/playback?from={when(second.start + 0.5)}&to={when(second.end + 1)}&pace=fast"
    through, direct = gw1.get(playback), gw2.get(playback)
    assert (through.status, direct.status) == (200, 200)
    assert through.body == direct.body and len(grey_levels(through.body)) == 50 + 25 + 1
    assert through.headers["X-Halfbridge-Spans"] == direct.headers["X-Halfbridge-Spans"]
    assert through.headers["X-Halfbridge-Gaps"] == direct.headers["X-Halfbridge-Gaps"]
    # As MP4 too: gw1 makes it from gw2's MPEG-TS.
    as_mp4 = gw1.get(playback + "&format=mp4")
    assert as_mp4.status == 200 and as_mp4.headers["Content-Type"].startswith("video/mp4")
    assert as_mp4.body[4:8] == b"ftyp"
    # Nothing recorded in a range is gw2's 404, before any slot is taken on gw1.
    hole = f"/v1/cameras/{RECORDED}/playback?from={when(last.end + 60)}&to={when(last.end + 90)}"
    nothing = gw1.get(hole)
    assert nothing.status == 404 and nothing.json()["type"].endswith("no-recording")
    assert len(_flows(gw1, "flow.start")) == 2
    [start, _] = _flows(gw1, "flow.start")
    node_starts = _flows(gw2, "node.flow.start")
    assert [e["lease"] for e in node_starts] == [e["lease"] for e in _flows(gw1, "flow.start")]
    assert node_starts[0]["range"] == start["range"] and node_starts[0]["pace"] == "fast"
    # A flow whose lease cannot be renewed on gw1 ends, there and on gw2, as a local flow does.
    realtime = f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(last.end)}"
    flow = gw1.open(realtime)
    try:
        assert flow.status == 200 and flow.read(1000)
        gw1.quotad.send_signal(signal.SIGTERM)
        gw1.quotad.wait(10)
        ended = wait_for(lambda: _flows(gw1, "flow.end")[2:], 10, "the flow to end without its lease")[0]
        assert ended["ended"] == "the quota daemon could not renew the flow's lease"
        node_end = wait_for(lambda: _flows(gw2, "node.flow.end")[2:], 10, "gw2's node flow to end with it")[0]
        assert node_end["lease"] == ended["lease"]
    finally:
        flow.close()


def test_gw2_stopped_gw1_answers_502_naming_gw2_and_frees_the_slot(gateways):
    gw1, gw2 = gateways
    gw2.stop()
    refused = gw1.get(f"/v1/cameras/{SIMULATED}/live")
    assert refused.status == 502
    sentence = (
        f"camera {SIMULATED} is recorded by gateway gw2, which cannot be reached from this gateway right now; "
        "try again later"
    )
    assert refused.json()["detail"] == sentence and "127.0.0.1" not in refused.body.decode()
    assert gw1.get("/v1/flows").json()["in_use"] == 0
    [end] = _flows(gw1, "flow.end")
    assert end["ended"] == sentence and end["bytes"] == 0
    # What gw2 recorded cannot be listed: gw1 says what it has of the range (nothing), and that gw2's part is missing.
    first = gw2.segments[0]
    recordings = gw1.get(f"/v1/cameras/{RECORDED}/recordings?from={when(first.start)}&to={when(first.end)}")
    assert recordings.status == 200
    assert recordings.json()["spans"] == [] and len(recordings.json()["gaps"]) == 1
    assert recordings.json()["missing"] == [{"gateway": "gw2", "detail": sentence.replace(SIMULATED, RECORDED)}]
    # Nor played: not a "nothing recorded", which gw1 cannot know.
    playback = gw1.get(f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(first.end)}")
    assert playback.status == 502 and "gateway gw2 cannot be asked what it recorded" in playback.json()["detail"]
    listed = gw1.get("/v1/cameras")
    assert listed.status == 200
    assert {c["state"] for c in listed.json()["cameras"]} == {"unknown"}
