"""A real etcd cluster on loopback (Debian's etcd-server), TLS between its members and towards its clients.

Each member listens on 127.0.0.1 on free ports, keeps its data under the work directory, requires a
client certificate from the test CA on both its peer and its client URLs, and elects quickly (a
heartbeat of 100 ms, an election after 1 s without one), so that a cluster cut in two shows it within
a test's patience. Every process is reaped by `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.camera import free_port
from tests.support.pki import TestCA

ETCD = Path("/usr/bin/etcd")
HEARTBEAT_MS, ELECTION_MS = 100, 1000


class Member:
    """One member: its name, its ports, its certificates and, once started, its process."""

    def __init__(self, workdir: Path, ca: TestCA, n: int) -> None:
        self.name = f"member{n}"
        self.client_port, self.peer_port = free_port(), free_port()
        self.data = workdir / f"{self.name}.data"
        self.log = workdir / f"{self.name}.log"
        # Neither certificate names a purpose (no extended key usage): each serves and is presented as a
        # client's, by the member to its peers and by etcd 3.4's JSON gateway, which dials the member's own
        # gRPC server with the client URL's certificate.
        self.cert, self.key = ca.issue(f"{self.name}", usage=False, addresses=("127.0.0.1",))
        self.peer_cert, self.peer_key = ca.issue(f"{self.name}-peer", usage=False, addresses=("127.0.0.1",))
        self.process: subprocess.Popen | None = None
        self.paused = False

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def said(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:] if self.log.exists() else ""


class EtcdCluster:
    """`members` etcd members on loopback, with a test CA; `client` is a client certificate for quotad."""

    def __init__(self, workdir: Path, members: int = 3) -> None:
        assert ETCD.exists(), f"{ETCD} is missing: install the Debian package etcd-server (make deps)"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA(workdir, cn="etcd test CA")
        self.members = [Member(workdir, self.ca, n) for n in range(members)]
        self.client = self.ca.issue("quotad-etcd-client")
        self.token = f"halfbridge-tests-{os.getpid()}-{id(self)}"

    # -- the processes --------------------------------------------------------

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            str(ETCD),
            f"--name={member.name}",
            f"--data-dir={member.data}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.token}",
            f"--cert-file={member.cert}",
            f"--key-file={member.key}",
            f"--trusted-ca-file={self.ca.path}",
            "--client-cert-auth",
            f"--peer-cert-file={member.peer_cert}",
            f"--peer-key-file={member.peer_key}",
            f"--peer-trusted-ca-file={self.ca.path}",
            "--peer-client-cert-auth",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start every member that is not running, and return once each says it is healthy."""
        for member in self.members:
            if not member.running:
                with member.log.open("ab") as log:
                    member.process = subprocess.Popen(
                        self._command(member),
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                member.paused = False
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = 60.0, members: list[int] | None = None) -> None:
        """Return once each of `members` (all by default) answers /health with true; fail with its log."""
        deadline = time.monotonic() + timeout
        for n in range(len(self.members)) if members is None else members:
            member = self.members[n]
            while not self.healthy(n):
                if not member.running:
                    raise AssertionError(
                        f"etcd {member.name} exited with {member.process.returncode}:\n{member.said()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {member.name} not healthy after {timeout} s:\n{member.said()}")
                time.sleep(0.1)

    def healthy(self, n: int) -> bool:
        member = self.members[n]
        try:
            url = f"{member.client_url}/health"  # https, always
            with urllib.request.urlopen(url, timeout=2, context=self._context()) as answer:  # noqa: S310
                return b'"health":"true"' in answer.read(4096)
        except (OSError, ValueError):
            return False

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.path))
        context.load_cert_chain(*self.client)
        return context

    def pause(self, n: int) -> None:
        """SIGSTOP: the member is cut off (its sockets accept, nothing answers), as a host lost on the network."""
        member = self.members[n]
        os.kill(member.process.pid, signal.SIGSTOP)
        member.paused = True

    def resume(self, n: int) -> None:
        member = self.members[n]
        os.kill(member.process.pid, signal.SIGCONT)
        member.paused = False

    def kill(self, n: int) -> None:
        """SIGKILL, reaped: the member's host crashed (its data stays; `start()` brings it back)."""
        member = self.members[n]
        if member.running:
            member.process.kill()
            member.process.wait(30)
        member.paused = False

    def stop(self) -> None:
        """Every member killed and reaped. SIGKILL: the data is thrown away, and a graceful stop of the whole
        cluster at once takes seconds (the leader waits to hand its leadership to members that are leaving)."""
        for member in self.members:
            if member.running:
                with contextlib.suppress(ProcessLookupError):
                    member.process.kill()
        for member in self.members:
            if member.process is not None:
                member.process.wait(30)
                member.paused = False

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what a client needs ----------------------------------------------------

    def endpoints(self, members: list[int] | None = None) -> list[str]:
        return [self.members[n].client_url for n in (range(len(self.members)) if members is None else members)]

    def settings(
        self, client_cert: Path | None = None, client_key: Path | None = None, members: list[int] | None = None
    ) -> dict:
        """quotad.json's "etcd" key, less the gateway's name (and prefix, timeout: their defaults): the endpoints
        of `members` (all by default) and the client certificate (the cluster's `client` by default)."""
        cert, key = (client_cert, client_key) if client_cert is not None else self.client
        return {
            "endpoints": self.endpoints(members),
            "ca_file": str(self.ca.path),
            "cert_file": str(cert),
            "key_file": str(key),
        }
