"""MPEG-TS to fragmented MP4, incrementally and in pure Python: the same video, playable at once.

A player given MPEG-TS analyses seconds of it before its first picture; given fragmented
MP4 it starts on the first fragment. `Remuxer` turns the MPEG-TS that ffmpeg's muxer writes
(the recorder's files, a camera's live flow) into:

- an init segment: ftyp, then moov with one video track whose sample entry carries the
  codec's parameters: 'avc1' + avcC for H.264, 'hvc1' + hvcC for H.265, built from the
  SPS/PPS (and VPS) seen in the stream; width and height from the SPS, cropping applied;
- then moof + mdat fragments, one per `feed` (every frame that call completed), so that a live
  frame leaves as soon as it is complete and a recording fed in large chunks makes few fragments.

Format choices:
- Only the first video stream of the PMT is read (H.264 or H.265); every other PID is ignored.
  PAT and PMT are read until the video PID is known (single-packet sections, CRC checked).
- A PES is a frame (one access unit, as ffmpeg's muxer writes them); it is complete when the
  next PES of the video PID starts, or when its PES_packet_length says so (ffmpeg writes 0 for
  video, so the next start is the rule, and a live frame leaves one packet after its end).
- Frames before the first random access point (H.264 IDR, H.265 BLA/IDR/CRA, or a TS
  random_access_indicator) are dropped; after a first CRA/BLA its RASL frames are dropped
  too (they refer to pictures before the start and cannot be decoded).
- Samples are the frame's NAL units with 4-byte lengths. Access unit delimiters and the
  in-band parameter sets are left out (the sample entry has them: array_completeness=1 for
  'hvc1'). A parameter set that differs from the init segment's later on raises Fmp4Error:
  this remuxer does not start a new init segment; a new Remuxer must be started.
- Timescale 90 kHz. Decode times are the DTS unwrapped across the 33-bit wrap (signed
  difference to the previous DTS) minus the first keyframe's: tfdt (version 1) starts at 0. A
  step that is not forward or exceeds 10 s (a timestamp discontinuity) is replaced by the last
  frame duration, so the timeline stays monotonic. trun (version 1) gives each sample its
  duration (to the next frame; for the last frame of a fragment, the previous duration, 3600 at
  first), size, sync flags and signed composition offset (PTS - DTS; DTS = PTS when absent).
- Hostile input raises Fmp4Error and nothing else: a lost sync byte, bad tables, a PES
  without PTS or larger than 16 MiB or shorter than its declared length, a truncated SPS,
  absurd sizes. The remuxer is unusable after an error (each later call raises it again); the
  frames completed before the damage in the same `feed` are returned first, the error comes next call.
  At `flush`, a frame cut by the end of the input is dropped when that shows (a partial TS packet
  remains, or its PES is shorter than declared); a cut exactly between packets does not show.
- Work is per 188-byte packet (slices and bytes.find, never per byte, except the CRC of the
  few table sections read before the video PID is known); output is joined once per fragment.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from halfbridge.ts import PACKET, SYNC, crc32, ticks

__all__ = ["Fmp4Error", "Remuxer"]

TIMESCALE = 90000
WRAP = 1 << 33
MAX_PES = 16 << 20  # bytes: a PES larger than this is not a camera's frame
MAX_UNITS = 65536  # NAL units in a frame (a 1080p H.264 frame has at most 8160 slices)
MAX_STEP = 10 * TIMESCALE  # a larger DTS step is a discontinuity
MAX_OFFSET = 60 * TIMESCALE  # |PTS - DTS| beyond this is absurd
MAX_SIZE = 16384  # pixels, width or height
FIRST_DURATION = 3600  # 1/25 s: the duration of a lone first frame
SPS_PREFIX = 4096  # bytes of a parameter set that are bit-parsed (more is never needed before VUI)

SYNC_SAMPLE = 0x02000000  # sample_depends_on = 2 (depends on no other)
OTHER_SAMPLE = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample
_ENTRY = struct.Struct(">IIIi")  # trun sample: duration, size, flags, composition offset
_LENGTH = struct.Struct(">I")

# Stream types of video in a PMT (ISO 13818-1 and registered ones): the first of them is the video.
_VIDEO_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x1F, 0x20, 0x24, 0x33, 0x42, 0xD1, 0xEA})
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class Fmp4Error(ValueError):
    """Input that is not usable MPEG-TS carrying H.264 or H.265; the message says why."""


# What reading hostile input can raise where a bound was not checked (TsError is a ValueError):
# still the input's fault, so an Fmp4Error too. Other exceptions are bugs, and not hidden.
_UNCHECKED = (LookupError, ValueError, ArithmeticError, struct.error)


def _malformed(error: Exception) -> Fmp4Error:
    found = Fmp4Error(f"malformed input: {error}")
    found.__cause__ = error
    return found


@dataclass(frozen=True)
class _Codec:
    name: str  # sample entry: avc1 or hvc1
    shift: int  # NAL unit type = (first byte >> shift) & mask
    mask: int
    delimiter: int  # access unit delimiter
    parameter_sets: tuple[int, ...]  # in configuration record order
    sps: int
    random_access: frozenset[int]
    rasl: frozenset[int]  # leading pictures that cannot be decoded after a start at...
    rasl_owners: frozenset[int]  # ...these random access points
    id_limits: dict[int, int]  # parameter set type: number of ids


H264 = _Codec("avc1", 0, 0x1F, 9, (7, 8), 7, frozenset({5}), frozenset(), frozenset(), {7: 32, 8: 256})
H265 = _Codec(
    "hvc1", 1, 0x3F, 35, (32, 33, 34), 33, frozenset(range(16, 22)), frozenset({8, 9}), frozenset({16, 21}),
    {32: 16, 33: 16, 34: 64},
)  # fmt: skip
_STREAM_TYPES = {0x1B: H264, 0x24: H265}


# --- bits of parameter sets ---------------------------------------------------------------


class _Bits:
    """MSB-first reader of an RBSP; reading past its end raises Fmp4Error."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def u(self, count: int) -> int:
        if count > self._left:
            raise Fmp4Error("truncated parameter set")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise Fmp4Error("invalid Exp-Golomb code in a parameter set")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _rbsp(nal: bytes | memoryview, skip: int) -> bytes:
    """The payload of a NAL unit after its `skip` header bytes, emulation prevention bytes removed."""
    return bytes(nal[skip:SPS_PREFIX]).replace(b"\x00\x00\x03", b"\x00\x00")


