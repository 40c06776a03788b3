"""CPU seconds per recorded camera-minute: halfbridge-recorder against a bare ffmpeg.

Both record the same shared simulated camera (the lab's simulator, on loopback,
one encoder whose packets every client gets), side by side, over the same
windows. The baseline is the bare command

    ffmpeg -rtsp_transport tcp -i URL -map 0:v -c copy -f segment -segment_format mpegts ...

and ours is halfbridge-recorder (its supervisor and its ffmpeg child), with
its live tap as deployed (ffmpeg's second output into a pipe; no live flow
connected: what a flow adds is the relay bench's). A third process, the same
recorder without its tap, shows what the tap costs. The camera sends at a
realistic bitrate by default (1280x720 25 fps, scrolling bars, 2500 kbit/s
asked of the encoder; the rate recorded is printed); `--width 640 --height 360
--bitrate 800 --pattern ball` is the lab's camera (about 350 kbit/s).

CPU time is what the kernel accounted to each process tree (user + system,
/proc), read at the edges of each window, after a warm-up, while the bench
only sleeps. `--runs` consecutive windows of `--seconds` (a whole number of
segments, so each window holds as many segment ends); the spread (max/min - 1)
says whether they agree. The whole run, start-up included, is read when each
process has been reaped. Target: ratio at most 1.10.

The recorders run from the tree this file is in (its `src`, put first on their path).

    bench/recorder/run [--seconds 60] [--runs 3] [--warmup 20] [--width 1280] [--height 720] [--bitrate 2500]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This tree's package, not whichever the virtualenv installed: here and in the recorders the bench starts.
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from tests.support.camera import Camera  # noqa: E402
from tests.support.cpu import tree_cpu  # noqa: E402
from tests.support.recording import bare_segmenter, recorder_config  # noqa: E402

SEGMENT_SECONDS = 10


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spread(values: list[float]) -> float:
    """max/min - 1 of positive figures (inf if one is not positive)."""
    return max(values) / min(values) - 1 if min(values) > 0 else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 60)),
                        help="each run's window")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the first window")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--bitrate", type=int, default=2500, help="kbit/s asked of the camera's encoder")
    parser.add_argument("--pattern", default="smpte", help="the simulator's picture (ball: the lab's)")
    args = parser.parse_args()
    window = max(SEGMENT_SECONDS, round(args.seconds / SEGMENT_SECONDS) * SEGMENT_SECONDS)
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        work = Path(tmp)
        # Scrolling bars: the ball on black would not make the encoder send megabits.
        camera = Camera(work, "bench-cam", shared=True, width=args.width, height=args.height,
                        bitrate_kbps=args.bitrate, pattern=args.pattern,
                        horizontal_speed=16 if args.pattern != "ball" else 0)  # fmt: skip
        camera.start()
        processes: list[subprocess.Popen] = []
        try:
            config = recorder_config(work / "recorder.json", camera, work, SEGMENT_SECONDS, work / "live.sock")
            baseline_cmd = bare_segmenter(camera.url, work / "base", SEGMENT_SECONDS)
            ours_cmd = [str(Path(sys.executable).with_name("halfbridge-recorder")), str(config)]
            untapped = recorder_config(work / "untapped.json", camera, work, SEGMENT_SECONDS, None)
            untapped_cmd = [ours_cmd[0], str(untapped)]

            start = children_cpu()
            baseline = subprocess.Popen(baseline_cmd, env={**os.environ, "TZ": "UTC"})
            ours = subprocess.Popen(ours_cmd, stderr=subprocess.DEVNULL)
            plain = subprocess.Popen(untapped_cmd, stderr=subprocess.DEVNULL)
            processes = [baseline, ours, plain]
            began = time.monotonic()
            time.sleep(args.warmup)
            print(f"recorder: one {args.width}x{args.height} 25 fps camera, {args.warmup:.0f} s of warm-up, "
                  f"{args.runs} windows of {window} s", flush=True)  # fmt: skip
            print(f"{'CPU s per camera-minute':<24}{'bare':>8}{'ours':>8}{'untapped':>10}{'ratio':>8}{'tap':>7}")
            runs = []
            for number in range(1, args.runs + 1):
                cpu0 = [tree_cpu(p.pid) for p in processes]
                time.sleep(window)
                bare, tapped, plain_cpu = (
                    (tree_cpu(p.pid) - c) / (window / 60) for p, c in zip(processes, cpu0, strict=True)
                )
                runs.append((bare, tapped, plain_cpu))
                print(f"{f'run {number}':<24}{bare:>8.3f}{tapped:>8.3f}{plain_cpu:>10.3f}"
                      f"{tapped / bare:>8.2f}{tapped / plain_cpu - 1:>7.1%}", flush=True)  # fmt: skip
            elapsed = time.monotonic() - began
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
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
            camera.stop()
        base_cpu, our_cpu = after_baseline - start, after_ours - after_baseline
        recorded = sum(p.stat().st_size for p in (work / "base").glob("*.ts"))
        ratios = [r[1] / r[0] for r in runs]
        print(f"{'median':<24}{statistics.median(r[0] for r in runs):>8.3f}"
              f"{statistics.median(r[1] for r in runs):>8.3f}{statistics.median(r[2] for r in runs):>10.3f}"
              f"{statistics.median(ratios):>8.2f}")  # fmt: skip
        print(f"spread over {len(runs)} runs (max/min - 1): bare {spread([r[0] for r in runs]):.1%}, "
              f"ours {spread([r[1] for r in runs]):.1%}, ratio {spread(ratios):.1%}")  # fmt: skip
        print(
            f"whole run, start-up included: {our_cpu / (elapsed / 60):.3f} against {base_cpu / (elapsed / 60):.3f}, "
            f"ratio {our_cpu / base_cpu if base_cpu else float('inf'):.2f}; "
            f"the camera sent {8 * recorded / elapsed / 1e6:.2f} Mbit/s (the bare segments' size over the run)"
        )
        print("target: ratio <= 1.10 (steady state); tap: what the recorder with its tap spends more than without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
