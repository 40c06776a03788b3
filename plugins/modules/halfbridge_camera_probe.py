#!/usr/bin/python
"""Ansible module: probe a camera's RTSP stream with ffprobe (through halfbridge.media)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: halfbridge_camera_probe
short_description: Probe a camera's video stream (codec, size, frame rate, keyframe interval)
description:
  - Reads a few seconds of a camera's stream with ffprobe, through the C(halfbridge) package's
    C(media) module (ffmpeg-python), and returns what it found.
  - The camera's credentials reach ffprobe through a private temporary file, never its command line.
  - A camera that does not answer is not a failure. The module warns, returns C(reachable=false)
    and the play goes on (the recorder keeps trying to reach it).
  - Runs with the interpreter of the gateway's halfbridge virtualenv (C(ansible_python_interpreter)).
version_added: "0.1.0"
options:
  url:
    description: RTSP URL of the camera, without credentials (or a media file, for tests).
    type: str
    required: true
  username:
    description: RTSP user name.
    type: str
  password:
    description: RTSP password.
    type: str
  timeout:
    description: Seconds to wait for the camera.
    type: float
    default: 10
  gop_seconds:
    description: Seconds of packets to read to measure the keyframe interval (0 to skip).
    type: float
    default: 5
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
author: Partner half-gateway maintainers
"""

EXAMPLES = r"""
- name: Probe a camera
  halfbridge_camera_probe:
    url: rtsp://198.18.10.20:8554/stream
    username: "{{ vault_camera_username }}"
    password: "{{ vault_camera_password }}"
  vars:
    ansible_python_interpreter: /opt/halfbridge/venv/bin/python
  register: probe

- name: Refuse a camera that sends neither H.264 nor H.265
  ansible.builtin.assert:
    that: not probe.reachable or probe.codec in ['h264', 'hevc']
"""

RETURN = r"""
reachable:
  description: Whether the camera answered.
  returned: always
  type: bool
codec:
  description: Video codec name, as ffprobe says it.
  returned: when reachable
  type: str
  sample: h264
width:
  description: Picture width in pixels.
  returned: when reachable
  type: int
height:
  description: Picture height in pixels.
  returned: when reachable
  type: int
fps:
  description: Average frame rate.
  returned: when reachable
  type: float
keyframe_interval:
  description: Longest interval between two keyframes seen, in seconds (null if fewer than two).
  returned: when reachable
  type: float
audio:
  description: Audio codec name, or null when the stream has no audio.
  returned: when reachable
  type: str
error:
  description: Why the camera could not be probed (credentials never appear in it).
  returned: when not reachable
  type: str
"""

from urllib.parse import quote, urlsplit, urlunsplit

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from halfbridge.media import ProbeError, probe_video
except ImportError:  # pragma: no cover - reported by the module itself
    probe_video = None


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    if not username:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    auth = quote(username, safe="") + ":" + quote(password or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


class CameraProbe:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module

    def run(self) -> dict:
        params = self.module.params
        url = with_credentials(params["url"], params["username"], params["password"])
        try:
            info = probe_video(url, timeout=params["timeout"], gop_seconds=params["gop_seconds"])
        except ProbeError as exc:
            self.module.warn(f"camera {params['url']} did not answer ({exc}); its recorder keeps trying")
            return {"changed": False, "reachable": False, "error": str(exc)}
        return {"changed": False, "reachable": True, **info.as_dict()}


def build_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "timeout": {"type": "float", "default": 10},
            "gop_seconds": {"type": "float", "default": 5},
        },
        supports_check_mode=True,
    )


def main() -> None:
    module = build_module()
    if probe_video is None:
        module.fail_json(
            msg=missing_required_lib("halfbridge (run the module with the gateway's virtualenv interpreter)")
        )
    module.exit_json(**CameraProbe(module).run())


if __name__ == "__main__":
    main()
