"""The relay against bare ffmpeg and ffprobe, side by side on this machine.

1. CPU per live flow: `--flows` live flows at once through the relay, from a
   shared simulated camera at a realistic bitrate (default 1280x720 25 fps,
   scrolling bars, 2500 kbit/s asked of the encoder: about 3 Mbit/s; the rate
   the clients got is printed), against as many bare `ffmpeg -rtsp_transport
   tcp -i URL -map 0:v -c copy -f mpegts pipe:1` of the same camera read the
   same way, over the same windows. A live flow comes from the camera's
   recorder (which records anyway): its cost is the relay process's own CPU
   plus the recorder's tap's share. The camera has two recorders: in a first
   window the flows read one, in a second the other, and the tap's share is
   what the loaded recorder spent more than its idle twin in the same window
   (so both see the same noise, and a difference between the two processes
   cancels out). Many flows at once make that share larger than the
   accounting's resolution. CPU is what the kernel accounted to each process
   (user + system, /proc), read after a warm-up, while the bench only reads.
   `--runs` runs; the spread (max/min - 1) says whether they agree.
   Target: ratio at most 1.10.
2. Live time to the first frame: `ffprobe -read_intervals %+#1` of the relay's
   live URL (HTTPS, client certificate) against the same ffprobe of a camera
   itself (the lab's 640x360 camera, an encoder per client), median of
   `--tries`. Target: ratio at most 1.2.
3. Playback time to the first byte out of a synthetic 10-day store of 100
   cameras at 1-minute segments (1.44 million files, real MPEG-TS where the
   ranges are asked), for ranges at random cameras and times; the baseline is
   reading the first 64 KiB of the same segment file. Target: at most 300 ms.

The daemons run from the tree this file is in (its `src`, put first on their path).

    bench/relay/run [--seconds 30] [--flows 10] [--runs 3] [--warmup 5] [--parts cpu,first,playback]
                    [--width 1280] [--height 720] [--bitrate 2500] [--tries 7] [--ranges 20] [--cameras 100] [--days 10]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
# This tree's package, not whichever the virtualenv installed: here and in the daemons the bench starts.
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from halfbridge import ts  # noqa: E402
from halfbridge.store import Store, iso  # noqa: E402
from tests.support.camera import Camera  # noqa: E402
from tests.support.cpu import tree_cpu, trees_cpu  # noqa: E402
from tests.support.relay import Drain, RelayLab  # noqa: E402
from tests.support.store import build_store  # noqa: E402


def first_keyframe(lab: RelayLab, path: str) -> float:
    """Seconds from the request until a whole keyframe has arrived (the next video PES has begun)."""
    connection = lab.connect()
    began = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    data = b""
    try:
        while True:
            data += response.read1(65536)
            whole = data[: len(data) - len(data) % ts.PACKET]
            found = ts.keyframes(whole)
            if found and ts.end_offset(whole[found[0].offset :], 0.0) < len(whole) - found[0].offset:
                return time.monotonic() - began
    finally:
        response.close()
        connection.close()


@dataclass
class Run:
    """One run's CPU seconds over its windows (`minutes` of flows, `flows` at once), and the bytes the clients got."""

    flows: int
    minutes: float = 0.0
    relay: float = 0.0  # the relay process
    tap: float = 0.0  # the loaded recorder less its idle twin
    bare: float = 0.0  # the bare copies
    relay_bytes: int = 0
    bare_bytes: int = 0

    def per_flow_minute(self, cpu: float) -> float:
        return cpu / self.flows / self.minutes

    @property
    def ours(self) -> float:
        return self.per_flow_minute(self.relay + self.tap)

    @property
    def ratio(self) -> float:
        return self.ours / self.per_flow_minute(self.bare)


def live_cpu(lab: RelayLab, recorders: dict[str, int], camera: Camera, args) -> Run:
    """One run: `args.flows` live flows through the relay in two windows, on one of the camera's two recorders
    then on the other (the idle one is the loaded one's 0-flow reference, in the same window), against as
    many bare ffmpeg copies of the camera read the same way through both windows."""
    run = Run(args.flows)
    bare_cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
                "-i", camera.url, "-map", "0:v:0", "-c", "copy", "-f", "mpegts", "pipe:1"]  # fmt: skip
    bares = [subprocess.Popen(bare_cmd, stdout=subprocess.PIPE) for _ in range(args.flows)]
    bare_drains = [Drain(b.stdout) for b in bares]
    try:
        for loaded, idle in (tuple(recorders), tuple(reversed(recorders))):
            responses = [lab.open(f"/v1/cameras/{loaded}/live") for _ in range(args.flows)]
            drains = [Drain(r) for r in responses]
            time.sleep(args.warmup)  # connected, streaming, past the join's burst
            pids = (lab.relay.pid, recorders[loaded], recorders[idle])
            cpu0, bare0 = [tree_cpu(p) for p in pids], trees_cpu(b.pid for b in bares)
            got0, bare_got0 = sum(d.bytes for d in drains), sum(d.bytes for d in bare_drains)
            began = time.monotonic()
            time.sleep(args.seconds)
            cpu1, bare1 = [tree_cpu(p) for p in pids], trees_cpu(b.pid for b in bares)
            run.minutes += (time.monotonic() - began) / 60
            run.relay_bytes += sum(d.bytes for d in drains) - got0
            run.bare_bytes += sum(d.bytes for d in bare_drains) - bare_got0
            run.relay += cpu1[0] - cpu0[0]
            run.tap += (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])
            run.bare += bare1 - bare0
            for response in responses:
                response.close()
            time.sleep(2)  # the flows end before the next window
    finally:
        for bare in bares:
            bare.kill()
            bare.wait(timeout=10)
    return run


