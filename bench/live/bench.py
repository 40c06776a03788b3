"""Live viewing through the relay against the camera itself and bare ffmpeg, side by side on this machine.

1. Time to the first decoded frame, median of `--tries`, of two real players
   at their default settings, from the process's start: the camera itself over
   RTSP (the baseline), the relay's live URL as MPEG-TS, and as fragmented MP4
   (`?format=mp4`), over HTTPS with the lab agent's client certificate
   (`-tls_verify 1 -ca_file -cert_file -key_file`).
   - `ffprobe -v error -show_frames -read_intervals %+#1 URL`: until its first
     `[/FRAME]` line (line-buffered by stdbuf); it then exits by itself.
   - `ffplay -autoexit -vf showinfo URL`: until showinfo's line of frame 0,
     written when the first frame comes out of the decoder; then SIGTERM.
     `-nodisp` is not used: it turns ffplay's video off (nothing would be
     decoded); SDL draws offscreen instead (SDL_VIDEODRIVER=offscreen).
   Target: fMP4 at most 1.2 x the camera, for each player (MPEG-TS printed).
2. Live latency the recorder's tap and the relay add: a shared camera (one
   encoder, the same bytes to every client) is read by a bare `ffmpeg
   -rtsp_transport tcp -i URL -map 0:v:0 -c copy -f mpegts -flush_packets 1
   pipe:1` and by the recorder; a viewer reads the relay's live flow (MPEG-TS
   over TLS, http.client), and another reads the recorder's tap socket directly
   (the relay's own source: splits the delay between tap and relay). Each
   reader keeps the arrival time of every read; the MPEG-TS is then parsed to
   its video PES and each frame (its elementary stream bytes, whose hash
   matches frames across sessions whose timestamps differ) is given the
   arrival time of its first byte, and of its last. Over `--seconds`, after
   the burst of the group since the last keyframe a new flow gets at once:
   p50 and p95 of (relay arrival - bare ffmpeg arrival) per frame, at a
   256 kbit/s 640x360 camera and a 4 Mbit/s 1920x1080 one (`--hd-fps`); and
   each path's burstiness over the same window, the p95 of |inter-arrival -
   frame interval| of its own frames (the camera's own irregularity is in
   both; a path that delivers frames in bunches shows more).
   Target: relay p95 at most 100 ms more than bare ffmpeg.
3. Recorder CPU per camera, for the 1080p 4 Mbit/s camera: halfbridge-recorder
   (supervisor and ffmpeg, live tap on, no flow, 60 s segments as deployed)
   against a bare `ffmpeg -rtsp_transport tcp -i URL -map 0:v:0 -c copy -f
   segment -segment_format mpegts -segment_time 60 ...` of the same shared
   camera, side by side, over the same `--cpu-seconds` after `--warmup`; CPU
   (user + system) of each process tree from /proc. Target (the recorder
   bench's): ratio at most 1.10.

    bench/live/run [--tries 7] [--seconds 30] [--cpu-seconds 45] [--hd-fps 25] [--parts first,latency,cpu]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from halfbridge.ts import PACKET  # noqa: E402
from tests.support.camera import Camera  # noqa: E402
from tests.support.cpu import children, tree_cpu  # noqa: E402
from tests.support.recording import bare_segmenter, recorder_config  # noqa: E402
from tests.support.relay import RelayLab  # noqa: E402

RECORDER = Path(sys.executable).with_name("halfbridge-recorder")
FRAME_DONE = re.compile(rb"^\[/FRAME\]")  # ffprobe -show_frames: the end of the first frame's block
SHOWINFO_FIRST = re.compile(rb"Parsed_showinfo.*\bn:\s*0\s")  # showinfo's line of frame 0
PLAYER_TIMEOUT = 30.0  # seconds a player may take to its first frame before the try counts as failed


class Failed(Exception):
    """A try that gave no measure; the message says why."""


# -- processes ---------------------------------------------------------------


def reap(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0, group: bool = True) -> None:
    """Stop a process (with `sig`, then SIGKILL; to its whole group if it was started in its own session)
    and wait for it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it started too
        else:
            process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def time_to_line(
    command: list[str], marker: re.Pattern, env: dict | None = None, stop: int | None = None, on: str = "stdout"
) -> float:
    """Seconds from the start of `command` to its first output line (stdout or stderr) matching `marker`.

    Afterwards the process is sent `stop` (None: it exits by itself), given a few seconds to end
    cleanly (an RTSP client says TEARDOWN), and killed if it does not.
    """
    tail: deque[bytes] = deque(maxlen=6)
    began = time.monotonic()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if on == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    watched = process.stdout if on == "stdout" else process.stderr
    others = [process.stderr] if on == "stdout" else []
    found = None
    try:
        with selectors.DefaultSelector() as selector:
            for pipe in (watched, *others):
                selector.register(pipe, selectors.EVENT_READ)
            buffer, deadline = b"", began + PLAYER_TIMEOUT
            open_pipes = 1 + len(others)
            while found is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"no frame within {PLAYER_TIMEOUT:.0f} s")
                for key, _ in selector.select(left):
                    data = os.read(key.fileobj.fileno(), 65536)
                    now = time.monotonic()
                    if not data:
                        selector.unregister(key.fileobj)
                        open_pipes -= 1
                        if key.fileobj is watched or not open_pipes:
                            process.wait(timeout=10)
                            said = b" | ".join(tail).decode(errors="replace")[-400:]
                            raise Failed(f"exited with status {process.returncode} before a frame: {said}")
                        continue
                    if key.fileobj is not watched:
                        tail.extend(line for line in data.splitlines() if line.strip())
                        continue
                    buffer += data
                    *lines, buffer = re.split(rb"[\r\n]", buffer)
                    for line in lines:
                        if marker.search(line):
                            found = now - began
                            break
                        if line.strip():
                            tail.append(line)
            if stop is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(stop)
            end = time.monotonic() + 10
            while selector.get_map() and time.monotonic() < end:  # drain until it exits, or give up
                for key, _ in selector.select(0.5):
                    if not os.read(key.fileobj.fileno(), 65536):
                        selector.unregister(key.fileobj)
        return found
    finally:
        reap(process, signal.SIGKILL, 0)


