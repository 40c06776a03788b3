"""The capacity of one gateway on this machine: cameras recorded with 10 flows open before a frame is lost.

The cameras come from a simulator that does not encode (`loopcam.py`: the
lab's RTSP simulator, halfbridge-camsim, serving a clip encoded once, 1280x720
25 fps H.264 at 2000 kbit/s with a keyframe every 2 s by default, looped by
`ffmpeg -stream_loop -1 -re -c copy` for each camera, staggered over a GOP).
For a number N of cameras, one side after the other on the same cameras:

- ours: halfbridge-recorder for each camera (its supervisor, its ffmpeg, its
  live tap), as deployed (60 s segments, watchdog 20 s), with a quota daemon
  and a relay (tests/support/relay.py's RelayLab: limit 10, ttl 15 s, renewal
  every 5 s) serving `--flows` live flows at once, spread over the cameras and
  read to the end by an HTTPS client with the agent's certificate;
- bare: N `ffmpeg -rtsp_transport tcp -i URL -map 0:v -c copy -f segment ...`
  (tests/support/recording.py's bare_segmenter), nothing else.

Every process of a side starts at once (as at a gateway's boot); once every
camera records, `--warmup` seconds, then a window of `--seconds`. A frame is
lost when a camera's recording (its segments in order, read by ffprobe), from
the window's start on, has a gap in its timestamps of more than one and a
half frames (the frames missing are counted) or a timestamp that goes back (a
restart); when a recorder logged its camera down from the window's start on;
or when a side's cameras did not all record within 20 s + N/2 s. What
happened before the window, while the cameras started, is printed apart and
not counted. The source has no gap (its loop keeps the timestamps going).

CPU is what the kernel accounted to each process tree (user + system, /proc)
over the window, per camera (% of one core); memory is each tree's RSS and
PSS (the shared pages divided among their users: what N of them take
together) at its end. "gateway" is the relay, the quota daemon and the audit
writer together, with the flows open (a fixed cost, not per camera);
"all-in" adds it to the recorders, per camera. The simulator runs on the same
cores (its share is printed): on a gateway the cameras are elsewhere, so the
loss threshold here understates what a gateway alone holds; cameras per core
and per GiB are also given from the CPU and memory per camera (the gateway's
fixed share aside). Storage per camera-day is the bytes of the store per
second of recording x 86400.

N grows by `--growth` from `--start` (4, 8, 16, 32, ...) up to `--max` until
each side has lost a frame, then is bisected for each side, within `--budget`
seconds in all (a step is not started if it would likely end past the
budget). `--quick` (or BENCH_QUICK=1) runs 2 then 4 cameras with short
windows (about 90 s).

The daemons run from the tree this file is in (its `src`, put first on their path).

    bench/capacity/run [--quick] [--start 4] [--growth 2] [--max 256] [--budget 600] [--seconds 15] [--warmup 6]
                       [--flows 10] [--bitrate 2000] [--width 1280] [--height 720] [--fps 25] [--gop 2] [--clip 10]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This tree's package, not whichever the virtualenv installed: here and in the daemons the bench starts.
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from tests.support.camera import wait_listening  # noqa: E402
from tests.support.cpu import TICK, children, tree_cpu  # noqa: E402
from tests.support.recording import bare_segmenter  # noqa: E402
from tests.support.relay import BIN, Drain, RelayLab  # noqa: E402

LOOPCAM = Path(__file__).with_name("loopcam.py")
# The simulator's GStreamer bindings are the system's (python3-gi), as for halfbridge-camsim.
SYSTEM_PYTHON = "/usr/bin/python3"
SEGMENT_SECONDS = 60  # recorder_segment_seconds as deployed
USERNAME, PASSWORD = "recorder", "s3cret-camera"
# What a recorder logs when its camera goes down (a stall, a restart, a stream it cannot record), and when.
DOWN_RE = re.compile(r"camera \S+: down since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")
MIB = 1 << 20


# -- the simulated cameras ---------------------------------------------------


def encode_clip(path: Path, args) -> float:
    """The clip every camera loops, encoded once; its bitrate in bit/s as measured (the file's size over its length).
    Moving bars with a little noise, so that the encoder spends the bitrate asked of it."""
    gop = round(args.gop * args.fps)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={args.width}x{args.height}:rate={args.fps},noise=alls=12:allf=t",
         "-t", f"{args.clip:g}", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "0",
         "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-b:v", f"{args.bitrate}k", "-maxrate", f"{args.bitrate}k", "-bufsize", f"{args.bitrate}k",
         "-f", "mpegts", str(path)],
        check=True, timeout=300,
    )  # fmt: skip
    return 8 * path.stat().st_size / args.clip


def free_ports(count: int, kind: socket.SocketKind) -> list[int]:
    """`count` distinct free loopback ports (held open together while they are chosen, so none comes twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class Cameras:
    """N simulated cameras from one simulator process, each fed by its own looping ffmpeg."""

    def __init__(self, workdir: Path, clip: Path, count: int, gop: float) -> None:
        self.workdir, self.clip, self.gop = workdir, clip, gop
        self.ids = [f"cap-{i:03d}" for i in range(count)]
        self.ports = free_ports(count, socket.SOCK_STREAM)
        # Where each loop sends, and where from: a sender left to an ephemeral port could take another camera's
        # port before its pipeline binds it (at its first client).
        udp = free_ports(2 * count, socket.SOCK_DGRAM)
        self.udp_ports, self.source_ports = udp[:count], udp[count:]
        self.config = workdir / "loopcam.json"
        self.config.write_text(
            json.dumps(
                {"cameras": [{"id": c, "port": p, "udp_port": u, "username": USERNAME, "password": PASSWORD}
                             for c, p, u in zip(self.ids, self.ports, self.udp_ports, strict=True)]}
            )
        )  # fmt: skip
        self.log = workdir / "loopcam.log"
        self.server: subprocess.Popen | None = None
        self.loops: list[subprocess.Popen] = []

    def url(self, index: int) -> str:
        return f"rtsp://{USERNAME}:{PASSWORD}@127.0.0.1:{self.ports[index]}/stream"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.server, *self.loops) if p is not None]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.server = subprocess.Popen(
                [SYSTEM_PYTHON, str(LOOPCAM), str(self.config)], stdout=log, stderr=log, env={"PATH": "/usr/bin:/bin"}
            )
            # The servers listen together, once all are built: the last one's port says they all do.
            wait_listening(self.ports[-1], self.server, "the camera simulator", timeout=30, log=self.log)
            # Staggered over a GOP, so that the cameras' keyframes do not coincide.
            for port, source in zip(self.udp_ports, self.source_ports, strict=True):
                self.loops.append(
                    subprocess.Popen(
                        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
                         "-i", str(self.clip), "-c", "copy", "-f", "mpegts",
                         f"udp://127.0.0.1:{port}?pkt_size=1316&localaddr=127.0.0.1&localport={source}"],
                        stdout=subprocess.DEVNULL, stderr=log,
                    )
                )  # fmt: skip
                time.sleep(self.gop / len(self.udp_ports))

    def stop(self) -> None:
        stop_processes(self.loops)
        stop_processes([self.server])
        self.loops, self.server = [], None


