"""The recorder against a real RTSP camera and real ffmpeg, on this machine.

Segments are 4 s long here (60 s in production) so that the tests see
several of them quickly; nothing else differs from the lab.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halfbridge.audit import query
from halfbridge.store import Store, segment_time, spans
from tests.support.auditd import Auditd
from tests.support.camera import Camera
from tests.support.waiting import wait_for

FRAME = 1 / 25  # the simulated cameras run at 25 fps
SEGMENT_SECONDS = 4


class RecorderProcess:
    def __init__(self, tmp_path: Path, camera, **overrides) -> None:
        self.store_root = tmp_path / "recordings"
        self.state_dir = tmp_path / "state"
        self.config = tmp_path / "recorder.json"
        self.log = tmp_path / "recorder.log"
        self.camera = camera
        self.auditd = Auditd(tmp_path).start()
        settings = {
            "camera": camera.id,
            "url": camera.url,
            "store_root": str(self.store_root),
            "state_dir": str(self.state_dir),
            "segment_seconds": SEGMENT_SECONDS,
            "rtsp_timeout": 3,
            "watchdog_seconds": 6,
            "backoff_initial": 0.5,
            "backoff_cap": 2,
            "stable_seconds": 5,
            "audit_socket": str(self.auditd.socket),
            **overrides,
        }
        self.config.write_text(json.dumps(settings))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        recorder = Path(sys.executable).with_name("halfbridge-recorder")
        self.process = subprocess.Popen(
            [str(recorder), str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=20)

    @property
    def store(self) -> Store:
        return Store(self.store_root)

    def segments(self):
        return [seg for day in self.store.days(self.camera.id) for seg in self.store.index(self.camera.id, day)]

    def status(self) -> dict:
        try:
            return json.loads((self.state_dir / f"{self.camera.id}.status.json").read_text())
        except FileNotFoundError:
            return {}

    def wait_for(self, predicate, timeout: float, what: str):
        return wait_for(predicate, timeout, what, 0.2, lambda: f"; log:\n{self.log.read_text()[-3000:]}")

    def path(self, segment) -> Path:
        return self.store.segment_path(self.camera.id, segment.name)


@pytest.fixture
def recorder(tmp_path, camera):
    rec = RecorderProcess(tmp_path, camera)
    yield rec
    rec.stop(signal.SIGKILL)
    rec.auditd.stop()


def packets(path: Path) -> list[tuple[float, float]]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)["packets"]
    return [(float(p["pts_time"]), float(p.get("duration_time", FRAME))) for p in found]


def test_segments_are_contiguous_decodable_and_indexed(recorder):
    recorder.start()
    segments = recorder.wait_for(lambda: len(recorder.segments()) >= 3 and recorder.segments(), 40, "3 segments")
    recorder.stop()
    segments = sorted(recorder.segments())
    for seg in segments:
        path = recorder.path(seg)
        assert path.stat().st_size == seg.size, f"{seg.name}: index size disagrees with the file"
        # The index's wall-clock start agrees with the second ffmpeg opened the file in (the first
        # segment of a run opens after ffmpeg's probing, up to a second after its first frame).
        assert abs(seg.start - segment_time(seg.name)) <= 1.5, seg
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True)
        assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr
    for before, after in itertools.pairwise(segments):
        # The index leaves no hole, and neither do the files' own timestamps.
        assert abs(after.start - before.end) < 0.002, (before, after)
        last_pts, last_duration = packets(recorder.path(before))[-1]
        first_pts = packets(recorder.path(after))[0][0]
        assert abs(first_pts - (last_pts + last_duration)) <= FRAME + 1e-3, (before.name, after.name)
    assert recorder.status()["state"] == "stopped"


def test_a_camera_outage_is_a_gap_in_the_index_and_recording_resumes(recorder, camera):
    recorder.start()
    recorder.wait_for(lambda: len(recorder.segments()) >= 1, 30, "a first segment")
    camera.stop()
    cut = time.time()
    status = recorder.wait_for(
        lambda: (s := recorder.status()).get("state") == "down" and s, 20, "the recorder to report the camera down"
    )
    assert status["since"] and status["last_error"]
    time.sleep(6)
    camera.start()
    back = time.time()
    recorder.wait_for(lambda: recorder.status().get("state") == "recording", 2 + 10, "recording to resume")
    recorder.wait_for(
        lambda: any(seg.start > back for seg in recorder.segments()), 30, "a segment recorded after the outage"
    )
    recorder.stop()
    found = spans(recorder.segments(), tolerance=FRAME * 2)
    assert len(found) == 2, f"expected one gap, got spans {found}"
    (_, end_before), (start_after, _) = found
    assert end_before <= cut + 1.0
    assert start_after >= back - 0.5
    # Resumed within the back-off cap (2 s) plus the time to connect and reach a keyframe.
    assert start_after - back < 2 + 4
    log = recorder.log.read_text()
    assert log.count("down since") == 1, log
    assert "recording again after" in log
    # The gap has its reason on file for an auditor, in a chain that verifies.
    auditd = recorder.auditd
    events = [(e["event"], e["camera"]) for e in query(auditd.files(), event="recorder")]
    assert events == [("recorder.down", camera.id), ("recorder.up", camera.id)]
    assert auditd.verify().ok


def test_a_killed_recorder_loses_at_most_the_segment_in_flight(recorder):
    recorder.start()
    recorder.wait_for(lambda: len(recorder.segments()) >= 2, 40, "2 segments")
    before = sorted(recorder.segments())
    day_dir = recorder.path(before[-1]).parent
    recorder.wait_for(
        lambda: any(p.stat().st_size > 50_000 for p in day_dir.glob("*.ts") if p.name not in {s.name for s in before}),
        20,
        "the segment in flight to hold data",
    )
    assert sorted(recorder.segments()) == before, "killed while indexing: the test must be re-timed"
    recorder.process.send_signal(signal.SIGKILL)
    recorder.process.wait(timeout=10)
    killed = time.time()
    time.sleep(1)
    recorder.start()
    recorder.wait_for(
        lambda: any(seg.start > killed for seg in recorder.segments()), 30, "a segment recorded after the crash"
    )
    recorder.stop()
    after = sorted(recorder.segments())
    assert before == [seg for seg in after if seg in before], "an indexed segment was lost or changed"
    recovered = [seg for seg in after if seg.flags == "recovered"]
    assert len(recovered) == 1, after
    partial = recovered[0]
    assert abs(partial.start - before[-1].end) < 0.002, "the partial segment starts where the last one ended"
    assert 1.0 < partial.duration < SEGMENT_SECONDS + 2.5
    assert packets(recorder.path(partial)), "the partial segment is readable"
    # Nothing but the restart is missing: one gap, no longer than the restart took.
    found = spans(after, tolerance=FRAME * 2)
    assert len(found) == 2, found
    assert found[1][0] - found[0][1] < 6


def test_ffmpeg_never_sees_the_camera_password_on_its_command_line(recorder, camera):
    recorder.start()
    recorder.wait_for(lambda: recorder.status().get("state") == "recording", 30, "recording")
    children = subprocess.run(
        ["ps", "-o", "args=", "--ppid", str(recorder.process.pid)], capture_output=True, text=True, timeout=10
    ).stdout
    assert "ffmpeg" in children
    assert camera.password not in children
    own = Path(f"/proc/{recorder.process.pid}/cmdline").read_bytes()
    assert camera.password.encode() not in own
    playlist = recorder.state_dir / f"{camera.id}.ffconcat"
    assert playlist.stat().st_mode & 0o077 == 0, "the playlist holding the password is private"


@pytest.mark.parametrize(
    ("settings", "codec", "sound"),
    [
        ({"profile": "high", "audio": "aac"}, "h264", "dropped (aac)"),
        ({"codec": "h265", "profile": "main", "audio": "g711", "auth": "digest"}, "hevc", "dropped (pcm_alaw)"),
    ],
    ids=["h264-high-bframes-aac", "h265-open-gop-g711-digest"],
)
def test_every_stream_profile_is_recorded_whole_without_its_sound(tmp_path, camsim_available, settings, codec, sound):
    """B-frames, an open GOP, sound, digest authentication: recorded contiguous, decodable, picture only."""
    camera = Camera(tmp_path, "cam-profile-01", **settings)
    camera.start()
    recorder = RecorderProcess(tmp_path, camera)
    try:
        recorder.start()
        recorder.wait_for(lambda: len(recorder.segments()) >= 3, 45, "3 segments")
    finally:
        recorder.stop()
        camera.stop()
        recorder.auditd.stop()
    segments = sorted(recorder.segments())
    for seg in segments:
        path = recorder.path(seg)
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True)
        # The null muxer's complaint about two decoded frames with one output timestamp (the B-frames
        # of an open GOP at a file's start) says nothing of the recording; the decoder's errors do.
        complaints = [
            line
            for line in decoded.stderr.decode(errors="replace").splitlines()
            if "non monotonically increasing dts to muxer" not in line and "Last message repeated" not in line
        ]
        assert decoded.returncode == 0 and not complaints, (seg.name, decoded.stderr[-500:])
        kinds = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json", str(path)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert [(s["codec_type"], s["codec_name"]) for s in json.loads(kinds)["streams"]] == [("video", codec)]
    for seg in segments:
        # Each segment is placed by its first frame in the file (its keyframe), a run's first one too
        # (ffmpeg lists that one from 0 though B-frames make it start later: see ts.lead).
        shown = packets(recorder.path(seg))
        assert abs(seg.duration - (max(pts + duration for pts, duration in shown) - shown[0][0])) < 0.002, seg
    for before, after in itertools.pairwise(segments):
        # No frame lost between two segments, in the order frames are shown.
        shown_before, shown_after = packets(recorder.path(before)), packets(recorder.path(after))
        end = max(pts + duration for pts, duration in shown_before)
        assert abs(min(pts for pts, _ in shown_after) - end) <= FRAME + 1e-3, (before.name, after.name)
    status = recorder.status()
    assert status["audio"] == sound and status["video"].startswith(codec), status


def test_a_camera_whose_stream_ffmpeg_refuses_says_ffmpegs_first_error(tmp_path, camsim_available):
    """A camera that sends sound and no picture: the status and the history say why, in ffmpeg's first words."""
    camera = Camera(tmp_path, "cam-sound-01", codec="none", audio="aac")
    camera.start()
    recorder = RecorderProcess(tmp_path, camera)
    try:
        recorder.start()
        status = recorder.wait_for(
            lambda: (s := recorder.status()).get("state") == "down" and s, 20, "the recorder to report the camera down"
        )
    finally:
        recorder.stop()
        camera.stop()
        recorder.auditd.stop()
    assert status["last_error"] == "Stream map '0:v:0' matches no streams.", status
    assert status["video"] is None
    events = list(query(recorder.auditd.files(), event="recorder.down"))
    assert events and events[0]["reason"] == status["last_error"]
    assert "Stream map '0:v:0' matches no streams." in recorder.log.read_text()
