"""The recorder on the lab gateway: every camera recorded, continuously, surviving outages and crashes.

The lab cuts 10 s segments (inventories/lab/group_vars/halfbridge_gateway.yml)
so that these tests see several of them within a minute.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest

from halfbridge.store import Segment, spans
from tests.support.inventory import host_var
from tests.support.lab import put
from tests.support.recordings import STORE, frames, index, packets, path, status, streams
from tests.support.viewer import get_json
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"
# Holes shorter than this are not outages: an open GOP's index shows one of a few frames' duration
# between two segments whose files have none (docs/streams.md).
HOLE = 0.25


@pytest.fixture(scope="module")
def frame() -> float:
    """The longest frame of the lab's cameras (the 1080p one runs at 12 fps)."""
    return 1 / 12


@pytest.fixture(scope="module")
def since() -> float:
    """When these tests began: test_cameras may have cut a camera just before."""
    return time.time()


@pytest.fixture(scope="module")
def recorded(lab_host, cameras, since):
    """Wait until every camera has three segments opened since these tests began."""
    gw = lab_host("gw")
    for camera in cameras:
        wait_for(
            lambda c=camera: len([r for r in index(gw, c["id"]) if r.start >= since]) >= 3,
            90,
            f"3 new segments of {camera['id']}",
        )
    return gw


def test_every_camera_is_recorded_without_holes(recorded, cameras, frame, since):
    """Every stream profile (B-frames, H.265 open GOP, 1080p): no frame lost between two segments.

    A segment starts at its keyframe; in an open GOP the few frames that follow it in the file are
    shown before it, so the index has a hole of exactly their duration where the files have none
    (docs/streams.md).
    """
    gw = recorded
    for camera in cameras:
        rows = [r for r in index(gw, camera["id"]) if r.start >= since]
        for before, after in itertools.pairwise(rows):
            shown_before = frames(gw, path(camera["id"], before))
            shown_after = frames(gw, path(camera["id"], after))
            end = max(f["pts"] + f["duration"] for f in shown_before)
            first = min(f["pts"] for f in shown_after)
            assert abs(first - end) <= frame + 1e-3, (camera["id"], before.name, after.name, first - end)
            leading = shown_after[0]["pts"] - first  # shown before the keyframe that opens the segment
            assert abs(after.start - before.end - leading) < 0.002, (camera["id"], before.name, after.name)
        assert status(gw, camera["id"])["state"] == "recording"


def indexed_soon(gw, camera: str, finished: set[str]) -> list[Segment]:
    """The camera's index once it lists every one of `finished` (a test failure if it does not within 10 s)."""
    rows: list[Segment] = []

    def complete() -> bool:
        rows[:] = index(gw, camera)
        return finished <= {r.name for r in rows}

    wait_for(complete, 10, f"every finished segment of {camera} to be indexed",
             detail=lambda: f": never indexed {sorted(finished - {r.name for r in rows})}")  # fmt: skip
    return rows


def test_every_segment_decodes_and_the_index_agrees_with_the_files(recorded, cameras):
    gw = recorded
    for camera in cameras:
        on_disk = set(gw.check_output(f"find {STORE}/{camera['id']} -name '*.ts' -printf '%f\\n'").split())
        # Only the segment being written (the newest) is unindexed for long: a finished one gets its
        # index line within the recorder's next turn (a second, more on a busy machine).
        rows = indexed_soon(gw, camera["id"], on_disk - {max(on_disk)})
        for row in rows[-6:]:
            assert gw.file(path(camera["id"], row)).size == row.size, row
            assert len(packets(gw, path(camera["id"], row))) > 0, row
        for row in rows[-3:]:
            # Decodes without a word from ffmpeg, and carries the picture only, never the camera's sound.
            decoded = gw.run(f"ffmpeg -nostdin -v error -i {path(camera['id'], row)} -f null -")
            assert decoded.rc == 0 and decoded.stderr.strip() == "", (camera["id"], row.name, decoded.stderr[-500:])
            assert streams(gw, path(camera["id"], row)) == ["video"], (camera["id"], row.name)


def test_the_recorder_is_confined_by_systemd(recorded, cameras):
    gw = recorded
    camera = cameras[0]["id"]
    pid = gw.check_output(f"systemctl show -p MainPID --value halfbridge-recorder@{camera}")
    mounts = gw.check_output(f"cat /proc/{pid}/mountinfo")
    root = next(line for line in mounts.splitlines() if line.split()[4] == "/")
    assert " ro," in f" {root.split()[5]},", "the system is read-only for the recorder"
    assert any(line.split()[4] == f"{STORE}/{camera}" and "rw" in line.split()[5] for line in mounts.splitlines())
    user = gw.check_output(f"ps -o user= -p {pid}")
    assert user == "halfbridge"
    config = gw.file(f"/etc/halfbridge/recorder/{camera}.json")
    assert (config.user, config.group, config.mode) == ("root", "halfbridge", 0o640)
    assert host_var("gw", "halfbridge_cameras")[0]["password"] not in gw.check_output("ps -eo args")


