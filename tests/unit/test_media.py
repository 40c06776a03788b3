"""halfbridge.media probes real streams with ffprobe."""

from __future__ import annotations

import pytest

from halfbridge.cli import probe_main
from halfbridge.media import ProbeError, probe_video, redact
from tests.support.media import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return make_clip(tmp_path_factory.mktemp("media") / "clip.ts")


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


@pytest.fixture(scope="module")
def clip_with_alaw(tmp_path_factory) -> str:
    return make_clip(tmp_path_factory.mktemp("media") / "alaw.mkv", audio_codec="pcm_alaw")


def test_audio_that_mpegts_cannot_carry_is_dropped_with_a_log_line(clip_with_alaw, tmp_path, caplog):
    from halfbridge.recorder import Recorder, RecorderConfig

    config = RecorderConfig(camera="cam-01", url=clip_with_alaw, store_root=tmp_path / "s", state_dir=tmp_path / "t")
    recorder = Recorder(config)
    with caplog.at_level("WARNING"):
        assert recorder.decide_audio() is False
    assert "audio in pcm_alaw cannot be carried in MPEG-TS; recording the video only" in caplog.text
    assert recorder.audio_note.startswith("dropped")


def test_record_command_keeps_credentials_off_the_command_line():
    from halfbridge.media import ffconcat_text, record_command

    command = record_command("/run/cam.ffconcat", "/srv/r/cam/%Y/%m/%d/%Y%m%dT%H%M%SZ.ts", "/s/l.csv", 60, False)
    assert command[:4] == ["ffmpeg", "-f", "concat", "-protocol_whitelist"]
    assert "-c" in command and command[command.index("-c") + 1] == "copy"
    assert command[command.index("-map") + 1] == "0:v:0" and command.count("-map") == 1
    playlist = ffconcat_text("rtsp://u:p%40ss@198.18.10.20:8554/stream", 10)
    assert "file 'rtsp://u:p%40ss@198.18.10.20:8554/stream'" in playlist
    assert "option rtsp_transport tcp" in playlist
    with pytest.raises(ProbeError):
        ffconcat_text("rtsp://u:it's@h/s", 10)
