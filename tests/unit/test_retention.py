"""Retention: nothing older than the cutoff survives, nothing younger is touched, every destruction is registered."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from halfbridge import clock as clock_module
from halfbridge import retention as retention_module
from halfbridge.audit import AuditClient, query
from halfbridge.cli import retention_main
from halfbridge.holds import Holds
from halfbridge.retention import (
    JOURNAL_NAME,
    PARALLEL_CAMERAS,
    Destruction,
    Retention,
    RetentionConfig,
    RetentionError,
    journal_id,
)
from halfbridge.store import Segment, Store, utc
from tests.support.auditd import Auditd
from tests.support.store import build_store, files

NOW = dt.datetime(2026, 11, 29, 9, 30, tzinfo=dt.UTC).timestamp()
DAY = 86400
HOUR = 3600
CAMERAS = ["ver-gare-01", "sqy-mairie-03"]
# chronyd's word on the clock, from real `chronyc -n -c tracking` lines (chrony 4.3; tests/unit/test_clock.py).
SYNCHRONISED = clock_module.parse_tracking(
    "7F000001,127.0.0.1,9,1796214111.605051148,-0.000000825,0.000001250,0.000001250,-0.545,0.000,9.323,"
    "0.000011133,0.000030722,2.0,Normal\n"
)
UNSYNCHRONISED = clock_module.parse_tracking(
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,0.0,"
    "Not synchronised\n"
)


@pytest.fixture(autouse=True)
def auditd(tmp_path):
    """The audit writer every run registers its destructions with."""
    with Auditd(tmp_path) as writer:
        yield writer


def config(tmp_path, **overrides) -> RetentionConfig:
    values = {
        "store_root": tmp_path / "recordings",
        "retention_days": 10,
        "audit_log": tmp_path / "log" / "audit.log",
        "audit_socket": tmp_path / "audit.sock",
        "state_dir": tmp_path / "state",
        "disk_margin_hours": 0,
        "metrics_file": tmp_path / "textfile" / "halfbridge_retention.prom",
    }
    values.update(overrides)
    values["metrics_file"].parent.mkdir(parents=True, exist_ok=True)
    return RetentionConfig(**values)


def retention(tmp_path, now: float = NOW, clock: dict = SYNCHRONISED, **overrides) -> Retention:
    """A retention whose clock says `now`, and which chronyd says is as `clock` says."""
    (tmp_path / "recordings").mkdir(exist_ok=True)
    return Retention(config(tmp_path, **overrides), clock=lambda: now, clock_check=lambda: clock)


def register(tmp_path) -> list[dict]:
    log = tmp_path / "log" / "audit.log"
    return list(query([log], event="retention.destroyed")) if log.is_file() else []


@pytest.fixture
def twelve_days(tmp_path):
    """Two cameras, a 100-byte segment opened every hour, lasting 10 minutes, from 12 days ago up to now."""
    return build_store(tmp_path / "recordings", CAMERAS, NOW - 12 * DAY, NOW - 600, HOUR, 600, b"x" * 100)


def test_everything_that_ended_before_the_cutoff_goes_and_nothing_younger(tmp_path, twelve_days):
    cutoff = NOW - 10 * DAY
    report = retention(tmp_path).run()
    store = Store(tmp_path / "recordings")
    for (camera, day), built in twelve_days.items():
        survivors = [s for s in built if s.end > cutoff]
        assert store.index(camera, day) == survivors, (camera, day)
        on_disk = sorted(os.listdir(store.day_dir(camera, day))) if survivors else []
        assert on_disk == sorted([s.name for s in survivors] + ["index.csv"] * bool(survivors)), (camera, day)
    expired = [s for segs in twelve_days.values() for s in segs if s.end <= cutoff]
    assert report.count == len(expired) == 2 * (15 + 24 + 9)  # per camera: 17 Nov from 09:30, 18 Nov, 19 Nov to 09:30
    entries = register(tmp_path)
    assert sum(e["count"] for e in entries) == len(expired)
    assert sum(e["bytes"] for e in entries) == 100 * len(expired)
    by_day = {(e["camera"], e["day"]): e for e in entries}
    first_day = dt.date(2026, 11, 17)
    entry = by_day["ver-gare-01", first_day.isoformat()]
    assert entry["count"] == 15  # 09:30 to 23:30
    assert entry["first"] == "2026-11-17T09:30:00.000Z"
    assert entry["last"] == "2026-11-17T23:40:00.000Z"
    assert entry["retention_days"] == 10


def test_the_register_figures_come_from_whole_lines_only():
    data = (
        b"1795080600.000,1795080660.000,100,20261119T093000Z.ts,\n"
        b"1795080000.000,1795080600.000,50,20261119T092000Z.ts,unindexed\n"
        b"1795080660.000,1795080720.000,70,20261119T093100Z.ts,\n"
        b"1795080720.000,17950807"  # torn by a crash: not a segment
    )
    figures, names = Destruction.scan("ver-gare-01", dt.date(2026, 11, 19), data)
    assert (figures.count, figures.bytes, figures.unindexed) == (3, 220, 1)
    assert (figures.first, figures.last) == (1795080000.0, 1795080720.0)
    assert names == {b"20261119T093000Z.ts", b"20261119T092000Z.ts", b"20261119T093100Z.ts"}
    # Times of other lengths (before 2001, or hand-edited) are compared as numbers.
    figures, _ = Destruction.scan("x", dt.date(2026, 11, 19), b"999.000,1000.000,1,a.ts,\n10.000,99.000,1,b.ts,\n")
    assert (figures.first, figures.last) == (10.0, 1000.0)


def test_a_second_run_destroys_nothing(tmp_path, twelve_days):
    retention(tmp_path).run()
    before = files(tmp_path / "recordings")
    report = retention(tmp_path).run()
    assert report.count == 0
    assert files(tmp_path / "recordings") == before
    assert len(register(tmp_path)) == 6  # 2 cameras x 3 days, from the first run only


def test_a_segment_across_the_cutoff_is_kept_whole(tmp_path):
    cutoff = NOW - 10 * DAY
    build_store(tmp_path / "recordings", ["ver-gare-01"], cutoff - 30, cutoff - 30, 60, 60, b"ts")
    assert retention(tmp_path).run().count == 0
    assert len(files(tmp_path / "recordings")) == 1


def test_the_segment_being_written_survives_and_an_old_orphan_goes(tmp_path):
    cutoff = NOW - 10 * DAY
    store = Store(tmp_path / "recordings")
    build_store(store.root, ["ver-gare-01"], cutoff - 600, cutoff - 600, 60, 60, b"ts")
    day = store.day_dir("ver-gare-01", dt.date(2026, 11, 19))
    # Opened before the cutoff, not indexed: still being written (it was written a moment ago)...
    (day / "20261119T092800Z.ts").write_bytes(b"being written")
    # ...and a crash's leftover that nothing has written since before the cutoff.
    leftover = day / "20261119T090000Z.ts"
    leftover.write_bytes(b"crash leftover")
    os.utime(leftover, (cutoff - 3000, cutoff - 3000))
    retention(tmp_path).run()
    assert sorted(os.listdir(day)) == ["20261119T092800Z.ts"]
    (entry,) = register(tmp_path)
    assert (entry["count"], entry["unindexed"], entry["bytes"]) == (2, 1, 2 + len(b"crash leftover"))


def test_emptied_directories_go_up_to_the_camera(tmp_path):
    build_store(tmp_path / "recordings", ["ver-gare-01"], NOW - 40 * DAY, NOW - 39 * DAY, HOUR)
    build_store(tmp_path / "recordings", ["ver-gare-01"], NOW - 2 * HOUR, NOW - HOUR, HOUR)
    retention(tmp_path).run()
    camera = tmp_path / "recordings" / "ver-gare-01"
    assert sorted(str(p.relative_to(camera)) for p in camera.rglob("*") if p.is_dir()) == [
        "2026",
        "2026/11",
        "2026/11/29",
    ]


def test_temporary_files_of_a_crashed_run_do_not_keep_a_directory(tmp_path):
    built = build_store(tmp_path / "recordings", ["ver-gare-01"], NOW - 11 * DAY, NOW - 11 * DAY, 60)
    (directory,) = {Store(tmp_path / "recordings").day_dir(c, d) for c, d in built}
    (directory / f"{JOURNAL_NAME}.tmp").write_text("half a jour")
    (directory / ".index.csv.4242").write_text("half an ind")
    retention(tmp_path).run()
    assert not directory.exists()


def test_cameras_out_of_the_referential_are_purged_too(tmp_path):
    build_store(tmp_path / "recordings", ["retired-cam-09"], NOW - 11 * DAY, NOW - 11 * DAY, 60)
    assert retention(tmp_path).run().count == 1
    assert files(tmp_path / "recordings") == set()


@pytest.mark.parametrize("killed_after", ["journal", "index", "half of the files", "register entry"])
def test_a_run_killed_midway_is_finished_and_registered_once(tmp_path, twelve_days, killed_after):
    """The state a SIGKILL leaves after each step: the index never lists a missing file; the next run completes."""
    store = Store(tmp_path / "recordings")
    camera, day = "ver-gare-01", dt.date(2026, 11, 18)
    built = twelve_days[camera, day]
    directory = store.day_dir(camera, day)
    journal = "".join(s.line() for s in built)
    (directory / JOURNAL_NAME).write_text(journal)
    steps = ["journal", "index", "half of the files", "register entry"]
    done = steps[: steps.index(killed_after) + 1]
    if "index" in done:
        with store.locked_index(camera, day) as fd:
            store.replace_index(fd, camera, day, [])
    if "half of the files" in done:
        for segment in built[: len(built) // 2] if killed_after == "half of the files" else built:
            (directory / segment.name).unlink()
    if "register entry" in done:
        AuditClient(tmp_path / "audit.sock").append(
            "retention.destroyed",
            camera=camera,
            day=day.isoformat(),
            count=24,
            purge=journal_id(camera, day, journal.encode()),
        )
    for segment in store.index(camera, day):
        assert (directory / segment.name).exists()
    retention(tmp_path).run()
    entries = [e for e in register(tmp_path) if (e["camera"], e["day"]) == (camera, day.isoformat())]
    assert [e["count"] for e in entries] == [24]
    assert entries[0]["purge"] == journal_id(camera, day, journal.encode())
    assert not directory.exists()
    expired = sum(1 for segs in twelve_days.values() for s in segs if s.end <= NOW - 10 * DAY)
    assert sum(e["count"] for e in register(tmp_path)) == expired


def test_without_the_audit_writer_nothing_is_destroyed_unregistered(tmp_path, twelve_days, auditd):
    auditd.stop()  # the writer is down: nothing can be registered
    with pytest.raises(RetentionError, match="not registered yet"):
        retention(tmp_path).run()
    # Each camera being purged (PARALLEL_CAMERAS at a time) stops at its first day, whose journal stays.
    journals = list((tmp_path / "recordings").rglob(JOURNAL_NAME))
    assert 1 <= len(journals) <= PARALLEL_CAMERAS
    assert len({j.parts[-5] for j in journals}) == len(journals), "one stopped camera-day per camera"
    auditd.start()
    retention(tmp_path).run()
    assert not list((tmp_path / "recordings").rglob(JOURNAL_NAME))
    entries = register(tmp_path)
    assert sum(e["count"] for e in entries) == 96
    assert sum(1 for e in entries if e.get("resumed")) == len(journals)


def test_a_full_disk_destroys_files_first_and_still_registers(tmp_path, twelve_days, monkeypatch, caplog):
    def no_room(journal, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(retention_module, "_write_journal", no_room)
    with caplog.at_level(logging.ERROR):
        report = retention(tmp_path).run()
    assert "the disk is full; destroying" in caplog.text
    assert report.count == 96
    store = Store(tmp_path / "recordings")
    for (camera, day), built in twelve_days.items():
        assert store.index(camera, day) == [s for s in built if s.end > NOW - 10 * DAY]
    entries = register(tmp_path)
    assert sum(e["count"] for e in entries) == 96
    # A day over a day before the cutoff needs no room: its index is renamed to be the journal.
    assert {e["day"] for e in entries if e.get("without_journal")} == {"2026-11-18", "2026-11-19"}


def test_runs_never_overlap(tmp_path, twelve_days):
    state = tmp_path / "state"
    state.mkdir()
    fd = os.open(state / "retention.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RetentionError, match="another retention run"):
            retention(tmp_path).run()
    finally:
        os.close(fd)
    assert register(tmp_path) == []
    assert retention(tmp_path).run().count == 96


def test_a_shortened_retention_is_a_logged_decision(tmp_path, twelve_days, caplog):
    reason = "Disk failure on 2026-11-28, decided by the DSI (ticket 4312)"
    with caplog.at_level(logging.WARNING):
        report = retention(tmp_path, shortened_days=7, shortened_reason=reason).run()
    assert "retention shortened to 7 days (the convention says 10) by decision" in caplog.text
    assert report.count == 2 * (5 * 24)
    assert {(e["retention_days"], e["decision"]) for e in register(tmp_path)} == {(7, reason)}


def test_the_disk_guard_warns_and_deletes_nothing_younger(tmp_path, twelve_days, caplog):
    # Keeping 10 days with a margin of a billion hours of recording fits on no disk.
    with caplog.at_level(logging.ERROR):
        report = retention(tmp_path, disk_margin_hours=1e9).run()
    assert report.disk.short
    assert "disk guard:" in caplog.text and "nothing younger is deleted" in caplog.text
    assert report.count == 96
    metrics = (tmp_path / "textfile" / "halfbridge_retention.prom").read_text()
    assert "halfbridge_disk_short 1" in metrics
    assert "halfbridge_retention_destroyed_segments 96" in metrics


def test_the_disk_guard_measures_the_bitrate_and_what_is_missing(tmp_path, twelve_days):
    report = retention(tmp_path).run()
    # 100 bytes per 600-second segment, two cameras; each holds 10 days already, so nothing more is needed.
    assert report.disk.bytes_per_second == pytest.approx(2 * 100 / 600)
    assert report.disk.needed == 0 and not report.disk.short
    young = tmp_path / "young"
    build_store(young / "recordings", ["ver-gare-01"], NOW - DAY, NOW - 600, HOUR, 600, b"x" * 100)
    report = retention(young).run()
    # One day held: nine more at 1/6 byte per second.
    assert report.disk.needed == pytest.approx(9 * DAY * 100 / 600, rel=0.01)


def test_an_append_waiting_during_an_index_rewrite_is_not_lost(tmp_path):
    store = Store(tmp_path / "recordings")
    day = dt.date(2026, 11, 29)
    store.day_dir("ver-gare-01", day).mkdir(parents=True)
    old = Segment(NOW - 120, NOW - 60, 1, "20261129T092800Z.ts")
    new = Segment(NOW - 60, NOW, 1, "20261129T092900Z.ts")
    store.append("ver-gare-01", day, old)
    with store.locked_index("ver-gare-01", day) as fd:
        writer = threading.Thread(target=store.append, args=("ver-gare-01", day, new))
        writer.start()
        time.sleep(0.2)  # the recorder's append now waits for the lock
        store.replace_index(fd, "ver-gare-01", day, [old])
    writer.join(5)
    assert store.index("ver-gare-01", day) == [old, new]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"retention_days": 0}, "retention_days must be a whole number of days from 1 to"),
        ({"retention_days": True}, "retention_days must be a whole number of days"),
        ({"retention_days": 10**6}, "retention_days must be a whole number of days"),
        ({"shortened_days": 10}, "fewer than the convention's 10"),
        (
            {"shortened_days": True, "shortened_reason": "x"},
            "shortened_days must be a whole number of days from 1 to 9",
        ),
        ({"shortened_days": 5}, "needs shortened_reason"),
        ({"shortened_days": 5, "shortened_reason": ["x"]}, "needs shortened_reason"),
        ({"max_clock_jump_hours": 0}, "max_clock_jump_hours must be a number of hours above 0 and at most the"),
        ({"max_clock_jump_hours": 241}, "at most the retention's 240, not 241"),
        ({"max_clock_jump_hours": True}, "max_clock_jump_hours must be a number of hours"),
        ({"max_clock_jump_hours": "24"}, "max_clock_jump_hours must be a number of hours"),
    ],
)
def test_a_bad_configuration_is_a_sentence(tmp_path, overrides, message):
    values = {"store_root": "/srv/r", "retention_days": 10, "audit_log": "/var/log/a", "state_dir": "/var/lib/s"}
    path = tmp_path / "retention.json"
    path.write_text(json.dumps({**values, **overrides}))
    with pytest.raises(RetentionError, match=message):
        RetentionConfig.load(path)


def test_the_command_rehearses_with_a_dry_run_and_changes_nothing(tmp_path, twelve_days, capsys):
    values = config(tmp_path)
    path = tmp_path / "retention.json"
    path.write_text(json.dumps({k: str(v) if isinstance(v, os.PathLike) else v for k, v in vars(values).items()}))
    before = files(tmp_path / "recordings")
    later = dt.datetime.fromtimestamp(NOW + DAY, dt.UTC).isoformat()
    assert retention_main([str(path), "--dry-run", "--now", later]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(item["count"] for item in out) == 2 * 72
    assert files(tmp_path / "recordings") == before and register(tmp_path) == []
    with pytest.raises(SystemExit):
        retention_main([str(path), "--now", later])


def test_indexed_files_already_gone_are_said_and_the_rest_goes(tmp_path, twelve_days, caplog):
    store = Store(tmp_path / "recordings")
    whole_day = dt.date(2026, 11, 18)  # wholly before the cutoff: the whole-day path
    partial_day = dt.date(2026, 11, 19)  # cut at 09:30: the general path
    for day in (whole_day, partial_day):
        for segment in twelve_days["ver-gare-01", day][1:4]:
            (store.day_dir("ver-gare-01", day) / segment.name).unlink()
    with caplog.at_level(logging.WARNING):
        retention(tmp_path).run()
    assert caplog.text.count("3 indexed segment(s) were already gone") == 2
    by_day = {(e["camera"], e["day"]): e for e in register(tmp_path)}
    assert by_day["ver-gare-01", whole_day.isoformat()]["already_missing"] == 3
    assert by_day["ver-gare-01", whole_day.isoformat()]["count"] == 24  # what the index said was destroyed
    assert by_day["ver-gare-01", partial_day.isoformat()]["already_missing"] == 3
    assert "already_missing" not in by_day["sqy-mairie-03", whole_day.isoformat()]
    assert not store.day_dir("ver-gare-01", whole_day).exists()
    assert [s.end for s in store.index("ver-gare-01", partial_day)] == [
        s.end for s in twelve_days["ver-gare-01", partial_day] if s.end > NOW - 10 * DAY
    ]


def test_a_nan_line_in_an_index_does_not_shield_its_day_from_destruction(tmp_path, twelve_days):
    store = Store(tmp_path / "recordings")
    camera, day = min(twelve_days)  # the oldest day: everything in it is past the cutoff
    index = store.day_dir(camera, day) / "index.csv"
    index.write_bytes(b"nan,nan,100,20261117T093000Z.ts,\n" + index.read_bytes())
    retention(tmp_path).run()
    assert not store.day_dir(camera, day).exists() or not [
        n for n in os.listdir(store.day_dir(camera, day)) if n.endswith(".ts")
    ], "the expired segments of a day whose index has a nan line are destroyed"


def test_the_role_renders_the_inventorys_shortening_and_the_run_keeps_those_days(tmp_path, twelve_days, caplog):
    """halfbridge_retention_shortening through the retention role's own template and variables: the run keeps
    the shortened days and registers the decision; without it, the convention's."""
    import yaml

    from tests.support.inventory import ROOT
    from tests.support.rsyslog import render

    role_vars = yaml.safe_load((ROOT / "roles/retention/vars/main.yml").read_text(encoding="utf-8"))
    reason = "décision du DPO du 2026-11-28 : disque défaillant"
    inventory = {
        "halfbridge_convention": {"reference": "2026-BSCAVB-003", "retention_days": 10},
        "halfbridge_authorizations": [
            {"reference": "Arrêté n° 94-2025-001", "granted_on": "2025-01-01", "valid_until": "2099-12-31",
             "max_retention_days": 20, "cameras": CAMERAS},
        ],
        "retention_store_dir": str(tmp_path / "recordings"), "retention_audit_log": str(tmp_path / "log/audit.log"),
        "retention_audit_socket": str(tmp_path / "audit.sock"), "retention_state_dir": str(tmp_path / "state"),
        "retention_disk_margin_hours": 0, "retention_metrics_file": str(tmp_path / "halfbridge_retention.prom"),
        "retention_max_clock_jump_hours": 24,
    }  # fmt: skip
    path = tmp_path / "retention.json"
    for shortening, days in ((None, 10), ({"days": 7, "reason": reason}, 7)):
        variables = {**inventory, **role_vars, "halfbridge_retention_shortening": shortening}
        path.write_text(render("retention", "etc/halfbridge/retention.json.j2", variables))
        loaded = RetentionConfig.load(path)
        assert (loaded.retention_days, loaded.days) == (10, days)
    with caplog.at_level(logging.WARNING):
        Retention(loaded, clock=lambda: NOW, clock_check=lambda: SYNCHRONISED).run()
    assert f"retention shortened to 7 days (the convention says 10) by decision: {reason}" in caplog.text
    assert {(e["retention_days"], e["decision"]) for e in register(tmp_path)} == {(7, reason)}


