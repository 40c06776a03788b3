"""A simulated camera on this machine: the lab's own simulator, on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.support.inventory import ROOT

CAMSIM = ROOT / "roles" / "camera_simulator" / "files" / "usr" / "local" / "bin" / "halfbridge-camsim"


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
        self.port = free_port()
        self.id = camera_id
        self.username, self.password = "recorder", "s3cret-camera"
        self.config = workdir / f"{camera_id}.camsim.json"
        self.config.write_text(
            json.dumps(
                {"id": camera_id, "port": self.port, "address": "127.0.0.1", "username": self.username,
                 "password": self.password, "fps": 25, "keyframe_interval": 25, **settings}
            )
        )  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.username}:{self.password}@127.0.0.1:{self.port}/stream"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(CAMSIM), str(self.config)],
            env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.process, f"the simulated camera {self.id}", timeout=15)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
