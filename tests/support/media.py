"""Synthetic media files for tests: test patterns in the stream profiles real cameras send.

Made by the tests themselves with ffmpeg (no binary is shipped): a clip takes a
fraction of a second to encode at the small sizes used here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# The video encodings the lab's cameras send (see lab/roles/camera_simulator), as ffmpeg encodes them.
PROFILES = {
    # H.264 constrained baseline: no B-frames, frames in presentation order.
    "h264-baseline": ["-c:v", "libx264", "-profile:v", "baseline", "-bf", "0"],
    # H.264 High with two B-frames: presentation order differs from decoding order.
    "h264-high": ["-c:v", "libx264", "-profile:v", "high", "-bf", "2"],
    # H.265 Main with x265's B-frames and an open GOP: the frames that follow a keyframe
    # (after the first) can be shown before it.
    "h265-main": ["-c:v", "libx265", "-x265-params", "bframes=4:open-gop=1:log-level=error"],
}
# 2**33 ticks of 90 kHz: MPEG-TS presentation timestamps wrap after about 26.5 hours.
PTS_WRAP = 2**33 / 90000


def make_clip(
    path: Path,
    size: str = "320x180",
    seconds: float = 1,
    gop: int = 25,
    audio_codec: str | None = None,
    profile: str = "h264-baseline",
    ts_offset: float | None = None,
) -> str:
    """Encode `seconds` of 25 fps test pattern, a keyframe every `gop` frames exactly; returns the path.

    `profile` is one of PROFILES; `ts_offset` shifts every timestamp (MPEG-TS output only), e.g.
    to just before PTS_WRAP so that the clip's presentation timestamps wrap in its middle.
    """
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25"]
    codecs = [*PROFILES[profile], "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if profile.startswith("h265"):
        codecs[3] += f":keyint={gop}:min-keyint={gop}:scenecut=0"
    if audio_codec:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
        codecs += ["-c:a", audio_codec]
    if ts_offset is not None:
        codecs += ["-output_ts_offset", f"{ts_offset:.6f}"]
    subprocess.run(["ffmpeg", "-v", "error", *inputs, "-t", f"{seconds:g}", *codecs, str(path)], check=True, timeout=60)
    return str(path)


def segment(
    clip: str | Path, directory: Path, seconds: int = 2, ts_offset: float = 0.0
) -> list[tuple[Path, float, float]]:
    """Cut `clip` as the recorder does (ffmpeg's segment muxer, stream copy, MPEG-TS, video only).

    Returns each segment with its start and end from the muxer's CSV list (seconds from the first
    packet). `ts_offset` shifts the timestamps written in the segments (not the times returned),
    e.g. to just before PTS_WRAP so that they wrap in the recording's middle.
    """
    directory.mkdir(parents=True, exist_ok=True)
    listing = directory / "segments.csv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(clip), "-map", "0:v:0", "-c", "copy",
         "-output_ts_offset", f"{ts_offset:.6f}", "-f", "segment",
         "-segment_format", "mpegts", "-segment_time", str(seconds), "-segment_list", str(listing),
         "-segment_list_type", "csv", str(directory / "seg-%03d.ts")],
        check=True, timeout=60,
    )  # fmt: skip
    found = []
    for index, line in enumerate(listing.read_text().splitlines()):
        name, start, end = line.rsplit(",", 2)
        # The muxer lists its first segment from 0 whatever the offset.
        found.append((directory / name, float(start) - (ts_offset if index else 0.0), float(end) - ts_offset))
    return found


def video_packets(path: str | Path) -> list[dict]:
    """Every video packet of a file in file order: pts, dts (seconds) and whether it is a keyframe."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,dts_time,flags",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    packets = []
    for line in done.stdout.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[0] not in ("", "N/A"):
            packets.append({"pts": float(fields[0]), "dts": float(fields[1]), "key": fields[2].startswith("K")})
    return packets
