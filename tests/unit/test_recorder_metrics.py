"""Each camera's metrics file for node_exporter: what the supervision sees of a camera that records, goes down,
comes back or is stopped; and the deployment that puts the file where node_exporter reads."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halfbridge import __version__
from halfbridge.metrics import BUILD_INFO_HELP, TEXTFILE_DIR, label, write_textfile
from halfbridge.recorder import Recorder, RecorderConfig, Run
from halfbridge.store import Store
from tests.support.exposition import Family, parse_exposition
from tests.support.fakes import Clock
from tests.support.waiting import wait_for

CAMERA = "ver-gare-01"
NOW = 1_796_200_000.0  # 2026-12-02T09:06:40Z


def series(families: dict[str, Family], name: str, camera: str = CAMERA) -> float | None:
    """The value of `name{camera=...}`, or None when the file has no such series."""
    family = families.get(name)
    assert family is not None, f"the file lacks the family {name} (its HELP and TYPE are always there)"
    return family.samples.get((name, (("camera", camera),)))


def _recorder(tmp_path: Path, clock: Clock, **changes) -> Recorder:
    config = RecorderConfig(
        camera=CAMERA,
        url="rtsp://198.18.10.20:8554/stream",
        store_root=tmp_path / "recordings",
        state_dir=tmp_path / "state",
        metrics_dir=tmp_path / "textfile",
        backoff_jitter=0.0,
        **changes,
    )
    config.metrics_dir.mkdir(exist_ok=True)
    return Recorder(config, clock=clock)


def _file(recorder: Recorder) -> dict[str, Family]:
    path = recorder.metrics_path
    assert path.name == f"halfbridge_recorder_{CAMERA}.prom"
    assert path.stat().st_mode & 0o777 == 0o644, "node_exporter (another user) reads it"
    return parse_exposition(path.read_text(encoding="utf-8"))


def _ended_run(recorder: Recorder, started: float) -> Run:
    """ffmpeg's run as the recorder holds it, once ffmpeg has exited (no process left to ask)."""
    return Run(process=None, started=started, list_path=recorder.config.state_dir / f"{CAMERA}.segments.csv")


def _segment(recorder: Recorder, run: Run, start: float, seconds: float) -> None:
    """ffmpeg finished one segment: its file, and its line in the segment list."""
    name = time.strftime("%Y%m%dT%H%M%SZ.ts", time.gmtime(start))
    recorder.store.ensure_days(CAMERA, start)
    recorder.store.segment_path(CAMERA, name).write_bytes(b"\x47" * 188 * 10)
    with run.list_path.open("a") as handle:
        handle.write(f"{name},{start - run.anchor:.6f},{start + seconds - run.anchor:.6f}\n")


def test_a_camera_that_records_is_up_with_the_end_of_its_last_segment(tmp_path):
    clock = Clock(NOW)
    recorder = _recorder(tmp_path, clock)
    recorder.write_status()
    starting = _file(recorder)
    assert series(starting, "halfbridge_camera_up") == 0  # starting: not recording yet
    assert series(starting, "halfbridge_camera_down_since_timestamp_seconds") is None  # nor down
    assert series(starting, "halfbridge_camera_last_segment_end_timestamp_seconds") is None  # nothing recorded
    assert series(starting, "halfbridge_recorder_restarts_total") == 0
    assert starting["halfbridge_recorder_restarts_total"].kind == "counter"

    run = _ended_run(recorder, NOW)
    run.anchor, run.segments = NOW, 1  # settled (the first segment's lead is not what this test is about)
    recorder.run = run
    recorder.went_up(NOW + 2)
    _segment(recorder, run, NOW + 10, 10.0)
    recorder.index_finished(run)
    recording = _file(recorder)
    assert series(recording, "halfbridge_camera_up") == 1
    assert series(recording, "halfbridge_camera_last_segment_end_timestamp_seconds") == NOW + 20
    assert series(recording, "halfbridge_camera_down_since_timestamp_seconds") is None
    _segment(recorder, run, NOW + 20, 10.0)
    recorder.index_finished(run)  # after each finished segment, without a change of state
    assert series(_file(recorder), "halfbridge_camera_last_segment_end_timestamp_seconds") == NOW + 30
    build = _file(recorder)["halfbridge_build_info"].samples
    assert build == {("halfbridge_build_info", (("service", f"recorder_{CAMERA}"), ("version", __version__))): 1}


