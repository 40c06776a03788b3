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
