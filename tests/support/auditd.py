"""The audit writer as the services meet it: `halfbridge-auditd` on a Unix socket in a test directory."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from halfbridge.audit import AuditClient, Verdict, read, read_key, verify, with_rotations
from halfbridge.auditd import AuditdConfig, Writer, serve

BIN = Path(sys.executable).parent


class Auditd:
    """A writer for `workdir`: its key, its log directory and its socket. `start()` runs it in this process
    (a thread: fast, for unit tests), `spawn()` as its own process (as deployed: it can be killed)."""

    def __init__(self, workdir: Path, **settings) -> None:
        self.workdir = workdir
        self.dir = workdir / "log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "audit.log"
        self.key_file = workdir / "audit.key"
        if not self.key_file.exists():
            self.key_file.write_text(secrets.token_hex(32) + "\n")
            self.key_file.chmod(0o400)
        self.socket = workdir / "audit.sock"
        self.config_file = workdir / "auditd.json"
        self.settings = {"log": str(self.log), "key_file": str(self.key_file), "socket": str(self.socket), **settings}
        self.config_file.write_text(json.dumps(self.settings))
        self.client = AuditClient(self.socket, timeout=10)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.process: subprocess.Popen | None = None

    @property
    def key(self) -> bytes:
        return read_key(self.key_file)

    def start(self) -> Auditd:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            started = asyncio.Event()
            task = asyncio.create_task(serve(AuditdConfig.load(self.config_file), started, self._stop))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            ready.set()
            await task

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="auditd", daemon=True)
        self._thread.start()
        if not ready.wait(20) or failure:
            raise RuntimeError(f"the audit writer did not start: {failure}")
        return self

    def spawn(self) -> Auditd:
        stderr = (self.workdir / "auditd.log").open("ab")
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(BIN / "halfbridge-auditd"), str(self.config_file)], stderr=stderr, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"halfbridge-auditd did not start: {(self.workdir / 'auditd.log').read_text()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.client.close()
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)
            self._thread = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Auditd:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    # -- reading what was written -------------------------------------------

    def files(self) -> list[Path]:
        """The log files, oldest first: the rotations, then the current file."""
        return with_rotations(self.log)

    def entries(self) -> list[dict]:
        return [entry for _path, _number, entry in read(p for p in self.files() if p.exists())]

    def events(self, prefix: str = "") -> list[dict]:
        return [e for e in self.entries() if e["event"].startswith(prefix) and not e["event"].startswith("audit.")]

    def verify(self, **kwargs) -> Verdict:
        return verify(self.files(), self.key, self.dir / "audit.head", **kwargs)


def write_log(workdir: Path, entries: list[tuple[str, dict]]) -> Auditd:
    """A log holding `entries` (event, fields), written by the writer itself without its socket."""
    auditd = Auditd(workdir)
    writer = Writer(AuditdConfig.load(auditd.config_file), auditd.key)
    writer.open()
    for event, fields in entries:
        writer.append_own(event, fields)
    writer.close()
    return auditd
