"""Command-line entry points."""

from __future__ import annotations

import argparse
import json
import sys

from halfbridge.media import ProbeError, probe_video


def probe_main(argv: list[str] | None = None) -> int:
    """halfbridge-probe URL: print the video stream's codec, size and frame rate as JSON."""
    parser = argparse.ArgumentParser(prog="halfbridge-probe", description=probe_main.__doc__)
    parser.add_argument("url", help="a file, or rtsp://[user:password@]host:port/path")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the stream (default 15)")
    args = parser.parse_args(argv)
    try:
        info = probe_video(args.url, timeout=args.timeout)
    except ProbeError as exc:
        print(f"halfbridge-probe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info.as_dict()))
    return 0


def _logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def recorder_main(argv: list[str] | None = None) -> int:
    """halfbridge-recorder CONFIG: record one camera continuously, as configured in CONFIG (JSON)."""
    from halfbridge.recorder import Recorder, RecorderConfig

    parser = argparse.ArgumentParser(prog="halfbridge-recorder", description=recorder_main.__doc__)
    parser.add_argument("config", help="the camera's JSON configuration (it holds the RTSP credentials)")
    parser.add_argument("--verbose", action="store_true", help="log ffmpeg's restarts in detail")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    return Recorder(RecorderConfig.load(args.config)).serve()
