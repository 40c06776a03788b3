"""The retention cron on the lab gateway: after a run nothing older than 10 days is left, nothing younger is gone.

A synthetic store (real short TS files and their index, a segment opened every
hour for 12 days up to now) is put beside the real cameras' recordings; the
command of the installed cron entry is run as cron runs it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from halfbridge.store import SEGMENT_STRFTIME, utc
from tests.support.inventory import container, host_var
from tests.support.media import make_clip
from tests.support.store import build_store
from tests.support.waiting import wait_for

STORE = "/srv/halfbridge/recordings"
AUDIT = "/var/log/halfbridge/audit.log"
CRON = "/etc/cron.d/halfbridge-retention"
DAY = 86400
SYNTHETIC = ["synthetic-a", "synthetic-b"]


def cron_command(gw) -> tuple[str, str]:
    """The user and command of the installed cron entry."""
    lines = [line for line in gw.file(CRON).content_string.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    return fields[5], fields[6]


def run_as_cron(gw) -> None:
    """Run the cron entry's command as its user; a run cron started at the same moment is waited for."""
    user, command = cron_command(gw)
    wait_for(lambda: gw.run(f"runuser -u {user} -- sh -c {shlex.quote(command)}").rc == 0, 120, "a retention run")


def register(gw, camera: str) -> list[dict]:
    out = gw.check_output(
        f"/opt/halfbridge/venv/bin/halfbridge-audit query {AUDIT} --with-rotations --event retention.destroyed "
        f"--field camera={camera}"
    )
    return [json.loads(line) for line in out.splitlines()]


def on_disk(gw, camera: str) -> Counter:
    """Segment files per day directory (YYYY/MM/DD) of a camera."""
    out = gw.run(f"cd {STORE}/{camera} 2>/dev/null && find . -name '*.ts' -printf '%h\\n'").stdout
    return Counter(line.removeprefix("./") for line in out.split())


@pytest.fixture(scope="module")
def synthetic(lab_host, tmp_path_factory):
    """Build the store here, copy it to the gateway, and put it in place with one rename per camera."""
    gw = lab_host("gw")
    work = tmp_path_factory.mktemp("store")
    clip = make_clip(work / "clip.ts", seconds=1)
    now = time.time()
    # Segments last 10 minutes: the one opened exactly 10 days ago ends 10 minutes after the
    # cutoff of a run started now, and the one before it ended 50 minutes before: the run may
    # start up to 10 minutes late and still see the same segments on either side.
    built = build_store(work / "recordings", SYNTHETIC, now - 12 * DAY, now - 600, 3600, 600, Path(clip).read_bytes())
    # An unindexed segment opened 5 minutes before the cutoff: the one being written, it must survive.
    writing = utc(now - 10 * DAY - 300)
    name = writing.strftime(SEGMENT_STRFTIME) + ".ts"
    being_written = f"{SYNTHETIC[0]}/{writing:%Y/%m/%d}/{name}"
    (work / "recordings" / being_written).write_bytes(b"still being written")
    staging = "/var/tmp/synthetic-store"
    gw.run_expect([0], f"rm -rf {staging} && mkdir -p {staging}")
    subprocess.run(["podman", "cp", f"{work}/recordings/.", f"{container('gw')}:{staging}"], check=True, timeout=120)
    gw.run_expect([0], f"chown -R halfbridge:halfbridge {staging} && touch {staging}/{being_written}")
    for camera in SYNTHETIC:
        gw.run_expect([0], f"rm -rf {STORE}/{camera} && mv {staging}/{camera} {STORE}/{camera}")
    return {"built": built, "now": now, "being_written": being_written}


@pytest.fixture(scope="module")
def purged(lab_host, synthetic):
    gw = lab_host("gw")
    # The history survives a rotation by its writer: the run below writes into the fresh file, chained from the old.
    before = gw.run("ls /var/log/halfbridge/audit-*.log").stdout.split()
    gw.run_expect([0], "systemctl reload halfbridge-auditd")
    wait_for(lambda: len(gw.run("ls /var/log/halfbridge/audit-*.log").stdout.split()) > len(before), 20, "a rotation")
    gw.run_expect([0], "logrotate --force /etc/logrotate.d/halfbridge")  # the services' logs, not the audit log
    real = {c["id"]: on_disk(gw, c["id"]) for c in host_var("gw", "halfbridge_cameras")}
    run_as_cron(gw)
    return {**synthetic, "real_before": real}


