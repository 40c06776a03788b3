"""A recorder and a bare ffmpeg segmenter of the same camera, as the benchmarks run them side by side."""

from __future__ import annotations

import json
from pathlib import Path


def recorder_config(path: Path, camera, workdir: Path, segment_seconds: int, live_socket: Path | None) -> Path:
    """Write a halfbridge-recorder configuration for `camera` (its live tap on `live_socket`, if any)."""
    settings = {
        "camera": camera.id,
        "url": camera.url,
        "store_root": str(workdir / f"{path.stem}-store"),
        "state_dir": str(workdir / f"{path.stem}-state"),
        "segment_seconds": segment_seconds,
    }
    if live_socket is not None:
        settings["live_socket"] = str(live_socket)
    path.write_text(json.dumps(settings))
    return path


def bare_segmenter(url: str, directory: Path, segment_seconds: int) -> list[str]:
    """ffmpeg alone doing the recorder's job: the camera's video copied into clock-aligned MPEG-TS segments."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
        "-i", url, "-map", "0:v:0", "-c", "copy", "-f", "segment", "-segment_format", "mpegts",
        "-segment_time", str(segment_seconds), "-segment_atclocktime", "1", "-strftime", "1",
        "-segment_list", str(directory / "list.csv"), "-segment_list_type", "csv",
        str(directory / "%Y%m%dT%H%M%SZ.ts"),
    ]  # fmt: skip
