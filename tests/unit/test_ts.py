"""Keyframes and cut points of MPEG-TS segments, on real clips."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from halfbridge.relay import REORDER
from halfbridge.store import Segment, playback_from
from halfbridge.ts import (
    PACKET,
    WRAP,
    TsError,
    cut,
    end_offset,
    first_pts,
    frames,
    keyframes,
    last_keyframe,
    lead,
    packets,
    signed,
    start_offset,
    tables,
    ticks,
)
from tests.support.media import PTS_WRAP, make_clip, segment, video_packets


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    """3 s at 25 fps, a keyframe every 25 frames: keyframes at 0, 1 and 2 s."""
    path = tmp_path_factory.mktemp("ts") / "clip.ts"
    return Path(make_clip(path, seconds=3, gop=25)).read_bytes()


def count(data: bytes) -> int:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return int(done.stdout.split()[0])


def test_keyframes_are_found_a_second_apart(clip):
    found = keyframes(clip)
    assert len(found) == 3
    origin = first_pts(clip)
    assert [round(k.pts - origin, 2) for k in found] == [0.0, 1.0, 2.0]
    assert all(k.offset % PACKET == 0 for k in found)


def test_a_cut_starts_at_the_keyframe_at_or_before_the_asked_second(clip):
    assert start_offset(clip, 0.0) == keyframes(clip)[0].offset
    assert start_offset(clip, 1.5) == keyframes(clip)[1].offset
    assert start_offset(clip, 1.0) == keyframes(clip)[1].offset
    assert start_offset(clip, 99) == keyframes(clip)[-1].offset


def test_a_cut_from_a_keyframe_with_the_tables_decodes_whole(clip):
    start, end = start_offset(clip, 1.2), end_offset(clip, 1.96)
    piece = tables(clip) + clip[start:end]
    assert count(piece) == 25  # the second from the keyframe at 1 s, no frame lost or broken


def test_what_is_not_mpeg_ts_is_refused():
    with pytest.raises(TsError, match="sync byte"):
        keyframes(b"\x00" * PACKET * 2)
    with pytest.raises(TsError, match="no PAT"):
        tables(b"")


def pat_offsets(data: bytes) -> list[int]:
    return [offset for offset, pid, _packet in packets(data) if pid == 0]


def damage_pat(data: bytes, how: str) -> bytes:
    """`data` with its first PAT packet damaged as a failing camera or disk could."""
    damaged = bytearray(data)
    at = pat_offsets(data)[0]
    if how == "section length past the packet":
        damaged[at + 6] |= 0x0F
        damaged[at + 7] = 0xFF
    elif how == "pointer field past the packet":
        damaged[at + 4] = 0xFF
    elif how == "no payload":
        damaged[at + 3] = damaged[at + 3] & 0xCF | 0x20  # adaptation field only
        damaged[at + 4] = 183
    elif how == "wrong CRC":
        damaged[at + 5 + 12 + 3] ^= 0x01  # the last byte of the CRC (ffmpeg writes a 16-byte section)
    return bytes(damaged)


DAMAGES = ["section length past the packet", "pointer field past the packet", "no payload", "wrong CRC"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_malformed_pat_is_refused_with_tserror(clip, how):
    """A PAT whose lengths point outside its packet raised IndexError (a 500 in playback, a live restart)."""
    head = clip[: pat_offsets(clip)[1]]  # up to the muxer's second PAT: the damaged one is the only one
    with pytest.raises(TsError, match="no PAT and PMT"):
        tables(damage_pat(head, how))


@pytest.mark.parametrize("how", DAMAGES)
def test_a_malformed_pat_is_passed_over_for_the_next(clip, how):
    damaged = damage_pat(clip, how)
    second = pat_offsets(clip)[1]
    assert tables(damaged) == tables(clip[second:])
    assert tables(damaged) != tables(clip)


def test_a_timestamp_cut_short_is_refused_with_tserror():
    assert ticks(b"\x21\x00\x01\x00\x01") == 0
    with pytest.raises(TsError):
        ticks(b"\x21\x00")


def test_the_last_keyframe_is_found_from_the_end(clip):
    found = keyframes(clip)
    assert last_keyframe(clip) == found[-1].offset
    assert last_keyframe(clip[: found[-1].offset]) == found[-2].offset
    # Between two keyframes there is none; a tail cut inside a packet is ignored.
    assert last_keyframe(clip[found[0].offset + PACKET : found[1].offset]) is None
    assert last_keyframe(clip[: found[1].offset + PACKET + 100]) == found[1].offset


# -- every stream profile a camera sends, cut as playback cuts it --------------------------------

FRAME = 1 / 25


def decoded(data: bytes) -> list[tuple[float, bool]]:
    """(pts, keyframe) of every frame a player shows of `data`, in presentation order."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time,key_frame",
         "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    shown = []
    for line in done.stdout.decode().splitlines():
        fields = line.split(",")
        if len(fields) >= 2 and fields[1] not in ("", "N/A"):
            shown.append((float(fields[1]), fields[0] == "1"))
    return sorted(shown)


