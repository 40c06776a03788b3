from __future__ import annotations

import shutil

import pytest

from tests.support.camera import CAMSIM, Camera


def _have_gstreamer() -> bool:
    import subprocess

    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def camsim_available() -> None:
    if not (shutil.which("ffmpeg") and CAMSIM.exists() and _have_gstreamer()):
        pytest.fail("integration tests need ffmpeg and GStreamer's RTSP server: run `make deps`")


@pytest.fixture
def camera(tmp_path, camsim_available):
    cam = Camera(tmp_path)
    cam.start()
    yield cam
    cam.stop()