def player_env() -> dict:
    return {**os.environ, "SDL_VIDEODRIVER": "offscreen", "SDL_AUDIODRIVER": "dummy"}


def ffprobe_first(url: str, options: list[str]) -> float:
    command = ["stdbuf", "-oL", "ffprobe", "-v", "error", *options, "-show_frames", "-read_intervals", "%+#1", url]
    return time_to_line(command, FRAME_DONE)


def ffplay_first(url: str, options: list[str]) -> float:
    command = ["ffplay", "-hide_banner", "-nostats", "-autoexit", "-vf", "showinfo", *options, url]
    return time_to_line(command, SHOWINFO_FIRST, env=player_env(), stop=signal.SIGTERM, on="stderr")


# -- reading live MPEG-TS with arrival times ------------------------------------


@dataclass
class Capture:
    """What one reader got: each read's bytes and the monotonic time it returned."""

    name: str
    read: Callable[[], bytes]
    close: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    error: str | None = None
    thread: threading.Thread | None = None
    stopping: bool = False

    def start(self) -> Capture:
        self.thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while data := self.read():
                self.times.append(time.monotonic())
                self.chunks.append(data)
        except Exception as exc:  # ended under it at the end, or a real failure (said in the results)
            if not self.stopping:
                self.error = f"{type(exc).__name__}: {exc}"
        else:
            if not self.stopping:
                self.error = "the stream ended"

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            self.close()
        if self.thread is not None:
            self.thread.join(timeout=10)


@dataclass
class Frame:
    first: float  # arrival of its first byte (its PES header)
    last: float  # arrival of its last byte
    digest: bytes  # of its elementary stream bytes: the same frame in two sessions has the same


