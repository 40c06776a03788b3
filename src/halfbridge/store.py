"""The recordings store: where segments live and the index of what exists.

Layout, for a camera `ID` and a segment opened at 2026-11-29 09:01:00 UTC:

    ROOT/ID/2026/11/29/20261129T090100Z.ts    the segment (MPEG-TS)
    ROOT/ID/2026/11/29/index.csv              one line per finished segment

An index line is `start,end,bytes,name,flags`: start and end in seconds since
the epoch (UTC, millisecond precision), the segment's size, its file name in
the same directory, and flags (`recovered` for a segment cut short by a crash
and measured afterwards). A segment is in the index of the day directory it
was written to. Lines are appended, never rewritten, so a crash leaves at
worst a last line without its newline, which readers skip; playback and
retention read the index and never probe files.

Readers skip, as they skip a torn line, any line that is not one the recorder
could have written (`Segment.parse`): more than `MAX_LINE` characters; a number
that is not plain decimal digits (no sign, exponent, `nan` or `inf`); a time
outside 2000-2199; an end before the start; a segment longer than a day, or
more than a day away from the second its name records; a name that is not
`YYYYMMDDTHHMMSSZ.ts` of a real date; flags other than a lowercase word. The
segment file such a line names is then unindexed, as after a crash: playback
does not find it and retention goes by the file's age.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from halfbridge.times import EARLIEST, LATEST  # an index line's times: the years a client may ask for

INDEX_NAME = "index.csv"
SEGMENT_SUFFIX = ".ts"
# strftime pattern of a segment's file name (ffmpeg expands it, in UTC).
SEGMENT_STRFTIME = "%Y%m%dT%H%M%SZ"
# ASCII digits only, and nothing after `.ts` (`$` would let a name end with a newline).
SEGMENT_RE = re.compile(r"^([0-9]{8}T[0-9]{6}Z)\.ts\Z")
# An index line as `Segment.line` writes it: start,end,bytes,name,flags and its newline (the
# times with three decimals; any precision is read).
_NUMBER = r"([0-9]{1,10}(?:\.[0-9]{1,9})?)"
_LINE_RE = re.compile(rf"{_NUMBER},{_NUMBER},([0-9]{{1,15}}),([0-9]{{8}}T[0-9]{{6}}Z\.ts),([a-z]{{0,32}})\n")
MAX_LINE = 128  # characters of an index line, its newline included (the recorder's are under 80)
MAX_DURATION = 86400.0  # seconds: a segment lasts minutes; a day is absurd
MAX_SKEW = 86400.0  # seconds between a segment's start and the second its name records
CAMERA_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
_LOCK_ATTEMPTS = 100


class StoreError(ValueError):
    """A request the store cannot honour; the message says why."""


@dataclass(frozen=True, order=True)
class Segment:
    start: float
    end: float
    size: int
    name: str
    flags: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start

    def line(self) -> str:
        return f"{self.start:.3f},{self.end:.3f},{self.size},{self.name},{self.flags}\n"

    @classmethod
    def parse(cls, line: str) -> Segment | None:
        """A segment from an index line; None for a torn, damaged or foreign line (see the module's doc)."""
        if len(line) > MAX_LINE or not (match := _LINE_RE.fullmatch(line)):
            return None
        start, end = float(match[1]), float(match[2])  # digits and a point: always finite
        named = segment_time(match[4])
        if (
            named is None
            or not EARLIEST <= start <= end < LATEST
            or end - start > MAX_DURATION
            or abs(start - named) > MAX_SKEW
        ):
            return None
        return cls(start, end, int(match[3]), match[4], match[5])


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def iso(ts: float | None) -> str | None:
    """A time as the daemons write it: UTC, milliseconds, `Z`."""
    return None if ts is None else utc(ts).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(ts: float) -> str:
    """A time to the second, UTC, `Z` (what people read: states, sentences, the status view)."""
    return utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def replacing_prefix(name: str) -> str:
    """How the temporary files `write_replacing` writes beside `name` begin (a crash may leave one behind)."""
    return f".{name.lstrip('.')}."


def write_replacing(path: Path, data: bytes, mode: int) -> None:
    """Write `path` beside itself, flush it, then rename it over: a crash leaves the old file or the new, whole.

    The temporary file is `.NAME.PID` in the same directory (see `replacing_prefix`).
    """
    tmp = path.with_name(f"{replacing_prefix(path.name)}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {tmp}")
        os.fsync(fd)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def lock_within(fd: int, seconds: float, pause: float = 0.01) -> bool:
    """Lock `fd` exclusively (flock), waiting at most `seconds`; False when another process held it that long."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)


def segment_time(name: str) -> float | None:
    """The wall-clock second a segment's file name records, or None (for a date that does not exist too)."""
    match = SEGMENT_RE.match(name)
    if not match:
        return None
    text = match.group(1)  # YYYYMMDDTHHMMSSZ, as SEGMENT_STRFTIME writes it
    try:
        opened = dt.datetime(
            int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]), int(text[13:15]),
            tzinfo=dt.UTC,
        )  # fmt: skip
    except ValueError:  # 20261399T..., year 0000, second 60
        return None
    return opened.timestamp()


