"""One camera's recorder: ffmpeg under a supervisor that never gives up.

The supervisor runs ffmpeg (see `media.record_command`), indexes each segment
ffmpeg finishes, and watches ffmpeg's progress reports: no new data for
`watchdog_seconds` means a stalled camera, and ffmpeg is restarted. A camera
that is down is retried with exponential back-off and jitter, up to a cap; it
is reported once when it goes down (status file and one log line saying since
when), then at most once per `still_down_log_seconds`, never in a loop that
floods the journal. A segment cut short by a crash (of ffmpeg or of the
supervisor itself) is measured when the supervisor starts again and indexed
with the flag `recovered`.

With `live_socket`, ffmpeg also writes the camera's video into a pipe that the
live tap (`halfbridge.live`) fans out to the relay's live flows.

With `metrics_dir`, the recorder also writes the camera's metrics for
node_exporter's textfile collector (`halfbridge_recorder_<camera>.prom`, see
docs/metrics.md): whether ffmpeg is writing segments, the end of the last one,
ffmpeg's restarts, and since when the camera is down. It rewrites the file on
every change of state and after each finished segment; a file it cannot write is
said once in the log, and the recording goes on.

Only the camera's first video stream is recorded, as the camera sends it (no
transcoding); its sound never is (video-protection concerns images), which the
status says once. When ffmpeg fails, the reason given (status, log, history) is
its first error since the recording was last fine, not its last line, which is
usually only the consequence ("Conversion failed!").

With `cluster`, several gateways run a recorder for the camera and only the one holding the camera's
lease in etcd records it (`halfbridge.camera_lease`): the others stand by; a holder that cannot renew its
lease in time stops ffmpeg at once and stands by, and one stopped by SIGTERM revokes its lease so that
another gateway takes the camera at once.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import datetime as dt
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from halfbridge import media, ts
from halfbridge.audit import AuditClient, AuditError
from halfbridge.camera_lease import CameraLease, LeaseConfig
from halfbridge.config import load_or_exit
from halfbridge.etcd_sync import SyncEtcd
from halfbridge.live import LiveTap
from halfbridge.metrics import family, label, write_textfile
from halfbridge.store import CAMERA_ID_RE, Segment, Store, check_camera_id, iso, segment_day, segment_time, utc

log = logging.getLogger("halfbridge.recorder")

_PR_SET_PDEATHSIG = 1
# Progress reports (one every 2 s) whose smallest "wall clock minus muxed time" anchors a
# run. The anchor is then frozen: every segment of a run is placed with the same one.
_ANCHOR_SAMPLES = 3
# In a cluster, the status is written at least this often (seconds): the relay reads from it which gateway records
# the camera now, and takes a status older than halfbridge.relay.peers.HOLDER_FRESH (5 s) for a recorder stopped.
STATUS_EVERY = 2.0
# The head of a run's first segment read for its first frame's timestamps (the tables, then that frame).
LEAD_READ = 64 << 10


@dataclass
class RecorderConfig:
    camera: str
    url: str
    store_root: Path
    state_dir: Path
    segment_seconds: int = 60
    rtsp_timeout: float = 10.0
    watchdog_seconds: float = 15.0
    backoff_initial: float = 1.0
    backoff_cap: float = 30.0
    backoff_jitter: float = 0.2
    stable_seconds: float = 60.0
    still_down_log_seconds: float = 600.0
    audit_socket: Path | None = None  # the audit writer, which records outages and recoveries for auditors
    live_socket: Path | None = None  # where the relay's live flows connect (halfbridge.live); None: no live tap
    # node_exporter's textfile directory (halfbridge.metrics.TEXTFILE_DIR on a gateway), where the camera's
    # metrics go; None: no metrics file (tests of the recorder alone).
    metrics_dir: Path | None = None
    # In a cluster: etcd, this gateway's name, the lease's ttl and whether this gateway is the camera's preferred
    # one (`camera_lease.LeaseConfig`); None: this gateway alone records the camera, as it always did.
    cluster: LeaseConfig | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> RecorderConfig:
        """Read a camera's JSON configuration; a missing key or a bad value is a sentence."""
        required = ("camera", "url", "store_root", "state_dir")
        paths = ("store_root", "state_dir", "audit_socket", "live_socket", "metrics_dir")
        config = load_or_exit(cls, "halfbridge-recorder", path, required, paths=paths)
        if not isinstance(config.camera, str) or not CAMERA_ID_RE.match(config.camera):
            # The id names the camera's files (recordings, status, metrics) and labels its metrics.
            raise SystemExit(
                f"halfbridge-recorder: {path}: camera is the camera's id, 1 to 64 of a-z, 0-9, '-' and '_' "
                f"(starting with a letter or digit), not {config.camera!r}"
            )
        if config.segment_seconds < 2 or config.watchdog_seconds <= 0 or config.backoff_cap < config.backoff_initial:
            raise SystemExit(
                f"halfbridge-recorder: {path}: segment_seconds must be at least 2, watchdog_seconds positive, "
                "and backoff_cap at least backoff_initial"
            )
        if config.cluster is not None:
            try:
                config.cluster = LeaseConfig.parse(config.cluster)
            except ValueError as exc:
                raise SystemExit(f"halfbridge-recorder: {path}: cluster: {exc}") from None
        return config