def frames_of(capture: Capture) -> list[Frame]:
    """Every whole video frame of a capture, in order (the last one, perhaps cut, is left out)."""
    data = b"".join(capture.chunks)
    ends, total = [], 0
    for chunk in capture.chunks:
        total += len(chunk)
        ends.append(total)

    def arrival(offset: int) -> float:
        return capture.times[bisect.bisect_right(ends, offset)]

    start = data.find(bytes([0x47]))
    while start >= 0 and start + PACKET < len(data) and data[start + PACKET] != 0x47:
        start = data.find(bytes([0x47]), start + 1)
    found: list[Frame] = []
    video, current = None, None  # the video PID; [first offset, last offset, hash] of the frame being read
    for offset in range(max(start, 0), len(data) - PACKET + 1, PACKET):
        if data[offset] != 0x47:
            raise Failed(f"{capture.name}: MPEG-TS sync lost at byte {offset}")
        pid = (data[offset + 1] & 0x1F) << 8 | data[offset + 2]
        if video is not None and pid != video:
            continue
        control = (data[offset + 3] >> 4) & 0x3
        if control == 1:
            payload = offset + 4
        elif control == 3:
            payload = offset + 5 + data[offset + 4]
        else:
            continue
        end = offset + PACKET
        if payload >= end:
            continue  # all adaptation field
        starts = data[offset + 1] & 0x40 and payload <= end - 9 and data[payload : payload + 3] == b"\x00\x00\x01"
        if starts and data[payload + 3] >> 4 == 0xE:  # a video PES begins here
            video = pid
            if current is not None:
                found.append(Frame(arrival(current[0]), arrival(current[1]), current[2].digest()))
            header = payload + 9 + data[payload + 8]
            current = [offset, end - 1, hashlib.blake2b(data[header:end], digest_size=16)]
        elif current is not None and pid == video:
            current[1] = end - 1
            current[2].update(data[payload:end])
    return found


def match(ours: list[Frame], base: list[Frame]) -> list[tuple[int, int]]:
    """(index in ours, index in base) of the same frames, in order of both."""
    where: dict[bytes, list[int]] = {}
    for index, frame in enumerate(base):
        where.setdefault(frame.digest, []).append(index)
    pairs, last = [], -1
    for index, frame in enumerate(ours):
        candidates = where.get(frame.digest, [])
        at = bisect.bisect_right(candidates, last)
        if at < len(candidates):
            last = candidates[at]
            pairs.append((index, last))
    return pairs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def jitter(times: list[float], interval: float) -> float:
    """p95 of |inter-arrival - frame interval|, seconds: how bursty a path delivers frames."""
    return percentile([abs(b - a - interval) for a, b in itertools.pairwise(times)], 95)


# -- the measures ----------------------------------------------------------------


def first_frames(lab: RelayLab, camera: Camera, tries: int) -> dict[tuple[str, str], list]:
    """{(player, path): [seconds or Failed, ...]} for each try."""
    tls = ["-tls_verify", "1", "-ca_file", str(lab.ca.path),
           "-cert_file", str(lab.client_cert), "-key_file", str(lab.client_key)]  # fmt: skip
    live = f"https://127.0.0.1:{lab.port}/v1/cameras/{camera.id}/live"
    paths = {"camera": (camera.url, []), "ts": (live, tls), "mp4": (f"{live}?format=mp4", tls)}
    players = {"ffprobe": ffprobe_first, "ffplay": ffplay_first}
    results: dict[tuple[str, str], list] = {(p, k): [] for p in players for k in paths}
    for measure in players.values():  # untimed: the first start of a player (libraries, SDL's renderer) is slower
        with contextlib.suppress(Failed, OSError, subprocess.SubprocessError):
            measure(camera.url, [])
    for attempt in range(tries):
        for player, measure in players.items():
            for kind, (url, options) in paths.items():
                try:
                    results[player, kind].append(measure(url, options))
                except (Failed, OSError, subprocess.SubprocessError) as exc:
                    results[player, kind].append(Failed(str(exc)))
                time.sleep(0.5)  # the previous flow's lease and RTSP session are gone
        done = ", ".join(
            f"{p} {k} {r[-1]:.2f}" if isinstance(r[-1], float) else f"{p} {k} failed" for (p, k), r in results.items()
        )
        print(f"  first frame, try {attempt + 1}/{tries}: {done}", flush=True)
    return results