# -- the clock guard ---------------------------------------------------------------------------------------------


def ages(tmp_path, now: float = NOW) -> dict[str, str]:
    """One camera's segments ended 1 hour, 3 days and 12 days before `now`, each 10 minutes long; their files."""
    built = {}
    for name, age in (("1 h", HOUR), ("3 days", 3 * DAY), ("12 days", 12 * DAY)):
        opened = now - age - 600
        (segments,) = build_store(tmp_path / "recordings", ["ver-gare-01"], opened, opened, 600).values()
        built[name] = str(Path("ver-gare-01", utc(segments[0].start).strftime("%Y/%m/%d"), segments[0].name))
    return built


def last_run(tmp_path) -> dict:
    return json.loads((tmp_path / "state" / "last-run.json").read_text())


def metrics(tmp_path) -> str:
    return (tmp_path / "textfile" / "halfbridge_retention.prom").read_text()


def history(tmp_path, event: str) -> list[dict]:
    log = tmp_path / "log" / "audit.log"
    return list(query([log], event=event)) if log.is_file() else []


def test_with_the_clock_eleven_days_ahead_nothing_is_destroyed_and_every_output_says_why(tmp_path, caplog):
    assert retention(tmp_path, now=NOW - 300).run().refused is None  # the last run, five minutes ago
    built = ages(tmp_path)
    with caplog.at_level(logging.ERROR):
        report = retention(tmp_path, now=NOW + 11 * DAY).run()
    assert files(tmp_path / "recordings") == set(built.values()), "not even the 12-day-old segment goes"
    assert report.count == 0 and register(tmp_path) == []
    why = (
        "the retention destroys nothing: the clock says 2026-12-10T09:30:00.000Z, 264.1 hours after the last run "
        "that was allowed to destroy (2026-11-29T09:25:00.000Z), more than the 24 hours a run may follow it: the "
        "clock may have jumped forward. A wrong clock would destroy recordings younger than 10 days. Check the "
        "clock against a trusted time"
    )
    assert report.refused.startswith(why)
    assert "--accept-clock` once as" in report.refused
    assert why in caplog.text
    state = last_run(tmp_path)
    assert state["refused"] == report.refused
    assert (state["at"], state["cutoff"], state["destroyed_segments"], state["disk"]) == (
        "2026-12-10T09:30:00.000Z",
        None,
        0,
        None,
    )
    assert state["reference"] == state["last_success"] == "2026-11-29T09:25:00.000Z", "the reference stays"
    assert stat.S_IMODE((tmp_path / "state" / "last-run.json").stat().st_mode) == 0o640
    assert "halfbridge_retention_clock_refused 1\n" in metrics(tmp_path)
    assert f"halfbridge_retention_last_success_timestamp_seconds {NOW - 300:.3f}\n" in metrics(tmp_path)
    assert stat.S_IMODE((tmp_path / "textfile" / "halfbridge_retention.prom").stat().st_mode) == 0o644
    (refused,) = history(tmp_path, "retention.refused")
    assert (refused["cause"], refused["reason"][:200]) == ("ahead", report.refused[:200])
    assert refused["reference"] == "2026-11-29T09:25:00.000Z"


