"""MPEG-TS remuxed to fragmented MP4, checked as a player would: ffmpeg decodes it, ffprobe reads its frames.

Clips are encoded by the tests (tests.support.media); the hostile streams are written here, packet by packet.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from halfbridge.fmp4 import Fmp4Error, Remuxer
from tests.support.media import PTS_WRAP, make_clip, video_packets

# --- what a player sees -----------------------------------------------------------------------------


def remux(data: bytes, sizes: Iterator[int] | None = None) -> tuple[bytes, list[bytes]]:
    """The whole output and each call's output: `data` fed at once, or in chunks of the given sizes."""
    remuxer = Remuxer()
    outputs = []
    if sizes is None:
        outputs.append(remuxer.feed(data))
    else:
        position = 0
        while position < len(data):
            size = next(sizes)
            outputs.append(remuxer.feed(data[position : position + size]))
            position += size
    outputs.append(remuxer.flush())
    return b"".join(outputs), outputs


def random_sizes(seed: int, low: int = 1, high: int = 5000) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def decode_errors(path: Path) -> str:
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True, timeout=60
    )
    return done.stderr + ("" if done.returncode == 0 else f"exit status {done.returncode}")


def streams(path: Path) -> list[dict]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,profile,pix_fmt,width,height",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)["streams"]


def positions(path: Path) -> list[int]:
    """Where each video packet (PES) of a TS file starts."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [int(line.strip(",")) for line in done.stdout.split() if line.strip(",")]


def assert_same_frames(mp4: list[dict], ts: list[dict]) -> None:
    """Same frames in the same (decoding) order, each shown at its TS time less one constant."""
    assert len(mp4) == len(ts)
    shifts = [t["pts"] - m["pts"] for m, t in zip(mp4, ts, strict=True)]
    assert max(shifts) - min(shifts) < 1e-5
    assert [m["key"] for m in mp4] == [t["key"] for t in ts]
    assert all(a["dts"] < b["dts"] for a, b in itertools.pairwise(mp4))


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, body start, end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    found = []
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        assert size >= header
        found.append((kind.decode(), start + header, start + size))
        start += size
    assert start == end
    return found


def child(data: bytes, parent: tuple[str, int, int], kind: str) -> tuple[str, int, int]:
    return next(box for box in boxes(data, parent[1], parent[2]) if box[0] == kind)


def fragments(data: bytes) -> list[tuple[int, int, int]]:
    """(sequence number, base decode time, sample count) of each moof."""
    found = []
    for moof in (box for box in boxes(data) if box[0] == "moof"):
        traf = child(data, moof, "traf")
        sequence = struct.unpack_from(">I", data, child(data, moof, "mfhd")[1] + 4)[0]
        tfdt = child(data, traf, "tfdt")
        assert data[tfdt[1]] == 1  # version 1: 64 bits
        decode = struct.unpack_from(">Q", data, tfdt[1] + 4)[0]
        count = struct.unpack_from(">I", data, child(data, traf, "trun")[1] + 4)[0]
        found.append((sequence, decode, count))
    return found


def dimensions(data: bytes) -> tuple[int, int]:
    """Width and height of the init segment's track header."""
    moov = next(box for box in boxes(data) if box[0] == "moov")
    tkhd = child(data, child(data, moov, "trak"), "tkhd")
    width, height = struct.unpack_from(">II", data, tkhd[2] - 8)
    return width >> 16, height >> 16