def relay_cameras(gw, pp) -> dict[str, dict]:
    """/v1/cameras as the PP sees it."""
    relay = json.loads(gw.check_output("cat /etc/halfbridge/relay.json"))
    status, body = get_json(pp, f"https://{relay['listen_host']}:{relay['listen_port']}/v1/cameras")
    assert status == 200, body
    return {c["id"]: c for c in body["cameras"]}


def test_an_outage_is_an_exact_gap_and_only_that_camera_loses_anything(recorded, lab_host, cameras):
    """A camera goes off, comes back sending only sound (which ffmpeg refuses to record), then its picture."""
    gw, cams, pp = recorded, lab_host("cams"), lab_host("pp")
    down, others = cameras[1]["id"], [c["id"] for c in cameras if c["id"] != cameras[1]["id"]]
    cap = host_var("gw", "recorder_backoff_cap")
    settings = f"/etc/halfbridge-camsim/{down}.json"
    deployed = cams.file(settings).content_string
    cut = float(cams.check_output(f"systemctl stop halfbridge-camsim@{down} && date +%s.%N"))
    try:
        wait_for(lambda: status(gw, down).get("state") == "down", 30, f"{down} reported down")
        # Back, but with its sound only: the recorder says why, in ffmpeg's first words.
        refusing = {**json.loads(deployed), "codec": "none", "profile": "", "audio": "aac"}
        put(cams, settings, json.dumps(refusing).encode(), owner="root:camsim", mode="0640")
        cams.check_output(f"systemctl start halfbridge-camsim@{down}")
        refused = "Stream map '0:v:0' matches no streams."
        wait_for(lambda: status(gw, down).get("last_error") == refused, cap + 20, f"{down}'s refusal reported")
        said = relay_cameras(gw, pp)[down]
        assert (said["state"], said["last_error"], said["recording"]) == ("down", refused, False), said
        time.sleep(max(0.0, 30 - (time.time() - cut)))
    finally:
        put(cams, settings, deployed.encode(), owner="root:camsim", mode="0640")
        cams.run(f"systemctl reset-failed halfbridge-camsim@{down}")  # whatever the test did, start afresh
        back = float(cams.check_output(f"systemctl restart halfbridge-camsim@{down} && date +%s.%N"))
    wait_for(lambda: status(gw, down).get("state") == "recording", cap + 15, f"{down} recording again")
    wait_for(lambda: index(gw, down)[-1].start > back, 60, f"a segment of {down} after the outage")
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(spans(index(gw, down), tolerance=HOLE)) if b[0] > cut - 60]
    assert len(gaps) == 1, f"{down}: expected exactly one gap, got {gaps}"
    gap_start, gap_end = gaps[0]
    assert cut - 1.5 <= gap_start <= cut + 0.5, "the gap starts when the camera went down"
    # At worst: an attempt made while the camera was starting hangs until the RTSP timeout, then one
    # full capped back-off, then the connection and the first keyframe (a few seconds on a busy lab).
    worst = cap + host_var("gw", "recorder_rtsp_timeout") + 4
    assert back - 0.5 <= gap_end <= back + worst, "recording resumed within the RTSP timeout and the back-off cap"
    for camera in others:
        window = [r for r in index(gw, camera) if r.end > cut - 10 and r.start < back + 10]
        assert len(spans(window, tolerance=HOLE)) == 1, f"{camera} lost something during the outage"
    log = gw.check_output(f"journalctl -u halfbridge-recorder@{down} --since @{int(cut) - 1} -o cat")
    assert log.count("down since") == 1, log
    assert f"answers again, but its stream cannot be recorded: {refused}" in log
    assert "recording again after" in log
    audit_cli = "/opt/halfbridge/venv/bin/halfbridge-audit"
    audit = gw.check_output(f"{audit_cli} query {AUDIT} --event recorder --field camera={down}")
    events = [json.loads(line) for line in audit.splitlines()]
    events = [e for e in events if e["time"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut - 2))]
    assert [e["event"] for e in events] == ["recorder.down", "recorder.down", "recorder.up"], events
    assert events[1]["reason"] == refused, "the history says why the gap went on"
    assert gw.run(f"{audit_cli} verify {AUDIT}").rc == 0


def test_a_killed_recorder_loses_at_most_its_segment_in_flight(recorded, cameras, frame):
    gw = recorded
    camera = cameras[2]["id"]
    segment = host_var("gw", "recorder_segment_seconds")
    # Kill it mid-segment: a few seconds after the last cut, well before the next one.
    wait_for(lambda: 3 < time.time() - index(gw, camera)[-1].end < segment - 3, 60, "the middle of a segment")
    before = index(gw, camera)
    gw.check_output(f"systemctl kill --signal=KILL halfbridge-recorder@{camera}")
    killed = time.time()
    wait_for(lambda: index(gw, camera) and index(gw, camera)[-1].start > killed, 60, "recording after the crash")
    after = index(gw, camera)
    assert before == after[: len(before)], "a segment indexed before the crash was lost or changed"
    new = after[len(before) :]
    assert new[0].flags == "recovered", "the segment in flight is measured and indexed after the crash"
    assert abs(new[0].start - before[-1].end) < 0.002
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(spans(after, tolerance=HOLE)) if b[0] > killed - 30]
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] < 10, f"only the restart is missing: {gaps}"
