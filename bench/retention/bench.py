"""Retention at scale: a 10-day store of 100 cameras with 1-minute segments (1.44 million files).

- No-op: `halfbridge-retention` (the real command, a new process each time) on the
  store when nothing has expired; target under a second. It reads one index per
  camera and lists one directory, never every file.
- Purge: the same store a day past its retention, so that every segment goes,
  destroyed by our retention (journal, index, unlink, register entry per camera-day)
  against `find ROOT -mindepth 1 -delete` of an identical tree, built the same way
  right before it (so that both meet the same cache), which unlinks the same files
  and directories and registers nothing.
  Target: ratio at most 1.2.

    bench/retention/run [--cameras 100] [--days 10] [--every 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from halfbridge.retention import Retention, RetentionConfig  # noqa: E402
from tests.support.store import build_store  # noqa: E402

DAY = 86400
RETENTION = Path(sys.executable).parent / "halfbridge-retention"


def build(root: Path, cameras: int, days: int, every: int, now: float) -> int:
    names = [f"cam-{n:03d}" for n in range(cameras)]
    built = build_store(root, names, now - days * DAY + every, now - every, every, mtimes=False)
    return sum(len(s) for s in built.values())


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--every", type=int, default=60, help="segment length, seconds")
    parser.add_argument("--noop-runs", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-retention-", dir=os.environ.get("BENCH_DIR")))
    try:
        # The newest segment ends an hour from now, so that the no-op runs find nothing
        # expired however long the build takes.
        now = time.time() + 3600
        ours, theirs = work / "ours", work / "find"
        started = time.monotonic()
        files = build(ours / "recordings", args.cameras, args.days, args.every, now)
        print(f"built a store of {files:,} segments in {time.monotonic() - started:.0f} s", flush=True)

        config = work / "retention.json"
        settings = {
            "store_root": str(ours / "recordings"),
            "retention_days": args.days,
            "audit_log": str(ours / "audit.log"),
            "state_dir": str(ours / "state"),
        }
        config.write_text(json.dumps(settings))
        noop = []
        for _ in range(args.noop_runs):
            t0 = time.monotonic()
            subprocess.run([str(RETENTION), str(config)], check=True, timeout=120)
            noop.append(time.monotonic() - t0)
        interpreter = []
        for _ in range(args.noop_runs):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", "import halfbridge.retention"], check=True, timeout=60)
            interpreter.append(time.monotonic() - t0)

        later = now + (args.days + 1) * DAY  # a day past the retention of the newest segment: everything goes
        retention = Retention(
            RetentionConfig(ours / "recordings", args.days, ours / "audit.log", ours / "state"), clock=lambda: later
        )
        subprocess.run(["sync"], check=True)
        t0, c0 = time.monotonic(), time.process_time()
        report = retention.run()
        ours_wall, ours_cpu = time.monotonic() - t0, time.process_time() - c0
        assert report.count == files, (report.count, files)
        # The baseline's tree is built the same way, right before it is deleted, as ours was.
        build(theirs, args.cameras, args.days, args.every, now)
        subprocess.run(["sync"], check=True)
        t0, c0 = time.monotonic(), cpu_children()
        subprocess.run(["find", str(theirs), "-mindepth", "1", "-delete"], check=True, timeout=3600)
        find_wall, find_cpu = time.monotonic() - t0, cpu_children() - c0
        left = sum(len(f) for _, _, f in os.walk(ours / "recordings"))
        assert left == 0, f"{left} files left"

        print()
        print(f"{'measure':44} {'ours':>10} {'baseline':>10} {'ratio':>7}  target")
        print(
            f"{'no-op run, wall s (median of ' + str(args.noop_runs) + ')':44} "
            f"{statistics.median(noop):>10.3f} {statistics.median(interpreter):>10.3f} "
            f"{'':>7}  < 1 s (baseline: Python start-up and import)"
        )
        print(
            f"{'purge of ' + format(files, ',') + ' segments, wall s':44} "
            f"{ours_wall:>10.2f} {find_wall:>10.2f} {ours_wall / find_wall:>7.2f}  <= 1.2"
        )
        print(f"{'purge, CPU s':44} {ours_cpu:>10.2f} {find_cpu:>10.2f} {ours_cpu / find_cpu:>7.2f}")
        print(f"register entries written: {len(report.destroyed)} (one per camera-day)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