# --- clips -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A factory of clips (MPEG-TS paths), each encoded once per module."""
    made: dict[tuple, Path] = {}

    def make(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in made:
            path = tmp_path_factory.mktemp("clip") / "clip.ts"
            made[key] = Path(make_clip(path, **options))
        return made[key]

    return make


CASES = {
    "h264 baseline, 320x180 (cropped from 192)": ({"profile": "h264-baseline"}, "h264", (320, 180)),
    "h264 high, B-frames, 1080p (cropped from 1088), AAC beside": (
        {"profile": "h264-high", "size": "1920x1080", "seconds": 1.2, "audio_codec": "aac"},
        "h264",
        (1920, 1080),
    ),
    "h265 main, B-frames, open GOP, AAC beside": (
        {"profile": "h265-main", "seconds": 3, "audio_codec": "aac"},
        "hevc",
        (320, 180),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_mp4_decodes_with_every_frame_of_the_ts_at_its_time(case, clip, tmp_path):
    options, codec, size = CASES[case]
    source = clip(**options)
    output = write(tmp_path, "out.mp4", remux(source.read_bytes())[0])
    assert decode_errors(output) == ""
    found, original = streams(output), streams(source)
    assert len(found) == 1  # the audio is left out
    assert (found[0]["codec_type"], found[0]["codec_name"]) == ("video", codec)
    assert (found[0]["width"], found[0]["height"]) == size
    video = next(s for s in original if s["codec_type"] == "video")
    assert (found[0]["profile"], found[0]["pix_fmt"]) == (video["profile"], video["pix_fmt"])
    assert_same_frames(video_packets(output), video_packets(source))


def test_interlaced_high_profile_with_scaling_matrices(tmp_path):
    """x264 with JVT quantisation matrices and MBAFF: the SPS syntax the lab's encoders do not write."""
    source = tmp_path / "interlaced.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-t", "0.6",
         "-c:v", "libx264", "-profile:v", "high", "-x264-params", "cqm=jvt:interlaced=1:bframes=2", "-g", "10",
         str(source)],
        check=True, timeout=60,
    )  # fmt: skip
    output = write(tmp_path, "out.mp4", remux(source.read_bytes())[0])
    assert decode_errors(output) == ""
    assert (streams(output)[0]["width"], streams(output)[0]["height"]) == (1920, 1080)
    assert_same_frames(video_packets(output), video_packets(source))


@pytest.mark.parametrize(
    ("profile", "pattern"),
    [
        ("h264-baseline", r"avc1\.42[0-9a-f]{4}"),
        ("h264-high", r"avc1\.64[0-9a-f]{4}"),
        ("h265-main", r"hvc1\.1\.6\.L[0-9]+(\.[0-9A-F]{1,2})+"),
    ],
)
def test_the_content_type_names_the_codec_as_browsers_want_it(profile, pattern, clip):
    remuxer = Remuxer()
    assert remuxer.content_type == "video/mp4"
    data = clip(profile=profile).read_bytes()
    output = remuxer.feed(data)
    codecs = re.fullmatch(r'video/mp4; codecs="(.*)"', remuxer.content_type)
    assert codecs
    assert re.fullmatch(pattern, codecs[1])
    if profile.startswith("h264"):  # profile, constraints and level: those of the avcC
        start = output.index(b"avcC") + 5
        assert codecs[1] == "avc1." + output[start : start + 3].hex()


@pytest.mark.parametrize("profile", ["h264-high", "h265-main"])
def test_small_random_feeds_give_the_same_frames(profile, clip, tmp_path):
    source = clip(profile=profile, seconds=3, gop=25).read_bytes()
    whole = remux(source)[0]
    pieces = remux(source, random_sizes(7))[0]
    assert len(fragments(whole)) <= 2  # one feed, one fragment (and the last frame at flush)
    assert len(fragments(pieces)) > 10
    assert [f[0] for f in fragments(pieces)] == list(range(1, len(fragments(pieces)) + 1))
    output = write(tmp_path, "pieces.mp4", pieces)
    assert decode_errors(output) == ""
    assert video_packets(output) == video_packets(write(tmp_path, "whole.mp4", whole))


def test_a_live_frame_leaves_when_the_next_one_starts(clip):
    """Fed packet by packet, each frame is one fragment, sent on the first packet of the frame after it."""
    source = clip(profile="h264-high", seconds=2)
    data = source.read_bytes()
    remuxer = Remuxer()
    sent = [remuxer.feed(data[offset : offset + 188]) for offset in range(0, len(data), 188)]
    last = remuxer.flush()
    assert last
    counts = [count for output in [*sent, last] if output for _, _, count in fragments(output)]
    assert counts == [1] * len(video_packets(source))


@pytest.mark.parametrize("case", [case for case in CASES if "B-frames" in case])
def test_the_init_segment_comes_first_and_a_player_starts_on_the_first_fragment(case, clip, tmp_path):
    options, codec, size = CASES[case]
    data = clip(**options).read_bytes()
    remuxer = Remuxer()
    first, fed = b"", 0
    while not first:
        first = remuxer.feed(data[fed : fed + 1316])
        fed += 1316
    assert [box[0] for box in boxes(first)] == ["ftyp", "moov", "moof", "mdat"]
    assert first[8:12] == b"isom"
    assert dimensions(first) == size
    assert fragments(first)[0][:2] == (1, 0)  # sequence 1, decode time 0
    start = write(tmp_path, "start.mp4", first)
    video = streams(start)[0]
    assert (video["codec_name"], video["width"], video["height"]) == (codec, *size)
    assert decode_errors(start) == ""
    rest = remuxer.feed(data[fed:]) + remuxer.flush()
    assert [box[0] for box in boxes(rest)] == ["moof", "mdat"] * (len(boxes(rest)) // 2)


def test_timestamps_stay_monotonic_across_the_33_bit_wrap(clip, tmp_path):
    source = clip(profile="h264-high", seconds=4, ts_offset=PTS_WRAP - 2)
    raw = subprocess.run(
        ["ffprobe", "-v", "error", "-correct_ts_overflow", "0", "-select_streams", "v:0", "-show_entries",
         "packet=pts", "-of", "csv=p=0", str(source)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    stamps = [int(value.strip(",")) for value in raw if value.strip(",")]
    assert max(stamps) > 2**33 - 3 * 90000 and min(stamps) < 3 * 90000  # the clip does wrap
    output = write(tmp_path, "out.mp4", remux(source.read_bytes(), random_sizes(3, 100, 20000))[0])
    assert decode_errors(output) == ""
    decode_times = [f[1] for f in fragments(output.read_bytes())]
    assert decode_times == sorted(decode_times)
    assert decode_times[-1] < 5 * 90000
    assert_same_frames(video_packets(output), video_packets(source))  # ffprobe unwraps the TS times


@pytest.mark.parametrize("profile", ["h264-baseline", "h264-high", "h265-main"])
def test_a_stream_joined_in_its_middle_starts_at_its_next_keyframe(profile, clip, tmp_path):
    source = clip(profile=profile, seconds=3)
    whole, starts = video_packets(source), positions(source)
    middle = next(index for index in range(len(whole) // 3, len(whole)) if not whole[index]["key"])
    cut = starts[middle] + 101  # in the middle of a frame that is not a keyframe, not at a packet's start
    output = write(tmp_path, "out.mp4", remux(source.read_bytes()[cut:], random_sizes(11))[0])
    assert decode_errors(output) == ""
    after = [frame for frame, start in zip(whole, starts, strict=True) if start >= cut]
    frames = after[next(index for index, frame in enumerate(after) if frame["key"]) :]
    # from the keyframe on, but for an open GOP's leading frames: they refer to frames before the keyframe
    expected = [frame for frame in frames if frame["pts"] >= frames[0]["pts"]]
    assert len(expected) >= 25
    assert_same_frames(video_packets(output), expected)


def test_a_truncated_file_gives_its_whole_frames(clip, tmp_path):
    data = clip(profile="h264-high", seconds=2).read_bytes()
    whole = video_packets(write(tmp_path, "whole.mp4", remux(data)[0]))
    output = write(tmp_path, "cut.mp4", remux(data[: len(data) * 2 // 3 + 55], random_sizes(5))[0])
    assert decode_errors(output) == ""
    found = video_packets(output)
    assert 25 < len(found) < len(whole)
    assert found == whole[: len(found)]


# --- MPEG-TS written packet by packet ----------------------------------------------------------------

VIDEO_PID, PMT_PID = 0x100, 0x1000


def crc32(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1 ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def ts_packet(pid: int, payload: bytes, start: bool = False, random_access: bool = False) -> bytes:
    head = bytes([0x47, (0x40 if start else 0) | pid >> 8, pid & 0xFF])
    if len(payload) == 184 and not random_access:
        return head + b"\x10" + payload
    if len(payload) == 183 and not random_access:
        return head + b"\x30\x00" + payload
    stuffing = 182 - len(payload)
    return head + bytes([0x30, 1 + stuffing, 0x40 if random_access else 0]) + b"\xff" * stuffing + payload


def psi(pid: int, table_id: int, body: bytes) -> bytes:
    section = bytes([table_id]) + (0xB000 | len(body) + 4).to_bytes(2, "big") + body
    section += crc32(section).to_bytes(4, "big")
    return ts_packet(pid, b"\x00" + section + b"\xff" * (183 - len(section)), start=True)


def tables(stream_type: int = 0x1B) -> bytes:
    pat = psi(0, 0, b"\x00\x01\xc1\x00\x00\x00\x01" + (0xE000 | PMT_PID).to_bytes(2, "big"))
    stream = bytes([stream_type]) + (0xE000 | VIDEO_PID).to_bytes(2, "big") + b"\xf0\x00"
    pmt = psi(PMT_PID, 2, b"\x00\x01\xc1\x00\x00" + (0xE000 | VIDEO_PID).to_bytes(2, "big") + b"\xf0\x00" + stream)
    return pat + pmt


def timestamp(prefix: int, value: int) -> bytes:
    return bytes([prefix << 4 | value >> 29 & 0x0E | 1, value >> 22 & 0xFF, value >> 14 & 0xFE | 1,
                  value >> 7 & 0xFF, value << 1 & 0xFE | 1])  # fmt: skip


def pes(es: bytes, pts: int | None, declared: int | None = None) -> bytes:
    """A video PES; `declared`: its PES_packet_length (default: the true one)."""
    header = b"\x80\x00\x00" if pts is None else b"\x80\x80\x05" + timestamp(2, pts)
    body = header + es
    return b"\x00\x00\x01\xe0" + (len(body) if declared is None else declared).to_bytes(2, "big") + body


def packets(data: bytes, random_access: bool = False) -> bytes:
    """The TS packets of one PES."""
    first = 182 if random_access else 184
    chunks = [data[:first]] + [data[offset : offset + 184] for offset in range(first, len(data), 184)]
    return b"".join(
        ts_packet(VIDEO_PID, chunk, start=index == 0, random_access=random_access and index == 0)
        for index, chunk in enumerate(chunks)
    )


def mux(units: list[bytes], declared: int | None = 0, stream_type: int = 0x1B) -> bytes:
    """Tables, then one PES per access unit, 25 fps; `declared` None: true PES lengths, 0: unbounded."""
    return tables(stream_type) + b"".join(
        packets(pes(unit, 90000 + index * 3600, declared)) for index, unit in enumerate(units)
    )


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> list[bytes]:
    """Access units of H.264 baseline (Annex B, with delimiters), a keyframe every 5 frames."""
    path = tmp_path_factory.mktemp("es") / "clip.h264"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "1", "-c:v",
         "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "5", "-x264-params", "aud=1", "-f", "h264",
         str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    delimiter = b"\x00\x00\x00\x01\x09"
    return [delimiter + unit for unit in path.read_bytes().split(delimiter)[1:]]


def test_the_hand_written_stream_remuxes(units, tmp_path):
    output = write(tmp_path, "out.mp4", remux(mux(units))[0])
    assert decode_errors(output) == ""
    assert len(video_packets(output)) == len(units) == 25


def test_a_pes_with_a_declared_length_leaves_without_waiting_for_the_next(units, tmp_path):
    stream = mux(units, declared=None)
    third = stream.index(packets(pes(units[3], 90000 + 3 * 3600))[:188])  # where the fourth frame starts
    remuxer = Remuxer()
    first = remuxer.feed(stream[:third])
    assert [f[2] for f in fragments(first)] == [3]
    output = write(tmp_path, "out.mp4", first + remuxer.feed(stream[third:]) + remuxer.flush())
    assert decode_errors(output) == ""
    assert len(video_packets(output)) == 25


def test_frames_before_the_first_keyframe_and_its_parameter_sets_are_dropped(units, tmp_path):
    output = write(tmp_path, "out.mp4", remux(mux(units[2:]))[0])
    assert decode_errors(output) == ""
    assert len(video_packets(output)) == 20


def fails(data: bytes, match: str, sizes: Iterator[int] | None = None) -> Fmp4Error:
    with pytest.raises(Fmp4Error, match=match) as caught:
        remux(data, sizes)
    return caught.value


def test_a_pes_without_pts_is_refused(units):
    fails(tables() + packets(pes(units[0], None)) + packets(pes(units[1], 93600)), "without PTS")


def test_a_pes_shorter_than_its_declared_length_is_refused(units):
    short = pes(units[0], 90000, declared=0xFFFF)
    fails(tables() + packets(short) + packets(pes(units[1], 93600)), "shorter than")


def test_a_pes_larger_than_16_mib_is_refused(units):
    start = packets(pes(units[0], 90000, declared=0))[:188]
    filler = ts_packet(VIDEO_PID, b"\x00" * 184)
    fails(tables() + start + filler * (17 * 2**20 // 184), "larger than")


def test_a_truncated_or_absurd_sps_is_refused(units):
    sps_at = units[0].index(b"\x00\x00\x00\x01\x67") + 4
    pps_at = units[0].index(b"\x00\x00\x00\x01\x68")
    truncated = units[0][:sps_at] + units[0][sps_at : sps_at + 4] + units[0][pps_at:]
    fails(mux([truncated, *units[1:]]), "parameter set")
    wide = b"\x67" + sps_bits(profile=66, width_mbs=5000, height_units=12)
    fails(mux([units[0][:sps_at] + wide + units[0][pps_at:]]), "absurd picture size")


def test_changed_parameter_sets_are_refused(units, tmp_path):
    other = tmp_path / "other.h264"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-t", "0.2", "-c:v",
         "libx264", "-profile:v", "baseline", "-bf", "0", "-x264-params", "aud=1", "-f", "h264", str(other)],
        check=True, timeout=60,
    )  # fmt: skip
    remuxer = Remuxer()
    before = write(tmp_path, "before.mp4", remuxer.feed(mux([*units[:5], other.read_bytes()])))
    with pytest.raises(Fmp4Error, match="parameter sets changed"):
        remuxer.flush()
    assert decode_errors(before) == ""  # the frames before the change are sent first
    assert len(video_packets(before)) == 5


@pytest.mark.parametrize(
    ("stream_type", "match"), [(0x02, "neither H.264 nor H.265"), (0x0F, "no video")]
)  # fmt: skip
def test_streams_without_h264_or_h265_are_refused(stream_type, match, units):
    fails(mux(units, stream_type=stream_type), match)


def test_a_lost_sync_byte_is_refused_and_the_remuxer_stays_failed(units):
    stream = bytearray(mux(units))
    stream[188 * 60] = 0
    remuxer = Remuxer()
    assert fragments(remuxer.feed(bytes(stream)))  # the frames before the damage, sent first
    with pytest.raises(Fmp4Error, match=f"sync byte lost at byte {188 * 60} "):
        remuxer.feed(mux(units))
    with pytest.raises(Fmp4Error, match="sync"):
        remuxer.flush()
    remuxer = Remuxer()
    remuxer.feed(bytes(stream[: 188 * 60]))
    with pytest.raises(Fmp4Error, match=f"sync byte lost at byte {188 * 60} "):  # no frame before it in this feed
        remuxer.feed(bytes(stream[188 * 60 :]))


@pytest.mark.parametrize("seed", range(10))
def test_random_bytes_are_refused(seed):
    data = random.Random(seed).randbytes(100_000)
    fails(data, "not MPEG-TS|sync", random_sizes(seed))


def test_a_few_random_bytes_give_nothing():
    assert remux(b"\x47" + bytes(300))[0] == b""


@pytest.mark.parametrize("profile", ["h264-high", "h265-main"])
def test_damaged_streams_give_mp4_or_fmp4error_and_nothing_else(profile, clip):
    data = clip(profile=profile, audio_codec="aac").read_bytes()
    rng = random.Random(profile)
    for _ in range(150):
        damaged = bytearray(data[: rng.randrange(1000, len(data))])
        for _ in range(rng.randint(1, 12)):
            position = rng.randrange(len(damaged) // 2)
            damaged[position] = rng.randrange(256)
        if rng.random() < 0.3:  # packets that keep their sync byte, random otherwise
            for offset in range(188 * rng.randrange(20), len(damaged) - 188, 188 * 7):
                damaged[offset + 1 : offset + 188] = rng.randbytes(187)
        with contextlib.suppress(Fmp4Error):
            remux(bytes(damaged), random_sizes(rng.randrange(1000), 1, 3000))


# --- SPS syntax that test encoders do not write --------------------------------------------------------


class Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [value >> (count - 1 - index) & 1 for index in range(count)]

    def ue(self, value: int) -> None:
        self.u((value + 1).bit_length() - 1, 0)
        self.u((value + 1).bit_length(), value + 1)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        """The bits, stop bit, alignment and emulation prevention bytes."""
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        raw = int("".join(map(str, bits)), 2).to_bytes(len(bits) // 8, "big")
        out, zeros = bytearray(), 0
        for byte in raw:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def scaling_list(bits: Bits, size: int) -> None:
    """Deltas of 3, then one that makes a scale 0: the list ends there (its last scale repeats)."""
    last = 8
    for index in range(size):
        delta = -last if index == 5 else 3
        bits.se(delta)
        if not (last + delta) % 256:
            return
        last = (last + delta) % 256


def sps_bits(profile: int, width_mbs: int, height_units: int, frame_mbs_only: int = 1, chroma: int = 1,
             crop: tuple[int, int, int, int] | None = None, poc_type: int = 2, sps_id: int = 0) -> bytes:  # fmt: skip
    bits = Bits()
    bits.u(8, profile)
    bits.u(16, 0x001F)  # constraint flags, level 3.1
    bits.ue(sps_id)  # seq_parameter_set_id
    if profile >= 100:
        bits.ue(chroma)
        if chroma == 3:
            bits.u(1, 0)  # separate_colour_plane_flag
        bits.ue(0)  # bit depths 8
        bits.ue(0)
        bits.u(1, 0)
        bits.u(1, 1)  # seq_scaling_matrix_present_flag
        for index in range(12 if chroma == 3 else 8):
            bits.u(1, index % 3 != 1)  # some lists present
            if index % 3 != 1:
                scaling_list(bits, 16 if index < 6 else 64)
    bits.ue(0)  # log2_max_frame_num_minus4
    bits.ue(poc_type)
    if poc_type == 0:
        bits.ue(2)  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1, 0)
        bits.se(-(2**26))  # offset_for_non_ref_pic: long runs of zero bits, so emulation prevention bytes
        bits.se(2)
        bits.ue(3)
        for offset in (1, -2, 3):
            bits.se(offset)
    bits.ue(4)  # max_num_ref_frames
    bits.u(1, 0)
    bits.ue(width_mbs - 1)
    bits.ue(height_units - 1)
    bits.u(1, frame_mbs_only)
    if not frame_mbs_only:
        bits.u(1, 1)  # mb_adaptive_frame_field_flag
    bits.u(1, 1)  # direct_8x8_inference_flag
    bits.u(1, crop is not None)
    for value in crop or ():
        bits.ue(value)
    bits.u(1, 0)  # no VUI
    return bits.rbsp()


@pytest.mark.parametrize(
    ("sps", "size"),
    [
        ({"profile": 100, "width_mbs": 120, "height_units": 34, "frame_mbs_only": 0, "crop": (0, 0, 0, 2),
          "poc_type": 1}, (1920, 1080)),
        ({"profile": 244, "width_mbs": 20, "height_units": 12, "chroma": 3, "crop": (1, 2, 0, 12)}, (317, 180)),
        ({"profile": 122, "width_mbs": 20, "height_units": 12, "chroma": 2, "crop": (1, 0, 0, 6)}, (318, 186)),
        ({"profile": 66, "width_mbs": 80, "height_units": 45, "poc_type": 0}, (1280, 720)),
    ],
)  # fmt: skip
def test_the_picture_size_comes_from_any_h264_sps(sps, size, units):
    """High profiles with scaling lists, 4:4:4 and 4:2:2 cropping units, fields, every picture order count type."""
    nal = b"\x67" + sps_bits(**sps)
    if sps.get("poc_type") == 1:
        assert b"\x00\x00\x03" in nal
    sps_at = units[0].index(b"\x00\x00\x00\x01\x67") + 4
    pps_at = units[0].index(b"\x00\x00\x00\x01\x68")
    output = Remuxer().feed(mux([units[0][:sps_at] + nal + units[0][pps_at:], units[1]]))
    assert dimensions(output) == size


def test_more_parameter_sets_than_the_sample_entry_can_list_are_refused(units):
    """32 SPS (every id H.264 allows): avcC counts them in 5 bits, so the init segment would list none."""
    sps_at = units[0].index(b"\x00\x00\x00\x01\x67")
    pps_at = units[0].index(b"\x00\x00\x00\x01\x68")
    many = b"".join(b"\x00\x00\x00\x01\x67" + sps_bits(66, 20, 12, sps_id=n) for n in range(32))
    fails(mux([units[0][:sps_at] + many + units[0][pps_at:], *units[1:5]]), "more than avcC can list")
    some = b"".join(b"\x00\x00\x00\x01\x67" + sps_bits(66, 20, 12, sps_id=n) for n in range(31))
    output = remux(mux([units[0][:sps_at] + some + units[0][pps_at:], *units[1:5]]))[0]
    assert dimensions(output) == (320, 192)