def test_a_refusal_is_recorded_once_per_cause_and_said_on_every_run(tmp_path, caplog):
    retention(tmp_path, now=NOW - 300).run()
    ages(tmp_path)
    for minutes in (0, 5, 10):
        with caplog.at_level(logging.ERROR):
            caplog.clear()
            assert retention(tmp_path, now=NOW + 11 * DAY + minutes * 60).run().refused
        assert "the retention destroys nothing" in caplog.text
    assert [e["cause"] for e in history(tmp_path, "retention.refused")] == ["ahead"]
    retention(tmp_path, now=NOW + 11 * DAY + 900, clock=UNSYNCHRONISED).run()
    assert [e["cause"] for e in history(tmp_path, "retention.refused")] == ["ahead", "unsynchronised+ahead"]


@pytest.mark.parametrize("chronyd", ["not synchronised", "not running"])
def test_with_an_unsynchronised_clock_nothing_is_destroyed_and_every_output_says_why(tmp_path, chronyd):
    if chronyd == "not running":
        fake = tmp_path / "bin" / "chronyc"
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\necho '506 Cannot talk to daemon'\nexit 1\n")
        fake.chmod(0o755)
        clock = clock_module.check(chronyc=str(fake))
        said = "chronyd cannot be asked"
    else:
        clock, said = UNSYNCHRONISED, "chronyd has no time source it trusts yet (leap status 'Not synchronised')"
    built = ages(tmp_path)
    report = retention(tmp_path, clock=clock).run()
    assert files(tmp_path / "recordings") == set(built.values())
    assert report.refused.startswith(f"the retention destroys nothing: the clock is not synchronised ({said}")
    assert "Make the clock synchronised (`chronyc tracking`, `chronyc sources`" in report.refused
    assert "--accept-clock" not in report.refused, "nothing for a person to accept: chrony is to be fixed"
    state = last_run(tmp_path)
    assert state["refused"] == report.refused and state["clock"]["synchronised"] is False
    assert state["reference"] is None and state["last_success"] is None
    assert "halfbridge_retention_clock_refused 1\n" in metrics(tmp_path)
    assert "last_success" not in metrics(tmp_path)
    assert [e["cause"] for e in history(tmp_path, "retention.refused")] == ["unsynchronised"]


