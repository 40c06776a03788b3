"""Just enough MPEG-TS to serve recordings: where a segment's keyframes are, and their times.

Playback sends the recorded bytes themselves (nothing is remuxed): the tables
(PAT, PMT) of the first segment, then from the keyframe at or before the asked
start to the end of the range. A keyframe is a packet that starts a video PES
and carries the random access indicator, as ffmpeg's muxer (the recorder's)
marks them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PACKET = 188
SYNC = 0x47
CLOCK = 90000.0


class TsError(ValueError):
    """A file that is not MPEG-TS as the recorder writes it."""


@dataclass(frozen=True)
class Keyframe:
    offset: int  # byte offset of its first packet in the file
    pts: float  # seconds


def _pts(payload: memoryview) -> float | None:
    """The PTS of a PES header at the start of `payload` (seconds), if it has one."""
    if len(payload) < 14 or payload[0:3] != b"\x00\x00\x01" or not payload[7] & 0x80:
        return None
    p = payload[9:14]
    value = ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1
    return value / CLOCK


def _payload(packet: memoryview) -> memoryview:
    control = (packet[3] >> 4) & 0x3
    if control == 1:
        return packet[4:]
    if control == 3:
        return packet[5 + packet[4] :]
    return packet[0:0]


def packets(data: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """(offset, pid, packet) of every whole packet; raises TsError when the sync byte is lost."""
    view = memoryview(data)
    for offset in range(0, len(data) - PACKET + 1, PACKET):
        if data[offset] != SYNC:
            raise TsError(f"no MPEG-TS sync byte at offset {offset}")
        yield offset, (data[offset + 1] & 0x1F) << 8 | data[offset + 2], view[offset : offset + PACKET]


def tables(data: bytes) -> bytes:
    """The first PAT and the first PMT of a file (what a reader needs before any frame)."""
    pat = pmt = None
    pmt_pids: set[int] = set()
    for _offset, pid, packet in packets(data):
        if pid == 0 and pat is None and packet[1] & 0x40:
            pat = bytes(packet)
            section = _payload(packet)
            section = section[1 + section[0] :]  # pointer field
            length = (section[1] & 0x0F) << 8 | section[2]
            for i in range(8, 3 + length - 4, 4):
                if (section[i] << 8 | section[i + 1]) != 0:
                    pmt_pids.add((section[i + 2] & 0x1F) << 8 | section[i + 3])
        elif pid in pmt_pids and pmt is None and packet[1] & 0x40:
            pmt = bytes(packet)
        if pat is not None and pmt is not None:
            return pat + pmt
    raise TsError("no PAT and PMT at the start of the file")


def _video_pts(packet: memoryview) -> float | None:
    """The PTS of a video PES that starts in this packet, else None."""
    if not packet[1] & 0x40:  # payload_unit_start_indicator
        return None
    payload = _payload(packet)
    return _pts(payload) if len(payload) > 3 and 0xE0 <= payload[3] <= 0xEF else None


def _after(pts: float, origin: float) -> float:
    """Seconds from `origin` to `pts`, across the 33-bit wrap."""
    return (pts - origin) % (2**33 / CLOCK)


def keyframes(data: bytes) -> list[Keyframe]:
    """The video keyframes of a file, in order: video PES starts with the random access indicator."""
    return [
        Keyframe(offset, pts)
        for offset, _pid, packet in packets(data)
        if packet[3] & 0x20 and packet[4] and packet[5] & 0x40 and (pts := _video_pts(packet)) is not None
    ]


def last_keyframe(data: bytes) -> int | None:
    """Byte offset of the last video keyframe in `data` (whole packets), or None; read from the end.

    Only the starts of the first video stream's PES (00 00 01 E0, found by `rfind`, in C; an
    H.264 or H.265 NAL header never begins with E0) are looked at, not every packet: the live
    tap calls this on every read of its pipe.
    """
    view = memoryview(data)
    end = len(data) - len(data) % PACKET
    while (found := data.rfind(b"\x00\x00\x01\xe0", 0, end)) >= 0:
        end = found + 3  # the next search ends before this start code
        offset = found - found % PACKET
        # The start code opens the packet's payload: payload_unit_start, an adaptation field with the
        # random access indicator, then a video PES.
        if (
            data[offset + 1] & 0x40
            and data[offset + 3] & 0x20
            and data[offset + 4]
            and found == offset + 5 + data[offset + 4]
            and data[offset + 5] & 0x40
            and _video_pts(view[offset : offset + PACKET]) is not None
        ):
            return offset
    return None


def first_pts(data: bytes) -> float | None:
    """The PTS of the first video PES of a file."""
    return next((pts for _o, _p, packet in packets(data) if (pts := _video_pts(packet)) is not None), None)


def start_offset(data: bytes, seconds: float) -> int:
    """Byte offset of the last keyframe at or before `seconds` into the file (0 if none)."""
    origin = first_pts(data)
    best = 0
    if origin is not None:
        for keyframe in keyframes(data):
            if _after(keyframe.pts, origin) > seconds + 1e-3:
                break
            best = keyframe.offset
    return best


def end_offset(data: bytes, seconds: float) -> int:
    """Byte offset of the first video PES more than `seconds` into the file (the end if none)."""
    origin = first_pts(data)
    if origin is not None:
        for offset, _pid, packet in packets(data):
            if (pts := _video_pts(packet)) is not None and _after(pts, origin) > seconds + 1e-3:
                return offset
    return len(data) - len(data) % PACKET