def stop_processes(processes, how: int = signal.SIGTERM) -> None:
    """Signal every process at once, then reap each (killed if it has not ended within 15 s of the signal)."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(how)
    deadline = time.monotonic() + 15
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def examine_all(lists: list[list[Path]], fps: int, before: list[float]) -> list[Recording]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda f, b: examine(f, fps, b), lists, before))


# -- what the processes spend --------------------------------------------------


def tree_memory(pid: int) -> tuple[int, int]:
    """RSS and PSS in bytes of a live process and its live descendants."""
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    kib = int(value.split()[0]) * 1024
                    rss, pss = (rss + kib, pss) if name == "Rss" else (rss, pss + kib)
        todo += children(current)
    return rss, pss


def machine_busy() -> float:
    """CPU seconds every core has spent on anything but idling and waiting, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Window:
    """CPU % of one core of each group of process trees over a window, and their memory at its end."""

    seconds: float
    cpu: dict[str, float]
    rss: dict[str, int]
    pss: dict[str, int]
    machine: float  # % of one core, every process of the machine
    client: float  # % of one core, this bench (the flows' reader)


def measure(groups: dict[str, list[int]], seconds: float) -> Window:
    cpu0 = {name: sum(tree_cpu(p) for p in pids) for name, pids in groups.items()}
    machine0, client0, began = machine_busy(), self_cpu(), time.monotonic()
    time.sleep(seconds)
    cpu1 = {name: sum(tree_cpu(p) for p in pids) for name, pids in groups.items()}
    elapsed = time.monotonic() - began
    machine, client = machine_busy() - machine0, self_cpu() - client0
    memory = {name: [tree_memory(p) for p in pids] for name, pids in groups.items()}
    return Window(
        elapsed,
        {name: 100 * (cpu1[name] - cpu0[name]) / elapsed for name in groups},
        {name: sum(m[0] for m in values) for name, values in memory.items()},
        {name: sum(m[1] for m in values) for name, values in memory.items()},
        100 * machine / elapsed,
        100 * client / elapsed,
    )