def segment_day(name: str) -> dt.date | None:
    """The UTC day a segment belongs to (its directory, and the index that lists it), or None."""
    opened = segment_time(name)
    return None if opened is None else utc(opened).date()


def check_camera_id(camera: str) -> str:
    if not CAMERA_ID_RE.match(camera):
        raise StoreError(f"{camera!r} is not a camera id (1-64 of a-z, 0-9, '-', '_')")
    return camera


class Store:
    """The recordings of every camera under one root directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def camera_dir(self, camera: str) -> Path:
        return self.root / check_camera_id(camera)

    def day_dir(self, camera: str, day: dt.date) -> Path:
        return self.camera_dir(camera) / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"

    def segment_path(self, camera: str, name: str) -> Path:
        """Where a segment named by ffmpeg lives."""
        day = segment_day(name)
        if day is None:
            raise StoreError(f"{name!r} is not a segment name")
        return self.day_dir(camera, day) / name

    def segment_pattern(self, camera: str) -> str:
        """The strftime pattern ffmpeg writes segments to."""
        return str(self.camera_dir(camera) / "%Y" / "%m" / "%d" / f"{SEGMENT_STRFTIME}{SEGMENT_SUFFIX}")

    def ensure_days(self, camera: str, now: float, ahead: int = 1) -> None:
        """Create today's directory and the next ones (ffmpeg does not create directories)."""
        today = utc(now).date()
        for offset in range(ahead + 1):
            self.day_dir(camera, today + dt.timedelta(days=offset)).mkdir(parents=True, exist_ok=True, mode=0o750)

    def cameras(self) -> list[str]:
        """Every camera that has recordings, in or out of the referential (one listdir)."""
        try:
            return sorted(n for n in os.listdir(self.root) if CAMERA_ID_RE.match(n) and (self.root / n).is_dir())
        except FileNotFoundError:
            return []

    def days(self, camera: str) -> list[dt.date]:
        """The days that have a directory, oldest first (three small listdirs, no stat of segments)."""
        found = []
        base = self.camera_dir(camera)
        for year in _numeric_entries(base, 4):
            for month in _numeric_entries(base / year, 2):
                for day in _numeric_entries(base / year / month, 2):
                    with contextlib.suppress(ValueError):
                        found.append(dt.date(int(year), int(month), int(day)))
        return sorted(found)

    def append(self, camera: str, day: dt.date, segment: Segment) -> None:
        """Add a finished segment to its day's index (one write, then fsync)."""
        with self.locked_index(camera, day) as fd:
            os.write(fd, segment.line().encode("ascii"))
            os.fsync(fd)

    @contextlib.contextmanager
    def locked_index(self, camera: str, day: dt.date) -> Iterator[int]:
        """An exclusive lock on a day's index, held by the recorder's appends and retention's rewrites.

        Retention replaces an index by renaming a new one over it; a writer that
        was waiting for the lock then holds the old file, notices, and opens the new one.
        """
        path = self.day_dir(camera, day) / INDEX_NAME
        for _ in range(_LOCK_ATTEMPTS):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = os.fstat(fd).st_ino == path.stat().st_ino
            except FileNotFoundError:
                current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                try:
                    yield fd
                    info = os.fstat(fd)
                    if info.st_size == 0 and info.st_nlink:
                        path.unlink(missing_ok=True)  # locking made it: no empty index is left behind
                finally:
                    os.close(fd)  # releases the lock
                return
            os.close(fd)
        raise StoreError(f"{path} was replaced {_LOCK_ATTEMPTS} times while waiting for its lock")

    def replace_index(self, lock_fd: int, camera: str, day: dt.date, segments: list[Segment]) -> None:
        """Make a day's index list exactly `segments` (held under `locked_index`, whose fd is given).

        The new index is written beside the old one, flushed, then renamed over it: a
        crash leaves either index whole. An empty list removes the index.
        """
        path = self.day_dir(camera, day) / INDEX_NAME
        if not segments:
            path.unlink(missing_ok=True)
            return
        data = "".join(segment.line() for segment in segments).encode("ascii")
        write_replacing(path, data, os.fstat(lock_fd).st_mode & 0o777)

    def index(self, camera: str, day: dt.date) -> list[Segment]:
        """The segments of one day, in index order (torn, damaged and foreign lines skipped)."""
        path = self.day_dir(camera, day) / INDEX_NAME
        try:
            with path.open("rb") as handle:
                return [seg for line in _lines(handle) if (seg := Segment.parse(line)) is not None]
        except FileNotFoundError:
            return []

    def segments(self, camera: str, start: float, end: float) -> Iterator[tuple[dt.date, Segment]]:
        """Segments overlapping [start, end), in time order, reading only the indexes of those days."""
        first, last = utc(start).date() - dt.timedelta(days=1), utc(end).date()
        for day in self.days(camera):
            if first <= day <= last:
                for segment in sorted(self.index(camera, day)):
                    if segment.end > start and segment.start < end:
                        yield day, segment

    def unindexed(self, camera: str, day: dt.date, indexed: set[str] | None = None) -> list[str]:
        """Segment files of a day that its index does not list (a crash's partial segment, the one being written).

        `indexed`, the names the index lists, spares reading it again when the caller has it.
        """
        directory = self.day_dir(camera, day)
        try:
            names = {n for n in os.listdir(directory) if SEGMENT_RE.match(n)}
        except FileNotFoundError:
            return []
        if indexed is None:
            indexed = {segment.name for segment in self.index(camera, day)}
        return sorted(names - indexed)


