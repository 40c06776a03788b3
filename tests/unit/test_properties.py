"""Hostile input, generated: whatever a camera, a disk or a client sends, only the documented errors come out.

hypothesis draws random bytes and text, and mutations of real data: MPEG-TS clips encoded
once per module by ffmpeg (tests.support.media), with bytes flipped or overwritten, cut
short, packets dropped, repeated or spliced from elsewhere, their tables (PAT, PMT) and
packet headers damaged; index lines as the recorder writes them, then edited; ISO 8601
times near the valid ones (extreme years, days, offsets, a space for the `+`).

- `halfbridge.ts` raises TsError and nothing else, and what it finds stays inside the file;
- `halfbridge.fmp4.Remuxer` raises Fmp4Error and nothing else, and keeps raising it;
- an index line is a Segment the recorder could have written, or None (skipped);
- `halfbridge.times.parse_time` gives a finite time within its years, or TimeError with a
  short, printable sentence.

The examples are derandomized (CI sees the same ones every run) and counted so that the file
runs in seconds.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from halfbridge import times, ts
from halfbridge.fmp4 import Fmp4Error, Remuxer
from halfbridge.store import EARLIEST, LATEST, MAX_DURATION, SEGMENT_RE, Segment, Store, segment_time, utc
from halfbridge.times import TimeError, parse_time
from tests.support.media import make_clip

PACKET = ts.PACKET


def checked(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- real MPEG-TS, and how it gets damaged ------------------------------------------------------------


class Clip:
    """A real clip and where its tables are."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        pmt = ts.tables(data)[PACKET:]
        self.pats = [offset for offset, pid, _ in ts.packets(data) if pid == 0]
        self.pmts = [offset for offset, pid, _ in ts.packets(data) if pid == (pmt[1] & 0x1F) << 8 | pmt[2]]
        self.video = [frame.offset for frame in ts.frames(data)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Clip]:
    """Small clips of the profiles cameras send: H.264 with B-frames, H.265 with an open GOP (with sound)."""
    directory = tmp_path_factory.mktemp("clips")
    made = [
        make_clip(directory / "high.ts", size="160x90", seconds=0.6, gop=5, profile="h264-high"),
        make_clip(directory / "hevc.ts", size="160x96", seconds=0.6, gop=5, profile="h265-main", audio_codec="aac"),
    ]
    return [Clip(Path(path).read_bytes()) for path in made]


MUTATIONS = ("flip", "overwrite", "cut end", "cut start", "drop", "repeat", "splice", "insert", "table", "header")


@st.composite
def mutated(draw, clips: list[Clip]) -> bytes:
    """A real clip with one to six kinds of damage."""
    clip = draw(st.sampled_from(clips))
    data = bytearray(clip.data)
    for kind in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=6)):
        count = len(data) // PACKET
        if count < 2:
            break
        packet = draw(st.integers(0, count - 1)) * PACKET
        if kind == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            at = draw(st.integers(0, len(data) - 1))
            data[at : at + 16] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "cut end":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "cut start":  # at a packet boundary (a file read from a keyframe) or anywhere
            del data[: (packet or PACKET) if draw(st.booleans()) else draw(st.integers(1, len(data) - 1))]
        elif kind == "drop":
            del data[packet : packet + PACKET * draw(st.integers(1, 4))]
        elif kind == "repeat":
            data[packet:packet] = data[packet : packet + PACKET * draw(st.integers(1, 4))]
        elif kind == "splice":  # packets of another place of a clip (maybe the other), at a packet boundary or not
            other = draw(st.sampled_from(clips)).data
            start = draw(st.integers(0, len(other) // PACKET - 1)) * PACKET
            at = packet if draw(st.booleans()) else draw(st.integers(0, len(data)))
            data[at:at] = other[start : start + PACKET * draw(st.integers(1, 8))]
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=200))
        elif kind == "table":  # a byte of a PAT or PMT packet's header or section (ffmpeg's first and later ones)
            at = draw(st.sampled_from(clip.pats[:3] + clip.pmts[:3])) + draw(st.integers(1, 40))
            if at < len(data):
                data[at] = draw(st.integers(0, 255))
        elif kind == "header":  # a frame packet's PID, flags, adaptation field or PES header
            at = draw(st.sampled_from(clip.video)) + draw(st.integers(1, 30))
            if at < len(data):
                data[at] = draw(st.integers(0, 255))
    return bytes(data)


def packet_like(pid: int, body: bytes) -> bytes:
    return bytes([0x47, pid >> 8 & 0x1F | 0x40, pid & 0xFF]) + body.ljust(185, b"\xff")[:185]