def spread(values: list[float]) -> float:
    """max/min - 1 of positive figures (inf if one is not positive)."""
    return max(values) / min(values) - 1 if min(values) > 0 else float("inf")


def first_frame(url: str, options: list[str]) -> float:
    began = time.monotonic()
    subprocess.run(
        ["ffprobe", "-v", "error", *options, "-select_streams", "v:0", "-read_intervals", "%+#1",
         "-show_entries", "frame=pts_time", "-of", "csv=p=0", url],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return time.monotonic() - began


def ttfb(lab: RelayLab, path: str) -> float:
    connection = lab.connect()
    began = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {response.read()[:300]!r}")
    response.read(1)
    elapsed = time.monotonic() - began
    connection.close()
    return elapsed


def cpu_part(lab: RelayLab, camera: Camera, twin: str, args) -> list[tuple]:
    """Part 1: `args.runs` runs of `live_cpu`, each printed; the rows of their medians and spreads."""
    lab.record(camera)
    lab.record(SimpleNamespace(id=twin, url=camera.url))
    recorders = {camera.id: lab.recorders[-2].pid, twin: lab.recorders[-1].pid}
    time.sleep(args.warmup)
    runs = []
    print(f"CPU s per flow-minute, {args.flows} flows at once, 2 x {args.seconds:.0f} s a run:")
    print(f"{'run':>4} {'relay':>7} {'tap':>7} {'ours':>7} {'bare':>7} {'ratio':>6}  Mbit/s a flow (relay, bare)")
    for number in range(1, args.runs + 1):
        run = live_cpu(lab, recorders, camera, args)
        runs.append(run)
        rate = [8 * got / args.flows / (run.minutes * 60) / 1e6 for got in (run.relay_bytes, run.bare_bytes)]
        print(f"{number:>4} {run.per_flow_minute(run.relay):>7.3f} {run.per_flow_minute(run.tap):>7.3f} "
              f"{run.ours:>7.3f} {run.per_flow_minute(run.bare):>7.3f} {run.ratio:>6.2f}  {rate[0]:.2f}, {rate[1]:.2f}",
              flush=True)  # fmt: skip
    bare = [r.per_flow_minute(r.bare) for r in runs]
    ratios = [r.ratio for r in runs]
    print(
        f"spread over {len(runs)} runs (max/min - 1): ours {spread([r.ours for r in runs]):.1%}, "
        f"bare {spread(bare):.1%}, ratio {spread(ratios):.1%} (median {statistics.median(ratios):.2f}); "
        f"relay alone {spread([r.per_flow_minute(r.relay) for r in runs]):.1%}"
    )
    return [
        ("CPU s per live flow-minute (median)", statistics.median(r.ours for r in runs), statistics.median(bare),
         "<= 1.10"),
        ("  of which the relay process", statistics.median(r.per_flow_minute(r.relay) for r in runs), None, ""),
        ("  of which the recorder's tap", statistics.median(r.per_flow_minute(r.tap) for r in runs), None, ""),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="each of a run's two CPU windows")
    parser.add_argument("--flows", type=int, default=10, help="live flows (and bare copies) at once")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=5, help="seconds before each CPU window")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--bitrate", type=int, default=2500, help="kbit/s asked of the camera's encoder")
    parser.add_argument("--tries", type=int, default=7)
    parser.add_argument("--ranges", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--parts", default="cpu,first,playback", help="which measures, comma-separated")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"cpu", "first", "playback"}:
        parser.error("--parts names cpu, first and playback")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        work = Path(tmp)
        # Scrolling bars: the ball on black would not make the encoder send megabits.
        camera = Camera(work, "bench-cam", shared=True, width=args.width, height=args.height,
                        bitrate_kbps=args.bitrate, pattern="smpte", horizontal_speed=16)  # fmt: skip
        twin = f"{camera.id}-twin"
        probed_camera = Camera(work, "probe-cam")  # the lab's camera: an encoder per client, 640x360
        names = [f"cam-{i:03d}" for i in range(args.cameras)] if "playback" in parts else []
        lab = RelayLab(
            work,
            [{"id": c} for c in (camera.id, twin, probed_camera.id, *names)],
            limit=max(20, args.flows),
            ttl=15,
            renew_seconds=5,  # as deployed (stream_relay_renew_seconds)
            segment_seconds=60,
        )
        try:
            if names:
                now = time.time()
                began = time.monotonic()
                built = build_store(lab.store, names, now - args.days * 86400 + 120, now - 120, 60.0, mtimes=False)
                files = sum(len(v) for v in built.values())
                print(f"built a store of {files:,} segments for {args.cameras} cameras in "
                      f"{time.monotonic() - began:.0f} s")  # fmt: skip
            lab.start()

            # 1: CPU of live flows.
            if "cpu" in parts:
                camera.start()
                rows += cpu_part(lab, camera, twin, args)
                for process in lab.recorders:
                    process.terminate()
                    process.wait(timeout=30)
                camera.stop()

            # 2: time to the first live frame.
            if "first" in parts:
                probed_camera.start()
                lab.record(probed_camera)
                certificate = ["-tls_verify", "1", "-ca_file", str(lab.ca.path),
                               "-cert_file", str(lab.client_cert), "-key_file", str(lab.client_key)]  # fmt: skip
                relay_url = f"https://127.0.0.1:{lab.port}/v1/cameras/{probed_camera.id}/live"
                ours_first, bare_first, probed = [], [], []
                for _ in range(args.tries):
                    bare_first.append(first_frame(probed_camera.url, ["-rtsp_transport", "tcp"]))
                    time.sleep(0.5)
                    ours_first.append(first_keyframe(lab, f"/v1/cameras/{probed_camera.id}/live"))
                    time.sleep(0.5)
                    probed.append(first_frame(relay_url, certificate))
                    time.sleep(0.5)
                rows.append(("live: first whole keyframe, s (median)", statistics.median(ours_first),
                             statistics.median(bare_first), "<= 1.2"))  # fmt: skip
                rows.append(("live: ffprobe's first frame, s (median)", statistics.median(probed),
                             statistics.median(bare_first), None))  # fmt: skip

            # 3: playback time to first byte at random places of the store.
            if names:
                clip = work / "clip.ts"
                subprocess.run(
                    ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-t", "60",
                     "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-b:v", "800k", "-f", "mpegts", str(clip)],
                    check=True, timeout=300,
                )  # fmt: skip
                store = Store(lab.store)
                rng = random.Random(42)
                ours_ttfb, file_read = [], []
                for _ in range(args.ranges):
                    name = rng.choice(names)
                    segments = rng.choice([s for (c, _d), s in built.items() if c == name])
                    segment = rng.choice(segments[:-1])
                    for one in (segment, segments[segments.index(segment) + 1]):
                        shutil.copyfile(clip, store.segment_path(name, one.name))
                    start = segment.start + rng.uniform(5, 50)
                    when = [urllib.parse.quote(iso(t)) for t in (start, start + 9)]
                    ours_ttfb.append(ttfb(lab, f"/v1/cameras/{name}/playback?from={when[0]}&to={when[1]}"))
                    began = time.monotonic()
                    with store.segment_path(name, segment.name).open("rb") as handle:
                        handle.read(65536)
                    file_read.append(time.monotonic() - began)
                rows.append(("playback: first byte, s (median)", statistics.median(ours_ttfb),
                             statistics.median(file_read), "<= 0.300 s"))  # fmt: skip
                rows.append(("playback: first byte, s (worst)", max(ours_ttfb), max(file_read), "<= 0.300 s"))
        finally:
            lab.stop()
            camera.stop()
            probed_camera.stop()

    print(f"{'measure':40} {'relay':>8} {'baseline':>9} {'ratio':>7}  target")
    for label, ours, base, target in rows:
        ratio = f"{ours / base:>7.2f}" if base is not None and base >= 0.001 else "      -"
        shown = f"{base:>9.3f}" if base is not None else " " * 9
        print(f"{label:40} {ours:>8.3f} {shown} {ratio}  {target or ''}")
    print("baselines: ffmpeg -c copy of the same shared camera to a pipe (CPU), ffprobe of the camera (first frame),")
    print("reading the segment's first 64 KiB from the page cache (playback).")
    print("ffprobe reading the relay's MPEG-TS probes the stream for seconds before its first frame:")
    print("that is the reader's analysis (a player can skip it), not the relay's delay.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