# -- what was recorded ------------------------------------------------------------


@dataclass
class Recording:
    """One camera's recording: its frames, those missing between them and its breaks (from the window on;
    before it, while the other cameras were starting, apart), its bytes and span."""

    frames: int = 0
    lost: int = 0
    breaks: int = 0
    early: int = 0  # frames missing and breaks before the window
    bytes: int = 0
    seconds: float = 0.0


def examine(files: list[Path], fps: int, before: float) -> Recording:
    """The frames of a camera's segments, in order (one ffprobe over their concatenation); what happened in
    its first `before` seconds (from when it was seen recording to the window's start) is counted apart."""
    found = Recording(bytes=sum(f.stat().st_size for f in files))
    if not files:
        return found
    run = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts", "-of", "csv=p=0",
         "concat:" + "|".join(str(f) for f in files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # The first packet of a bare ffmpeg's recording has no timestamp (N/A): it is left out.
    pts = [int(v) for v in (line.strip().rstrip(",") for line in run.stdout.splitlines()) if v.isdigit()]
    frame = 90000 / fps
    window = pts[0] + before * 90000 if pts else 0
    for earlier, later in itertools.pairwise(pts):
        step = later - earlier
        missing = round(step / frame) - 1 if step > 1.5 * frame else 0
        if earlier < window:
            found.early += missing + (step <= 0)
        elif step <= 0:
            found.breaks += 1
        else:
            found.lost += missing
    found.frames = len(pts)
    found.seconds = (pts[-1] - pts[0]) / 90000 + 1 / fps if pts else 0.0
    return found


@dataclass
class Phase:
    """One side at one N: what it spent and what it recorded."""

    side: str
    count: int
    window: Window | None = None
    recordings: list[Recording] = field(default_factory=list)
    down: int = 0  # a recorder's lines saying its camera went down, from the window on
    down_early: int = 0  # and before it
    failed: str = ""  # why a side did not record at all
    up: float | None = None  # seconds from the processes' start until every camera recorded
    flow_mbps: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.recordings)

    @property
    def breaks(self) -> int:
        return sum(r.breaks for r in self.recordings)

    @property
    def early(self) -> int:
        return sum(r.early for r in self.recordings)

    @property
    def lossless(self) -> bool:
        return not self.failed and not self.lost and not self.breaks and not self.down

    def loss(self) -> str:
        if self.failed:
            return "failed"
        parts = [f"{self.lost}f" if self.lost else "", f"{self.breaks}b" if self.breaks else "",
                 f"{self.down}d" if self.down else ""]  # fmt: skip
        before = [f"{self.early}s" if self.early else "", f"{self.down_early}d" if self.down_early else ""]
        early = f"({'+'.join(filter(None, before))})" if any(before) else ""
        return ("+".join(filter(None, parts)) or "none") + early

    def per_camera(self, what: str, group: str = "cameras") -> float:
        values = getattr(self.window, what)
        return values[group] / self.count

    def store_rate(self) -> float | None:
        """Bytes of the store per second of recording (median of the cameras)."""
        rates = [r.bytes / r.seconds for r in self.recordings if r.seconds > 0]
        return statistics.median(rates) if rates else None


