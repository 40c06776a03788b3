"""The recordings store: layout, index lines, torn writes, lookups and gaps."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from halfbridge.recorder import Backoff
from halfbridge.store import Segment, Store, StoreError, segment_time, spans

T0 = dt.datetime(2026, 11, 29, 23, 59, 0, tzinfo=dt.UTC).timestamp()


def seg(start: float, length: float = 60.0, name: str | None = None, flags: str = "") -> Segment:
    name = name or dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%M%SZ.ts")
    return Segment(start, start + length, 1000, name, flags)


def test_segment_lines_round_trip():
    original = seg(T0, 59.96, flags="recovered")
    assert Segment.parse(original.line()) == Segment(T0, round(T0 + 59.96, 3), 1000, original.name, "recovered")


@pytest.mark.parametrize(
    "line",
    [
        "1795996740.000,1795996800.000,1000,20261129T235900Z.ts,",  # torn: no newline
        "garbage\n",
        "1795996740.000,1795996800.000,1000,../etc/passwd,\n",
        "1795996800.000,1795996740.000,1000,20261129T235900Z.ts,\n",  # ends before it starts
        "x,1795996800.000,1000,20261129T235900Z.ts,\n",
    ],
)
def test_torn_or_foreign_lines_are_skipped(line):
    assert Segment.parse(line) is None


LINE = "1795996740.000,1795996800.000,1000,20261129T235900Z.ts,\n"


@pytest.mark.parametrize(
    "line",
    [
        # Not numbers as `Segment.line` writes them: NaN compares false both ways, so a NaN end
        # was never at or before the cutoff and the segment outlived the retention.
        "nan,nan,1000,20261129T235900Z.ts,\n",
        "1795996740.000,nan,1000,20261129T235900Z.ts,\n",
        "1795996740.000,inf,1000,20261129T235900Z.ts,\n",
        "-inf,1795996800.000,1000,20261129T235900Z.ts,\n",
        "1.79599674e9,1795996800.000,1000,20261129T235900Z.ts,\n",
        " 1795996740.000,1795996800.000,1000,20261129T235900Z.ts,\n",
        "1795996740.000,1795996800.000,1_000,20261129T235900Z.ts,\n",
        "1795996740.000,1795996800.000,-1,20261129T235900Z.ts,\n",  # a negative size
        "1795996740.000,1795996800.000,+1000,20261129T235900Z.ts,\n",
        "1795996740.000,1795996800.000,\u0661\u0662,20261129T235900Z.ts,\n",  # digits, but not ASCII
        # Times outside 2000-2199, or not the segment's.
        "0.000,60.000,1000,19700101T000000Z.ts,\n",
        "7258118400.000,7258118460.000,1000,22000101T000000Z.ts,\n",
        "1795996740.000,1796083141.000,1000,20261129T235900Z.ts,\n",  # over a day long
        "1795000000.000,1795000060.000,1000,20261129T235900Z.ts,\n",  # 11 days from its name's second
        # Names the recorder never writes.
        "1795996740.000,1795996800.000,1000,20261399T235900Z.ts,\n",  # no 99th of the 13th month
        "1795996740.000,1795996800.000,1000,20261129T235900Z.ts\n,\n",
        "1795996740.000,1795996800.000,1000,20261129T235900Z.mp4,\n",
        "1795996740.000,1795996800.000,1000,20261129T235900Z.ts,recovered,more\n",
        "1795996740.000,1795996800.000,1000,20261129T235900Z.ts,\x1b[2J\n",
        LINE[:-1] + "x" * 200 + "\n",  # overlong
    ],
)
def test_damaged_lines_are_skipped_like_torn_ones(line):
    assert Segment.parse(line) is None


def test_the_recorders_lines_are_read():
    assert Segment.parse(LINE) == Segment(1795996740.0, 1795996800.0, 1000, "20261129T235900Z.ts")
    recovered = LINE.replace(",\n", ",recovered\n")
    assert Segment.parse(recovered) == Segment(1795996740.0, 1795996800.0, 1000, "20261129T235900Z.ts", "recovered")


def test_a_damaged_index_gives_its_good_lines_only(tmp_path):
    """A day's index with NaN, binary and a huge line without a newline: the good lines only, in order."""
    store = Store(tmp_path)
    day = dt.date(2026, 11, 29)
    store.day_dir("cam-01", day).mkdir(parents=True)
    first, second = seg(T0 - 120), seg(T0 - 60)
    (store.day_dir("cam-01", day) / "index.csv").write_bytes(
        first.line().encode()
        + b"nan,nan,1000,20261129T235900Z.ts,\n"
        + b"\xff\xfe\x00garbage\n"
        + b"1" * 1_000_000
        + b"\n"
        + second.line().encode()
        + b"1795996740.000,179"
    )
    assert store.index("cam-01", day) == [first, second]


