"""The camera simulator's stream profiles, as a client sees them: codec, B-frames, open GOP, sound, authentication."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.camera import CAMSIM, Camera

PROFILES = {
    # H.265 every 12 frames: the second keyframe, and the frames shown before it, come within 0.5 s.
    "high": {"codec": "h264", "profile": "high", "audio": "aac"},
    "h265": {"codec": "h265", "profile": "main", "audio": "g711", "auth": "digest", "keyframe_interval": 12},
}


def ffprobe(url: str, seconds: float = 2.5) -> dict:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-read_intervals", f"%+{seconds}",
         "-show_entries", "stream=index,codec_type,codec_name,profile,width,height,sample_rate"
         ":packet=stream_index,pts_time,dts_time,flags", "-of", "json", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def video_pts(probe: dict) -> list[tuple[float, bool]]:
    """(pts, keyframe) of each video packet, in the order sent (decoding order); packets without a pts left out."""
    return [
        (float(p["pts_time"]), "K" in p["flags"])
        for p in probe["packets"]
        if p["stream_index"] == 0 and p.get("pts_time") not in (None, "N/A")
    ]


def reordered(packets: list[tuple[float, bool]]) -> bool:
    """B-frames: a frame sent after another is shown before it."""
    return any(later < earlier for (earlier, _), (later, _) in itertools.pairwise(packets))


def leading_after_second_keyframe(packets: list[tuple[float, bool]]) -> list[float]:
    """An open GOP: frames sent after a keyframe (not the first) that are shown before it."""
    keys = [i for i, (_, key) in enumerate(packets) if key]
    assert len(keys) >= 2, f"fewer than two keyframes in {len(packets)} frames"
    key_pts = packets[keys[1]][0]
    return [pts for pts, _ in packets[keys[1] + 1 :] if pts < key_pts]


def describe(port: int, authorization: str | None = None) -> str:
    """A raw RTSP DESCRIBE: the response's status line and headers."""
    request = f"DESCRIBE rtsp://127.0.0.1:{port}/stream RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
    if authorization:
        request += f"Authorization: {authorization}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((request + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    return data.decode(errors="replace").split("\r\n\r\n")[0]


@pytest.fixture(scope="module")
def probes(tmp_path_factory, camsim_available) -> Iterator[dict[str, tuple[Camera, dict]]]:
    """Each profile's camera, started together, and what ffprobe saw of it."""
    work = tmp_path_factory.mktemp("camsim")
    cameras = {name: Camera(work, f"cam-{name}", **settings) for name, settings in PROFILES.items()}
    try:
        for camera in cameras.values():
            camera.start()
        with ThreadPoolExecutor(len(cameras)) as pool:
            found = dict(zip(cameras, pool.map(lambda c: ffprobe(c.url), cameras.values()), strict=True))
        yield {name: (cameras[name], found[name]) for name in cameras}
    finally:
        for camera in cameras.values():
            camera.stop()


def test_h264_high_sends_b_frames_and_aac(probes):
    camera, probe = probes["high"]
    video, audio = sorted(probe["streams"], key=lambda s: s["index"])
    assert (video["codec_name"], video["profile"], video["width"], video["height"]) == ("h264", "High", 640, 360)
    assert (audio["codec_name"], audio["sample_rate"]) == ("aac", "16000")
    packets = video_pts(probe)
    assert reordered(packets), "no B-frame: every frame was shown in the order it was sent"
    assert leading_after_second_keyframe(packets) == [], "x264's GOPs are closed"
    assert "H.264 High with B-frames (h264 high)" in camera.log.read_text()


def test_h265_main_sends_b_frames_an_open_gop_and_g711(probes):
    camera, probe = probes["h265"]
    video, audio = sorted(probe["streams"], key=lambda s: s["index"])
    assert (video["codec_name"], video["profile"], video["width"], video["height"]) == ("hevc", "Main", 640, 360)
    assert (audio["codec_name"], audio["sample_rate"]) == ("pcm_alaw", "8000")
    packets = video_pts(probe)
    assert reordered(packets)
    assert leading_after_second_keyframe(packets), "no frame sent after the keyframe is shown before it"
    assert "(h265 main)" in camera.log.read_text() and "G.711" in camera.log.read_text()


