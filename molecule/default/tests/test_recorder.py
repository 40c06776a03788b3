"""The recorder on the lab gateway: every camera recorded, continuously, surviving outages and crashes.

The lab cuts 10 s segments (inventories/lab/group_vars/halfbridge_gateway.yml)
so that these tests see several of them within a minute.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest

from halfbridge.store import Segment, Store, spans
from tests.support.inventory import host_var
from tests.support.waiting import wait_for

STORE = "/srv/halfbridge/recordings"
STATE = "/var/lib/halfbridge/recorder"
AUDIT = "/var/log/halfbridge/audit.log"


def index(gw, camera: str) -> list[Segment]:
    """Every indexed segment of a camera, in time order, read as the store reads its indexes."""
    # run(), not check_output(): the latter strips the last newline, and a line without one is torn.
    result = gw.run(f"find {STORE}/{camera} -name index.csv -exec cat {{}} +")
    assert result.rc == 0, result.stderr
    return sorted(seg for line in result.stdout.splitlines(keepends=True) if (seg := Segment.parse(line)) is not None)


def path(camera: str, segment: Segment) -> str:
    return str(Store(STORE).segment_path(camera, segment.name))


def packets(gw, path: str) -> list[tuple[float, float]]:
    out = gw.check_output(
        f"ffprobe -v error -select_streams v:0 -show_entries packet=pts_time,duration_time -of json {path}"
    )
    return [(float(p["pts_time"]), float(p.get("duration_time", 0.04))) for p in json.loads(out)["packets"]]


def status(gw, camera: str) -> dict:
    result = gw.run(f"cat {STATE}/{camera}.status.json")
    return json.loads(result.stdout) if result.rc == 0 else {}


@pytest.fixture(scope="module")
def frame() -> float:
    return 1 / 25


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
    gw = recorded
    for camera in cameras:
        rows = [r for r in index(gw, camera["id"]) if r.start >= since]
        for before, after in itertools.pairwise(rows):
            assert abs(after.start - before.end) < 0.002, (camera["id"], before.name, after.name)
            last_pts, last_duration = packets(gw, path(camera["id"], before))[-1]
            first_pts = packets(gw, path(camera["id"], after))[0][0]
            assert abs(first_pts - (last_pts + last_duration)) <= frame + 1e-3, (before.name, after.name)
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


def test_an_outage_is_an_exact_gap_and_only_that_camera_loses_anything(recorded, lab_host, cameras, frame):
    gw, cams = recorded, lab_host("cams")
    down, others = cameras[1]["id"], [c["id"] for c in cameras if c["id"] != cameras[1]["id"]]
    cap = host_var("gw", "recorder_backoff_cap")
    cut = float(cams.check_output(f"systemctl stop halfbridge-camsim@{down} && date +%s.%N"))
    wait_for(lambda: status(gw, down).get("state") == "down", 30, f"{down} reported down")
    time.sleep(max(0.0, 30 - (time.time() - cut)))
    back = float(cams.check_output(f"systemctl start halfbridge-camsim@{down} && date +%s.%N"))
    wait_for(lambda: status(gw, down).get("state") == "recording", cap + 15, f"{down} recording again")
    wait_for(lambda: index(gw, down)[-1].start > back, 60, f"a segment of {down} after the outage")
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(spans(index(gw, down), tolerance=2 * frame)) if b[0] > cut - 60]
    assert len(gaps) == 1, f"{down}: expected exactly one gap, got {gaps}"
    gap_start, gap_end = gaps[0]
    assert cut - 1.5 <= gap_start <= cut + 0.5, "the gap starts when the camera went down"
    # At worst: an attempt made while the camera was starting hangs until the RTSP timeout, then one
    # full capped back-off, then the connection and the first keyframe (a few seconds on a busy lab).
    worst = cap + host_var("gw", "recorder_rtsp_timeout") + 4
    assert back - 0.5 <= gap_end <= back + worst, "recording resumed within the RTSP timeout and the back-off cap"
    for camera in others:
        window = [r for r in index(gw, camera) if r.end > cut - 10 and r.start < back + 10]
        assert len(spans(window, tolerance=2 * frame)) == 1, f"{camera} lost something during the outage"
    log = gw.check_output(f"journalctl -u halfbridge-recorder@{down} --since @{int(cut) - 1} -o cat")
    assert log.count("down since") == 1, log
    assert "recording again after" in log
    audit_cli = "/opt/halfbridge/venv/bin/halfbridge-audit"
    audit = gw.check_output(f"{audit_cli} query {AUDIT} --event recorder --field camera={down}")
    events = [json.loads(line) for line in audit.splitlines()]
    assert [e["event"] for e in events if e["time"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut - 2))] == [
        "recorder.down",
        "recorder.up",
    ]
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
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(spans(after, tolerance=2 * frame)) if b[0] > killed - 30]
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] < 10, f"only the restart is missing: {gaps}"