def test_layout_and_day_index(tmp_path):
    store = Store(tmp_path)
    store.ensure_days("cam-01", T0)
    day = dt.date(2026, 11, 29)
    assert store.day_dir("cam-01", day).is_dir()
    assert store.day_dir("cam-01", day + dt.timedelta(days=1)).is_dir(), "tomorrow exists before midnight"
    store.append("cam-01", day, seg(T0 - 60))
    store.append("cam-01", day, seg(T0))
    # A crash mid-write leaves a torn last line; readers skip it.
    with (store.day_dir("cam-01", day) / "index.csv").open("a") as handle:
        handle.write("1795000000.000,17950")
    assert [s.start for s in store.index("cam-01", day)] == [T0 - 60, T0]
    assert store.segment_pattern("cam-01").endswith("cam-01/%Y/%m/%d/%Y%m%dT%H%M%SZ.ts")


def test_lookup_crosses_midnight_and_reads_only_the_days_asked(tmp_path):
    store = Store(tmp_path)
    store.ensure_days("cam-01", T0)
    today, tomorrow = dt.date(2026, 11, 29), dt.date(2026, 11, 30)
    for i in range(3):
        start = T0 + 60 * i  # 23:59, 00:00, 00:01
        day = today if i == 0 else tomorrow
        store.append("cam-01", day, seg(start))
    found = list(store.segments("cam-01", T0 + 30, T0 + 90))
    assert [(d, s.start) for d, s in found] == [(today, T0), (tomorrow, T0 + 60)]
    assert list(store.segments("cam-01", T0 - 3600, T0 - 60)) == []


def test_unindexed_segments_are_found(tmp_path):
    store = Store(tmp_path)
    store.ensure_days("cam-01", T0)
    day = dt.date(2026, 11, 29)
    indexed, orphan = seg(T0 - 120), seg(T0 - 60)
    for s in (indexed, orphan):
        (store.day_dir("cam-01", day) / s.name).write_bytes(b"x")
    store.append("cam-01", day, indexed)
    assert store.unindexed("cam-01", day) == [orphan.name]


@pytest.mark.parametrize("camera", ["../x", "A", "", "cam/1"])
def test_unsafe_camera_ids_never_reach_the_filesystem(tmp_path, camera):
    with pytest.raises(StoreError):
        Store(tmp_path).camera_dir(camera)


def test_spans_merge_contiguous_segments_and_show_gaps():
    segments = [seg(T0, 60), seg(T0 + 60, 60), seg(T0 + 150, 60)]
    assert spans(segments, tolerance=0.08) == [(T0, T0 + 120), (T0 + 150, T0 + 210)]


def test_segment_names_carry_their_second():
    assert segment_time("20261129T235900Z.ts") == T0
    assert segment_time("index.csv") is None


@pytest.mark.parametrize(
    "name",
    [
        "20261399T000000Z.ts",
        "00000101T000000Z.ts",
        "20261129T235960Z.ts",
        "20261129T235900Z.ts\n",
        "\uff12\uff10\uff12\uff161129T235900Z.ts",  # fullwidth digits
    ],
)
def test_a_name_without_a_real_second_has_none(name):
    """A file on disk named like a segment for a date that does not exist: None, as for any other name."""
    assert segment_time(name) is None


def test_backoff_doubles_to_its_cap_with_bounded_jitter():
    backoff = Backoff(1.0, 30.0, 0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for delay, base in zip(delays, [1, 2, 4, 8, 16, 30, 30, 30], strict=True):
        assert base * 0.8 <= delay <= min(30, base * 1.2)
    backoff.reset()
    assert backoff.next_delay() <= 1.2