def test_with_a_synchronised_clock_and_a_normal_gap_only_what_expired_goes(tmp_path):
    retention(tmp_path, now=NOW - 300).run()
    built = ages(tmp_path)
    report = retention(tmp_path).run()
    assert report.refused is None and report.count == 1
    assert files(tmp_path / "recordings") == {built["1 h"], built["3 days"]}
    state = last_run(tmp_path)
    assert (state["refused"], state["reference"], state["last_success"]) == (
        None,
        "2026-11-29T09:30:00.000Z",
        "2026-11-29T09:30:00.000Z",
    )
    assert state["cutoff"] == "2026-11-19T09:30:00.000Z" and state["destroyed_segments"] == 1
    assert state["disk"]["short"] is False and state["clock"]["source"] == "127.0.0.1"
    assert "halfbridge_retention_clock_refused 0\n" in metrics(tmp_path)
    assert f"halfbridge_retention_last_success_timestamp_seconds {NOW:.3f}\n" in metrics(tmp_path)
    assert history(tmp_path, "retention.refused") == []


def test_a_clock_that_went_back_destroys_nothing(tmp_path):
    retention(tmp_path, now=NOW + HOUR).run()
    built = ages(tmp_path)
    report = retention(tmp_path).run()
    assert files(tmp_path / "recordings") == set(built.values())
    said = "60 minutes before the last run that was allowed to destroy (2026-11-29T10:30:00.000Z): the clock went back"
    assert said in report.refused
    # A few minutes back is chronyd's own correction at its start: the run goes on, the reference does not go back.
    retention(tmp_path, now=NOW + HOUR - 120).run()
    assert last_run(tmp_path)["refused"] is None
    assert last_run(tmp_path)["reference"] == "2026-11-29T10:30:00.000Z"


