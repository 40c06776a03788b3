"""halfbridge.media probes real streams with ffprobe."""

from __future__ import annotations

import subprocess

import pytest

from halfbridge.cli import probe_main
from halfbridge.media import ProbeError, probe_video, redact


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("media") / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25", "-t", "1",
         "-c:v", "libx264", "-g", "25", "-f", "mpegts", str(path)],
        check=True,
        timeout=60,
    )  # fmt: skip
    return str(path)


def test_probe_reads_codec_size_and_rate(clip):
    info = probe_video(clip)
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 320, 180, 25.0)


def test_probe_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(ProbeError, match="No such file"):
        probe_video(str(tmp_path / "absent.ts"))


def test_probe_of_an_unreachable_camera_hides_its_password():
    with pytest.raises(ProbeError) as caught:
        probe_video("rtsp://user:s3cret@127.0.0.1:9/stream", timeout=3)
    assert "s3cret" not in str(caught.value)
    assert "rtsp://127.0.0.1:9/stream" in str(caught.value)


def test_redact_keeps_host_and_path():
    assert redact("rtsp://u:p@198.18.10.20:8554/stream") == "rtsp://198.18.10.20:8554/stream"
    assert redact("/srv/file.ts") == "/srv/file.ts"


def test_cli_prints_json(clip, capsys):
    assert probe_main([clip]) == 0
    assert '"width": 320' in capsys.readouterr().out
    assert probe_main(["/nonexistent.ts"]) == 1