def test_every_textfile_says_which_release_its_service_runs_and_node_exporter_can_merge_them(tmp_path):
    """After a partial restart, services of one gateway run different releases: each file says its own. The
    collector merges one family over every file: one HELP and TYPE, never the same series twice."""
    names = ["halfbridge_clock.prom", "halfbridge_retention.prom", "halfbridge_requests.prom"]
    names += [f"halfbridge_recorder_{camera}.prom" for camera in ("ver-gare-01", "ver-gare-02")]
    merged: dict = {}
    for name in names:
        write_textfile(tmp_path / name, ["# HELP x X.", "# TYPE x gauge", "x 1"])
        family = parse_exposition((tmp_path / name).read_text())["halfbridge_build_info"]
        assert (family.kind, family.help) == ("gauge", BUILD_INFO_HELP)
        [(key, value)] = family.samples.items()
        assert key not in merged and value == 1
        merged[key] = name
    assert {dict(labels)["service"]: dict(labels)["version"] for _, labels in merged} == {
        "clock": __version__, "retention": __version__, "requests": __version__,
        "recorder_ver-gare-01": __version__, "recorder_ver-gare-02": __version__,
    }  # fmt: skip
    write_textfile(tmp_path / "x.prom", [], service='odd "one"')
    [(_, labels)] = parse_exposition((tmp_path / "x.prom").read_text())["halfbridge_build_info"].samples
    assert dict(labels) == {"service": 'odd "one"', "version": __version__}


def test_down_then_back_says_since_when_and_counts_ffmpegs_restarts(tmp_path, caplog):
    clock = Clock(NOW)
    recorder = _recorder(tmp_path, clock)
    recorder.run = _ended_run(recorder, NOW)
    recorder.went_up(NOW + 1)
    clock.now = NOW + 30
    with caplog.at_level("INFO", logger="halfbridge.recorder"):
        recorder.run_ended(clock.now, "ffmpeg exited with status 1")
    down = _file(recorder)
    assert series(down, "halfbridge_camera_up") == 0
    assert series(down, "halfbridge_camera_down_since_timestamp_seconds") == NOW + 30
    assert series(down, "halfbridge_recorder_restarts_total") == 1
    [said] = [r for r in caplog.records if "down since" in r.getMessage()]
    assert said.levelname == "WARNING", "a camera that goes down is a warning in the journal"

    # Tried again after the back-off, still down: the outage keeps its start, the restarts add up.
    for attempt in (2, 3):
        clock.now += 5
        recorder.run = _ended_run(recorder, clock.now - 1)
        recorder.run_ended(clock.now, "tcp: Connection to tcp://198.18.10.20:8554 failed: Connection refused")
        again = _file(recorder)
        assert series(again, "halfbridge_camera_down_since_timestamp_seconds") == NOW + 30
        assert series(again, "halfbridge_recorder_restarts_total") == attempt

    clock.now += 5
    recorder.run = _ended_run(recorder, clock.now)
    with caplog.at_level("INFO", logger="halfbridge.recorder"):
        recorder.went_up(clock.now)
    back = _file(recorder)
    assert series(back, "halfbridge_camera_up") == 1
    assert series(back, "halfbridge_camera_down_since_timestamp_seconds") is None
    assert series(back, "halfbridge_recorder_restarts_total") == 3
    [said] = [r for r in caplog.records if "recording again" in r.getMessage()]
    assert said.levelname == "INFO"


def test_a_recorder_stopped_by_sigterm_while_recording_says_not_recorded_since_it_stopped(tmp_path):
    clock = Clock(NOW)
    recorder = _recorder(tmp_path, clock)
    recorder.run = _ended_run(recorder, NOW)
    recorder.went_up(NOW)
    recorder.run = None
    recorder.next_start = math.inf  # no ffmpeg in this test: only the supervisor's own loop

    def sleep(_seconds: float) -> None:
        clock.now += 7
        os.kill(os.getpid(), signal.SIGTERM)  # what systemctl stop sends; serve()'s handler takes it

    recorder.sleep = sleep
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert recorder.serve() == 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    stopped = _file(recorder)
    assert series(stopped, "halfbridge_camera_up") == 0
    assert series(stopped, "halfbridge_camera_down_since_timestamp_seconds") == NOW + 7
    status = json.loads((tmp_path / "state" / f"{CAMERA}.status.json").read_text())
    assert status["state"] == "stopped"


