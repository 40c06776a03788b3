"""Synthetic media files for tests: an H.264 test pattern, optionally with a tone."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(
    path: Path, size: str = "320x180", seconds: float = 1, gop: int = 25, audio_codec: str | None = None
) -> str:
    """Encode `seconds` of 25 fps test pattern, a keyframe every `gop` frames exactly; returns the path."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25"]
    codecs = ["-c:v", "libx264", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if audio_codec:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
        codecs += ["-c:a", audio_codec]
    subprocess.run(["ffmpeg", "-v", "error", *inputs, "-t", f"{seconds:g}", *codecs, str(path)], check=True, timeout=60)
    return str(path)
