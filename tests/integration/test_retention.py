"""halfbridge-retention as cron runs it: a real process over a real store, killed midway and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from halfbridge.audit import query
from halfbridge.store import INDEX_NAME, Segment
from tests.support.auditd import Auditd
from tests.support.store import build_store, files
from tests.support.waiting import wait_for

DAY = 86400
RETENTION = str(Path(sys.executable).parent / "halfbridge-retention")
# A real tracking line of chrony 4.3, synchronised (tests/unit/test_clock.py): the clock guard lets the run go on.
TRACKING = (
    "7F000001,127.0.0.1,9,1796214111.605051148,-0.000000825,0.000001250,0.000001250,-0.545,0.000,9.323,"
    "0.000011133,0.000030722,2.0,Normal"
)


def synchronised(tmp_path: Path) -> dict:
    """The environment of a run whose chronyd says the clock is synchronised: a `chronyc` first on the PATH."""
    chronyc = tmp_path / "bin" / "chronyc"
    chronyc.parent.mkdir(exist_ok=True)
    chronyc.write_text(f"#!/bin/sh\necho '{TRACKING}'\n")
    chronyc.chmod(0o755)
    return {**os.environ, "PATH": f"{chronyc.parent}:{os.environ['PATH']}"}


def test_a_run_killed_midway_leaves_indexes_true_and_the_next_one_registers_everything_once(tmp_path):
    now = time.time()
    root = tmp_path / "recordings"
    auditd = Auditd(tmp_path).spawn()
    audit = auditd.log
    cameras = [f"cam-{n:02d}" for n in range(16)]
    # 16 cameras x 1440 one-minute segments a day, from 12 days ago: 2 days (46,080 files) have expired...
    expired = build_store(root, cameras, now - 12 * DAY, now - 10 * DAY - 120, 60, mtimes=False)
    # ...and the 10 days after them are kept (a segment an hour is enough to see they stay).
    kept = build_store(root, cameras, now - 10 * DAY + 3600, now - 60, 3600, mtimes=False)
    expired_count = sum(len(s) for s in expired.values())
    config = tmp_path / "retention.json"
    config.write_text(
        json.dumps(
            {
                "store_root": str(root),
                "retention_days": 10,
                "audit_log": str(audit),
                "state_dir": str(tmp_path / "s"),
                "audit_socket": str(auditd.socket),
                "metrics_file": str(tmp_path / "halfbridge_retention.prom"),
            }
        )
    )
    environment = synchronised(tmp_path)

    # At the lowest priority, so that this test's polling catches it early whatever the machine's load.
    run = subprocess.Popen(["nice", "-n", "19", RETENTION, str(config)], stderr=subprocess.PIPE, env=environment)
    wait_for(lambda: b"retention.destroyed" in audit.read_bytes(), 60, "the first register entry", interval=0.002)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    registered = sum(e["count"] for e in query([audit], event="retention.destroyed"))
    assert registered < expired_count, "the run finished before it could be killed: make the store bigger"

    for index in root.rglob(INDEX_NAME):
        for line in index.read_text().splitlines(keepends=True):
            segment = Segment.parse(line)
            assert (index.parent / segment.name).exists(), f"{index} lists {segment.name}, which is gone"

    again = subprocess.run([RETENTION, str(config)], capture_output=True, text=True, timeout=120, env=environment)
    assert again.returncode == 0, again.stderr
    entries = list(query([audit], event="retention.destroyed"))
    assert sum(e["count"] for e in entries) == expired_count, "every destruction is registered exactly once"
    assert len({(e["camera"], e["day"]) for e in entries}) == len(entries)
    assert files(root) == {
        str(Path(camera, day.strftime("%Y/%m/%d"), segment.name))
        for (camera, day), segments in kept.items()
        for segment in segments
    }
    auditd.stop()
    assert auditd.verify().ok
    assert os.listdir(root) == [] or sorted(os.listdir(root)) == cameras


def test_a_second_run_waits_for_none_and_says_why_it_stops(tmp_path):
    root = tmp_path / "recordings"
    build_store(root, ["cam-01"], time.time() - 11 * DAY, time.time() - 11 * DAY, 60)
    config = tmp_path / "retention.json"
    state = tmp_path / "s"
    config.write_text(
        json.dumps(
            {"store_root": str(root), "retention_days": 10, "audit_log": str(tmp_path / "a"), "state_dir": str(state)}
        )
    )
    state.mkdir()
    holder = subprocess.Popen(
        ["flock", str(state / "retention.lock"), "sleep", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: subprocess.run(["flock", "-n", str(state / "retention.lock"), "true"]).returncode, 10, "lock")
        second = subprocess.run([RETENTION, str(config)], capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait(10)
    assert second.returncode == 1
    assert "another retention run holds" in second.stderr
    assert len(files(root)) == 1