@dataclass
class Latency:
    label: str
    interval: float
    delays: list[float] = field(default_factory=list)  # relay - bare, first byte of each frame
    whole: list[float] = field(default_factory=list)  # relay - bare, last byte of each frame
    tap: list[float] = field(default_factory=list)  # tap socket - bare, first byte
    jitter: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    problems: list[str] = field(default_factory=list)


def latency(lab: RelayLab, camera: Camera, label: str, seconds: float) -> Latency:
    """Frame arrival at a viewer of the relay (and of the tap) against bare ffmpeg, on a shared camera."""
    fps = json.loads(camera.config.read_text())["fps"]
    gop = json.loads(camera.config.read_text())["keyframe_interval"] / fps
    result = Latency(label, 1 / fps)
    bare_cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
                "-i", camera.url, "-map", "0:v:0", "-c", "copy", "-f", "mpegts", "-flush_packets", "1",
                "pipe:1"]  # fmt: skip
    captures: list[Capture] = []
    bare = recorder = None
    try:
        # The bare client joins first, the recorder second: both then get the same frames.
        bare_log = (lab.workdir / f"{camera.id}.bare.log").open("wb")
        bare = subprocess.Popen(bare_cmd, stdout=subprocess.PIPE, stderr=bare_log, start_new_session=True)
        bare_log.close()
        fd = bare.stdout.fileno()
        captures.append(Capture("bare", lambda: os.read(fd, 1 << 20), lambda: reap(bare, signal.SIGKILL, 0)).start())
        time.sleep(1.0)
        recorder = lab.record(camera)
        time.sleep(2.0)
        tap = socket.socket(socket.AF_UNIX)
        tap.settimeout(20)
        tap.connect(str(lab.workdir / "live" / f"{camera.id}.sock"))
        captures.append(Capture("tap", lambda: tap.recv(1 << 20), lambda: shut(tap)).start())
        connection = lab.connect()
        connection.request("GET", f"/v1/cameras/{camera.id}/live")
        sock = connection.sock  # the response reads it; shut down under a blocked read at the end
        response = connection.getresponse()
        if response.status != 200:
            raise Failed(f"the relay answered {response.status}: {response.read()[:300]!r}")
        joined = time.monotonic()
        captures.append(Capture("relay", lambda: response.read1(1 << 20), lambda: shut(sock)).start())
        time.sleep(seconds)
    finally:
        for capture in reversed(captures):
            capture.stop()
        if bare is not None:
            reap(bare, signal.SIGKILL, 0)
        if recorder is not None:
            reap(recorder, group=False)
    by_name = {c.name: c for c in captures}
    for capture in captures:
        if capture.error:
            result.problems.append(f"{capture.name} reader: {capture.error}")
    frames = {name: frames_of(capture) for name, capture in by_name.items()}
    result.counts = {name: len(f) for name, f in frames.items()}
    settled = joined + gop + 1.0  # the group since the last keyframe comes in a burst at the flow's start
    pairs = [(i, j) for i, j in match(frames["relay"], frames["bare"]) if frames["relay"][i].first >= settled]
    result.matched = len(pairs)
    relay, base = frames["relay"], frames["bare"]
    result.delays = [relay[i].first - base[j].first for i, j in pairs]
    result.whole = [relay[i].last - base[j].last for i, j in pairs]
    tap_pairs = [(i, j) for i, j in match(frames["tap"], base) if frames["tap"][i].first >= settled]
    result.tap = [frames["tap"][i].first - base[j].first for i, j in tap_pairs]
    end = min(c.times[-1] for c in captures if c.times)
    result.jitter = {  # each path's own frames, over the same window
        name: jitter([f.first for f in found if settled <= f.first <= end], result.interval)
        for name, found in frames.items()
    }
    expected = seconds * fps - (settled - joined) * fps
    if result.matched < 0.8 * expected:
        result.problems.append(f"only {result.matched} frames matched of about {expected:.0f} expected")
    return result


