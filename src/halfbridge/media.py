"""ffmpeg and ffprobe, through ffmpeg-python's builders (never shell strings)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg


class ProbeError(RuntimeError):
    """A stream could not be probed; the message says why, without credentials."""


# ffmpeg 5.1 gives the first frame it reads from RTSP no presentation timestamp. Without
# B-frames it fills one in; with them (H.264 High, H.265) the MPEG-TS muxer stops with "first
# pts and dts value must be set". This bitstream filter, on each video output, takes the
# decoding timestamp for a missing presentation one (commas escaped: -bsf takes a list).
FILL_PTS = r"setts=pts=if(eq(PTS\,NOPTS)\,DTS\,PTS)"
# The live copy skips this much of a run's start: its first frame, whatever the camera's rate.
LIVE_SKIP = 0.001
# ffmpeg's log lines with `-loglevel level+...`: "[ctx @ 0x55..] [error] text" or "[error] text".
_LOG_LINE = re.compile(r"^(?:\[(?P<context>[^\]@]+?) @ 0x[0-9a-f]+\] )?\[(?P<level>[a-z]+)\] (?P<text>.*)$")
# An input stream as ffmpeg lists it: "  Stream #0:1[0x101]: Audio: aac (LC) (...), 8000 Hz, mono".
_INPUT_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (?P<kind>Video|Audio|Data|Subtitle): (?P<codec>[\w-]+)(?P<rest>.*)$")
# What ffmpeg may open on the way to a camera. `file` reads the ffconcat file.
PROTOCOLS = "file,rtsp,rtp,srtp,tcp,udp,tls,rtsps,crypto"


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    fps: float
    audio: str | None = None
    keyframe_interval: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def redact(url: str) -> str:
    """The URL without its user and password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def is_stream_url(url: str) -> bool:
    return url.split("://", 1)[0] in {"rtsp", "rtsps"}


def ffconcat_text(url: str, timeout: float) -> str:
    """An ffconcat playlist naming one camera, with its RTSP options.

    ffmpeg reads a camera's URL, credentials included, from this file rather
    than from its command line, which every user of the host can read in ps.
    """
    if "'" in url or "\n" in url:
        raise ProbeError(f"{redact(url)}: a camera URL may not contain quotes or line breaks")
    lines = ["ffconcat version 1.0", f"file '{url}'"]
    if is_stream_url(url):
        lines += ["option rtsp_transport tcp", f"option timeout {int(timeout * 1_000_000)}"]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file only its owner (and, with `mode` 0o640, its group; 0o644, everyone) can read, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def camera_playlist(url: str, timeout: float) -> Iterator[str]:
    """A private, temporary ffconcat file for `url`; a plain file path is passed through."""
    if not is_stream_url(url):
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="halfbridge-") as tmp:
        path = Path(tmp) / "camera.ffconcat"
        write_private(path, ffconcat_text(url, timeout))
        yield str(path)


def _input_args(source: str) -> list[str]:
    if source.endswith(".ffconcat"):
        return ["-f", "concat", "-safe", "0", "-protocol_whitelist", PROTOCOLS, "-i", source]
    return ["-i", source]


def probe_options(options: dict[str, object]) -> list[str]:
    """ffprobe's options as arguments: `-key value` by sorted key, `-key` alone for a None value.

    ffmpeg-python's public API builds ffmpeg commands (input, output, compile) but has nothing for ffprobe except
    ffmpeg.probe(), which waits without a bound: ffprobe gets a plain argument list, written the way ffmpeg-python's
    own helper writes its keyword arguments, and runs bounded in time (docs/streams.md)."""
    args: list[str] = []
    for key in sorted(options):
        args.append(f"-{key}")
        if options[key] is not None:
            args.append(str(options[key]))
    return args


def _ffprobe(url: str, options: dict, timeout: float) -> dict:
    with camera_playlist(url, timeout) as source:
        args = ["ffprobe", "-of", "json", *probe_options(options), *_input_args(source)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5, check=False)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"{redact(url)}: no answer within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise ProbeError("ffprobe is not installed (Debian package ffmpeg)") from None
    if done.returncode != 0:
        # ffprobe's last line says why ("Connection refused", "401 Unauthorized"), prefixed
        # with the playlist's name; earlier lines may quote the URL, so redact it everywhere.
        lines = done.stderr.replace(url, redact(url)).replace(f"{source}: ", "").strip().splitlines()
        reason = lines[-1].strip() if lines else f"ffprobe exited with {done.returncode}"
        raise ProbeError(f"{redact(url)}: {reason}")
    return json.loads(done.stdout or "{}")


