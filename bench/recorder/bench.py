"""CPU seconds per recorded camera-minute: halfbridge-recorder against a bare ffmpeg.

Both record the same simulated camera (the lab's simulator, on loopback),
side by side, for the same wall time. The baseline is the bare command

    ffmpeg -rtsp_transport tcp -i URL -map 0:v -c copy -f segment -segment_format mpegts ...

and ours is halfbridge-recorder (its supervisor and its ffmpeg child), with
its live tap as deployed (ffmpeg's second output into a pipe; no live flow
connected: what a flow adds is the relay bench's). A third process, the same
recorder without its tap, shows what the tap costs. CPU
time is what the kernel accounted to each process tree (user + system),
read when each has been reaped. Target: ratio at most 1.10.

    bench/recorder/run [--seconds 130] [--warmup 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.camera import Camera  # noqa: E402
from tests.support.cpu import tree_cpu  # noqa: E402
from tests.support.recording import bare_segmenter, recorder_config  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 130)))
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the steady-state window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        work = Path(tmp)
        camera = Camera(work, "bench-cam")
        camera.start()
        try:
            config = recorder_config(work / "recorder.json", camera, work, 10, work / "live.sock")
            baseline_cmd = bare_segmenter(camera.url, work / "base", 10)
            ours_cmd = [str(Path(sys.executable).with_name("halfbridge-recorder")), str(config)]
            untapped_cmd = [ours_cmd[0], str(recorder_config(work / "untapped.json", camera, work, 10, None))]

            start = children_cpu()
            baseline = subprocess.Popen(baseline_cmd, env={**os.environ, "TZ": "UTC"})
            ours = subprocess.Popen(ours_cmd, stderr=subprocess.DEVNULL)
            plain = subprocess.Popen(untapped_cmd, stderr=subprocess.DEVNULL)
            time.sleep(args.warmup)
            warm = (tree_cpu(baseline.pid), tree_cpu(ours.pid), tree_cpu(plain.pid))
            time.sleep(max(1.0, args.seconds - args.warmup))
            steady = (tree_cpu(baseline.pid) - warm[0], tree_cpu(ours.pid) - warm[1], tree_cpu(plain.pid) - warm[2])
            plain.send_signal(signal.SIGTERM)
            plain.wait(timeout=30)
            start = children_cpu()  # from here: the untapped recorder, reaped, is not in the whole-run columns
            baseline.send_signal(signal.SIGINT)
            baseline.wait(timeout=30)
            after_baseline = children_cpu()
            ours.send_signal(signal.SIGTERM)
            ours.wait(timeout=30)
            after_ours = children_cpu()
        finally:
            camera.stop()
        base_cpu, our_cpu = after_baseline - start, after_ours - after_baseline
        minutes, window = args.seconds / 60, max(1.0, args.seconds - args.warmup) / 60
        recorded = sum(1 for _ in (work / "recorder-store").rglob("*.ts")) if (work / "recorder-store").exists() else 0
        print(f"recorder: one 640x360 25 fps camera for {args.seconds:.0f} s ({recorded} segments of ours)")
        print(f"{'CPU s per camera-minute':<30}{'whole run':>12}{'steady state':>14}")
        print(f"{'ffmpeg -c copy -f segment':<30}{base_cpu / minutes:>12.3f}{steady[0] / window:>14.3f}")
        print(f"{'halfbridge-recorder':<30}{our_cpu / minutes:>12.3f}{steady[1] / window:>14.3f}")
        print(f"{'  the same without its tap':<30}{'':>12}{steady[2] / window:>14.3f}")
        print(
            f"{'ratio (target <= 1.10 steady)':<30}{our_cpu / base_cpu if base_cpu else float('inf'):>12.2f}"
            f"{steady[1] / steady[0] if steady[0] else float('inf'):>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
