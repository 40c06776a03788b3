"""Every stream a camera sends, as the PP sees it: played back to the frame, live at once, never its sound.

The lab's cameras send one profile each (inventories/lab/group_vars/camera_simulators.yml):
H.264 baseline, H.264 High with B-frames and AAC sound, H.265 with B-frames, an open
GOP and G.711 sound (digest authentication only), and a 1080p camera at 4 Mbit/s.
Expected frames are read on the gateway with ffprobe from the segments themselves;
what the relay sent is decoded on the controller.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tempfile
import time

import pytest

from halfbridge import ts
from halfbridge.store import iso
from tests.support.inventory import host_var
from tests.support.recordings import frames, index, path, status
from tests.support.viewer import fetch
from tests.support.waiting import wait_for

# The encoders' reorder depth: how many frames past `to` the reference frames a B-frame needs can show.
REORDER_FRAMES = 4


@pytest.fixture(scope="module")
def base(lab_host) -> str:
    relay = json.loads(lab_host("gw").check_output("cat /etc/halfbridge/relay.json"))
    return f"https://{relay['listen_host']}:{relay['listen_port']}"


@pytest.fixture(scope="module")
def profiles(lab_host, cameras) -> dict[str, dict]:
    """Each camera's simulator settings, as deployed on `cams`."""
    cams = lab_host("cams")
    return {c["id"]: json.loads(cams.file(f"/etc/halfbridge-camsim/{c['id']}.json").content_string) for c in cameras}


def probe(data: bytes, suffix: str, entries: str) -> dict:
    """ffprobe of bytes a flow sent, on the controller."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        done = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", handle.name],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    return json.loads(done.stdout)


def decode_errors(data: bytes, suffix: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        done = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", handle.name, "-f", "null", "-"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    return done.stderr.strip() if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


def whole_ts(data: bytes) -> bytes:
    """A live MPEG-TS flow cut by the viewer: up to its last frame that arrived whole."""
    found = ts.frames(data)
    return data[: found[-1].offset] if found else b""


def whole_mp4(data: bytes) -> bytes:
    """A live MP4 flow cut by the viewer: up to its last whole box."""
    end = 0
    while end + 8 <= len(data) and (size := int.from_bytes(data[end : end + 4], "big")) >= 8:
        if end + size > len(data):
            break
        end += size
    if data[end - size : end - size + 8][4:8] == b"moof":  # a fragment's header without its data
        end -= size
    return data[:end]


@pytest.mark.parametrize("container", ["ts", "mp4"])
def test_live_decodes_for_every_profile_without_sound(lab_host, cameras, profiles, base, container):
    gw, pp = lab_host("gw"), lab_host("pp")
    for camera in cameras:
        # An earlier test may have just taken a camera down and up: its recorder's back-off ends first.
        wait_for(lambda c=camera: status(gw, c["id"]).get("state") == "recording", 30, f"{camera['id']} recording")
        data = fetch(pp, f"{base}/v1/cameras/{camera['id']}/live?format={container}", 4)
        data = whole_ts(data) if container == "ts" else whole_mp4(data)
        found = probe(data, f".{container}", "stream=codec_type,codec_name,width,height")["streams"]
        assert [s["codec_type"] for s in found] == ["video"], (camera["id"], container, found)
        profile = profiles[camera["id"]]
        assert found[0]["codec_name"] == {"h264": "h264", "h265": "hevc"}[profile.get("codec", "h264")]
        assert (found[0]["width"], found[0]["height"]) == (profile["width"], profile["height"]), camera["id"]
        assert decode_errors(data, f".{container}") == "", (camera["id"], container)


def test_a_cameras_sound_is_said_once_in_its_status_and_never_recorded(lab_host, cameras, profiles):
    gw = lab_host("gw")
    for camera in cameras:
        audio = profiles[camera["id"]].get("audio", "none")
        said = status(gw, camera["id"])["audio"]
        expected = {"none": "none", "aac": "dropped (aac)", "g711": "dropped (pcm_alaw)"}[audio]
        assert said == expected, (camera["id"], said)


def shown(gw, camera: str, start: float, end: float) -> tuple[float, list[float]]:
    """From the segments on the gateway: the keyframe at or before `start`, and every frame shown up to `end`."""
    times, keys = [], []
    for segment in index(gw, camera):
        if segment.end < start - 3 or segment.start > end + 3:
            continue
        found = frames(gw, path(camera, segment))
        origin = found[0]["pts"]  # the index places a segment by its first frame in the file
        for frame in found:
            at = round(segment.start + frame["pts"] - origin, 3)
            times.append(at)
            if frame["key"]:
                keys.append(at)
    keyframe = max(k for k in keys if k <= start + 1e-3)
    return keyframe, sorted(t for t in times if keyframe - 1e-3 <= t <= end + 1e-3)


def contiguous(gw, camera: str, count: int, frame: float) -> list:
    """The newest `count` finished segments of a camera that follow one another (waiting if need be)."""
    deadline = time.time() + 60
    while True:
        rows = index(gw, camera)[-count - 1 : -1]
        if len(rows) == count and all(b.start - a.end < 0.5 for a, b in itertools.pairwise(rows)):
            return rows
        assert time.time() < deadline, f"{camera}: no {count} contiguous segments"
        time.sleep(frame * 50)


@pytest.mark.parametrize(("name", "seconds", "segments"), [("3 s in one segment", 3, 1), ("12 s across three", 12, 3)])
def test_playback_returns_exactly_the_asked_frames_for_every_profile(
    lab_host, cameras, profiles, base, name, seconds, segments
):
    gw, pp = lab_host("gw"), lab_host("pp")
    length = host_var("gw", "recorder_segment_seconds")
    for camera in cameras:
        frame = 1 / profiles[camera["id"]]["fps"]
        rows = contiguous(gw, camera["id"], 3, frame)
        # Inside one segment: 3.3 s in, not on a keyframe. Across three: from 1.3 s before the second ends.
        start = rows[0].start + 3.3 if segments == 1 else rows[0].start + length - 1.3
        end = start + seconds
        url = f"{base}/v1/cameras/{camera['id']}/playback?from={iso(start)}&to={iso(end)}&pace=fast"
        data = fetch(pp, url.replace("+00:00", "Z"), 60)
        keyframe, asked = shown(gw, camera["id"], start, end)
        decoded = probe(data, ".ts", "frame=pts_time,key_frame")["frames"]
        times = sorted(float(f["pts_time"]) for f in decoded if f.get("pts_time") not in (None, "N/A"))
        first = min(decoded, key=lambda f: float(f["pts_time"]))
        assert first["key_frame"] == 1, (camera["id"], name, "the first frame shown is a keyframe")
        relative = [round(t - times[0] + keyframe, 3) for t in times]
        missing = sorted(set(asked) - set(relative))
        assert not missing, (camera["id"], name, f"{len(missing)} asked frames missing, e.g. {missing[:3]}")
        assert len(asked) <= len(relative) <= len(asked) + REORDER_FRAMES, (camera["id"], name, len(asked))
        assert relative[-1] >= end - frame - 1e-3, (camera["id"], name, "the last frame is at `to`")
        assert decode_errors(data, ".ts") == "", (camera["id"], name)
