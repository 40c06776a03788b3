"""Just enough MPEG-TS to serve recordings: where a segment's frames and keyframes are, and their times.

Playback sends the recorded bytes themselves (nothing is remuxed): the tables
(PAT, PMT) of the first segment, then from the keyframe at or before the asked
start to the last frame shown at or before the asked end. A frame is a video
PES; a keyframe is one whose first packet carries the random access indicator,
as ffmpeg's muxer (the recorder's) marks them.

Frames are stored in decoding order. With B-frames (H.264 High, H.265) the
order they are shown in differs: a frame shown at or before the end can follow,
in the file, a reference frame shown after it, so the cut is after the *last
frame in the file* shown at or before the end (the reference frames it needs
come with it; a player shows them too, at most the encoder's reorder depth
past the end). In an open-GOP stream (H.265's default) the frames that follow
a keyframe can be shown before it. Times are measured from a file's first
frame with signed differences on the 33-bit, 90 kHz clock, which wraps every
26.5 hours: a frame shown before the first one, or after a wrap, is placed
right.

Whatever the bytes (a camera's, a failing disk's), the functions here raise
TsError and nothing else: a file without its first sync byte is refused, and
what cannot be read in a packet (a frame header cut short, a PAT or PMT whose
lengths point outside its packet or whose CRC is wrong) is passed over as if
absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

PACKET = 188
SYNC = 0x47
CLOCK = 90000.0


class TsError(ValueError):
    """A file that is not MPEG-TS as the recorder writes it."""


def ticks(p: bytes | bytearray | memoryview) -> int:
    """A 33-bit PES timestamp (its 5 bytes, marker bits included), in ticks of the 90 kHz clock."""
    if len(p) < 5:
        raise TsError(f"a PES timestamp has 5 bytes, not {len(p)}")
    return ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1


def _timestamps(payload: memoryview) -> tuple[float, float] | None:
    """(PTS, DTS) of a PES header at the start of `payload` (seconds; DTS is PTS if absent), if it has a PTS."""
    if len(payload) < 14 or payload[0:3] != b"\x00\x00\x01" or not payload[7] & 0x80:
        return None
    pts = ticks(payload[9:14]) / CLOCK
    return pts, (ticks(payload[14:19]) / CLOCK if payload[7] & 0x40 and len(payload) >= 19 else pts)


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


def _crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC = _crc_table()


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/MPEG-2 of `data`: 0 over a whole PSI section, its CRC included (only for the few tables read)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ byte]
    return crc


def _section(packet: memoryview, table_id: int) -> memoryview | None:
    """The PSI section `table_id` that starts in `packet`, whole in it and with its CRC right; None otherwise.

    ffmpeg's muxer writes its PAT and PMT in one packet each: a section that points outside
    its packet, or spans several, is not one it wrote.
    """
    if not packet[1] & 0x40:  # payload_unit_start_indicator: a section starts here
        return None
    payload = _payload(packet)
    if not payload:
        return None
    section = payload[1 + payload[0] :]  # after the pointer field
    if len(section) < 3 or section[0] != table_id:
        return None
    length = (section[1] & 0x0F) << 8 | section[2]
    # 5 bytes of header after the length and 4 of CRC at least; the whole section in the packet.
    if not 9 <= length <= len(section) - 3 or crc32(section[: 3 + length]):
        return None
    return section[: 3 + length]


def _pmt_pids(pat: memoryview) -> set[int]:
    """The PMT PIDs a PAT section lists (program 0, the network PID, left out; reserved PIDs too)."""
    found = set()
    for i in range(8, len(pat) - 4 - 3, 4):  # 4-byte entries between the header and the CRC
        pid = (pat[i + 2] & 0x1F) << 8 | pat[i + 3]
        if (pat[i] << 8 | pat[i + 1]) != 0 and 0x10 <= pid < 0x1FFF:
            found.add(pid)
    return found


def tables(data: bytes) -> bytes:
    """The packets of the first PAT and the first PMT of a file (what a reader needs before any frame).

    A PAT or PMT that cannot be read (see `_section`) is passed over; without a readable pair
    the file is refused with TsError.
    """
    pat = pmt = None
    pmt_pids: set[int] = set()
    damaged = None  # offset of the first PAT or PMT passed over, for the message
    for offset, pid, packet in packets(data):
        if pid == 0 and pat is None and packet[1] & 0x40:
            section = _section(packet, 0)
            pmt_pids = _pmt_pids(section) if section is not None else set()
            if pmt_pids:
                pat = bytes(packet)
            elif damaged is None:
                damaged = offset
        elif pid in pmt_pids and pmt is None and packet[1] & 0x40:
            if _section(packet, 2) is not None:
                pmt = bytes(packet)
            elif damaged is None:
                damaged = offset
        if pat is not None and pmt is not None:
            return pat + pmt
    passed = "" if damaged is None else f" (an unreadable one at byte {damaged} was passed over)"
    raise TsError(f"no PAT and PMT at the start of the file{passed}")


WRAP = 2**33 / CLOCK  # seconds after which a PTS wraps (about 26.5 hours)
_EPSILON = 1e-3  # index times are rounded to the millisecond


def signed(pts: float, origin: float) -> float:
    """Seconds from `origin` to `pts`, negative if `pts` is earlier, across the 33-bit wrap."""
    delta = (pts - origin) % WRAP
    return delta - WRAP if delta > WRAP / 2 else delta


@dataclass(frozen=True)
class Frame:
    offset: int  # byte offset of its first packet in the file
    pts: float  # seconds, as written (33-bit clock)
    key: bool  # the random access indicator is set: decoding can start here
    dts: float  # seconds: when it is decoded (its PTS when the header has no DTS)


def _frame_at(data: bytes, found: int, view: memoryview) -> Frame | None:
    """The frame whose video PES start code was found at `found`, if it truly opens a packet's payload."""
    offset = found - found % PACKET
    if offset + PACKET > len(data) or data[offset] != SYNC or not data[offset + 1] & 0x40:
        return None
    control = (data[offset + 3] >> 4) & 0x3
    adaptation = control == 3 and data[offset + 4] > 0
    payload = offset + 5 + data[offset + 4] if control == 3 else offset + 4
    if found != payload:
        return None
    stamps = _timestamps(view[found : offset + PACKET])
    if stamps is None:
        return None
    return Frame(offset, stamps[0], bool(adaptation and data[offset + 5] & 0x40), stamps[1])