def test_an_operator_who_checked_the_clock_accepts_it_once_and_the_runs_go_on(tmp_path, caplog):
    retention(tmp_path, now=NOW - 2 * DAY).run()  # then the gateway was stopped for two days
    built = ages(tmp_path)
    assert retention(tmp_path).run().refused
    assert files(tmp_path / "recordings") == set(built.values())
    with caplog.at_level(logging.WARNING):
        report = retention(tmp_path).run(accepted_by="alice")
    assert report.refused is None and report.count == 1
    assert files(tmp_path / "recordings") == {built["1 h"], built["3 days"]}
    assert "clock accepted by alice, at 2026-11-29T09:30:00.000Z, over the guard's refusal" in caplog.text
    (accepted,) = history(tmp_path, "retention.clock_accepted")
    assert (accepted["by"], accepted["previous_reference"]) == ("alice", "2026-11-27T09:30:00.000Z")
    assert accepted["refused"].startswith("the retention destroys nothing: the clock says 2026-11-29T09:30:00.000Z")
    (destroyed,) = register(tmp_path)
    assert destroyed["seq"] > accepted["seq"], "accepted in the history before anything was destroyed"
    assert last_run(tmp_path)["reference"] == "2026-11-29T09:30:00.000Z"
    assert retention(tmp_path, now=NOW + 300).run().refused is None, "the next cron run goes on by itself"