# Random packets that keep their sync byte, on the PIDs ffmpeg writes, so the parsers go past it.
random_packets = st.lists(
    st.builds(packet_like, st.sampled_from([0, 0x11, 0x100, 0x1000, 0x1FFF]), st.binary(max_size=185)),
    max_size=12,
).map(b"".join)
random_bytes = st.one_of(st.binary(max_size=3000), random_packets, random_packets.map(lambda b: b[: len(b) // 2]))
times_in_a_file = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 3))


def check_ts(data: bytes, start: float, end: float) -> None:
    """Every public reader of `halfbridge.ts` on `data`: TsError or results inside the file."""
    try:
        found = ts.frames(data)
    except ts.TsError:
        assert data[:1] != b"\x47", "a file that starts with a sync byte is read"
        found = None
    if found is not None:
        offsets = [frame.offset for frame in found]
        assert offsets == sorted(set(offsets))
        assert all(offset % PACKET == 0 and offset + PACKET <= len(data) for offset in offsets)
        assert all(0 <= frame.pts < ts.WRAP and 0 <= frame.dts < ts.WRAP for frame in found)
        assert ts.keyframes(data) == [frame for frame in found if frame.key]
        assert ts.first_frame(data) == (found[0] if found else None)
        assert ts.first_pts(data) == (found[0].pts if found else None)
        assert 0.0 <= ts.lead(data) <= ts.WRAP / 2
        assert ts.last_keyframe(data) == max((f.offset for f in found if f.key), default=None)
        head, tail = ts.cut(data, start, end)
        assert 0 <= head <= len(data) and 0 <= tail <= len(data)
        assert head % PACKET == 0 and tail % PACKET == 0
        assert 0 <= ts.start_offset(data, start) <= len(data)
        assert 0 <= ts.end_offset(data, end) <= len(data)
    else:
        for call in (ts.keyframes, ts.first_frame, ts.first_pts, ts.lead):
            with pytest.raises(ts.TsError):
                call(data)
        keyframe = ts.last_keyframe(data)  # reads the packets' headers only: no error, an offset inside
        assert keyframe is None or 0 <= keyframe < len(data)
    try:
        head = ts.tables(data)
    except ts.TsError:
        pass
    else:
        assert len(head) == 2 * PACKET and head[0] == head[PACKET] == 0x47
        assert head[1] & 0x5F == 0x40 and head[2] == 0, "the PAT first, on PID 0, starting its section"
    try:
        assert all(len(packet) == PACKET for _offset, _pid, packet in ts.packets(data))
    except ts.TsError:
        assert data[: len(data) - len(data) % PACKET : PACKET].count(0x47) < len(data) // PACKET


@checked(800)
@given(data=st.data(), start=times_in_a_file, end=times_in_a_file)
def test_ts_reads_damaged_clips_with_tserror_only(clips, data, start, end):
    check_ts(data.draw(mutated(clips)), start, end)


@checked(600)
@given(blob=random_bytes, start=times_in_a_file, end=times_in_a_file)
@example(blob=b"\x47\x40\x00\x10\xff" + bytes(183), start=0.0, end=1.0)  # a PAT whose pointer field leaves the packet
@example(blob=b"\x47\x40\x00\x10\x00\x00\xbf\xff" + bytes(180), start=0.0, end=1.0)  # a section longer than it
@example(blob=b"\x47\x40\x00\x20\xb7" + bytes(183), start=0.0, end=1.0)  # a PAT packet without payload
def test_ts_reads_random_bytes_with_tserror_only(blob, start, end):
    check_ts(blob, start, end)


@checked(100)
@given(blob=st.binary(max_size=12))
def test_a_timestamp_is_five_bytes_or_tserror(blob):
    try:
        value = ts.ticks(blob)
    except ts.TsError:
        assert len(blob) < 5
    else:
        assert 0 <= value < 2**33


# --- the MP4 remuxer on the same input ----------------------------------------------------------------


def check_remuxer(data: bytes, sizes: list[int]) -> None:
    """`data` fed in pieces of `sizes` (then the rest), then flushed: MP4 bytes or Fmp4Error, which then stays."""
    remuxer = Remuxer()
    position, failed = 0, False
    for size in [*sizes, len(data)]:
        piece, position = data[position : position + size], position + size
        try:
            assert isinstance(remuxer.feed(piece), bytes)
        except Fmp4Error:
            failed = True
            break
    try:
        assert isinstance(remuxer.flush(), bytes)
    except Fmp4Error:
        failed = True
    if failed:
        with pytest.raises(Fmp4Error):
            remuxer.feed(b"")
        with pytest.raises(Fmp4Error):
            remuxer.flush()
    assert isinstance(remuxer.content_type, str)


chunk_sizes = st.lists(st.integers(1, 5000), max_size=8)


@checked(500)
@given(data=st.data(), sizes=chunk_sizes)
def test_the_remuxer_reads_damaged_clips_with_fmp4error_only(clips, data, sizes):
    check_remuxer(data.draw(mutated(clips)), sizes)


@checked(400)
@given(blob=random_bytes, sizes=chunk_sizes)
def test_the_remuxer_reads_random_bytes_with_fmp4error_only(blob, sizes):
    check_remuxer(blob, sizes)


def test_the_undamaged_clips_remux(clips):
    """The mutations start from clips the remuxer reads whole (the properties above are not vacuous)."""
    for clip in clips:
        remuxer = Remuxer()
        assert len(remuxer.feed(clip.data) + remuxer.flush()) > len(clip.data) // 2
        assert len(ts.keyframes(clip.data)) >= 2


# --- index lines --------------------------------------------------------------------------------------


def check_segment(segment: Segment | None) -> None:
    """None, or what the recorder could have written: finite times in bounds, in order, a real name."""
    if segment is None:
        return
    assert math.isfinite(segment.start) and math.isfinite(segment.end)
    assert EARLIEST <= segment.start <= segment.end < LATEST
    assert segment.end - segment.start <= MAX_DURATION
    assert segment.size >= 0
    assert SEGMENT_RE.match(segment.name) and segment_time(segment.name) is not None
    assert segment.flags == "" or (segment.flags.isalpha() and segment.flags.islower())
    again = Segment.parse(segment.line())
    assert again is not None and again.name == segment.name and again.size == segment.size
    assert math.isclose(again.start, segment.start, abs_tol=1e-3) and math.isclose(again.end, segment.end, abs_tol=1e-3)


@st.composite
def recorder_lines(draw) -> str:
    """A line as the recorder writes it: a segment named by ffmpeg a few seconds from its start."""
    start = round(draw(st.floats(EARLIEST + 86400, LATEST - 2 * 86400)), 3)
    named = utc(start + draw(st.integers(-600, 600))).strftime("%Y%m%dT%H%M%SZ.ts")
    end = round(start + draw(st.floats(0, 3600)), 3)
    return Segment(start, end, draw(st.integers(0, 10**12)), named, draw(st.sampled_from(["", "recovered"]))).line()


@st.composite
def edited(draw, line: str) -> str:
    """`line` with a few characters replaced, inserted or deleted (among those that matter to a parser)."""
    alphabet = st.sampled_from([*"0123456789.,-+eEnaifxZT \n\r\t\x00\x1b/\u00e9", "nan", "inf", "1e308", "\u0661"])
    text = list(line)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        if how == "insert" or at == len(text):
            text.insert(at, draw(alphabet))
        elif how == "replace":
            text[at] = draw(alphabet)
        else:
            del text[at]
    return "".join(text)


@checked(300)
@given(line=recorder_lines())
def test_every_line_the_recorder_writes_is_read(line):
    segment = Segment.parse(line)
    assert segment is not None and segment.line() == line
    check_segment(segment)


@checked(600)
@given(data=st.data())
def test_an_edited_line_is_a_valid_segment_or_skipped(data):
    check_segment(Segment.parse(data.draw(edited(data.draw(recorder_lines())))))


@checked(500)
@given(line=st.text(max_size=200))
@example(line="nan,nan,1000,20261129T235900Z.ts,\n")
@example(line="1795996740.000,1795996800.000,-5,20261129T235900Z.ts,\n")
def test_any_text_is_a_valid_segment_or_skipped(line):
    check_segment(Segment.parse(line))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("store")
    Store(root).day_dir("cam-01", dt.date(2026, 11, 29)).mkdir(parents=True)
    return Store(root)


@checked(200)
@given(
    before=st.lists(recorder_lines(), max_size=4),
    damage=st.lists(st.one_of(recorder_lines().flatmap(edited), st.binary(max_size=300)), max_size=4),
    after=st.lists(recorder_lines(), max_size=4),
)
def test_a_damaged_index_gives_valid_segments_only(store, before, damage, after):
    """Good lines, then damaged ones (edited lines, binary, maybe no newline), then good lines again."""
    blob = "".join(before).encode()
    blob += b"".join(part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part for part in damage)
    blob += "".join(after).encode()
    (store.day_dir("cam-01", dt.date(2026, 11, 29)) / "index.csv").write_bytes(blob)
    found = store.index("cam-01", dt.date(2026, 11, 29))
    for segment in found:
        check_segment(segment)
    # The damage ends at worst with a line cut short: the good line after it is read with it.
    expected = [Segment.parse(line) for line in before + after[1:]]
    assert all(segment in found for segment in expected)


# --- times a client gives -----------------------------------------------------------------------------


def check_time(text: str | None) -> None:
    try:
        seconds = parse_time("from", text)
    except TimeError as exc:
        sentence = str(exc)
        assert sentence.startswith("`from` ")
        assert sentence.isascii() and sentence.isprintable(), "escaped: it can be logged and shown as is"
        assert len(sentence) <= 300
    else:
        assert isinstance(seconds, float) and math.isfinite(seconds)
        assert times.EARLIEST <= seconds < times.LATEST
        assert seconds == dt.datetime.fromisoformat(text).timestamp()


@st.composite
def near_iso(draw) -> str:
    """ISO 8601 times with fields at and past their limits, zones valid, absent, cut or spaced."""
    year = draw(st.one_of(st.integers(0, 9999), st.integers(1995, 2205)))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    fraction = draw(st.sampled_from(["", ".5", ".123456", ".1234567890", ",25"]))
    hours, minutes = draw(st.integers(0, 30)), draw(st.integers(0, 61))
    sign = draw(st.sampled_from(["+", "-", " ", ""]))
    zone = draw(
        st.sampled_from(["Z", "z", "", f"{sign}{hours:02d}:{minutes:02d}", f"{sign}{hours:02d}{minutes:02d}",
                         f"{sign}{hours:02d}", f"{sign}{hours:02d}:{minutes:02d}:59.999999"])
    )  # fmt: skip
    separator = draw(st.sampled_from(["T", " ", "t"]))
    return f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


@checked(1500)
@given(text=near_iso())
@example(text="9999-12-31T23:59:59-01:00")
@example(text="0001-01-01T00:00:00+01:00")
@example(text="2199-12-31T23:59:59-23:59")
def test_near_iso_times_are_within_the_years_or_refused(text):
    check_time(text)


@checked(1500)
@given(text=st.one_of(st.none(), st.text(max_size=80), st.text(alphabet="0123456789-:T+Z .,W", max_size=40)))
def test_any_text_is_a_time_within_the_years_or_refused(text):
    check_time(text)


# The sentences a client reads (the relay answers 400 with them).


def refusal(text: str | None) -> str:
    with pytest.raises(TimeError) as caught:
        parse_time("from", text)
    return str(caught.value)


def test_a_missing_time_says_what_to_give():
    expected = "`from` is missing: give an ISO 8601 time like 2026-11-29T14:00:00Z"
    assert refusal(None) == refusal("") == expected


def test_a_time_without_zone_says_to_add_one():
    assert "add Z for UTC or an offset" in refusal("2026-11-29T14:00:00")


def test_an_unencoded_plus_says_to_write_2b():
    """`+01:00` unencoded in a query string arrives as ` 01:00`."""
    sentence = refusal("2026-11-29T14:00:00 01:00")
    assert "%2B" in sentence and "2026-11-29T14:00:00%2B01:00" in sentence
    assert "%2B" not in refusal("2026-11-29T14:00:00 hello")


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "1999-12-31T23:59:59Z"])
def test_a_time_outside_the_years_is_refused_with_a_sentence(text):
    """Years 1 and 9999 with an offset overflowed in `timestamp()`: a 500, not a 400."""
    assert "from 2000 to 2199" in refusal(text)


def test_a_long_or_strange_text_is_shown_short_and_escaped():
    assert "at most 64" in refusal("2026-11-29T14:00:00Z" + " " * 60)
    sentence = refusal("2026\x1b[2J\u202e-11-29T14:00:00Z" + "\u00e9" * 100)
    assert "\\x1b" in sentence and "\\u202e" in sentence and "\x1b" not in sentence
    assert len(sentence) < 200 and sentence.isascii()


def test_the_bounds_are_inclusive_of_their_years():
    assert parse_time("to", "2000-01-01T00:00:00Z") == times.EARLIEST
    assert parse_time("to", "2199-12-31T23:59:59.999Z") < times.LATEST
    assert parse_time("to", "2026-11-29T15:00:00+01:00") == parse_time("to", "2026-11-29T14:00:00Z")