def test_nothing_older_than_the_retention_is_left_and_nothing_younger_is_gone(lab_host, purged):
    gw = lab_host("gw")
    cutoff = purged["now"] - 10 * DAY
    for camera in SYNTHETIC:
        expected = Counter()
        for (cam, day), segments in purged["built"].items():
            if cam == camera:
                expected[f"{day:%Y/%m/%d}"] += sum(1 for s in segments if s.end > cutoff)
        if camera == SYNTHETIC[0]:
            expected[purged["being_written"].split("/", 1)[1].rsplit("/", 1)[0]] += 1
        assert on_disk(gw, camera) == +expected, camera
        index = gw.run(f"find {STORE}/{camera} -name index.csv -exec cat {{}} +").stdout.splitlines()
        assert min(float(line.split(",")[1]) for line in index) > cutoff
        assert len(index) == sum(expected.values()) - (camera == SYNTHETIC[0])
    assert gw.file(f"{STORE}/{purged['being_written']}").exists, "the segment being written survived"


def test_the_register_says_exactly_what_was_destroyed(lab_host, purged):
    gw = lab_host("gw")
    cutoff = purged["now"] - 10 * DAY
    size = None
    for camera in SYNTHETIC:
        destroyed = Counter()
        for (cam, day), segments in purged["built"].items():
            if cam == camera:
                destroyed[day.isoformat()] += sum(1 for s in segments if s.end <= cutoff)
                size = segments[0].size
        entries = register(gw, camera)
        assert {e["day"]: e["count"] for e in entries} == +destroyed, camera
        assert all(e["bytes"] == e["count"] * size for e in entries)
        assert all(e["retention_days"] == 10 for e in entries)
    rotated = sorted(gw.run("ls /var/log/halfbridge/audit-*.log*").stdout.split())
    assert rotated and json.loads(gw.check_output(f"head -n 1 {AUDIT}"))["event"] == "audit.rotated"
    verified = gw.run(f"/opt/halfbridge/venv/bin/halfbridge-audit verify {' '.join(rotated)} {AUDIT}")
    assert verified.rc == 0, verified.stdout


def test_a_second_run_destroys_nothing_and_the_cameras_recordings_are_untouched(lab_host, purged):
    gw = lab_host("gw")
    before = {camera: register(gw, camera) for camera in SYNTHETIC}
    files_before = {camera: on_disk(gw, camera) for camera in SYNTHETIC}
    run_as_cron(gw)
    assert {camera: register(gw, camera) for camera in SYNTHETIC} == before
    assert {camera: on_disk(gw, camera) for camera in SYNTHETIC} == files_before
    for camera, counts in purged["real_before"].items():
        now = on_disk(gw, camera)
        assert all(now[day] >= n for day, n in counts.items()), f"{camera} lost recordings"


def test_cron_runs_it_as_the_service_user_and_the_audit_writer_keeps_a_year_of_history(lab_host):
    gw = lab_host("gw")
    user, command = cron_command(gw)
    assert user == "halfbridge" and "halfbridge-retention /etc/halfbridge/retention.json" in command
    assert gw.service("cron").is_running and gw.service("cron").is_enabled
    config = json.loads(gw.check_output("cat /etc/halfbridge/retention.json"))
    assert config["retention_days"] == host_var("gw", "halfbridge_convention")["retention_days"]
    rules = gw.file("/etc/logrotate.d/halfbridge").content_string
    assert f"{AUDIT} {{" not in rules, "logrotate never renames the audit log under its writer"
    writer = json.loads(gw.check_output("cat /etc/halfbridge/auditd.json"))
    assert writer["keep_days"] >= 365, "a year of authentications is kept"


def test_the_disk_guard_reports_what_the_retention_still_needs(lab_host, purged):
    gw = lab_host("gw")
    text = gw.check_output("cat /var/lib/prometheus/node-exporter/halfbridge_retention.prom")
    metrics = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    blocks, block_size = map(int, gw.check_output(f"stat -f -c '%a %S' {STORE}").split())
    free = blocks * block_size
    assert abs(metrics["halfbridge_disk_free_bytes"] - free) < 0.05 * free
    assert metrics["halfbridge_disk_needed_bytes"] > 0, "the cameras record: ten days of them need room"
    short = metrics["halfbridge_disk_free_bytes"] < metrics["halfbridge_disk_needed_bytes"]
    assert metrics["halfbridge_disk_short"] == int(short)
    log = gw.check_output("cat /var/log/halfbridge/retention.log")
    assert ("disk guard:" in log) == short, log[-2000:]