def _frames(data: bytes) -> Iterator[Frame]:
    """The video frames of a file, in file (decoding) order, as they are found.

    Only the starts of the first video stream's PES (00 00 01 E0, found by `find`, in C) are
    looked at, not every packet: an H.264 or H.265 NAL unit never begins with E0, and each start
    code found is checked against its packet's header.
    """
    if data[:1] not in (b"", bytes([SYNC])):
        raise TsError("no MPEG-TS sync byte at offset 0")
    view = memoryview(data)
    position = 0
    while (at := data.find(b"\x00\x00\x01\xe0", position)) >= 0:
        position = at + 4
        if (frame := _frame_at(data, at, view)) is not None:
            yield frame


def frames(data: bytes) -> list[Frame]:
    """Every video frame of a file, in file (decoding) order."""
    return list(_frames(data))


def first_frame(data: bytes) -> Frame | None:
    """The file's first video frame (the search stops there)."""
    return next(_frames(data), None)


def keyframes(data: bytes) -> list[Frame]:
    """The video keyframes of a file, in order."""
    return [frame for frame in frames(data) if frame.key]


# Byte maps for `bytes.translate`: 1 where a header bit is set, 0 elsewhere.
_BIT_40 = bytes(int(bool(b & 0x40)) for b in range(256))
_BIT_20 = bytes(int(bool(b & 0x20)) for b in range(256))


def last_keyframe(data: bytes) -> int | None:
    """Byte offset of the last video keyframe in `data` (packets from its start), or None.

    The live tap calls this on every read of its pipe, a frame at a time, for every camera. So
    it looks at the packets' headers only, a column at a time (`data[1::188]`, in C): the
    packets that start a payload and carry the random access indicator; then, from the last,
    the first whose payload opens a video PES. Scanning the frame's bytes (even with `rfind`)
    cost several times more.
    """
    end = len(data) - len(data) % PACKET
    if end == 0:
        return None
    starts = data[1:end:PACKET].translate(_BIT_40)  # payload_unit_start_indicator
    adapted = data[3:end:PACKET].translate(_BIT_20)  # an adaptation field
    flagged = data[5:end:PACKET].translate(_BIT_40)  # its random access indicator (if it has one)
    candidates = int.from_bytes(starts, "big") & int.from_bytes(adapted, "big") & int.from_bytes(flagged, "big")
    count = len(starts)
    view = memoryview(data)
    while candidates:
        lowest = candidates & -candidates  # the last packet's bit: the first byte is the most significant
        index = count - 1 - (lowest.bit_length() - 1) // 8
        offset = index * PACKET
        found = offset + 5 + data[offset + 4]  # the payload, after the adaptation field
        # A video PES (a sound one can carry the indicator too), in a packet of the file.
        video = data[offset + 4] < PACKET - 5 and data[found : found + 4] == b"\x00\x00\x01\xe0"
        frame = _frame_at(data, found, view) if video else None
        if frame is not None and frame.key:
            return frame.offset
        candidates ^= lowest
    return None


def first_pts(data: bytes) -> float | None:
    """The PTS of the first video frame of a file: the origin of its times."""
    first = first_frame(data)
    return first.pts if first else None


def lead(data: bytes) -> float:
    """How long the file's first frame is shown after it is decoded (PTS minus DTS; 0 without B-frames).

    ffmpeg's segment muxer lists a run's first segment as starting at 0 although its first frame
    is shown that much later (the muxer shifts timestamps so that none is negative): the recorder
    adds this to place that segment right.
    """
    first = first_frame(data)
    return max(0.0, signed(first.pts, first.dts)) if first else 0.0


def start_offset(data: bytes, seconds: float) -> int:
    """Byte offset of the last keyframe shown at or before `seconds` from the file's first frame (0 if none)."""
    return cut(data, seconds, math.inf)[0]


def end_offset(data: bytes, seconds: float) -> int:
    """Byte offset just after the last frame (in file order) shown at or before `seconds` (0 if none)."""
    return cut(data, -math.inf, seconds)[1]


def cut(data: bytes, start: float, end: float) -> tuple[int, int]:
    """(head, tail): the bytes of a file that show [start, end], in seconds from its first frame.

    One pass over the file's frames: from the last keyframe shown at or before `start` (the
    file's start if none) to just after the last frame shown at or before `end`. `head >= tail`
    when the file shows nothing of the range.
    """
    found = frames(data)
    if not found:
        return 0, 0
    origin = found[0].pts
    head, last = 0, None
    for index, frame in enumerate(found):
        shown = signed(frame.pts, origin)
        if frame.key and shown <= start + _EPSILON:
            head = frame.offset
        if shown <= end + _EPSILON:
            last = index
    if last is None:
        return 0, 0
    tail = found[last + 1].offset if last + 1 < len(found) else len(data) - len(data) % PACKET
    return head, tail