def recorder_cpu(workdir: Path, camera: Camera, warmup: float, seconds: float) -> tuple[float, float, float, str]:
    """CPU seconds per minute of halfbridge-recorder (live tap, no flow), of its ffmpeg alone, and of a bare
    segmenter, over the same `seconds`; a note if the window was disturbed."""
    config = recorder_config(workdir / "cpu-recorder.json", camera, workdir, 60, workdir / "cpu-live.sock")
    bare_cmd = bare_segmenter(camera.url, workdir / "bare-segments", 60)
    bare = ours = None
    try:
        bare = subprocess.Popen(bare_cmd, env={**os.environ, "TZ": "UTC"}, start_new_session=True)
        time.sleep(1.0)  # the recorder joins the shared camera second (see `latency`)
        log = (workdir / "cpu-recorder.log").open("wb")
        ours = subprocess.Popen([str(RECORDER), str(config)], stderr=log, start_new_session=True)
        log.close()
        time.sleep(warmup)
        ffmpegs = children(ours.pid)

        def sample() -> tuple[float, float, float]:
            return tree_cpu(ours.pid), sum(tree_cpu(c) for c in ffmpegs), tree_cpu(bare.pid)

        began, before = time.monotonic(), sample()
        time.sleep(seconds)
        after, elapsed = sample(), time.monotonic() - began
        note = ""
        if children(ours.pid) != ffmpegs or len(ffmpegs) != 1 or bare.poll() is not None:
            note = "the recorder restarted its ffmpeg, or the bare segmenter ended, during the window"
        recorder, ffmpeg, segmenter = ((b - a) * 60 / elapsed for a, b in zip(before, after, strict=True))
        return recorder, ffmpeg, segmenter, note
    finally:
        for process in (ours, bare):
            if process is not None:
                reap(process, signal.SIGTERM if process is ours else signal.SIGINT)