def start_recorder(lab: RelayLab, camera: str, url: str) -> subprocess.Popen:
    """A camera's halfbridge-recorder as deployed (recorder role's defaults), its live tap where the relay looks."""
    config = lab.workdir / f"{camera}.recorder.json"
    config.write_text(
        json.dumps(
            {"camera": camera, "url": url, "store_root": str(lab.store), "state_dir": str(lab.workdir / "recorder"),
             "segment_seconds": SEGMENT_SECONDS, "rtsp_timeout": 10, "watchdog_seconds": 20,
             "live_socket": str(lab.workdir / "live" / f"{camera}.sock"), "audit_socket": str(lab.auditd.socket)}
        )
    )  # fmt: skip
    with (lab.workdir / f"{camera}.recorder.log").open("ab") as log:
        process = subprocess.Popen([str(BIN / "halfbridge-recorder"), str(config)], stderr=log,
                                   stdout=subprocess.DEVNULL)  # fmt: skip
    lab.recorders.append(process)  # reaped by lab.stop()
    return process


def start_seconds(count: int) -> float:
    """How long `count` cameras may take to be all recording: past that, the machine cannot bring them up."""
    return 20 + count / 2


def tap_streams(path: Path) -> bool:
    """Whether a recorder's live tap gives bytes (it closes a connection at once until its camera streams)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(2)
        probe.connect(str(path))
        return bool(probe.recv(188))
    return False


def ours(work: Path, cameras: Cameras, args) -> Phase:
    phase = Phase("ours", len(cameras.ids))
    lab = RelayLab(work, [{"id": c} for c in cameras.ids], limit=args.flows, ttl=15, renew_seconds=5,
                   segment_seconds=SEGMENT_SECONDS)  # fmt: skip
    responses, recorders, seen, window_wall = [], [], {}, 0.0
    try:
        lab.start()
        started = time.monotonic()
        recorders = [start_recorder(lab, c, cameras.url(i)) for i, c in enumerate(cameras.ids)]
        waiting, deadline = set(cameras.ids), started + start_seconds(len(cameras.ids))
        while waiting and time.monotonic() < deadline:
            for camera in [c for c in waiting if tap_streams(lab.workdir / "live" / f"{c}.sock")]:
                waiting.discard(camera)
                seen[camera] = time.monotonic()
            time.sleep(0.2)
        if waiting:
            phase.failed = (f"{len(waiting)} recorders did not stream within {start_seconds(len(cameras.ids)):.0f} s "
                            f"({', '.join(sorted(waiting)[:5])})")  # fmt: skip
            return phase
        phase.up = max(seen.values()) - started
        for number in range(args.flows):
            response = lab.open(f"/v1/cameras/{cameras.ids[number % len(cameras.ids)]}/live")
            if response.status != 200:
                phase.failed = f"flow {number + 1}: {response.status} {response.read()[:300]!r}"
                return phase
            responses.append(response)
        drains = [Drain(r) for r in responses]
        time.sleep(args.warmup)
        began, window_wall = time.monotonic(), time.time()
        got0 = [d.bytes for d in drains]
        groups = {
            "cameras": [r.pid for r in recorders],
            "gateway": [lab.relay.pid, lab.quotad.pid, lab.auditd.process.pid],
            "sim": cameras.pids,
        }
        phase.window = measure(groups, args.seconds)
        phase.flow_mbps = [8 * (d.bytes - g) / phase.window.seconds / 1e6 for d, g in zip(drains, got0, strict=True)]
    finally:
        for response in responses:
            response.close()
        stop_processes(recorders)
        lab.stop()
    for camera in cameras.ids:
        log = lab.workdir / f"{camera}.recorder.log"
        for since in DOWN_RE.findall(log.read_text(errors="replace")) if log.exists() else ():
            when = dt.datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
            if when >= window_wall - 1:
                phase.down += 1
            else:
                phase.down_early += 1
    files = [sorted((lab.store / c).rglob("*.ts")) for c in cameras.ids]
    phase.recordings = examine_all(files, args.fps, [began - seen[c] for c in cameras.ids])
    return phase


def bare(work: Path, cameras: Cameras, args) -> Phase:
    phase = Phase("bare", len(cameras.ids))
    dirs = [work / c for c in cameras.ids]
    processes: list[subprocess.Popen] = []
    seen: dict[Path, float] = {}
    try:
        started = time.monotonic()
        with (work / "bare.log").open("ab") as log:
            for index, directory in enumerate(dirs):
                command = bare_segmenter(cameras.url(index), directory, SEGMENT_SECONDS)
                processes.append(subprocess.Popen(command, env={**os.environ, "TZ": "UTC"}, stderr=log))
        deadline = started + start_seconds(len(dirs))
        while len(seen) < len(dirs) and time.monotonic() < deadline:
            for directory in [d for d in dirs if d not in seen and any(f.stat().st_size for f in d.glob("*.ts"))]:
                seen[directory] = time.monotonic()
            time.sleep(0.2)
        if len(seen) < len(dirs):
            missing = sorted(d.name for d in dirs if d not in seen)
            phase.failed = (f"{len(missing)} bare segmenters wrote nothing within {start_seconds(len(dirs)):.0f} s "
                            f"({', '.join(missing[:5])})")  # fmt: skip
            return phase
        phase.up = max(seen.values()) - started
        time.sleep(args.warmup)
        began = time.monotonic()
        phase.window = measure({"cameras": [p.pid for p in processes], "sim": cameras.pids}, args.seconds)
        if any(p.poll() is not None for p in processes):
            phase.failed = "a bare segmenter exited"
    finally:
        stop_processes(processes, signal.SIGINT)
    phase.recordings = examine_all([sorted(d.glob("*.ts")) for d in dirs], args.fps, [began - seen[d] for d in dirs])
    return phase


# -- the search ---------------------------------------------------------------


@dataclass
class Step:
    count: int
    phases: dict[str, Phase]
    seconds: float


def step(work: Path, clip: Path, count: int, sides: list[str], args) -> Step:
    began = time.monotonic()
    directory = work / f"n{count:03d}"
    directory.mkdir()
    cameras = Cameras(directory, clip, count, args.gop)
    phases = {}
    try:
        cameras.start()
        for side in sides:
            (directory / side).mkdir()
            phases[side] = (ours if side == "ours" else bare)(directory / side, cameras, args)
    finally:
        cameras.stop()
    done = Step(count, phases, time.monotonic() - began)
    shutil.rmtree(directory, ignore_errors=True)  # the recordings: gigabytes at large N
    return done


def next_count(good: dict[str, int], bad: dict[str, int | None], args) -> int | None:
    """Grow by `growth` until a side loses a frame, then bisect between its largest good and smallest bad N."""
    wanted = []
    for side in good:
        if bad[side] is None:
            if good[side] < args.max:
                wanted.append(min(args.max, args.growth * good[side] if good[side] else args.start))
        elif bad[side] - good[side] > max(1, good[side] // 8):
            wanted.append((good[side] + bad[side]) // 2)
    return min(wanted) if wanted else None


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def ratio(ours_value: float | None, bare_value: float | None) -> float | None:
    return ours_value / bare_value if ours_value is not None and bare_value else None


HEADER = (
    f"{'N':>3} {'loss bare':>9} {'ours':>7} | {'CPU %/cam bare':>14} {'ours':>6} {'ratio':>5} "
    f"{'gateway':>7} {'all-in':>6} | {'RSS MiB/cam bare':>16} {'ours':>6} {'ratio':>5} "
    f"{'PSS bare':>8} {'ours':>6} {'gw':>5} | {'sim %':>5} {'machine':>7} {'up bare':>7} {'ours':>4} {'s':>4}"
)


def row(done: Step) -> str:
    b, o = done.phases.get("bare"), done.phases.get("ours")
    bw = b.window if b is not None else None
    ow = o.window if o is not None else None

    def cam(phase: Phase | None, what: str, scale: float = 1.0) -> float | None:
        return phase.per_camera(what) / scale if phase is not None and phase.window is not None else None

    b_cpu, o_cpu = cam(b, "cpu"), cam(o, "cpu")
    b_rss, o_rss = cam(b, "rss", MIB), cam(o, "rss", MIB)
    gateway = ow.cpu["gateway"] if ow else None
    all_in = o_cpu + gateway / done.count if ow else None
    sims = [w.cpu["sim"] for w in (bw, ow) if w]
    machines = [w.machine for w in (bw, ow) if w]
    return (
        f"{done.count:>3} {b.loss() if b else '-':>9} {o.loss() if o else '-':>7} | {fmt(b_cpu, 14)} {fmt(o_cpu, 6)} "
        f"{fmt(ratio(o_cpu, b_cpu), 5)} {fmt(gateway, 7, 1)} {fmt(all_in, 6)} | {fmt(b_rss, 16, 1)} {fmt(o_rss, 6, 1)} "
        f"{fmt(ratio(o_rss, b_rss), 5)} {fmt(cam(b, 'pss', MIB), 8, 1)} {fmt(cam(o, 'pss', MIB), 6, 1)} "
        f"{fmt(ow.pss['gateway'] / MIB if ow else None, 5, 0)} | {fmt(max(sims) if sims else None, 5, 0)} "
        f"{fmt(max(machines) if machines else None, 7, 0)} {fmt(b.up if b else None, 7, 0)} "
        f"{fmt(o.up if o else None, 4, 0)} {done.seconds:>4.0f}"
    )


def busy_elsewhere() -> str:
    """Other test runs on this machine (pytest, molecule, ansible): the figures are noisier while they run."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if re.search(r"\b(pytest|molecule|ansible-playbook)\b", command):
                    found.append(entry.name)
    return f"{len(found)} other test processes running (pids {', '.join(found[:5])})" if found else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="stop at 4 cameras, short windows (also BENCH_QUICK=1)")  # fmt: skip
    parser.add_argument("--start", type=int, default=4, help="cameras of the first step")
    parser.add_argument("--max", type=int, default=256, help="cameras of the largest step")
    parser.add_argument("--growth", type=int, default=2, help="factor from a step to the next, until a loss")
    parser.add_argument("--budget", type=float, default=600, help="seconds for every step together")
    parser.add_argument("--seconds", type=float, default=15, help="each side's CPU window")
    parser.add_argument("--warmup", type=float, default=6, help="seconds before the window, once all record")
    parser.add_argument("--flows", type=int, default=10, help="live flows open on the relay")
    parser.add_argument("--bitrate", type=int, default=2000, help="kbit/s of the clip")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--clip", type=float, default=10.0, help="seconds of the clip the cameras loop")
    args = parser.parse_args()
    if args.quick:
        args.start, args.max, args.growth, args.seconds, args.warmup = 2, 4, 2, 10, 5
        args.budget = min(args.budget, 240)
    if not Path(SYSTEM_PYTHON).exists():
        parser.error(f"the camera simulator needs {SYSTEM_PYTHON} with GStreamer's bindings (python3-gi)")
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        work = Path(tmp)
        clip = work / "clip.ts"
        rate = encode_clip(clip, args)
        print(
            f"capacity: one gateway on this machine ({os.cpu_count()} cores), cameras {args.width}x{args.height} "
            f"{args.fps} fps H.264 asked at {args.bitrate} kbit/s, keyframe every {args.gop:g} s "
            f"(a {args.clip:g} s clip at {rate / 1e6:.2f} Mbit/s, MPEG-TS, looped without encoding); "
            f"{args.flows} live flows on the relay; {args.warmup:g} s warm-up, {args.seconds:g} s windows"
            + (" (quick)" if args.quick else ""),
            flush=True,
        )
        if others := busy_elsewhere():
            print(f"note: {others}: the figures are noisier", flush=True)
        print(HEADER, flush=True)
        steps: dict[int, Step] = {}
        good: dict[str, int] = {"bare": 0, "ours": 0}
        bad: dict[str, int | None] = {"bare": None, "ours": None}
        began, last = time.monotonic(), None
        while (count := next_count(good, bad, args)) is not None:
            if last is not None:
                guess = last.seconds * (0.5 + 0.5 * count / last.count)
                if time.monotonic() - began + guess > args.budget:
                    print(f"budget of {args.budget:.0f} s reached: {count} cameras not tried", flush=True)
                    break
            # A side already known to lose at fewer cameras is not run again above them.
            sides = [s for s in ("bare", "ours") if bad[s] is None or count < bad[s]]
            last = steps[count] = step(work, clip, count, sides, args)
            for side, phase in last.phases.items():
                if phase.lossless:
                    good[side] = max(good[side], count)
                else:
                    bad[side] = min(count, bad[side] or count)
            print(row(last), flush=True)
            for side, phase in last.phases.items():
                if phase.failed:
                    print(f"    {side}: {phase.failed}", flush=True)
        elapsed = time.monotonic() - began

    print(f"searched {len(steps)} steps in {elapsed:.0f} s.")
    print("loss, from the window on: f frames missing, b timestamps going back, d a recorder logged its camera down;")
    print("  (Ns, Md): frames missing or breaks, cameras down, before the window as the cameras started (not counted).")
    print("CPU in % of one core. gateway: relay + quota daemon + audit writer, with the flows open (a fixed cost);")
    print("  all-in: recorders + gateway, per camera. gw: the gateway's PSS. sim: the simulated cameras (same cores).")
    print(f"  machine: every process on the machine (of {100 * (os.cpu_count() or 1)}). up: seconds from the")
    print("  processes' start (all at once, as at a boot) until every camera recorded. s: the step's seconds.")
    flows = [m for s in steps.values() if "ours" in s.phases for m in s.phases["ours"].flow_mbps]
    if flows:
        print(f"live flows: {min(flows):.2f} to {max(flows):.2f} Mbit/s each")
    for side in ("bare", "ours"):
        limit = f"first loss at {bad[side]}" if bad[side] is not None else f"no loss up to {args.max} or the budget"
        print(f"largest N without loss, {side}: {good[side]} ({limit})")
    # Per camera figures at the largest N both sides recorded without loss.
    best = max((s for s in steps.values() if all(p.lossless for p in s.phases.values()) and len(s.phases) == 2),
               key=lambda s: s.count, default=None)  # fmt: skip
    if best is not None:
        o, b = best.phases["ours"], best.phases["bare"]
        o_cpu, b_cpu, gateway = o.per_camera("cpu"), b.per_camera("cpu"), o.window.cpu["gateway"]
        o_pss, b_pss, gateway_pss = o.per_camera("pss") / MIB, b.per_camera("pss") / MIB, o.window.pss["gateway"] / MIB
        print(f"at {best.count} cameras (the largest N both recorded without loss), per camera:")
        print(
            f"  CPU: ours {o_cpu:.2f} % of a core (recorder and its tap) + {gateway:.1f} % once (gateway, "
            f"{args.flows} flows); bare ffmpeg {b_cpu:.2f} %; ratio {o_cpu / b_cpu:.2f}"
        )
        print(f"    cameras per core: ours {100 / o_cpu:.0f} (the gateway's share aside), bare {100 / b_cpu:.0f}")
        print(
            f"  memory (PSS): ours {o_pss:.1f} MiB + {gateway_pss:.0f} MiB once (gateway); "
            f"bare ffmpeg {b_pss:.1f} MiB; ratio {o_pss / b_pss:.2f} (RSS: {o.per_camera('rss') / MIB:.0f} against "
            f"{b.per_camera('rss') / MIB:.0f} MiB, ratio {o.per_camera('rss') / b.per_camera('rss'):.2f})"
        )
        print(f"    cameras per GiB: ours {1024 / o_pss:.0f} (the gateway's aside), bare {1024 / b_pss:.0f}")
        rate = o.store_rate()
        if rate:
            print(f"  storage per camera-day: {rate * 86400 / 1e9:.1f} GB ({8 * rate / 1e6:.2f} Mbit/s of store "
                  f"per camera, bare {8 * (b.store_rate() or 0) / 1e6:.2f})")  # fmt: skip
    if others := busy_elsewhere():
        print(f"note: {others} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
