"""A simulated camera on this machine: the lab's own simulator, on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from tests.support.inventory import ROOT

CAMSIM = ROOT / "lab" / "roles" / "camera_simulator" / "files" / "usr" / "local" / "bin" / "halfbridge-camsim"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(
    port: int, process: subprocess.Popen, what: str, timeout: float = 20.0, log: Path | None = None
) -> None:
    """Return once something accepts connections on the loopback `port`; a sentence if `process` dies first."""
    tail = (lambda: f": {log.read_text()[-2000:]}") if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{tail()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}{tail()}")


class Camera:
    """Start, stop and restart one simulated camera (as `systemctl stop` does in the lab)."""

    def __init__(self, workdir: Path, camera_id: str = "cam-test-01", **settings) -> None:
        """`settings` are the simulator's (codec, profile, audio, auth, shared, width, fps...)."""
        self.port = free_port()
        self.id = camera_id
        self.username, self.password = "recorder", "s3cret-camera"
        self.settings = {"id": camera_id, "port": self.port, "address": "127.0.0.1", "username": self.username,
                         "password": self.password, "fps": 25, "keyframe_interval": 25, **settings}  # fmt: skip
        self.config = workdir / f"{camera_id}.camsim.json"
        self.config.write_text(json.dumps(self.settings))
        self.log = workdir / f"{camera_id}.camsim.log"
        self.process: subprocess.Popen | None = None

    @property
    def auth(self) -> str:
        """`basic` or `digest`: ffmpeg answers either from the URL's user:password@."""
        return self.settings.get("auth", "basic")

    @property
    def url(self) -> str:
        """The camera's URL with its credentials (user:password@), whatever its authentication scheme."""
        return self.url_as(self.username, self.password)

    @property
    def bare_url(self) -> str:
        """The camera's URL without credentials (what the camera answers 401 to)."""
        return f"rtsp://127.0.0.1:{self.port}/stream"

    def url_as(self, username: str, password: str) -> str:
        """The camera's URL with other credentials, percent-encoded (a wrong password, another user)."""
        return f"rtsp://{quote(username, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/stream"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CAMSIM), str(self.config)],
                env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
                stdout=log,
                stderr=log,
            )
        wait_listening(self.port, self.process, f"the simulated camera {self.id}", timeout=15, log=self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