def test_an_acceptance_the_history_cannot_record_destroys_nothing(tmp_path, auditd):
    retention(tmp_path, now=NOW - 2 * DAY).run()
    built = ages(tmp_path)
    auditd.stop()
    with pytest.raises(RetentionError, match="the acceptance of the clock cannot be recorded in the history"):
        retention(tmp_path).run(accepted_by="alice")
    assert files(tmp_path / "recordings") == set(built.values())
    assert last_run(tmp_path)["reference"] == "2026-11-27T09:30:00.000Z"


def test_a_last_run_state_that_cannot_be_read_refuses_until_accepted(tmp_path):
    retention(tmp_path, now=NOW - 300).run()
    built = ages(tmp_path)
    (tmp_path / "state" / "last-run.json").write_text('{"reference": "the day before yesterday"}')
    report = retention(tmp_path).run()
    assert "the last run's state cannot be read (" in report.refused
    assert "its reference 'the day before yesterday' is not a time" in report.refused
    assert files(tmp_path / "recordings") == set(built.values())
    assert retention(tmp_path).run(accepted_by="alice").count == 1


def test_the_reference_moves_only_on_a_run_the_guard_allowed(tmp_path, auditd):
    retention(tmp_path, now=NOW - 300).run()
    retention(tmp_path, clock=UNSYNCHRONISED).run()
    assert last_run(tmp_path)["reference"] == "2026-11-29T09:25:00.000Z"
    ages(tmp_path)
    auditd.stop()  # an allowed run that stops on the audit writer: the reference moves, the success does not
    with pytest.raises(RetentionError):
        retention(tmp_path).run()
    state = last_run(tmp_path)
    assert (state["reference"], state["last_success"]) == ("2026-11-29T09:30:00.000Z", "2026-11-29T09:25:00.000Z")
    assert state["refused"].startswith("the run stopped: ")


