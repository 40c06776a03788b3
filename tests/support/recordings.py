"""The lab gateway's recordings as a test reads them: the index, the segments, their frames, the status."""

from __future__ import annotations

import json

from halfbridge.store import Segment, Store

STORE = "/srv/halfbridge/recordings"
STATE = "/var/lib/halfbridge/recorder"


def index(gw, camera: str) -> list[Segment]:
    """Every indexed segment of a camera, in time order, read as the store reads its indexes."""
    # run(), not check_output(): the latter strips the last newline, and a line without one is torn.
    result = gw.run(f"find {STORE}/{camera} -name index.csv -exec cat {{}} +")
    assert result.rc == 0, result.stderr
    return sorted(seg for line in result.stdout.splitlines(keepends=True) if (seg := Segment.parse(line)) is not None)


def path(camera: str, segment: Segment) -> str:
    return str(Store(STORE).segment_path(camera, segment.name))


def frames(gw, path: str) -> list[dict]:
    """The video frames of a file in file order: pts and duration (seconds), keyframe or not."""
    out = gw.check_output(
        f"ffprobe -v error -select_streams v:0 -show_entries packet=pts_time,duration_time,flags -of json {path}"
    )
    return [
        {"pts": float(p["pts_time"]), "duration": float(p.get("duration_time", 0.04)), "key": "K" in p["flags"]}
        for p in json.loads(out)["packets"]
    ]


def packets(gw, path: str) -> list[tuple[float, float]]:
    """(pts, duration) of every video frame of a file, in file order."""
    return [(f["pts"], f["duration"]) for f in frames(gw, path)]


def streams(gw, path: str) -> list[str]:
    """The kinds of the streams a file carries ("video", "audio"...)."""
    out = gw.check_output(f"ffprobe -v error -show_entries stream=codec_type -of json {path}")
    return [s["codec_type"] for s in json.loads(out)["streams"]]


def status(gw, camera: str) -> dict:
    result = gw.run(f"cat {STATE}/{camera}.status.json")
    return json.loads(result.stdout) if result.rc == 0 else {}
