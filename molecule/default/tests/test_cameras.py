"""From the gateway, every camera of the referential answers a real ffprobe (digest or basic authentication)."""

from __future__ import annotations

import json
import shlex
from urllib.parse import quote, urlsplit, urlunsplit

import pytest


def with_credentials(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def probe(gw, url: str) -> dict:
    command = (
        "ffprobe -v error -rtsp_transport tcp -timeout 10000000 -select_streams v:0 "
        "-show_entries stream=codec_name,width,height,avg_frame_rate -of json " + shlex.quote(url)
    )
    result = gw.run(command)
    assert result.rc == 0, f"ffprobe of {url.split('@')[-1]} failed: {result.stderr}"
    return json.loads(result.stdout)["streams"][0]


def test_every_camera_answers_its_codec_at_its_configured_resolution(lab_host, cameras):
    gw, cams = lab_host("gw"), lab_host("cams")
    assert cameras, "the lab referential lists no camera"
    for camera in cameras:
        configured = json.loads(cams.file(f"/etc/halfbridge-camsim/{camera['id']}.json").content_string)
        stream = probe(gw, with_credentials(camera["rtsp_url"], camera["username"], camera["password"]))
        assert stream["codec_name"] == {"h264": "h264", "h265": "hevc"}[configured.get("codec", "h264")], camera["id"]
        assert (stream["width"], stream["height"]) == (configured["width"], configured["height"]), camera["id"]
        assert stream["avg_frame_rate"] == f"{configured['fps']}/1", camera["id"]


def test_a_camera_refuses_wrong_credentials(lab_host, cameras):
    camera = cameras[0]
    url = with_credentials(camera["rtsp_url"], camera["username"], "not-the-password")
    result = lab_host("gw").run(f"ffprobe -v error -rtsp_transport tcp -timeout 10000000 {shlex.quote(url)}")
    assert result.rc != 0
    assert "401" in result.stderr


@pytest.mark.parametrize("state", ["stopped", "started"])
def test_one_camera_can_be_taken_down_alone(lab_host, cameras, state):
    """The outage switch later tests rely on: stopping one camera leaves the others up."""
    gw, cams = lab_host("gw"), lab_host("cams")
    down, other = cameras[0], cameras[1]
    action = "stop" if state == "stopped" else "start"
    cams.run_expect([0], f"systemctl {action} halfbridge-camsim@{down['id']}.service")
    if state == "started":
        cams.run_expect(
            [0], f"timeout 20 sh -c 'until ss -ltn | grep -q :{urlsplit(down['rtsp_url']).port}; do sleep 0.2; done'"
        )
    down_result = gw.run(
        "ffprobe -v error -rtsp_transport tcp -timeout 5000000 "
        + shlex.quote(with_credentials(down["rtsp_url"], down["username"], down["password"]))
    )
    assert (down_result.rc == 0) == (state == "started")
    probe(gw, with_credentials(other["rtsp_url"], other["username"], other["password"]))