def spans(segments: list[Segment], tolerance: float) -> list[tuple[float, float]]:
    """Merge segments into continuous spans; a hole longer than `tolerance` seconds splits them."""
    merged: list[list[float]] = []
    for segment in sorted(segments):
        if merged and segment.start - merged[-1][1] <= tolerance:
            merged[-1][1] = max(merged[-1][1], segment.end)
        else:
            merged.append([segment.start, segment.end])
    return [(a, b) for a, b in merged]


def playback_from(segments: list[Segment], start: float) -> list[Segment]:
    """Of `segments` (sorted, looked up a few seconds around a range), those a playback from `start` reads.

    Playback starts in the last segment that opens at or before `start` (at its keyframe at or
    before `start`). The segments are looked up around the range because of B-frames: a frame
    shown just before the range's end can be in the segment that opens after it (an open GOP's
    leading frames), and a `start` that falls among them is shown from the keyframe of the
    segment before.
    """
    opening = [index for index, segment in enumerate(segments) if segment.start <= start + 1e-3]
    return segments[opening[-1] :] if opening else segments


def _lines(handle: BinaryIO) -> Iterator[str]:
    """The lines of a binary file, as text; a line longer than MAX_LINE comes as its first MAX_LINE + 1 characters.

    Read by bounded pieces: a damaged index without newlines is never held whole in memory.
    """
    while line := handle.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := handle.readline(65536)) and not rest.endswith(b"\n"):
                pass  # the rest of the overlong line
        yield line.decode("ascii", "replace")


def _numeric_entries(path: Path, width: int) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if len(n) == width and n.isdigit())
    except (FileNotFoundError, NotADirectoryError):
        return []