def test_the_command_refuses_on_a_jump_and_accept_clock_records_who_and_goes_on(tmp_path, monkeypatch, caplog):
    """halfbridge-retention as cron and a person run it: the real time, chronyc on the PATH."""
    fake = tmp_path / "bin" / "chronyc"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho '7F000001,198.18.0.50,3,1796214111.605051148,-0.000000825,0.000001250,0.000001250,-0.545,"
        "0.000,9.323,0.000011133,0.000030722,2.0,Normal'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    now = time.time()
    values = config(tmp_path)
    path = tmp_path / "retention.json"
    path.write_text(json.dumps({k: str(v) if isinstance(v, os.PathLike) else v for k, v in vars(values).items()}))
    retention(tmp_path, now=now - 3 * DAY).run()
    built = ages(tmp_path, now)
    with caplog.at_level(logging.ERROR):
        assert retention_main([str(path), "--dry-run"]) == 1
        assert "a run now would destroy nothing, and this dry run lists nothing" in caplog.text
        assert retention_main([str(path)]) == 1
    assert f"run `halfbridge-retention {path} --accept-clock` once as" in caplog.text
    assert files(tmp_path / "recordings") == set(built.values())
    with pytest.raises(SystemExit):
        retention_main([str(path), "--accept-clock", "--dry-run"])
    monkeypatch.setenv("SUDO_USER", "alice")
    assert retention_main([str(path), "--accept-clock"]) == 0
    assert files(tmp_path / "recordings") == {built["1 h"], built["3 days"]}
    (accepted,) = history(tmp_path, "retention.clock_accepted")
    assert accepted["by"] == "alice" and accepted["clock"]["source"] == "198.18.0.50"
    monkeypatch.delenv("SUDO_USER")
    assert retention_main([str(path)]) == 0


# -- holds -------------------------------------------------------------------------------------------------------


def holds_file(tmp_path) -> Path:
    (tmp_path / "requests").mkdir(exist_ok=True)
    return tmp_path / "requests" / "holds.json"


def hold(tmp_path, camera: str, start: float, end: float, until: float | None = None, now: float = NOW) -> dict:
    """A hold for an information judiciaire, placed by hand (halfbridge-request hold place)."""
    return Holds(holds_file(tmp_path)).place(
        camera, start, end, "information_judiciaire", "PV 2026/004512", "alice", "réquisition", now, until, None
    )


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_held_segments_survive_while_their_neighbours_go_and_are_registered(tmp_path, twelve_days):
    # 18 Nov (wholly expired: the whole-day path) and 19 Nov (cut at 09:30): two held stretches of ver-gare-01.
    placed = hold(tmp_path, "ver-gare-01", at("2026-11-18T10:35:00Z"), at("2026-11-18T12:35:00Z"))
    hold(tmp_path, "ver-gare-01", at("2026-11-19T03:35:00Z"), at("2026-11-19T03:35:01Z"))
    report = retention(tmp_path, holds_file=holds_file(tmp_path)).run()
    store = Store(tmp_path / "recordings")
    kept = [s.name for s in store.index("ver-gare-01", dt.date(2026, 11, 18))]
    assert kept == ["20261118T103000Z.ts", "20261118T113000Z.ts", "20261118T123000Z.ts"]
    assert [s.name for s in store.index("ver-gare-01", dt.date(2026, 11, 19))][:1] == ["20261119T033000Z.ts"]
    assert {
        name for name in os.listdir(store.day_dir("ver-gare-01", dt.date(2026, 11, 18))) if name.endswith(".ts")
    } == set(kept)
    assert not store.day_dir("sqy-mairie-03", dt.date(2026, 11, 18)).exists(), "the other camera is not held"
    assert report.count == 96 - 4
    entries = register(tmp_path)
    assert sum(e["count"] for e in entries) == 96 - 4
    assert {(e["camera"], e["day"], e["count"]) for e in entries if e["camera"] == "ver-gare-01"} == {
        ("ver-gare-01", "2026-11-17", 15),
        ("ver-gare-01", "2026-11-18", 21),
        ("ver-gare-01", "2026-11-19", 8),
    }
    assert (report.holds, report.held_segments, report.held_bytes) == (2, 4, 400)
    assert last_run(tmp_path)["held"] == {"holds": 2, "segments": 4, "bytes": 400}
    assert "halfbridge_holds 2\n" in metrics(tmp_path) and "halfbridge_held_bytes 400\n" in metrics(tmp_path)
    # The next run, with the hold still current, destroys nothing more.
    assert retention(tmp_path, now=NOW + 120, holds_file=holds_file(tmp_path)).run().count == 0
    # Released: the next run destroys what it kept, and registers it.
    Holds(holds_file(tmp_path)).release(placed["id"], "bob", "procédure classée", NOW + 180)
    report = retention(tmp_path, now=NOW + 240, holds_file=holds_file(tmp_path)).run()
    assert report.count == 3 and (report.holds, report.held_segments) == (1, 1)
    assert not store.day_dir("ver-gare-01", dt.date(2026, 11, 18)).exists()
    (entry,) = [e for e in register(tmp_path) if e["day"] == "2026-11-18" and e["count"] == 3]
    assert (entry["camera"], entry["first"], entry["last"]) == (
        "ver-gare-01",
        "2026-11-18T10:30:00.000Z",
        "2026-11-18T12:40:00.000Z",
    )


def test_a_held_orphan_survives_and_an_unheld_one_goes(tmp_path):
    cutoff = NOW - 10 * DAY
    store = Store(tmp_path / "recordings")
    build_store(store.root, ["ver-gare-01"], cutoff - 2 * DAY, cutoff - 2 * DAY, 60, 60, b"ts")
    day = store.day_dir("ver-gare-01", utc(cutoff - 2 * DAY).date())
    for name in ("20261117T080000Z.ts", "20261117T090000Z.ts"):  # crash leftovers, unindexed, long untouched
        (day / name).write_bytes(b"leftover")
        os.utime(day / name, (cutoff - 3 * DAY, cutoff - 3 * DAY))
    hold(tmp_path, "ver-gare-01", at("2026-11-17T08:00:00Z"), at("2026-11-17T08:30:00Z"))
    retention(tmp_path, holds_file=holds_file(tmp_path)).run()
    assert sorted(n for n in os.listdir(day) if n.endswith(".ts")) == ["20261117T080000Z.ts"]


