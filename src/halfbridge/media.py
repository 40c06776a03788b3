"""ffmpeg and ffprobe, through ffmpeg-python's builders (never shell strings)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction

# ffmpeg.probe() has no time bound; we keep its argument builder and run
# ffprobe ourselves, always reaped and bounded in time.
from ffmpeg._utils import convert_kwargs_to_cmd_line_args


class ProbeError(RuntimeError):
    """A stream could not be probed; the message says why, without credentials."""


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    fps: float

    def as_dict(self) -> dict:
        return asdict(self)


def redact(url: str) -> str:
    """The URL without its user and password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def probe_video(url: str, timeout: float = 15.0) -> VideoInfo:
    """Codec, size and frame rate of the first video stream of `url` (a file or an RTSP URL)."""
    options = {"v": "error", "select_streams": "v:0", "show_entries": "stream=codec_name,width,height,avg_frame_rate"}
    if url.startswith("rtsp://"):
        options.update(rtsp_transport="tcp", timeout=str(int(timeout * 1_000_000)))
    args = ["ffprobe", "-of", "json", *convert_kwargs_to_cmd_line_args(options), url]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"{redact(url)}: no answer within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise ProbeError("ffprobe is not installed (Debian package ffmpeg)") from None
    if done.returncode != 0:
        reason = done.stderr.strip().replace(url, redact(url)) or f"ffprobe exited with {done.returncode}"
        raise ProbeError(f"{redact(url)}: {reason}")
    streams = json.loads(done.stdout or "{}").get("streams") or []
    if not streams:
        raise ProbeError(f"{redact(url)}: no video stream")
    stream = streams[0]
    rate = stream.get("avg_frame_rate") or "0/1"
    fps = float(Fraction(rate)) if rate != "0/0" else 0.0
    return VideoInfo(codec=stream["codec_name"], width=int(stream["width"]), height=int(stream["height"]), fps=fps)