def test_the_recorder_process_writes_its_file_and_a_sigterm_leaves_the_camera_down_since_it_went(tmp_path):
    """The real command against a camera that refuses connections, then stopped as systemd stops it."""
    config = tmp_path / "camera.json"
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    settings = {
        "camera": CAMERA, "url": "rtsp://127.0.0.1:9/stream", "store_root": str(tmp_path / "recordings"),
        "state_dir": str(tmp_path / "state"), "metrics_dir": str(textfile), "rtsp_timeout": 2,
        "backoff_initial": 0.2, "backoff_cap": 0.4,
    }  # fmt: skip
    config.write_text(json.dumps(settings))
    metrics = textfile / f"halfbridge_recorder_{CAMERA}.prom"
    command = Path(sys.executable).with_name("halfbridge-recorder")
    log = tmp_path / "recorder.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([str(command), str(config)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:

        def restarted_twice():
            families = parse_exposition(metrics.read_text()) if metrics.exists() else {}
            restarts = series(families, "halfbridge_recorder_restarts_total") if families else None
            return families if restarts is not None and restarts >= 2 else None

        down = wait_for(restarted_twice, 30, "two restarts in the metrics file", 0.1, lambda: log.read_text())
        went_down = series(down, "halfbridge_camera_down_since_timestamp_seconds")
        assert series(down, "halfbridge_camera_up") == 0 and went_down <= time.time()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    stopped = parse_exposition(metrics.read_text())
    assert series(stopped, "halfbridge_camera_up") == 0
    assert series(stopped, "halfbridge_camera_down_since_timestamp_seconds") == went_down
    assert series(stopped, "halfbridge_recorder_restarts_total") >= 2
    assert json.loads((tmp_path / "state" / f"{CAMERA}.status.json").read_text())["state"] == "stopped"
    assert [p.name for p in textfile.iterdir()] == [metrics.name], "no temporary file left for node_exporter"


def test_a_metrics_file_that_cannot_be_written_is_said_once_and_the_recording_goes_on(tmp_path, caplog):
    clock = Clock(NOW)
    recorder = _recorder(tmp_path, clock)
    recorder.config.metrics_dir.rmdir()  # node_exporter's directory not there (metrics_exporter not deployed)
    with caplog.at_level("INFO", logger="halfbridge.recorder"):
        for _attempt in range(3):
            clock.now += 5
            recorder.run = _ended_run(recorder, clock.now - 1)
            recorder.run_ended(clock.now, "ffmpeg exited with status 1")
        assert json.loads(recorder.status_path.read_text())["state"] == "down"
        warnings = [r for r in caplog.records if "cannot write its metrics" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
        assert str(recorder.metrics_path) in warnings[0].getMessage()
        recorder.config.metrics_dir.mkdir()
        recorder.write_status()
    assert "its metrics are written to" in caplog.text
    assert series(_file(recorder), "halfbridge_recorder_restarts_total") == 3


def test_the_last_segment_survives_a_restart_of_the_recorder(tmp_path):
    clock = Clock(NOW)
    first = _recorder(tmp_path, clock)
    run = _ended_run(first, NOW)
    run.anchor, run.segments = NOW, 1
    first.run = run
    _segment(first, run, NOW + 10, 10.0)
    first.index_finished(run)
    again = _recorder(tmp_path, clock)  # a new process: it has indexed nothing yet
    assert again.last_indexed_end() == NOW + 20
    assert Store(tmp_path / "recordings").days(CAMERA)


@pytest.mark.parametrize("camera", ["../etc", "Gare", "a" * 65, "cam 01", "-cam", 5])
def test_a_camera_id_that_could_not_name_its_files_nor_label_its_metrics_is_refused(tmp_path, camera):
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({"camera": camera, "url": "rtsp://h/s", "store_root": "/s", "state_dir": "/t"}))
    with pytest.raises(SystemExit, match="camera is the camera's id, 1 to 64 of a-z, 0-9") as refused:
        RecorderConfig.load(path)
    assert str(refused.value).startswith("halfbridge-recorder: ")