class Backoff:
    """Exponential back-off with jitter and a cap, reset once a run proved stable."""

    def __init__(self, initial: float, cap: float, jitter: float, rng: random.Random | None = None) -> None:
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * (2**self.failures))
        self.failures += 1
        spread = base * self.jitter
        return max(0.0, min(self.cap, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Run:
    """One ffmpeg process and what it has produced so far."""

    process: subprocess.Popen
    started: float
    list_path: Path
    list_offset: int = 0
    anchor: float | None = None
    anchor_samples: int = 0
    last_out_us: int = -1  # the last muxed time seen, in microseconds
    last_growth: float = 0.0
    last_end: float | None = None  # absolute end of the last indexed segment
    segments: int = 0
    progress: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    first_error: str | None = None  # ffmpeg's first error since the last indexed segment
    last_warning: str | None = None
    listing_input: bool = False  # ffmpeg is listing its input's streams
    answered: bool = False  # the camera answered: ffmpeg listed its streams
    video: str | None = None  # the input's first video stream, as ffmpeg describes it
    audio: list[str] = field(default_factory=list)  # the codecs of the input's audio streams (left behind)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Recorder:
    def __init__(self, config: RecorderConfig, clock=time.time, sleep=time.sleep, lease: CameraLease | None = None):
        check_camera_id(config.camera)  # it names files below state_dir and metrics_dir
        self.config = config
        self.store = Store(config.store_root)
        self.clock, self.sleep = clock, sleep
        self.backoff = Backoff(config.backoff_initial, config.backoff_cap, config.backoff_jitter)
        self.run: Run | None = None
        self.stopping = False
        self.state = "starting"
        self.down_since: float | None = None
        self.last_error = ""
        self.restarts = 0
        self.next_start = 0.0
        self.days_ensured = float("-inf")
        self.last_down_log = 0.0
        self.audit = AuditClient(config.audit_socket) if config.audit_socket else None
        self.recorded_reason: str | None = None  # the outage's reason as the history last has it
        self.video: str | None = None  # what the camera sends, as ffmpeg last described it
        self.audio: str | None = None  # None until ffmpeg has listed the camera's streams
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.status_path = config.state_dir / f"{config.camera}.status.json"
        self.playlist_path = config.state_dir / f"{config.camera}.ffconcat"
        self.run_path = config.state_dir / f"{config.camera}.run.json"
        self.live = LiveTap(config.live_socket, config.camera) if config.live_socket else None
        metrics_name = f"halfbridge_recorder_{config.camera}.prom"
        self.metrics_path = config.metrics_dir / metrics_name if config.metrics_dir else None
        self.metrics_failing = False  # the last write of the metrics file failed (said once)
        self.last_end: float | None = None  # end of the camera's last indexed segment, this run or before
        self.stopped_at: float | None = None  # when a SIGTERM or SIGINT stopped the recorder
        self.lease = lease
        self.shown_holder: str | None = None  # the holder the status file names
        self.status_written = 0.0  # when the status was last written (this host's wall clock, as `updated`)
        if self.lease is None and config.cluster is not None:
            self.lease = CameraLease(config.camera, config.cluster, SyncEtcd(config.cluster.settings()))
        if self.lease is not None:
            self.lease.on_held, self.lease.on_released = self.took, self.gave_up
            self.state = "standby"  # until this gateway holds the camera

    # -- lifecycle -------------------------------------------------------

    def serve(self) -> int:
        """Record until SIGTERM or SIGINT; returns the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.recover()
        self.last_end = self.last_indexed_end()
        self.write_status()
        log.info("camera %s: recording to %s", self.config.camera, self.store.camera_dir(self.config.camera))
        if self.live is not None:
            try:
                self.live.open()
            except OSError as exc:  # the recording matters more than live viewing: go on without it
                log.error(
                    "camera %s: no live viewing: cannot listen on %s: %s", self.config.camera, self.live.path, exc
                )
                self.live = None
        while not self.stopping:
            self.step()
            # Fast while a run starts (to anchor it), then once a second: a finished
            # segment waits at most that long for its index line.
            settling = self.run is not None and self.run.anchor_samples < _ANCHOR_SAMPLES
            pause = 0.05 if settling else 1.0
            self.sleep(pause if self.lease is None else max(0.05, min(pause, self.lease.due_in())))
        if self.run is not None:
            self.stop_run("the recorder is stopping")
            self.run_ended(self.clock(), "the recorder is stopping")
        if self.lease is not None:
            self.lease.release("the recorder is stopping")  # once ffmpeg is stopped: never two recording
        if self.live is not None:
            self.live.close()
        self.stopped_at = self.clock()
        self.write_status()
        return 0

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True

    def step(self) -> None:
        """One turn of the supervision loop."""
        if self.lease is not None and not self.lease.step():
            if self.lease.holder != self.shown_holder or self.clock() - self.status_written >= STATUS_EVERY:
                self.write_status()  # which gateway records the camera, as the status says it, lately
            return  # another gateway records the camera (or etcd cannot say which): stand by
        now = self.clock()
        if self.lease is not None and now - self.status_written >= STATUS_EVERY:
            self.write_status()  # the holder says it still holds the camera
        try:
            if now - self.days_ensured >= 60:
                self.store.ensure_days(self.config.camera, now)  # today and tomorrow
                self.days_ensured = now
        except OSError as exc:
            # A full or read-only disk: say so, keep trying, never crash-loop.
            self.went_down(now, f"cannot create the day directory: {exc}", self.config.backoff_cap)
            self.next_start = now + self.config.backoff_cap
            return
        if self.run is None:
            if now >= self.next_start:
                self.start_run(now)
            return
        self.collect(now)
        code = self.run.process.poll()
        if code is not None:
            self.run_ended(now, "the camera ended its stream" if code == 0 else f"ffmpeg exited with status {code}")
        elif now - self.run.last_growth > self.config.watchdog_seconds:
            why = f"no new frames for {self.config.watchdog_seconds:g} s (or the camera's timestamps stopped advancing)"
            self.stop_run(why)
            self.run_ended(now, why)

    # -- running ffmpeg --------------------------------------------------

    def start_run(self, now: float) -> None:
        media.write_private(self.playlist_path, media.ffconcat_text(self.config.url, self.config.rtsp_timeout))
        list_path = self.config.state_dir / f"{self.config.camera}.segments.csv"
        list_path.unlink(missing_ok=True)
        live = os.pipe() if self.live is not None else None  # (read end for the tap, write end for ffmpeg)
        command = media.record_command(
            str(self.playlist_path),
            self.store.segment_pattern(self.config.camera),
            str(list_path),
            self.config.segment_seconds,
            live_fd=live[1] if live else None,
        )
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "TZ": "UTC"},
                preexec_fn=_die_with_parent,
                pass_fds=live[1:] if live else (),
            )
        except BaseException:
            for fd in live or ():
                os.close(fd)
            raise
        if live:
            os.close(live[1])  # ffmpeg holds the write end: its exit is the pipe's end
            self.live.follow(live[0])
        self.run = Run(process=process, started=now, list_path=list_path, last_growth=now)
        self.run_path.write_text(json.dumps({"started": now, "anchor": None, "last_end": None}))
        for stream, sink in ((process.stdout, self._on_progress), (process.stderr, self._on_stderr)):
            threading.Thread(target=_pump, args=(stream, sink, self.run), daemon=True).start()

    def _on_progress(self, run: Run, line: str) -> None:
        with run.lock:
            run.progress.append((time.time(), line))

    def _on_stderr(self, run: Run, line: str) -> None:
        entry = media.log_line(line.replace(self.config.url, media.redact(self.config.url)))
        text = entry.text.replace(f"{self.playlist_path}: ", "")[:500]
        with run.lock:
            if entry.level == "info":
                # ffmpeg lists its input's streams once, at the start: what the camera sends.
                if text.startswith(("Input #", "Output #")):
                    run.listing_input = text.startswith("Input #")
                    run.answered = True
                elif run.listing_input and (stream := entry.input_stream) is not None:
                    kind, codec, description = stream
                    if kind == "video" and run.video is None:
                        run.video = description
                    elif kind == "audio":
                        run.audio.append(codec)
            elif entry.is_error:
                run.first_error = run.first_error or text
            elif entry.level == "warning" and "Non-monotonous DTS" not in text:
                run.last_warning = text

    def collect(self, now: float) -> None:
        """Read ffmpeg's progress (anchor, watchdog) and its finished segments (index)."""
        run = self.run
        with run.lock:
            reports = list(run.progress)
            run.progress.clear()
        block: dict[str, str] = {}
        for seen, line in reports:
            key, _, value = line.strip().partition("=")
            block[key] = value
            if key != "progress":
                continue
            out_us = block.get("out_time_us", "N/A")
            out_us = int(out_us) if out_us.lstrip("-").isdigit() else 0
            # The segment muxer reports no total_size: the heartbeat is the muxed time keeping
            # up with the wall clock. Timestamps that stop advancing (a camera whose clock
            # jumped back: ffmpeg then nudges each frame by one tick) count as a stall too.
            if out_us > run.last_out_us:
                run.last_out_us = out_us
                if run.anchor is None or (seen - run.anchor) - out_us / 1e6 < self.config.watchdog_seconds:
                    run.last_growth = seen
            if out_us > 0 and run.anchor_samples < _ANCHOR_SAMPLES:
                # A packet muxed at relative time t was written at or before `seen`:
                # the smallest (seen - t) over the first reports is the best anchor.
                estimate = seen - out_us / 1e6
                run.anchor = estimate if run.anchor is None else min(run.anchor, estimate)
                run.anchor_samples += 1
                if run.anchor_samples == 1:
                    self.went_up(now)
            block = {}
        # Index only once the anchor has settled (ffmpeg's first report can come before the
        # burst of frames it buffered while probing, and overestimate the anchor).
        if run.anchor is not None and run.anchor_samples >= _ANCHOR_SAMPLES:
            self.index_finished(run)

    def index_finished(self, run: Run) -> None:
        try:
            if run.list_path.stat().st_size <= run.list_offset:
                return  # nothing new: one stat a second, no read, no write
            with run.list_path.open("rb") as handle:
                handle.seek(run.list_offset)
                data = handle.read()
        except FileNotFoundError:
            return
        indexed = False
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # ffmpeg is still writing this line
            run.list_offset += len(raw)
            name, rel_start, rel_end = _parse_list_line(raw.decode("utf-8", "replace"))
            if name is None:
                continue
            start = run.anchor + rel_start
            if run.segments == 0:
                start += self.first_lead(name)
            self.index_segment(name, start, run.anchor + rel_end)
            run.last_end = run.anchor + rel_end
            run.segments += 1
            indexed = True
        if indexed:
            with run.lock:  # what failed before this segment was written is no longer why anything fails
                run.first_error = run.last_warning = None
            # Where the next segment starts, for the recovery after a crash.
            self.run_path.write_text(
                json.dumps({"started": run.started, "anchor": run.anchor, "last_end": run.last_end})
            )
            self.last_end = run.last_end
            self.write_metrics()  # once per finished segment, at most: segments last 2 s or more

    def first_lead(self, name: str) -> float:
        """How much later than listed a run's first segment starts (B-frames; see `ts.lead`)."""
        try:
            with self.store.segment_path(self.config.camera, name).open("rb") as handle:
                return ts.lead(handle.read(LEAD_READ))
        except (OSError, ValueError):
            return 0.0

    def index_segment(self, name: str, start: float, end: float, flags: str = "") -> None:
        day = segment_day(name)
        if day is None:
            log.warning("camera %s: ffmpeg wrote an unexpected segment name %r; not indexed", self.config.camera, name)
            return
        path = self.store.segment_path(self.config.camera, name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            log.warning("camera %s: segment %s vanished before it was indexed", self.config.camera, path)
            return
        self.store.append(self.config.camera, day, Segment(round(start, 3), round(end, 3), size, name, flags))

    def stop_run(self, why: str, grace: float = 5.0) -> None:
        """Stop ffmpeg, killed if it takes more than `grace` seconds; `run_ended` then indexes what it finished."""
        run = self.run
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)  # ffmpeg finishes the segment and its list entry
            try:
                run.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait(timeout=5)
        log.debug("camera %s: ffmpeg stopped: %s", self.config.camera, why)

    def run_ended(self, now: float, why: str, standing_by: bool = False) -> None:
        run = self.run
        self.run = None
        if run.anchor is not None:
            self.index_finished(run)
        self.recover_partial(run.last_end)
        with run.lock:
            reason = run.first_error or run.last_warning or why
            answered = run.answered
        if self.stopping or standing_by:
            return
        if now - run.started >= self.config.stable_seconds and run.segments > 0:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self.next_start = now + delay
        self.restarts += 1
        self.went_down(now, reason, delay, answered)

    # -- the camera's lease, in a cluster ----------------------------------

    def took(self, since: float) -> None:
        """This gateway holds the camera (since `since`): record it from now on."""
        gateway = self.config.cluster.gateway
        log.info("camera %s: this gateway (%s) holds its recording since %s", self.config.camera, gateway, iso(since))
        self.record("recording.held", gateway=gateway, since=iso(since))
        self.state, self.down_since, self.last_error = "starting", None, ""
        self.next_start = 0.0
        self.backoff.reset()
        self.write_status()

    def gave_up(self, why: str) -> None:
        """This gateway no longer holds the camera: ffmpeg stopped at once, what it wrote indexed; stand by."""
        stopped = self.run is not None
        if stopped:
            self.stop_run(why, grace=0.5)  # at once: another gateway may take the camera as soon as the lease expires
        gateway = self.config.cluster.gateway
        say = log.info if self.stopping else log.warning
        say("camera %s: this gateway (%s) no longer records it: %s; standing by", self.config.camera, gateway, why)
        self.state, self.down_since, self.last_error = "standby", None, ""
        self.write_status()
        self.record("recording.released", gateway=gateway, reason=why)
        if stopped:
            self.run_ended(self.clock(), why, standing_by=True)  # indexes what ffmpeg wrote
            self.write_metrics()

    # -- state and reports -----------------------------------------------

    def streams_listed(self, run: Run) -> None:
        """What the camera sends, once ffmpeg has said it: in the status; its sound, said once, is left behind."""
        with run.lock:
            video, audio = run.video, ", ".join(run.audio) or "none"
        if video is None:
            return
        if audio != "none" and audio != self.audio:
            log.info(
                "camera %s: its sound (%s) is not recorded nor relayed: video-protection concerns images only",
                self.config.camera,
                audio,
            )
        self.video, self.audio = video, audio

    def went_up(self, now: float) -> None:
        if self.run is not None:
            self.streams_listed(self.run)
        if self.state == "down":
            log.info(
                "camera %s: recording again after %s down (%d attempts)",
                self.config.camera,
                _duration(now - (self.down_since or now)),
                self.backoff.failures,
            )
            self.record("recorder.up", down_since=iso(self.down_since), attempts=self.backoff.failures)
        elif self.state == "starting":
            log.info("camera %s: recording", self.config.camera)
        self.state, self.down_since, self.last_error = "recording", None, ""
        self.write_status()

    def went_down(self, now: float, reason: str, delay: float, answered: bool = False) -> None:
        self.last_error = reason
        if self.state != "down":
            self.state, self.down_since, self.last_down_log = "down", now, now
            log.warning(
                "camera %s: down since %s: %s; next try in %.0f s",
                self.config.camera,
                utc(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
                reason,
                delay,
            )
            self.record("recorder.down", since=iso(now), reason=reason)
            self.recorded_reason = reason
        elif answered and reason != self.recorded_reason:
            # The camera answers again but sends what cannot be recorded: the history says why the
            # gap goes on. Once per new reason; attempts are spaced by the back-off anyway.
            log.warning("camera %s: answers again, but its stream cannot be recorded: %s", self.config.camera, reason)
            self.record("recorder.down", since=iso(self.down_since), reason=reason, attempts=self.backoff.failures)
            self.recorded_reason = reason
        elif now - self.last_down_log >= self.config.still_down_log_seconds:
            self.last_down_log = now
            log.warning(
                "camera %s: still down since %s (%d attempts): %s",
                self.config.camera,
                utc(self.down_since).strftime("%Y-%m-%dT%H:%M:%SZ"),
                self.backoff.failures,
                reason,
            )
        self.write_status()

    def record(self, event: str, **fields) -> None:
        """An outage or a recovery, in the audit log: a gap in the recordings has a reason on file."""
        if self.audit is None:
            return
        try:
            self.audit.append(event, camera=self.config.camera, **fields)
        except AuditError as exc:
            # Recording goes on: losing images would be worse than a missing audit line.
            log.error("camera %s: %s; %s not recorded in the audit log", self.config.camera, exc, event)

    def write_status(self) -> None:
        status = {
            "camera": self.config.camera,
            "state": "stopped" if self.stopping else self.state,
            "since": iso(self.down_since) if self.state == "down" else None,
            "last_error": self.last_error or None,
            "restarts": self.restarts,
            "video": self.video,
            # Sound is never recorded: "none" (the camera sends none), or what is left behind.
            "audio": None if self.audio is None else ("none" if self.audio == "none" else f"dropped ({self.audio})"),
            "updated": iso(self.clock()),
        }
        self.status_written = self.clock()
        if self.lease is not None:
            self.shown_holder = self.lease.holder
            # holder: this gateway records the camera; standby: `holder` does (None: no one, or etcd cannot say).
            status["cluster"] = {
                "gateway": self.config.cluster.gateway,
                "role": "holder" if self.lease.held else "standby",
                "holder": self.lease.holder,
                "held_since": iso(self.lease.since) if self.lease.held else None,
            }
        # Readable by the recorder's group: the relay shows the state and the error in /v1/cameras.
        media.write_private(self.status_path, json.dumps(status, indent=1) + "\n", mode=0o640)
        self.write_metrics()

    def metrics_lines(self) -> list[str]:
        """The camera's series, in Prometheus' text format; a series whose value is unknown is left out."""
        camera = f'{{camera="{label(self.config.camera)}"}}'
        up = self.state == "recording" and not self.stopping
        down_since = self.down_since if self.state == "down" else None
        if self.stopping and down_since is None and self.state != "standby":  # stopped recording (or starting)
            down_since = self.stopped_at if self.stopped_at is not None else self.clock()
        return [
            *family(
                "halfbridge_camera_up",
                "gauge",
                "1 while the recorder's ffmpeg writes the camera's segments; 0 while it starts, is down or stopped.",
                [(camera, int(up))],
            ),
            *family(
                "halfbridge_camera_last_segment_end_timestamp_seconds",
                "gauge",
                "End of the camera's last indexed segment (Unix time): what the PP can play back stops there.",
                [(camera, f"{self.last_end:.3f}")] if self.last_end is not None else [],
            ),
            *family(
                "halfbridge_recorder_restarts_total",
                "counter",
                "ffmpeg runs that ended (each started again after the back-off), since the recorder started.",
                [(camera, self.restarts)],
            ),
            *family(
                "halfbridge_camera_down_since_timestamp_seconds",
                "gauge",
                "Since when the camera is not recorded, down or stopped (Unix time); absent while it records.",
                [(camera, f"{down_since:.3f}")] if down_since is not None else [],
            ),
            *(
                family(
                    "halfbridge_camera_held",
                    "gauge",
                    "1 while this gateway holds the camera's lease in the cluster (it records the camera); 0 while it "
                    "stands by.",
                    [(camera, int(self.lease.held))],
                )
                if self.lease is not None
                else ()
            ),
        ]

    def write_metrics(self) -> None:
        """The camera's metrics file for node_exporter; a failure is said once, and never stops the recording."""
        if self.metrics_path is None:
            return
        try:
            write_textfile(self.metrics_path, self.metrics_lines())
        except OSError as exc:
            if not self.metrics_failing:
                log.warning(
                    "camera %s: cannot write its metrics to %s (%s): the supervision sees the camera's file grow "
                    "stale; recording goes on",
                    self.config.camera,
                    self.metrics_path,
                    exc.strerror or exc,
                )
            self.metrics_failing = True
            return
        if self.metrics_failing:
            log.info("camera %s: its metrics are written to %s again", self.config.camera, self.metrics_path)
        self.metrics_failing = False

    def last_indexed_end(self) -> float | None:
        """The end of the camera's last indexed segment, from the indexes of its last two days."""
        try:
            for day in reversed(self.store.days(self.config.camera)[-2:]):
                segments = self.store.index(self.config.camera, day)
                if segments:
                    return max(segment.end for segment in segments)
        except OSError as exc:
            log.warning("camera %s: cannot read its index for its last segment: %s", self.config.camera, exc)
        return None

    # -- crash recovery --------------------------------------------------

    def recover(self) -> None:
        """At start: index the segment a crashed run left unindexed, measured with ffprobe."""
        try:
            previous = json.loads(self.run_path.read_text())
        except (OSError, ValueError):
            previous = {}
        self.recover_partial(previous.get("last_end"))

    def recover_partial(self, last_end: float | None) -> None:
        """Index the unindexed segments of the last two days (at most a crash's partial one)."""
        today = utc(self.clock()).date()
        for day in (today - dt.timedelta(days=1), today):
            for name in self.store.unindexed(self.config.camera, day):
                path = self.store.day_dir(self.config.camera, day) / name
                self._recover_one(path, day, last_end)

    def _recover_one(self, path: Path, day, last_end: float | None) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            path.unlink(missing_ok=True)
            log.info("camera %s: removed empty segment %s left by a crash", self.config.camera, path.name)
            return
        try:
            duration = media.probe_duration(str(path))
        except media.ProbeError as exc:
            log.warning(
                "camera %s: segment %s left by a crash is unreadable (%s); kept, not indexed",
                self.config.camera,
                path.name,
                exc,
            )
            return
        named = segment_time(path.name)
        start = last_end if last_end is not None and abs(last_end - named) < 5 else named
        segment = Segment(round(start, 3), round(start + duration, 3), size, path.name, "recovered")
        self.store.append(self.config.camera, day, segment)
        self.last_end = max(self.last_end or segment.end, segment.end)
        log.info(
            "camera %s: indexed %s (%.1f s) left unfinished by a crash",
            self.config.camera,
            path.name,
            duration,
        )


def _pump(stream, sink, run: Run) -> None:
    with contextlib.suppress(ValueError, OSError):
        for raw in iter(stream.readline, b""):
            sink(run, raw.decode("utf-8", "replace"))
    stream.close()


def _parse_list_line(line: str) -> tuple[str | None, float, float]:
    parts = line.strip().rsplit(",", 2)
    if len(parts) != 3:
        return None, 0.0, 0.0
    try:
        return Path(parts[0]).name, float(parts[1]), float(parts[2])
    except ValueError:
        return None, 0.0, 0.0


def _die_with_parent() -> None:
    """ffmpeg gets SIGKILL if its supervisor dies, whatever killed it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"