class Recording:
    """A clip of a profile, cut by ffmpeg's segment muxer as the recorder cuts it, and what it shows."""

    def __init__(self, directory: Path, profile: str, ts_offset: float | None = None) -> None:
        clip = make_clip(directory / "clip.ts", seconds=7, gop=25, profile=profile)
        self.segments = []
        for path, start, end in segment(clip, directory / "segments", seconds=2, ts_offset=ts_offset or 0.0):
            data = path.read_bytes()
            # The run's first segment is listed from 0 though its first frame is shown `lead` later.
            shift = lead(data) if not self.segments else 0.0
            self.segments.append((Segment(start + shift, end, path.stat().st_size, path.name), data))
        packets = video_packets(clip)
        # The muxer's list measures from the first packet as it shifted it: shown `lead` after its decoding at 0.
        origin = packets[0]["pts"] - lead(Path(clip).read_bytes())
        self.shown = sorted(round(p["pts"] - origin, 3) for p in packets)
        self.keys = sorted(round(p["pts"] - origin, 3) for p in packets if p["key"])

    def playback(self, start: float, end: float) -> bytes:
        """The bytes the relay sends for [start, end] (same lookup, same cut)."""
        around = [s for s, _ in self.segments if s.end >= start - REORDER and s.start <= end + REORDER]
        out, first = b"", True
        for seg in playback_from(around, start):
            data = dict((s.name, d) for s, d in self.segments)[seg.name]
            head, tail = cut(data, start - seg.start, end - seg.start)
            if head >= tail:
                continue
            out += (tables(data) if first and head else b"") + data[head:tail]
            first = False
        return out


@pytest.fixture(scope="module", params=["h264-baseline", "h264-high", "h265-main", "h265-main-wrapping"])
def recording(request, tmp_path_factory) -> Recording:
    profile = request.param.removesuffix("-wrapping")
    # The wrapping recording's timestamps cross 2**33 ticks about 3 s in, in its second segment
    # (1.4 s: ffmpeg's mux delay).
    offset = PTS_WRAP - 3 - 1.4 if request.param.endswith("-wrapping") else None
    return Recording(tmp_path_factory.mktemp(request.param), profile, offset)


def test_the_recording_keeps_every_frame_in_its_segments(recording):
    assert len([f for _s, data in recording.segments for f in frames(data)]) == len(recording.shown) == 175


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (2.5, 5.5),  # 3 s across a cut
        (0.3, 6.5),  # across every segment
        (4.2, 4.9),  # inside one segment, no keyframe in the range
        (1.9, 2.1),  # around a cut: open-GOP frames shown before the next segment's keyframe
        (0.0, 7.5),  # all of it
    ],
)
def test_playback_shows_every_asked_frame_from_the_keyframe_at_or_before_the_start(recording, start, end):
    shown = decoded(recording.playback(start, end))
    # The keyframe at or before the start; the recording's first if it starts later than asked.
    keyframe = max((k for k in recording.keys if k <= start + 1e-3), default=recording.keys[0])
    asked = [t for t in recording.shown if keyframe - 1e-3 <= t <= end + 1e-3]
    origin = shown[0][0]
    times = [round(t - origin + keyframe, 3) for t, _key in shown]
    assert shown[0][1], "the first frame shown is a keyframe"
    assert times[0] == keyframe, f"playback starts at the keyframe at or before {start}"
    assert set(asked) <= set(times), f"frames missing: {sorted(set(asked) - set(times))[:5]}"
    beyond = [t for t in times if t > end + 1e-3]
    assert len(beyond) <= 4, f"at most the encoder's reorder depth past the end: {beyond}"
    assert times == sorted(set(times)), "no frame twice, none of another range"


def test_a_range_before_a_files_first_frame_cuts_nothing(recording):
    _seg, data = recording.segments[1]
    assert cut(data, -1.5, -1.0) == (0, 0), "a range a second before the file's keyframe: nothing of this file"
    head, tail = cut(data, 0.0, 0.0)
    assert head == frames(data)[0].offset < tail < len(data), "the keyframe alone (and what is shown before it)"


def test_signed_differences_cross_the_33_bit_wrap():
    assert signed(0.5, WRAP - 0.5) == pytest.approx(1.0)
    assert signed(WRAP - 0.5, 0.5) == pytest.approx(-1.0)
    assert signed(10.0, 12.0) == pytest.approx(-2.0)


def test_damaged_segments_give_fewer_frames_never_another_error(clip):
    """A segment cut short, or with bytes overwritten (a failing disk): parsed without a crash or a hang."""
    rng = random.Random(16)
    for _ in range(300):
        damaged = bytearray(clip[: rng.randrange(PACKET, len(clip))])
        for _ in range(rng.randrange(1, 40)):
            at = rng.randrange(len(damaged))
            damaged[at : at + 8] = rng.randbytes(8)
        damaged[0] = 0x47  # past a lost first sync byte, a file is refused (see above)
        data = bytes(damaged)
        head, tail = cut(data, rng.uniform(-1, 4), rng.uniform(-1, 4))
        assert 0 <= head <= len(data) and 0 <= tail <= len(data)
        # The tap's search from the packets' headers finds what the full parse finds.
        assert last_keyframe(data) == max((f.offset for f in frames(data) if f.key), default=None)
    noise = b"\x47" + rng.randbytes(100_000)
    assert all(frame.offset % PACKET == 0 for frame in frames(noise))
    assert cut(noise, 0.0, 1.0)[0] >= 0
