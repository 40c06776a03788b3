"""`halfbridge-quotad` as its service runs it, from a quotad.json of the caller's: started, stopped, reaped."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from halfbridge.quotad import QuotaClient, QuotaError
from tests.support.relay import BIN
from tests.support.waiting import wait_for


class Quotad:
    """One daemon named `name` in `workdir` (its socket, configuration and log); `settings` are quotad.json's
    keys but the socket."""

    def __init__(self, workdir: Path, settings: dict, name: str = "quotad") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.socket = workdir / f"{name}.sock"
        self.config = workdir / f"{name}.json"
        self.log = workdir / f"{name}.log"
        self.config.write_text(json.dumps({"socket": str(self.socket), **settings}))
        self.process: subprocess.Popen | None = None

    def start(self) -> Quotad:
        """Start it and wait until it answers (a socket left by a killed run is not an answer)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "halfbridge-quotad"), str(self.config)], stderr=log, stdout=subprocess.DEVNULL
            )

        def answers() -> bool:
            assert self.process.poll() is None, f"the quota daemon {self.name} stopped: {self.said()}"
            try:
                return "ok" in QuotaClient(self.socket, timeout=10).leases()
            except QuotaError:
                return False

        wait_for(answers, 30, f"the quota daemon {self.name} to answer", 0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM, as systemctl stop: the daemon ends cleanly; or SIGKILL, a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            code = self.process.wait(30)
            assert sig != signal.SIGTERM or code == 0, f"the quota daemon {self.name} ended badly: {self.said()}"

    def said(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
