"""Extraction of one hour of one camera: `halfbridge.extraction.build` against a bare ffmpeg.

The store holds 60 segments of 60 s of 720p H.264 High with B-frames at a camera's 2 Mbit/s
(about 900 MB), made once: a minute of ffmpeg's testsrc2 encoded at constant bitrate, then
copied (looped, no re-encoding) into the recorder's segments, indexes and day directories.

- Ours: `build` of a request covering the hour: hard links, the MP4 (ffmpeg concat, stream
  copy, moov first), the SHA-256 of every file, the record (PDF), the signed manifest, every
  file on disk before the package is renamed into place.
- Baseline: `ffmpeg -f concat -safe 0 -i LIST -c copy -movflags +faststart out.mp4` of the same
  segment files, and nothing else (its output left in the page cache).
- Also shown: the same ffmpeg, then its output hashed (SHA-256) and flushed (fsync): the least
  that a signed copy surviving a power cut costs, whatever makes it.

Both read the segments from the page cache (they are written just before); each run starts
after a `sync`; the order alternates. Target: ratio of the medians to the bare ffmpeg at most
1.2. Memory: the benchmark process's peak resident size before and after the runs (hashing maps
a bounded window, never a whole file), and ffmpeg's.

    bench/extraction/run [--minutes 60] [--runs 3] [--bitrate 2M]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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
sys.path.insert(0, str(ROOT / "src"))

from halfbridge import extraction  # noqa: E402
from halfbridge.extraction import build  # noqa: E402
from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, iso, utc  # noqa: E402
from tests.unit.test_extraction import make_signer  # noqa: E402

CAMERA = {"id": "cam-bench", "name": "Bench", "site": "Bench"}
SEGMENT_SECONDS = 60
T0 = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC).timestamp()
CLIP_SECONDS = 60


def make_store(work: Path, minutes: int, bitrate: str) -> list[Path]:
    """The store's segments (in time order), as the recorder leaves them."""
    clip = work / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-t", str(CLIP_SECONDS),
         "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "high", "-bf", "2", "-g", "50", "-keyint_min", "50",
         "-sc_threshold", "0", "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
         "-x264-params", "nal-hrd=cbr", "-f", "mpegts", str(clip)],
        check=True, timeout=300,
    )  # fmt: skip
    cut = work / "cut"
    cut.mkdir()
    loops = -(-minutes * 60 // CLIP_SECONDS) - 1
    subprocess.run(
        ["ffmpeg", "-v", "error", "-stream_loop", str(loops), "-i", str(clip), "-map", "0:v:0", "-c", "copy",
         "-t", str(minutes * 60), "-f", "segment", "-segment_format", "mpegts", "-segment_time", str(SEGMENT_SECONDS),
         "-segment_list", str(cut / "list.csv"), "-segment_list_type", "csv", str(cut / "seg-%04d.ts")],
        check=True, timeout=300,
    )  # fmt: skip
    store, stored = Store(work / "store"), []
    for line in (cut / "list.csv").read_text().splitlines():
        name, start, end = line.rsplit(",", 2)
        opened = T0 + float(start)
        entry = Segment(round(opened, 3), round(T0 + float(end), 3), (cut / name).stat().st_size,
                        utc(opened).strftime(SEGMENT_STRFTIME) + ".ts")  # fmt: skip
        day = utc(opened).date()
        store.day_dir(CAMERA["id"], day).mkdir(parents=True, exist_ok=True)
        target = store.day_dir(CAMERA["id"], day) / entry.name
        os.replace(cut / name, target)
        store.append(CAMERA["id"], day, entry)
        stored.append(target)
    clip.unlink()
    return stored


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60, help="of recording extracted (segments of 60 s)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bitrate", default="2M", help="of the camera's H.264")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-extraction-", dir=os.environ.get("BENCH_DIR")))
    try:
        started = time.monotonic()
        segments = make_store(work, args.minutes, args.bitrate)
        size = sum(p.stat().st_size for p in segments)
        print(f"made {len(segments)} segments, {size / 1e6:.0f} MB, in {time.monotonic() - started:.0f} s", flush=True)
        signing, ca = make_signer(work / "pki")
        packages = work / "packages"
        packages.mkdir()
        listing = work / "list.ffconcat"
        listing.write_text("".join(f"file '{p}'\n" for p in segments))
        context = {"partner": "Bench", "convention_reference": "BENCH", "gateway": "bench", "approved_by": "bench",
                   "approved_at": time.time(), "ca_file": str(ca)}  # fmt: skip
        end = T0 + args.minutes * 60

        walls: dict[str, list[float]] = {"ours": [], "bare": [], "durable": []}
        cpus: dict[str, list[float]] = {"ours": [], "bare": [], "durable": []}
        in_ffmpeg: list[float] = []
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        run_ffmpeg = extraction._run

        def timed_ffmpeg(*args, **kwargs):  # ours' ffmpeg, with the flushes of its output as it goes
            t0 = time.monotonic()
            try:
                return run_ffmpeg(*args, **kwargs)
            finally:
                in_ffmpeg.append(time.monotonic() - t0)

        extraction._run = timed_ffmpeg

        def ours(number: int) -> None:
            request = {"id": f"DEM-20261202-{number:06X}", "camera": CAMERA["id"], "from": iso(T0), "to": iso(end),
                       "kind": "plain", "reference": "BENCH", "requested_by": {}, "requested_at": iso(T0)}  # fmt: skip
            package = build(work / "store", request, CAMERA, packages, signing, context, SEGMENT_SECONDS)
            assert package["files"] == len(segments) + 5, package
            shutil.rmtree(packages / request["id"])

        def bare(number: int, durable: bool = False) -> None:
            out = work / f"baseline-{number}.mp4"
            subprocess.run(
                ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                 "-c", "copy", "-movflags", "+faststart", str(out)],
                check=True, timeout=900,
            )  # fmt: skip
            if durable:  # what any signed copy that survives a power cut pays at least
                with out.open("rb") as handle:
                    hashlib.file_digest(handle, "sha256")
                    os.fsync(handle.fileno())
            out.unlink()

        steps = {"ours": ours, "bare": bare, "durable": lambda number: bare(number, durable=True)}
        for number in range(args.runs):
            order = list(steps) if number % 2 == 0 else list(reversed(steps))  # each meets the others' leftovers
            for name in order:
                subprocess.run(["sync"], check=True, timeout=300)
                t0, c0 = time.monotonic(), cpu_self() + cpu_children()
                steps[name](number)
                walls[name].append(time.monotonic() - t0)
                cpus[name].append(cpu_self() + cpu_children() - c0)
        extraction._run = run_ffmpeg
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ffmpeg_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

        wall = {name: statistics.median(runs) for name, runs in walls.items()}
        cpu = {name: statistics.median(runs) for name, runs in cpus.items()}
        label = f"{args.minutes} min, {size / 1e6:.0f} MB"
        print()
        print(f"{'measure (median of ' + str(args.runs) + ')':52} {'ours':>8} {'baseline':>9} {'ratio':>7}  target")
        print(f"{label + ', wall s, against bare ffmpeg':52} {wall['ours']:>8.2f} {wall['bare']:>9.2f} "
              f"{wall['ours'] / wall['bare']:>7.2f}  <= 1.2")  # fmt: skip
        print(f"{label + ', CPU s, against bare ffmpeg':52} {cpu['ours']:>8.2f} {cpu['bare']:>9.2f} "
              f"{cpu['ours'] / cpu['bare']:>7.2f}")  # fmt: skip
        print(f"{label + ', wall s, against ffmpeg + hash + fsync':52} {wall['ours']:>8.2f} {wall['durable']:>9.2f} "
              f"{wall['ours'] / wall['durable']:>7.2f}")  # fmt: skip
        print(f"ours, wall s: {statistics.median(in_ffmpeg):.2f} in ffmpeg (its output flushed as it goes), "
              f"{wall['ours'] - statistics.median(in_ffmpeg):.2f} around it (links, the MP4's SHA-256, record, "
              "signature)")  # fmt: skip
        for name, runs in walls.items():
            print(f"runs, wall s, {name}: {' '.join(f'{t:.2f}' for t in runs)}")
        print(
            f"peak resident memory: this process {rss_before / 1024:.0f} MiB before our runs, "
            f"{rss_after / 1024:.0f} MiB after; ffmpeg {ffmpeg_rss / 1024:.0f} MiB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