def test_a_hold_whose_end_passed_is_recorded_once_and_its_segments_go(tmp_path, twelve_days, caplog):
    placed = hold(
        tmp_path, "ver-gare-01", at("2026-11-18T10:35:00Z"), at("2026-11-18T12:35:00Z"), until=NOW + 12 * HOUR
    )
    assert retention(tmp_path, holds_file=holds_file(tmp_path)).run().count == 96 - 3
    with caplog.at_level(logging.WARNING):
        report = retention(tmp_path, now=NOW + 12 * HOUR + 60, holds_file=holds_file(tmp_path)).run()
    assert (
        f"hold {placed['id']} ended at 2026-11-29T21:30:00.000Z (information judiciaire PV 2026/004512" in caplog.text
    )
    (expired,) = history(tmp_path, "hold.expired")
    assert (expired["hold"], expired["camera"], expired["until"], expired["reference"]) == (
        placed["id"],
        "ver-gare-01",
        "2026-11-29T21:30:00.000Z",
        "PV 2026/004512",
    )
    ended = Holds(holds_file(tmp_path)).get(placed["id"])
    assert (ended["ended_at"], ended["ended_by"], ended["end_reason"]) == (
        "2026-11-29T21:30:00.000Z",
        "retention",
        "its end passed",
    )
    assert not Store(tmp_path / "recordings").day_dir("ver-gare-01", dt.date(2026, 11, 18)).exists()
    assert any(e["day"] == "2026-11-18" and e["count"] == 3 for e in register(tmp_path))
    assert report.holds == 0
    (notice,) = os.listdir(tmp_path / "requests" / "notices")
    assert notice.endswith(f"-{placed['id']}-hold.expired.json")
    retention(tmp_path, now=NOW + 12 * HOUR + 600, holds_file=holds_file(tmp_path)).run()
    assert len(history(tmp_path, "hold.expired")) == 1, "recorded once"


def test_an_end_the_history_cannot_record_destroys_nothing(tmp_path, twelve_days, auditd):
    placed = hold(tmp_path, "ver-gare-01", at("2026-11-18T10:35:00Z"), at("2026-11-18T12:35:00Z"), NOW - 60, NOW - HOUR)
    before = files(tmp_path / "recordings")
    auditd.stop()
    with pytest.raises(RetentionError, match=f"the end of hold {placed['id']} cannot be recorded in the history"):
        retention(tmp_path, holds_file=holds_file(tmp_path)).run()
    assert files(tmp_path / "recordings") == before
    assert Holds(holds_file(tmp_path)).get(placed["id"])["ended_at"] is None, "recorded by the next run"


@pytest.mark.parametrize("damage", [b"{not json", b'{"holds": [{"id": 1}]}', b" " * (5 << 20)])
def test_a_damaged_holds_register_makes_the_run_destroy_nothing_and_say_why(tmp_path, twelve_days, damage, caplog):
    holds_file(tmp_path).write_bytes(damage)
    before = files(tmp_path / "recordings")
    with pytest.raises(RetentionError) as stopped:
        retention(tmp_path, holds_file=holds_file(tmp_path)).run()
    assert f"the holds register {holds_file(tmp_path)} cannot be read: " in str(stopped.value)
    assert "nothing was destroyed: a hold might protect recordings this run would destroy" in str(stopped.value)
    assert files(tmp_path / "recordings") == before and register(tmp_path) == []
    assert last_run(tmp_path)["refused"].startswith("the run stopped: the holds register")
    assert last_run(tmp_path)["held"] is None


def test_without_holds_the_register_may_be_missing(tmp_path, twelve_days):
    report = retention(tmp_path, holds_file=tmp_path / "requests" / "holds.json").run()
    assert report.count == 96 and (report.holds, report.held_bytes) == (0, 0)
    assert last_run(tmp_path)["held"] == {"holds": 0, "segments": 0, "bytes": 0}


def test_the_disk_guard_counts_what_holds_keep_and_ignores_their_age(tmp_path, caplog):
    build_store(tmp_path / "recordings", ["ver-gare-01"], NOW - DAY, NOW - 600, HOUR, 600, b"x" * 100)
    needed = retention(tmp_path).run().disk.needed  # one day held of ten, as in the test above
    # A held segment 20 days old does not make the camera look ten days full; a held young one will not be freed.
    build_store(tmp_path / "recordings", ["ver-gare-01"], NOW - 20 * DAY, NOW - 20 * DAY, HOUR, 600, b"x" * 100)
    hold(tmp_path, "ver-gare-01", NOW - 20 * DAY, NOW - 20 * DAY + 600)
    hold(tmp_path, "ver-gare-01", NOW - 5 * HOUR, NOW - 5 * HOUR + 60)
    report = retention(tmp_path, holds_file=holds_file(tmp_path)).run()
    assert (report.held_segments, report.held_bytes) == (2, 200)
    assert report.count == 0, "the held 20-day-old segment stays"
    assert report.disk.needed == needed + 100
    with caplog.at_level(logging.ERROR):
        retention(tmp_path, holds_file=holds_file(tmp_path), disk_margin_hours=1e9).run()
    assert "and 200 B that holds keep, 100 B of it not freed when the retention passes" in caplog.text