@dataclass(frozen=True)
class _Sps:
    id: int
    width: int
    height: int
    chroma_format: int = 1
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8
    # H.264: profile_idc, constraint flags, level_idc; H.265: the general profile_tier_level
    profile: int = 0
    constraints: int = 0
    level: int = 0
    profile_space: int = 0
    tier: int = 0
    compatibility: int = 0
    sub_layers: int = 1
    temporal_id_nesting: int = 0


def _cropped(size: tuple[int, int], window: list[int], unit: tuple[int, int]) -> tuple[int, int]:
    """Width and height once the cropping window (left, right, top, bottom in `unit`s) is applied."""
    width = size[0] - (window[0] + window[1]) * unit[0]
    height = size[1] - (window[2] + window[3]) * unit[1]
    if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
        raise Fmp4Error(f"absurd picture size {width}x{height} in the SPS")
    return width, height


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last


def _h264_sps(nal: bytes | memoryview) -> _Sps:
    bits = _Bits(_rbsp(nal, 1))
    profile, constraints, level = bits.u(8), bits.u(8), bits.u(8)
    sps_id = bits.ue()
    chroma, separate, depth_luma, depth_chroma = 1, 0, 8, 8
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        if chroma > 3:
            raise Fmp4Error(f"chroma_format_idc {chroma} in the SPS")
        separate = bits.u(1) if chroma == 3 else 0
        depth_luma, depth_chroma = bits.ue() + 8, bits.ue() + 8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(12 if chroma == 3 else 8):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        cycle = bits.ue()
        if cycle > 255:
            raise Fmp4Error("num_ref_frames_in_pic_order_cnt_cycle > 255 in the SPS")
        for _ in range(cycle):
            bits.se()
    elif poc_type != 2:
        raise Fmp4Error(f"pic_order_cnt_type {poc_type} in the SPS")
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = bits.ue() + 1, bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    window = [bits.ue() for _ in range(4)] if bits.u(1) else [0, 0, 0, 0]
    if separate or chroma == 0:  # ChromaArrayType 0
        unit = (1, 2 - frame_mbs_only)
    else:
        unit = (2 if chroma < 3 else 1, (2 if chroma == 1 else 1) * (2 - frame_mbs_only))
    coded = (width_mbs * 16, height_units * 16 * (2 - frame_mbs_only))
    if depth_luma > 14 or depth_chroma > 14:
        raise Fmp4Error("bit depth above 14 in the SPS")
    width, height = _cropped(coded, window, unit)
    return _Sps(sps_id, width, height, chroma, depth_luma, depth_chroma, profile, constraints, level)