def test_a_digest_camera_offers_and_takes_only_digest(probes):
    camera, _ = probes["h265"]  # ffprobe logged in above, with the URL's user:password@
    assert camera.auth == "digest"
    challenge = describe(camera.port)
    assert challenge.startswith("RTSP/1.0 401")
    offered = [line for line in challenge.split("\r\n") if line.lower().startswith("www-authenticate:")]
    assert offered and all(line.split(":", 1)[1].strip().startswith("Digest ") for line in offered), offered
    basic = base64.b64encode(f"{camera.username}:{camera.password}".encode()).decode()
    assert describe(camera.port, f"Basic {basic}").startswith("RTSP/1.0 401"), "the right password sent in Basic"
    wrong = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", camera.url_as(camera.username, "wrong")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert wrong.returncode != 0 and "401" in wrong.stderr


def test_a_basic_camera_offers_basic(probes):
    camera, _ = probes["high"]
    assert "WWW-Authenticate: Basic " in describe(camera.port)


def test_a_shared_camera_sends_every_client_the_same_frames_without_restarting(tmp_path, camsim_available):
    camera = Camera(tmp_path, "cam-shared", shared=True, profile="high")
    camera.start()
    try:

        def frames(seconds: float) -> subprocess.Popen:
            return subprocess.Popen(
                ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", camera.url, "-map", "0:v:0",
                 "-c", "copy", "-t", str(seconds), "-f", "framemd5", "-"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip

        first = frames(4.0)
        time.sleep(1.2)
        second = frames(2.0)
        rows = [[line.split(",") for line in p.communicate(timeout=30)[0].splitlines() if not line.startswith("#")]
                for p in (first, second)]  # fmt: skip
    finally:
        camera.stop()
    first_rows, second_rows = rows
    assert len(second_rows) > 25
    assert {r[5].strip() for r in second_rows} <= {r[5].strip() for r in first_rows}, "different bytes"
    dts = [int(r[1]) for r in first_rows]
    assert dts == sorted(dts), "the first client's timestamps went back when the second one joined"


def test_a_camera_without_picture_sends_its_sound_alone(tmp_path, camsim_available):
    camera = Camera(tmp_path, "cam-sound", codec="none", audio="g711")
    camera.start()
    try:
        probe = ffprobe(camera.url, seconds=0.5)
    finally:
        camera.stop()
    assert [(s["codec_type"], s["codec_name"]) for s in probe["streams"]] == [("audio", "pcm_alaw")]
    assert "no picture (codec none)" in camera.log.read_text()


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"codec": "vp8"}, "codec must be h264, h265 or none, got 'vp8'"),
        ({"codec": "none"}, "codec none and audio none: the camera would send nothing"),
        ({"profile": "main"}, "profile 'main' is not a profile of h264: choose baseline or high"),
        ({"codec": "h265", "profile": "high"}, "profile 'high' is not a profile of h265: choose main"),
        ({"audio": "mp3"}, "audio must be none, aac or g711, got 'mp3'"),
        ({"auth": "ntlm"}, "auth must be basic or digest, got 'ntlm'"),
        ({"shared": "yes"}, "shared must be true or false, got 'yes'"),
        ({"codex": "h265"}, "unknown setting(s) codex"),
    ],
)
def test_bad_settings_are_refused_in_a_sentence(tmp_path, camsim_available, settings, said):
    camera = Camera(tmp_path, "cam-bad", **settings)
    done = subprocess.run([str(CAMSIM), "--check", str(camera.config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert said in done.stderr and "Traceback" not in done.stderr


def test_every_profile_checks_out(tmp_path, camsim_available):
    """--check (run by the role before starting a camera) builds each pipeline: the plugins are there."""
    for name, settings in PROFILES.items():
        camera = Camera(tmp_path, f"cam-{name}", **settings)
        done = subprocess.run([str(CAMSIM), "--check", str(camera.config)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "the configuration is good" in done.stdout
