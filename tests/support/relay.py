"""The relay and the quota daemon run as the services do, on loopback, with a test CA."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from halfbridge.quotad import Quota
from tests.support.auditd import Auditd
from tests.support.camera import free_port, wait_listening
from tests.support.pki import TestCA

BIN = Path(sys.executable).parent


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class RelayLab:
    """A quota daemon and a relay in `workdir`; `cameras` are the relay's referential."""

    def __init__(self, workdir: Path, cameras: list[dict], limit: int = 10, ttl: float = 3.0, **settings) -> None:
        self.workdir = workdir
        self.ca = TestCA(workdir)
        self.server_cert, self.server_key = self.ca.issue("relay", server=True, addresses=("127.0.0.1",))
        self.client_cert, self.client_key = self.ca.issue("agent-dupont")
        self.port, self.management_port, self.node_port = free_port(), free_port(), free_port()
        self.gateway: str | None = None  # a gateway of a cluster once `join` has made it one
        self.store = workdir / "store"
        self.store.mkdir(exist_ok=True)
        self.auditd = Auditd(workdir, checkpoint_seconds=2)
        self.audit_log = self.auditd.log
        self.socket = workdir / "quotad.sock"
        self.quotad_config = workdir / "quotad.json"
        # The quota daemon's saved leases: none, as a first start finds them (else it holds back for a ttl).
        state = workdir / "quotad-state.json"
        state.write_bytes(Quota(limit, ttl).snapshot())
        self.quotad_config.write_text(
            json.dumps({"socket": str(self.socket), "limit": limit, "ttl": ttl, "state_file": str(state)})
        )
        self.config = workdir / "relay.json"
        self.config.write_text(
            json.dumps(
                {
                    "listen_host": "127.0.0.1",
                    "listen_port": self.port,
                    "management_host": "127.0.0.1",
                    "management_port": self.management_port,
                    "tls_certificate": str(self.server_cert),
                    "tls_key": str(self.server_key),
                    "tls_client_ca": str(self.ca.path),
                    "store_root": str(self.store),
                    "quotad_socket": str(self.socket),
                    "audit_socket": str(self.auditd.socket),
                    "live_dir": str(workdir / "live"),
                    "recorder_state_dir": str(workdir / "recorder"),
                    "cameras": cameras,
                    "renew_seconds": 1,
                    "segment_seconds": 2,
                    "designated_agents": ["agent-dupont"],
                    **settings,
                }
            )
        )
        self.quotad: subprocess.Popen | None = None
        self.relay: subprocess.Popen | None = None
        self.recorders: list[subprocess.Popen] = []
        (workdir / "live").mkdir(exist_ok=True)

    def start_quotad(self) -> None:
        log = self.workdir / "quotad.log"
        self.quotad = subprocess.Popen(
            [str(BIN / "halfbridge-quotad"), str(self.quotad_config)], stderr=log.open("ab"), stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.quotad.poll() is not None:
                raise RuntimeError(f"the quota daemon did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def start_relay(self) -> None:
        log = self.workdir / "relay.log"
        self.relay = subprocess.Popen(
            [str(BIN / "halfbridge-relay"), str(self.config)],
            stderr=log.open("ab"),
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        )
        wait_listening(self.port, self.relay, "the relay", log=log)
        if self.gateway is not None:
            wait_listening(self.node_port, self.relay, "the relay's node listener", log=log)

    def join(self, gateway: str, servers: TestCA, peers: dict[str, RelayLab]) -> RelayLab:
        """Make this relay gateway `gateway` of a cluster, before it starts: its node listener on loopback, with a
        certificate of `servers` (the partner's servers CA) that it also shows its `peers` (by name), which alone
        may ask it. A peer's node certificate is named `<name>-node`."""
        self.gateway = gateway
        self.node_cert, self.node_key = servers.issue(f"{gateway}-node", usage=False, addresses=("127.0.0.1",))
        settings = json.loads(self.config.read_text())
        settings.update(
            gateway=gateway,
            peers=[{"name": name, "url": f"https://127.0.0.1:{lab.node_port}"} for name, lab in peers.items()],
            node_host="127.0.0.1",
            node_port=self.node_port,
            node_tls_certificate=str(self.node_cert),
            node_tls_key=str(self.node_key),
            node_client_ca=str(servers.path),
            node_peers=[f"{name}-node" for name in peers],
        )
        self.config.write_text(json.dumps(settings))
        return self

    def start(self) -> RelayLab:
        self.auditd.spawn()
        self.start_quotad()
        self.start_relay()
        return self

    def record(self, camera) -> subprocess.Popen:
        """Start the recorder of a simulated camera, with its live tap where the relay looks; wait for its stream."""
        config = self.workdir / f"{camera.id}.recorder.json"
        live = self.workdir / "live" / f"{camera.id}.sock"
        config.write_text(
            json.dumps(
                {"camera": camera.id, "url": camera.url, "store_root": str(self.store),
                 "state_dir": str(self.workdir / "recorder"), "segment_seconds": 10, "live_socket": str(live),
                 "rtsp_timeout": 3, "watchdog_seconds": 5, "audit_socket": str(self.auditd.socket)}
            )
        )  # fmt: skip
        log = self.workdir / f"{camera.id}.recorder.log"
        process = subprocess.Popen(
            [str(BIN / "halfbridge-recorder"), str(config)], stderr=log.open("ab"), stdout=subprocess.DEVNULL
        )
        self.recorders.append(process)
        deadline = time.monotonic() + 20
        while True:  # the tap closes a connection at once until the camera streams
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the recorder of {camera.id} did not stream: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(2)
                probe.connect(str(live))
                if probe.recv(188):
                    return process
            time.sleep(0.2)

    def stop(self) -> None:
        for process in (self.relay, self.quotad, *self.recorders):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.auditd.stop()

    # -- a PP client ---------------------------------------------------------

    def context(self, certificate: bool | tuple[Path, Path] = True) -> ssl.SSLContext:
        """A client's TLS: the lab agent's certificate, another (certificate, key), or none (False)."""
        context = ssl.create_default_context(cafile=str(self.ca.path))
        if certificate:
            chain = certificate if isinstance(certificate, tuple) else (self.client_cert, self.client_key)
            context.load_cert_chain(*chain)
        return context

    def connect(self, certificate: bool | tuple[Path, Path] = True, timeout: float = 20) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(certificate), timeout=timeout)

    def open(
        self, path: str, certificate: bool | tuple[Path, Path] = True, headers: dict | None = None
    ) -> http.client.HTTPResponse:
        """A request whose body is left to read (a flow); close the response to end the flow."""
        connection = self.connect(certificate)
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse()

    def get(self, path: str, certificate: bool | tuple[Path, Path] = True, headers: dict | None = None) -> Answer:
        response = self.open(path, certificate, headers)
        try:
            return Answer(response.status, dict(response.headers), response.read())
        finally:
            response.close()

    def management(self, path: str) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.management_port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        return Answer(response.status, dict(response.headers), response.read())

    def audit(self) -> list[dict]:
        """What the daemons recorded (the writer's own entries left out)."""
        return self.auditd.events() if self.audit_log.exists() else []


class Drain:
    """Read a flow to its end in a thread, counting its bytes (the client of a flow, as idle as it can be)."""

    def __init__(self, stream) -> None:
        self.stream, self.bytes = stream, 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed under it at the end
            while chunk := self.stream.read1(65536):
                self.bytes += len(chunk)
