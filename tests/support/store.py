"""Synthetic recording stores: the layout and indexes the recorder writes, built in bulk."""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from pathlib import Path

from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, utc


def build_store(
    root: Path,
    cameras: list[str],
    first: float,
    last: float,
    every: float,
    duration: float | None = None,
    payload: bytes = b"",
    mtimes: bool = True,
) -> dict[tuple[str, dt.date], list[Segment]]:
    """Segments opened every `every` seconds from `first` up to `last`, `duration` long (default `every`).

    Each segment's file holds `payload` (a real TS clip, or nothing for size-only
    benchmarks), its index line says the segment's times. Files and indexes are
    written in bulk, not through the recorder's fsync'd appends. Returns what was
    built, by camera and day.
    """
    store = Store(root)
    duration = every if duration is None else duration
    # Every camera has the same segments: name and time them once, by day.
    days: dict[dt.date, list[Segment]] = defaultdict(list)
    start = first
    while start <= last:
        name = utc(start).strftime(SEGMENT_STRFTIME) + ".ts"
        days[utc(start).date()].append(Segment(round(start, 3), round(start + duration, 3), len(payload), name))
        start += every
    built = {}
    for camera in cameras:
        for day, segments in days.items():
            directory = store.day_dir(camera, day)
            directory.mkdir(parents=True, exist_ok=True)
            for segment in segments:
                fd = os.open(directory / segment.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
                if payload:
                    os.write(fd, payload)
                os.close(fd)
                if mtimes:  # as the recorder leaves them: last written when the segment ended
                    os.utime(directory / segment.name, (segment.end, segment.end))
            with (directory / "index.csv").open("a") as index:  # a day may be built in several calls
                index.write("".join(s.line() for s in segments))
            built[camera, day] = list(segments)
    return built


def files(root: Path) -> set[str]:
    """Every segment file under a store, as paths relative to it."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*.ts")}
