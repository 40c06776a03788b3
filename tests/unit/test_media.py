"""halfbridge.media probes real streams with ffprobe."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from halfbridge.cli import probe_main
from halfbridge.media import ProbeError, log_line, probe_options, probe_video, record_command, redact
from halfbridge.recorder import Recorder, RecorderConfig, Run
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


def ffmpeg_run(command: list[str]) -> tuple[int, list[str]]:
    environment = {"TZ": "UTC", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
    return done.returncode, done.stderr.splitlines()


def fed(recorder, lines: list[str]) -> Run:
    """A recorder's view of one ffmpeg run whose stderr was `lines`."""
    run = Run(process=None, started=0.0, list_path=Path("/nonexistent"))
    for line in lines:
        recorder._on_stderr(run, line + "\n")
    return run


@pytest.mark.parametrize("audio_codec", ["aac", "pcm_alaw"])
def test_a_cameras_sound_is_left_behind_and_named_once(tmp_path, audio_codec, caplog):
    """Video-protection records images: no audio stream reaches a segment, and the status says what was dropped."""
    clip = make_clip(tmp_path / "camera.mkv", seconds=2, audio_codec=audio_codec)
    config = RecorderConfig(camera="cam-01", url=clip, store_root=tmp_path / "s", state_dir=tmp_path / "t")
    recorder = Recorder(config)
    pattern = str(tmp_path / "%Y%m%dT%H%M%SZ.ts")
    code, stderr = ffmpeg_run(record_command(clip, pattern, str(tmp_path / "list.csv"), 60))
    assert code == 0, stderr
    run = fed(recorder, stderr)
    assert run.first_error is None
    assert run.video.startswith("h264") and "320x180" in run.video
    assert run.audio == [audio_codec]
    with caplog.at_level("INFO"):
        recorder.streams_listed(run)
        recorder.streams_listed(run)
    assert caplog.text.count(f"its sound ({audio_codec}) is not recorded") == 1
    recorder.write_status()
    status = json.loads((tmp_path / "t" / "cam-01.status.json").read_text())
    assert status["audio"] == f"dropped ({audio_codec})" and status["video"].startswith("h264")
    for segment in tmp_path.glob("*.ts"):
        found = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", str(segment)],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        assert [s["codec_type"] for s in json.loads(found)["streams"]] == ["video"], segment


def test_the_reason_given_is_ffmpegs_first_error_not_its_last_line(tmp_path):
    """A camera that sends no picture: ffmpeg refuses it, and says why first, then what to try."""
    sound_only = tmp_path / "sound.mka"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine", "-t", "1", str(sound_only)], check=True, timeout=30
    )
    config = RecorderConfig(camera="cam-01", url=str(sound_only), store_root=tmp_path / "s", state_dir=tmp_path / "t")
    recorder = Recorder(config)
    code, stderr = ffmpeg_run(record_command(str(sound_only), str(tmp_path / "x.ts"), str(tmp_path / "l.csv"), 60))
    assert code != 0
    assert "matches no streams" not in stderr[-1], "ffmpeg's last line is only advice"
    run = fed(recorder, stderr)
    assert run.first_error == "Stream map '0:v:0' matches no streams."
    assert run.video is None and run.audio


def test_ffmpeg_log_lines_are_parsed_with_their_level_and_component():
    line = log_line("[tcp @ 0x561e96a8c840] [error] Connection to tcp://127.0.0.1:9 failed: Connection refused")
    assert (line.level, line.is_error) == ("error", True)
    assert line.text == "tcp: Connection to tcp://127.0.0.1:9 failed: Connection refused"
    assert log_line("To ignore this, add a trailing '?' to the map.").level == ""
    stream = log_line("[info]   Stream #0:1[0x101]: Audio: pcm_alaw, 8000 Hz, mono, s16, 64 kb/s").input_stream
    assert stream == ("audio", "pcm_alaw", "pcm_alaw, 8000 Hz, mono, s16, 64 kb/s")


def test_record_command_keeps_credentials_off_the_command_line():
    from halfbridge.media import ffconcat_text, record_command

    command = record_command("/run/cam.ffconcat", "/srv/r/cam/%Y/%m/%d/%Y%m%dT%H%M%SZ.ts", "/s/l.csv", 60)
    assert command[:4] == ["ffmpeg", "-f", "concat", "-protocol_whitelist"]
    assert "-c" in command and command[command.index("-c") + 1] == "copy"
    assert command[command.index("-map") + 1] == "0:v:0" and command.count("-map") == 1
    playlist = ffconcat_text("rtsp://u:p%40ss@198.18.10.20:8554/stream", 10)
    assert "file 'rtsp://u:p%40ss@198.18.10.20:8554/stream'" in playlist
    assert "option rtsp_transport tcp" in playlist
    with pytest.raises(ProbeError):
        ffconcat_text("rtsp://u:it's@h/s", 10)


def test_ffprobe_gets_its_options_as_a_plain_list_sorted_and_flags_alone():
    options = {"v": "error", "show_entries": "stream=codec_type", "read_intervals": "%+2", "count_packets": None}
    assert probe_options(options) == [
        "-count_packets", "-read_intervals", "%+2", "-show_entries", "stream=codec_type", "-v", "error",
    ]  # fmt: skip
    assert probe_options({"rw_timeout": 5_000_000, "n": 0}) == ["-n", "0", "-rw_timeout", "5000000"]
    assert probe_options({}) == []


def _private_ffmpeg_uses(tree: ast.AST) -> list[str]:
    """Where a module reaches into ffmpeg-python's private parts: `ffmpeg._x` modules, or names starting with _."""
    aliases = {"ffmpeg"}  # names under which the module reads ffmpeg
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ffmpeg":
                    aliases.add(alias.asname or "ffmpeg")
                    found += [f"line {node.lineno}: import {alias.name}" for p in parts[1:] if p.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ffmpeg":
            parts = (node.module or "").split(".")[1:] + [a.name for a in node.names]
            if any(p.startswith("_") for p in parts):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_"):
            found += [f"line {node.lineno}: {node.value.id}.{node.attr}"] if node.value.id in aliases else []
    return found


def test_no_module_uses_a_private_part_of_ffmpeg_python():
    """Its public API (input, output, merge_outputs, compile...) only: a private name may go in any release."""
    hidden = "from ffmpeg._utils import x\nimport ffmpeg._run\nimport ffmpeg as f\nf._y"
    assert _private_ffmpeg_uses(ast.parse(hidden)) == [
        "line 1: from ffmpeg._utils import x", "line 2: import ffmpeg._run", "line 4: f._y",
    ]  # fmt: skip
    assert _private_ffmpeg_uses(ast.parse("import ffmpeg\nffmpeg.input('x')\nfrom ffmpeg import compile")) == []
    src = Path(__file__).resolve().parents[2] / "src" / "halfbridge"
    found = {
        str(path.relative_to(src)): uses
        for path in sorted(src.rglob("*.py"))
        if (uses := _private_ffmpeg_uses(ast.parse(path.read_text(encoding="utf-8"), str(path))))
    }
    assert found == {}, f"ffmpeg-python's private parts used: {found}"