def _h265_sps(nal: bytes | memoryview) -> _Sps:
    bits = _Bits(_rbsp(nal, 2))
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers_minus1 = bits.u(3)
    nesting = bits.u(1)
    if sub_layers_minus1 > 6:
        raise Fmp4Error("sps_max_sub_layers_minus1 > 6 in the SPS")
    space, tier, profile = bits.u(2), bits.u(1), bits.u(5)
    compatibility, constraints, level = bits.u(32), bits.u(48), bits.u(8)
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers_minus1)]
    if sub_layers_minus1:
        bits.u(2 * (8 - sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.u(88 * profile_present + 8 * level_present)
    sps_id = bits.ue()
    chroma = bits.ue()
    if sps_id > 15 or chroma > 3:
        raise Fmp4Error("sps_seq_parameter_set_id or chroma_format_idc out of range in the SPS")
    separate = bits.u(1) if chroma == 3 else 0
    coded = (bits.ue(), bits.ue())
    window = [bits.ue() for _ in range(4)] if bits.u(1) else [0, 0, 0, 0]
    depth_luma, depth_chroma = bits.ue() + 8, bits.ue() + 8
    if depth_luma > 16 or depth_chroma > 16:
        raise Fmp4Error("bit depth above 16 in the SPS")
    plain = separate or chroma == 0
    unit = (1 if plain or chroma == 3 else 2, 2 if chroma == 1 and not plain else 1)
    width, height = _cropped(coded, window, unit)
    return _Sps(
        sps_id, width, height, chroma, depth_luma, depth_chroma, profile, constraints, level, space, tier,
        compatibility, sub_layers_minus1 + 1, nesting,
    )  # fmt: skip


def _parse_sps(codec: _Codec, nal: bytes | memoryview) -> _Sps:
    try:
        return _h264_sps(nal) if codec is H264 else _h265_sps(nal)
    except (IndexError, ValueError) as error:
        if isinstance(error, Fmp4Error):
            raise
        raise Fmp4Error(f"unreadable SPS: {error}") from error


def _parameter_id(codec: _Codec, kind: int, nal: bytes) -> int:
    """The id of a parameter set (VPS, SPS or PPS); raises Fmp4Error when it is unreadable."""
    if kind == codec.sps:
        found = _parse_sps(codec, nal).id
    elif kind == 32:  # VPS
        found = _Bits(_rbsp(nal, 2)).u(4)
    else:  # PPS
        found = _Bits(_rbsp(nal, 1 if codec is H264 else 2)).ue()
    if found >= codec.id_limits[kind]:
        raise Fmp4Error(f"parameter set id {found} out of range (NAL unit type {kind})")
    return found


def _codecs(codec: _Codec, sps: _Sps) -> str:
    """The RFC 6381 codecs parameter: avc1.PPCCLL, or hvc1 as ISO 14496-15 annex E spells it."""
    if codec is H264:
        return f"avc1.{sps.profile:02x}{sps.constraints:02x}{sps.level:02x}"
    reversed_flags = int(f"{sps.compatibility:032b}"[::-1], 2)
    constraints = sps.constraints.to_bytes(6, "big").rstrip(b"\x00")
    parts = [
        "hvc1",
        ("", "A", "B", "C")[sps.profile_space] + str(sps.profile),
        f"{reversed_flags:X}",
        ("L", "H")[sps.tier] + str(sps.level),
        *(f"{byte:X}" for byte in constraints),
    ]
    return ".".join(parts)


# --- boxes --------------------------------------------------------------------------------


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags), *payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _nal_array(nals: list[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(nal)) + nal for nal in nals)


def _avcc(sps: _Sps, sets: dict[int, list[bytes]]) -> bytes:
    if len(sets[7]) > 31 or len(sets[8]) > 255:  # the counts' widths in avcC (5 and 8 bits)
        raise Fmp4Error(f"{len(sets[7])} SPS and {len(sets[8])} PPS: more than avcC can list")
    body = bytes([1, sps.profile, sps.constraints, sps.level, 0xFF, 0xE0 | len(sets[7])]) + _nal_array(sets[7])
    body += bytes([len(sets[8])]) + _nal_array(sets[8])
    if sps.profile in (100, 110, 122, 144, 244):
        body += bytes([0xFC | sps.chroma_format, 0xF8 | sps.bit_depth_luma - 8, 0xF8 | sps.bit_depth_chroma - 8, 0])
    return _box(b"avcC", body)


def _hvcc(sps: _Sps, sets: dict[int, list[bytes]]) -> bytes:
    body = bytes([1, sps.profile_space << 6 | sps.tier << 5 | sps.profile])
    body += sps.compatibility.to_bytes(4, "big") + sps.constraints.to_bytes(6, "big") + bytes([sps.level])
    body += struct.pack(
        ">HBBBBHB",
        0xF000,  # min_spatial_segmentation_idc 0
        0xFC,  # parallelismType 0
        0xFC | sps.chroma_format,
        0xF8 | sps.bit_depth_luma - 8,
        0xF8 | sps.bit_depth_chroma - 8,
        0,  # avgFrameRate unknown
        sps.sub_layers << 3 | sps.temporal_id_nesting << 2 | 3,  # constantFrameRate 0, lengthSizeMinusOne 3
    )
    body += bytes([len(sets)])
    for kind, nals in sets.items():
        body += bytes([0x80 | kind]) + struct.pack(">H", len(nals)) + _nal_array(nals)
    return _box(b"hvcC", body)


def _init_segment(codec: _Codec, sps: _Sps, config: bytes) -> bytes:
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"mp41")
    mvhd = _full_box(
        b"mvhd", 0, 0, struct.pack(">IIIIIH10x", 0, 0, TIMESCALE, 0, 0x10000, 0x100), _MATRIX, bytes(24),
        struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = _full_box(
        b"tkhd", 0, 3, struct.pack(">IIIII8xHHHH", 0, 0, 1, 0, 0, 0, 0, 0, 0), _MATRIX,
        struct.pack(">II", sps.width << 16, sps.height << 16),
    )  # fmt: skip
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))  # language und
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"VideoHandler\x00")
    entry = _box(
        codec.name.encode(), bytes(6), struct.pack(">H16xHHIIIH32xHh", 1, sps.width, sps.height, 0x480000,
        0x480000, 0, 1, 0x18, -1), config,
    )  # fmt: skip
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        _full_box(b"stts", 0, 0, bytes(4)),
        _full_box(b"stsc", 0, 0, bytes(4)),
        _full_box(b"stsz", 0, 0, bytes(8)),
        _full_box(b"stco", 0, 0, bytes(4)),
    )
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    minf = _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
    mvex = _box(b"mvex", _full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + _box(b"moov", mvhd, trak, mvex)


@dataclass
class _Sample:
    decode: int  # decode time, 90 kHz from the first keyframe
    offset: int  # composition offset: PTS - DTS
    key: bool
    size: int
    parts: list[bytes | memoryview]  # length prefixes and NAL units


def _fragment(sequence: int, samples: list[_Sample], last_duration: int) -> list[bytes | memoryview]:
    """moof and mdat of `samples`, in pieces to join."""
    entries = bytearray()
    for index, sample in enumerate(samples):
        following = index + 1 < len(samples)
        duration = samples[index + 1].decode - sample.decode if following else last_duration
        entries += _ENTRY.pack(duration, sample.size, SYNC_SAMPLE if sample.key else OTHER_SAMPLE, sample.offset)
    payload = sum(sample.size for sample in samples)
    if payload + 8 <= 0xFFFFFFFF:
        mdat = struct.pack(">I4s", payload + 8, b"mdat")
    else:
        mdat = struct.pack(">I4sQ", 1, b"mdat", payload + 16)
    mfhd = _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    tfhd = _full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof, track 1
    tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", samples[0].decode))
    trun_size = 20 + len(entries)
    moof_size = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + trun_size
    # data offset, duration, size, flags, composition offset present
    trun = _full_box(b"trun", 1, 0xF01, struct.pack(">Ii", len(samples), moof_size + len(mdat)), entries)
    moof = _box(b"moof", mfhd, _box(b"traf", tfhd, tfdt, trun))
    return [moof, mdat, *(part for sample in samples for part in sample.parts)]


# --- MPEG-TS ------------------------------------------------------------------------------


def _find_sync(buf: bytes) -> int:
    """Offset of the first packet (a sync byte 188 and 376 bytes further too); -1: more bytes needed."""
    if len(buf) < 3 * PACKET + PACKET:
        return -1
    candidate = buf.find(SYNC, 0, PACKET)
    while candidate >= 0:
        if buf[candidate + PACKET] == SYNC and buf[candidate + 2 * PACKET] == SYNC:
            return candidate
        candidate = buf.find(SYNC, candidate + 1, PACKET)
    raise Fmp4Error("not MPEG-TS: no sync byte repeating every 188 bytes")


def _payload_start(buf: bytes, offset: int) -> int:
    """Where a packet's payload starts (offset + 188 when it has none)."""
    control = buf[offset + 3] & 0x30
    if control == 0x10:
        return offset + 4
    if control == 0x30:
        length = buf[offset + 4]
        if length > 183:
            raise Fmp4Error(f"adaptation field of {length} bytes in a TS packet")
        return offset + 5 + length
    return offset + PACKET


def _section(payload: bytes, table_id: int) -> bytes | None:
    """The PSI section of `table_id` starting in a packet's payload, CRC checked; None for another table."""
    if not payload:
        return None
    section = payload[1 + payload[0] :]
    if len(section) < 3 or section[0] != table_id:
        return None
    length = (section[1] & 0x0F) << 8 | section[2]
    if length > len(section) - 3:
        raise Fmp4Error("a PAT or PMT section spans TS packets (not supported)")
    if length < 13:
        raise Fmp4Error("PAT or PMT section too short")
    section = section[: 3 + length]
    if crc32(section):
        raise Fmp4Error("PAT or PMT section with a wrong CRC")
    return section if section[5] & 1 else None  # current_next_indicator


def _pmt_pid(pat: bytes) -> int | None:
    for index in range(8, len(pat) - 4 - 3, 4):
        if pat[index] << 8 | pat[index + 1]:  # program_number 0 is the network PID
            return (pat[index + 2] & 0x1F) << 8 | pat[index + 3]
    return None


def _video_stream(pmt: bytes) -> tuple[int, _Codec]:
    index = 12 + ((pmt[10] & 0x0F) << 8 | pmt[11])
    end = len(pmt) - 4
    while index + 5 <= end:
        kind, pid = pmt[index], (pmt[index + 1] & 0x1F) << 8 | pmt[index + 2]
        if kind in _VIDEO_TYPES:
            if kind not in _STREAM_TYPES:
                raise Fmp4Error(f"video stream type {kind:#04x} is neither H.264 nor H.265")
            return pid, _STREAM_TYPES[kind]
        index += 5 + ((pmt[index + 3] & 0x0F) << 8 | pmt[index + 4])
    raise Fmp4Error("the PMT lists no video stream")


def _pes_header(pes: bytearray, end: int) -> tuple[int, int, int]:
    """PTS, DTS (= PTS when absent) and where the elementary stream starts, of a video PES."""
    if end < 9 or pes[0:3] != b"\x00\x00\x01":
        raise Fmp4Error("a video packet starts no PES")
    if pes[3] & 0xF0 != 0xE0 or pes[6] & 0xC0 != 0x80:
        raise Fmp4Error(f"PES of stream id {pes[3]:#04x} is not video with an MPEG-2 header")
    flags, header = pes[7] >> 6, pes[8]
    if 9 + header > end:
        raise Fmp4Error("PES header longer than its PES")
    if flags == 2 and header >= 5:
        pts = ticks(pes[9:14])
        return pts, pts, 9 + header
    if flags == 3 and header >= 10:
        return ticks(pes[9:14]), ticks(pes[14:19]), 9 + header
    raise Fmp4Error("a video PES without PTS")


def _nal_units(es: bytearray, start: int, end: int) -> list[memoryview]:
    """The NAL units of an Annex B byte stream `es[start:end]` (trailing zero bytes dropped)."""
    view = memoryview(es)
    found = es.find(b"\x00\x00\x01", start, end)
    if found < 0:
        raise Fmp4Error("a video PES without an Annex B start code")
    units = []
    while found >= 0:
        begin = found + 3
        found = es.find(b"\x00\x00\x01", begin, end)
        stop = end if found < 0 else found
        if stop > begin and not es[stop - 1]:  # the first zero of a 4-byte start code, or trailing zeros
            stop = stop - 1 if stop - 1 == begin or es[stop - 2] else begin + len(es[begin:stop].rstrip(b"\x00"))
        if stop > begin:
            units.append(view[begin:stop])
            if len(units) > MAX_UNITS:
                raise Fmp4Error(f"a frame of more than {MAX_UNITS} NAL units")
    return units


# --- the remuxer --------------------------------------------------------------------------


class Remuxer:
    """MPEG-TS bytes in (`feed`, then `flush`), fragmented MP4 bytes out: init segment, then fragments."""

    def __init__(self) -> None:
        self._rest = b""  # input not yet read: a partial packet, or bytes before the sync is found
        self._synced = False
        self._offset = 0  # input bytes before self._rest
        self._pmt: int | None = None
        self._video = -1  # the video PID, once the PMT is read
        self._codec = H264
        self._pes: bytearray | None = None
        self._pes_key = False  # random_access_indicator on its first packet
        self._pes_end = -1  # its declared end (6 + PES_packet_length); 0: unbounded; -1: not read yet
        self._params: dict[tuple[int, int], bytes] = {}  # (NAL unit type, id): latest before the start
        self._known: set[bytes] = set()
        self._init = b""  # until sent before the first fragment
        self._codecs = ""
        self._started = False
        self._skip_rasl = False
        self._last_dts = -1  # the last frame's DTS as the stream says it (33 bits)
        self._decode = 0  # its decode time (unwrapped, from the first keyframe)
        self._duration = FIRST_DURATION  # its DTS step
        self._pending: list[_Sample] = []
        self._sequence = 0
        self._error: Fmp4Error | None = None

    @property
    def content_type(self) -> str:
        return f'video/mp4; codecs="{self._codecs}"' if self._codecs else "video/mp4"

    def feed(self, data: bytes) -> bytes:
        """Read more MPEG-TS (any number of bytes); return the fragmented MP4 bytes it completes (maybe b"").

        Unusable input raises Fmp4Error, then at every later call. When the same call completed
        frames before the damage, they are returned first and the error is raised by the next call.
        """
        return self._guarded(self._read, data)

    def flush(self) -> bytes:
        """End of input: return the last frame(s); a frame cut by the end of the input is dropped."""
        return self._guarded(self._finish, b"")

    def _guarded(self, step: Callable[[bytes], None], data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            step(data)
        except Fmp4Error as error:
            self._error = error
        except _UNCHECKED as error:
            self._error = _malformed(error)
        if self._error is not None and not self._pending:
            raise self._error
        try:
            return self._emit()
        except _UNCHECKED as error:  # a fragment's figure that does not fit its field
            self._error, self._pending = _malformed(error), []
            raise self._error from error

    def _finish(self, _: bytes) -> None:
        if self._pes is not None and not self._rest:
            self._complete(at_end=True)
        self._pes, self._rest = None, b""

    def _read(self, data: bytes) -> None:
        buf = self._rest + data if self._rest else bytes(data)
        start = 0
        if not self._synced:
            start = _find_sync(buf)
            if start < 0:
                self._rest = buf
                return
            self._synced = True
        end = start + (len(buf) - start) // PACKET * PACKET
        syncs = buf[start:end:PACKET]
        if syncs.count(SYNC) != len(syncs):
            lost = start + (len(syncs) - len(syncs.lstrip(b"G"))) * PACKET
            self._packets(buf, start, lost)
            raise Fmp4Error(f"MPEG-TS sync byte lost at byte {self._offset + lost} of the input")
        self._rest = buf[end:]
        self._offset += end
        self._packets(buf, start, end)

    def _packets(self, buf: bytes, start: int, end: int) -> None:
        view = memoryview(buf)
        video = self._video
        for offset in range(start, end, PACKET):
            pid = (buf[offset + 1] & 0x1F) << 8 | buf[offset + 2]
            if pid == video:
                self._video_packet(buf, view, offset)
            elif video < 0 and pid == (0 if self._pmt is None else self._pmt):
                self._table(buf, offset, pid)
                video = self._video

    def _table(self, buf: bytes, offset: int, pid: int) -> None:
        if not buf[offset + 1] & 0x40:
            return  # not the start of a section
        section = _section(buf[_payload_start(buf, offset) : offset + PACKET], 0 if pid == 0 else 2)
        if section is None:
            return
        if pid == 0:
            found = _pmt_pid(section)
            if found in (0, 0x1FFF):
                raise Fmp4Error(f"the PAT gives PID {found} for the PMT")
            self._pmt = found
        else:
            self._video, self._codec = _video_stream(section)

    def _video_packet(self, buf: bytes, view: memoryview, offset: int) -> None:
        first = _payload_start(buf, offset)
        if first >= offset + PACKET:
            return
        payload = view[first : offset + PACKET]
        if buf[offset + 1] & 0x40:  # payload_unit_start_indicator: a new PES
            if self._pes is not None:
                self._complete(at_end=False)
            self._pes = bytearray(payload)
            self._pes_key = first > offset + 5 and bool(buf[offset + 5] & 0x40)  # random_access_indicator
            self._pes_end = -1
        elif self._pes is None:
            return  # before the first PES start, or after a PES complete by its length
        else:
            self._pes += payload
        pes = self._pes
        if self._pes_end < 0 and len(pes) >= 6:
            declared = pes[4] << 8 | pes[5]
            self._pes_end = 6 + declared if declared else 0
        if 0 < self._pes_end <= len(pes):
            self._complete(at_end=False)
        elif len(pes) > MAX_PES:
            raise Fmp4Error(f"a video PES larger than {MAX_PES} bytes")

    def _complete(self, at_end: bool) -> None:
        pes, self._pes = self._pes, None
        if pes is None:
            return
        end = self._pes_end if self._pes_end > 0 else len(pes)
        if self._pes_end < 0 or end > len(pes):
            if at_end:
                return  # the input ends in this frame
            raise Fmp4Error("a video PES shorter than its header or its declared length")
        pts, dts, start = _pes_header(pes, end)
        self._access_unit(_nal_units(pes, start, end), pts, dts, self._pes_key)

    def _access_unit(self, units: list[memoryview], pts: int, dts: int, key: bool) -> None:
        codec = self._codec
        parts: list[bytes | memoryview] = []
        size, random_access, rasl = 0, -1, False
        for unit in units:
            kind = unit[0] >> codec.shift & codec.mask
            if kind == codec.delimiter:
                continue
            if kind in codec.parameter_sets:
                self._parameter(kind, unit)
                continue
            if kind in codec.random_access:
                random_access = kind
            rasl = rasl or kind in codec.rasl
            parts += (_LENGTH.pack(len(unit)), unit)
            size += 4 + len(unit)
        if not parts:
            return
        key = key or random_access >= 0
        if not self._started:
            if not key or not self._ready():
                return
            self._start()
            self._skip_rasl = random_access in codec.rasl_owners
        elif random_access >= 0:
            self._skip_rasl = False
        elif rasl and self._skip_rasl:
            return
        decode, offset = self._times(pts, dts)
        self._pending.append(_Sample(decode, offset, key, size, parts))

    def _parameter(self, kind: int, unit: memoryview) -> None:
        data = bytes(unit)
        if data in self._known:
            return
        if self._started:
            raise Fmp4Error(f"parameter sets changed mid-stream (NAL unit type {kind}): start a new Remuxer")
        if len(data) > 0xFFFF:
            raise Fmp4Error("a parameter set larger than 64 KiB")
        self._params[kind, _parameter_id(self._codec, kind, data)] = data
        self._known = set(self._params.values())

    def _ready(self) -> bool:
        return all(any(kind == wanted for kind, _ in self._params) for wanted in self._codec.parameter_sets)

    def _start(self) -> None:
        codec = self._codec
        sets = {
            kind: [data for (k, _), data in sorted(self._params.items()) if k == kind] for kind in codec.parameter_sets
        }
        sps = _parse_sps(codec, sets[codec.sps][0])
        config = _avcc(sps, sets) if codec is H264 else _hvcc(sps, sets)
        self._init = _init_segment(codec, sps, config)
        self._codecs = _codecs(codec, sps)
        self._known = set(self._params.values())
        self._started = True

    def _times(self, pts: int, dts: int) -> tuple[int, int]:
        """Decode time and composition offset of the next frame (90 kHz)."""
        if self._last_dts >= 0:
            step = (dts - self._last_dts) % WRAP
            step = step - WRAP if step >= WRAP // 2 else step
            self._duration = step if 0 < step <= MAX_STEP else self._duration  # else a discontinuity
            self._decode += self._duration
        self._last_dts = dts
        offset = (pts - dts) % WRAP
        offset = offset - WRAP if offset >= WRAP // 2 else offset
        if abs(offset) > MAX_OFFSET:
            raise Fmp4Error("PTS and DTS of a frame more than a minute apart")
        return self._decode, offset

    def _emit(self) -> bytes:
        if not self._pending:
            return b""
        samples, self._pending = self._pending, []
        self._sequence += 1
        init, self._init = self._init, b""
        return b"".join([init, *_fragment(self._sequence, samples, self._duration)])