def shut(sock: socket.socket) -> None:
    """End a socket another thread may be blocked reading."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# -- the report ----------------------------------------------------------------------


def median_of(values: list) -> tuple[float, str]:
    """The median of the tries that gave a measure, and a note on those that failed."""
    good = [v for v in values if isinstance(v, float)]
    bad = [str(v) for v in values if not isinstance(v, float)]
    note = f"{len(bad)}/{len(values)} failed: {bad[0][:150]}" if bad else ""
    return (statistics.median(good) if good else math.nan), note


def print_table(rows: list[tuple[str, float, float | None, str]]) -> None:
    print(f"{'measure':58} {'ours':>9} {'baseline':>9} {'ratio':>7}  target")
    for label, ours, base, target in rows:
        ratio = f"{ours / base:>7.2f}" if base is not None and base > 1e-9 and not math.isnan(ours) else "      -"
        shown_base = f"{base:>9.3f}" if base is not None else f"{'-':>9}"
        print(f"{label:58} {ours:>9.3f} {shown_base} {ratio}  {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=7, help="first-frame tries per player and path")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: seconds of frames per camera")
    parser.add_argument("--cpu-seconds", type=float, default=45.0, help="recorder CPU: the measured window")
    parser.add_argument("--warmup", type=float, default=10.0, help="recorder CPU: seconds before the window")
    parser.add_argument("--hd-fps", type=int, default=25, help="frame rate of the 1920x1080 4 Mbit/s camera")
    parser.add_argument("--parts", default="first,latency,cpu", help="which measures, comma-separated")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"first", "latency", "cpu"}:
        parser.error("--parts names first, latency and cpu")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks reap everything
    rows: list[tuple[str, float, float | None, str]] = []
    notes: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        work = Path(tmp)
        # Scrolling bars: the ball on black would not make the encoder send 4 Mbit/s (docs/lab.md).
        hd = {"width": 1920, "height": 1080, "bitrate_kbps": 4000, "fps": args.hd_fps, "keyframe_interval": args.hd_fps,
              "pattern": "smpte", "horizontal_speed": 16}  # fmt: skip
        cameras = {
            "first": Camera(work, "ttff-cam"),  # per-client encoder (the simulator's default): 640x360 25 fps
            "low": Camera(work, "lat-256k", shared=True, bitrate_kbps=256),
            "hd": Camera(work, "lat-4m", shared=True, **hd),
        }
        lab = RelayLab(work, [{"id": c.id} for c in cameras.values()], limit=20, ttl=15, renew_seconds=5)
        try:
            lab.start()
            if "first" in parts:
                camera = cameras["first"]
                camera.start()
                recorder = lab.record(camera)
                time.sleep(2)
                print(f"first frame: {args.tries} tries of ffprobe and ffplay on 3 paths", flush=True)
                results = first_frames(lab, camera, args.tries)
                reap(recorder, group=False)
                camera.stop()
                for player in ("ffprobe", "ffplay"):
                    base, note = median_of(results[player, "camera"])
                    if note:
                        notes.append(f"{player} of the camera: {note}")
                    for kind, name, target in (("ts", "MPEG-TS", ""), ("mp4", "fMP4", "<= 1.20")):
                        ours, note = median_of(results[player, kind])
                        rows.append((f"first frame, {player}: relay {name} vs camera, s", ours, base, target))
                        if note:
                            notes.append(f"{player} of the relay's {name}: {note}")
            if "latency" in parts:
                for key, label in (("low", "256 kbit/s 640x360@25"), ("hd", f"4 Mbit/s 1920x1080@{args.hd_fps}")):
                    camera = cameras[key]
                    camera.start()
                    print(f"latency: {label}, {args.seconds:.0f} s", flush=True)
                    try:
                        found = latency(lab, camera, label, args.seconds)
                    except (Failed, OSError, RuntimeError) as exc:
                        notes.append(f"latency {label}: failed: {exc}")
                        continue
                    finally:
                        camera.stop()
                    ms = 1000
                    rows += [
                        (f"latency {label}: relay - bare, p50 ms", percentile(found.delays, 50) * ms, None, ""),
                        (f"latency {label}: relay - bare, p95 ms", percentile(found.delays, 95) * ms, None,
                         "<= 100 ms"),
                        ("  of which the tap (direct socket read), p95 ms", percentile(found.tap, 95) * ms, None, ""),
                        ("  whole frame (last byte), relay - bare, p95 ms", percentile(found.whole, 95) * ms, None,
                         ""),
                        (f"  burstiness, p95 |gap - {found.interval * ms:.0f} ms|, relay vs bare",
                         found.jitter["relay"] * ms, found.jitter["bare"] * ms, ""),
                    ]  # fmt: skip
                    notes.append(
                        f"latency {label}: {found.matched} frames matched (frames read: "
                        + ", ".join(f"{k} {v}" for k, v in found.counts.items())
                        + f"); tap burstiness p95 {found.jitter['tap'] * ms:.1f} ms"
                    )
                    notes += [f"latency {label}: {p}" for p in found.problems]
        finally:
            lab.stop()
            for camera in cameras.values():
                camera.stop()
        if "cpu" in parts:
            camera = Camera(work, "cpu-4m", shared=True, **hd)
            camera.start()
            print(f"recorder CPU: 1920x1080@{args.hd_fps} 4 Mbit/s, {args.warmup:.0f} + {args.cpu_seconds:.0f} s")
            try:
                ours, ffmpeg, bare, note = recorder_cpu(work, camera, args.warmup, args.cpu_seconds)
                rows += [
                    ("recorder CPU s per camera-minute (1080p 4 Mbit/s)", ours, bare, "<= 1.10"),
                    ("  of which its ffmpeg (segments + live pipe)", ffmpeg, bare, ""),
                    ("  of which its supervisor (Python: the tap, the index)", ours - ffmpeg, None, ""),
                ]
                if note:
                    notes.append(f"recorder CPU: {note}")
            finally:
                camera.stop()

    print()
    print_table(rows)
    print("baselines: first frame: the same player on the camera itself (RTSP, per-client encoder);")
    print("latency: bare ffmpeg -c copy -f mpegts -flush_packets 1 of the same shared camera (0 by definition);")
    print("CPU: ffmpeg -c copy -f segment -segment_time 60 of the same shared camera.")
    print("On MPEG-TS a player analyses 5 s of stream (analyzeduration: a TS may add a stream at any time)")
    print("before its first frame; fMP4's moov declares the track, so only the frame rate is measured first.")
    for note in notes:
        print(f"note: {note}")
    print(f"ran {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