def test_label_values_are_escaped_as_prometheus_reads_them():
    hostile = 'a"b\\c\nd'
    text = f'# HELP x X.\n# TYPE x gauge\nx{{camera="{label(hostile)}"}} 1\n'
    assert parse_exposition(text)["x"].samples == {("x", (("camera", hostile),)): 1.0}


def _node_exporter_args(**changes) -> list[str]:
    """ExecStart's $ARGS as systemd splits the role's /etc/default/prometheus-node-exporter (at spaces)."""
    from tests.support.rsyslog import render

    text = render("metrics_exporter", "etc/default/prometheus-node-exporter.j2", changes)
    [line] = [line for line in text.splitlines() if line.startswith("ARGS=")]
    assert line.startswith('ARGS="') and line.endswith('"') and line.count('"') == 2 and "\\" not in line
    return line[6:-1].split()


def test_node_exporter_listens_on_the_management_address_only_and_reads_the_recorders_directory():
    args = _node_exporter_args(metrics_exporter_listen_host="198.18.0.10")
    assert "--web.listen-address=198.18.0.10:9100" in args
    assert [a for a in args if a.startswith("--web.listen-address")] == ["--web.listen-address=198.18.0.10:9100"]
    assert "--collector.disable-defaults" in args and "--collector.textfile" in args
    assert f"--collector.textfile.directory={TEXTFILE_DIR}" in args
    [include] = [a.partition("=")[2] for a in args if a.startswith("--collector.systemd.unit-include=")]
    units = re.compile(f"^(?:{include})$")  # node_exporter anchors it so
    assert units.match("halfbridge-recorder@ver-gare-01.service") and units.match("halfbridge-crl-refresh.timer")
    assert units.match("chrony.service") and not units.match("getty@tty1.service")
    assert "--web.listen-address=[2001:db8::10]:9100" in _node_exporter_args(
        metrics_exporter_listen_host="2001:db8::10"
    )


def test_the_recorder_role_points_each_camera_at_node_exporters_directory_and_lets_it_write_there():
    import yaml

    from tests.support.inventory import ROOT
    from tests.support.rsyslog import render

    role_vars = yaml.safe_load((ROOT / "roles/recorder/vars/main.yml").read_text(encoding="utf-8"))
    camera = {"id": CAMERA, "rtsp_url": "rtsp://198.18.10.20:8554/stream"}
    rendered = json.loads(render("recorder", "etc/halfbridge/recorder/camera.json.j2", {**role_vars, "item": camera}))
    assert rendered["metrics_dir"] == TEXTFILE_DIR
    unit = render("recorder", "etc/systemd/system/halfbridge-recorder@.service.j2", role_vars)
    [writable] = [line for line in unit.splitlines() if line.startswith("ReadWritePaths=")]
    assert f"-{TEXTFILE_DIR}" in writable.split("=", 1)[1].split()


def test_node_exporter_exchanges_packets_with_the_supervision_only():
    """Behind the firewall, systemd's IP filter: the supervision hosts when the inventory names them."""
    from tests.support.rsyslog import render

    template = "etc/systemd/system/prometheus-node-exporter.service.d/halfbridge.conf.j2"
    base = {"metrics_exporter_listen_host": "198.18.0.10", "halfbridge_zones": {"management": ["198.18.0.0/24"]}}

    def allowed(**changes) -> list[str]:
        unit = render("metrics_exporter", template, {**base, **changes})
        assert "IPAddressDeny=any" in unit.splitlines()
        return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("IPAddressAllow=")]

    assert allowed(halfbridge_supervision={"hosts": ["198.18.0.50/32"]}) == ["localhost 198.18.0.10", "198.18.0.50/32"]
    assert allowed() == ["localhost 198.18.0.10", "198.18.0.0/24"]  # no supervision named: the management zone
    # No host at all: loopback and its own address only (an empty IPAddressAllow= would reset the list).
    assert allowed(halfbridge_supervision={"hosts": []}) == ["localhost 198.18.0.10"]