def probe_video(url: str, timeout: float = 15.0, gop_seconds: float = 0.0) -> VideoInfo:
    """Codec, size and frame rate of the first video stream of `url` (a file or an RTSP URL).

    With `gop_seconds`, also read that long of packets to measure the interval
    between keyframes, and name the audio codec if there is one.
    """
    options = {"v": "error", "show_entries": "stream=codec_type,codec_name,width,height,avg_frame_rate"}
    if gop_seconds > 0:
        options["read_intervals"] = f"%+{gop_seconds:g}"
        options["show_entries"] += ":packet=stream_index,pts_time,flags"
    found = _ffprobe(url, options, timeout + gop_seconds)
    streams = found.get("streams") or []
    video = next(((i, s) for i, s in enumerate(streams) if s.get("codec_type") == "video"), None)
    if video is None:
        raise ProbeError(f"{redact(url)}: no video stream")
    index, stream = video
    audio = next((s["codec_name"] for s in streams if s.get("codec_type") == "audio"), None)
    rate = stream.get("avg_frame_rate") or "0/1"
    fps = float(Fraction(rate)) if rate != "0/0" else 0.0
    keyframes = sorted(
        float(p["pts_time"])
        for p in found.get("packets") or []
        if p.get("stream_index") == index and "K" in p.get("flags", "") and p.get("pts_time") not in (None, "N/A")
    )
    gaps = [b - a for a, b in itertools.pairwise(keyframes) if b > a]
    return VideoInfo(
        codec=stream["codec_name"],
        width=int(stream["width"]),
        height=int(stream["height"]),
        fps=fps,
        audio=audio,
        keyframe_interval=round(max(gaps), 3) if gaps else None,
    )


def probe_duration(path: str, timeout: float = 30.0) -> float:
    """Duration of a (possibly truncated) segment, from its first to its last video packet."""
    found = _ffprobe(
        path,
        {"v": "error", "select_streams": "v:0", "show_entries": "packet=pts_time,duration_time"},
        timeout,
    )
    times = [
        (float(p["pts_time"]), float(p.get("duration_time") or 0) if p.get("duration_time") not in ("N/A",) else 0.0)
        for p in found.get("packets") or []
        if p.get("pts_time") not in (None, "N/A")
    ]
    if not times:
        raise ProbeError(f"{path}: no video packet")
    first = min(t for t, _ in times)
    last, last_duration = max(times)
    return max(0.0, last + last_duration - first)


@dataclass(frozen=True)
class LogLine:
    """One line ffmpeg wrote on stderr with `-loglevel level+...`."""

    level: str  # "error", "warning", "info"...; "" for the continuation of a message
    text: str  # without the level, with the component that spoke ("tcp: Connection refused")

    @property
    def is_error(self) -> bool:
        return self.level in ("error", "fatal", "panic")

    @property
    def input_stream(self) -> tuple[str, str, str] | None:
        """(kind, codec, description) when this line lists one of the input's streams."""
        found = _INPUT_STREAM.match(self.text) if self.level == "info" else None
        return (found["kind"].lower(), found["codec"], found["codec"] + found["rest"]) if found else None


def log_line(line: str) -> LogLine:
    """Parse one stderr line of ffmpeg run with `-loglevel level+LEVEL`."""
    found = _LOG_LINE.match(line.rstrip())
    if found is None:
        return LogLine("", line.strip())
    text = found["text"].strip()
    return LogLine(found["level"], f"{found['context']}: {text}" if found["context"] else text)


def record_command(
    source: str,
    pattern: str,
    segment_list: str,
    segment_seconds: int,
    stats_period: float = 2.0,
    live_fd: int | None = None,
) -> list[str]:
    """ffmpeg copying a camera's video into clock-aligned MPEG-TS segments, with progress on stdout.

    `source` is an ffconcat file (see `ffconcat_text`) or a media file;
    `pattern` is a strftime pattern (run ffmpeg with TZ=UTC); each finished
    segment is appended to the CSV `segment_list` with its start and end,
    relative to the first packet. With `live_fd`, the same video also goes, as
    one MPEG-TS stream, into that file descriptor (a pipe the recorder's live
    tap reads, see `halfbridge.live`), written out frame by frame: one RTSP
    session feeds the recording and every live flow.

    Only the first video stream is kept: video-protection records images, never
    sound (a camera's audio tracks are left behind), nor data tracks. Nothing is
    transcoded. stderr has ffmpeg's messages from `info` up, each tagged with its
    level (see `log_line`): the input's streams, then warnings and errors.
    """
    if source.endswith(".ffconcat"):
        stream = ffmpeg.input(source, f="concat", safe=0, protocol_whitelist=PROTOCOLS)
    else:
        stream = ffmpeg.input(source)
    video = stream["v:0"]
    out = ffmpeg.output(
        video,
        pattern,
        c="copy",
        f="segment",
        segment_format="mpegts",
        segment_time=segment_seconds,
        segment_atclocktime=1,
        strftime=1,
        segment_list=segment_list,
        segment_list_type="csv",
        # Each frame written out as it comes, not 32 KiB at a time: a killed ffmpeg loses at most
        # the frame it was writing (at a camera's low bitrate 32 KiB can be several seconds).
        segment_format_options="flush_packets=1",
        **{"bsf:v": FILL_PTS},
    )
    if live_fd is not None:
        # flush_packets: each frame is written to the pipe as soon as it is muxed (not in 32 KiB
        # blocks), so a live viewer gets it within milliseconds of the camera sending it. Not
        # FILL_PTS here: setts holds every packet until the next one comes (a frame late, 200 ms
        # at 5 fps). The live copy starts instead after the run's first frame (`ss`, the one
        # that may lack a timestamp), at the next keyframe.
        live = ffmpeg.output(
            video, f"pipe:{live_fd}", c="copy", f="mpegts", muxdelay=0, muxpreload=0, flush_packets=1, ss=LIVE_SKIP
        )
        out = ffmpeg.merge_outputs(out, live)
    out = out.global_args(
        "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info",
        "-progress", "pipe:1", "-stats_period", f"{stats_period:g}",
    )  # fmt: skip
    return ffmpeg.compile(out, cmd="ffmpeg", overwrite_output=True)
