"""rsyslogd on this machine, configured by the roles' own templates, rendered as the roles render them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.camera import free_port, wait_listening
from tests.support.inventory import ROOT
from tests.support.pki import TestCA
from tests.support.waiting import wait_for

RSYSLOGD = Path("/usr/sbin/rsyslogd")
FORWARDER = ("audit_forwarder", "etc/rsyslog.d/60-halfbridge-audit.conf.j2")
COLLECTOR = ("log_collector", "etc/rsyslog.d/60-halfbridge-collector.conf.j2")


def _trusted(value: Any) -> Any:
    """The value with its strings marked as templates, as Ansible marks a role's own files."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def role_defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text(encoding="utf-8")) or {}


def render(role: str, template: str, variables: dict[str, Any]) -> str:
    """`roles/<role>/templates/<template>` with the role's defaults overridden by `variables`, through
    Ansible's own templating (its filters, its lazy resolution of templated defaults)."""
    from ansible.template import Templar

    managed = {"ansible_managed": "Ansible managed (rendered by the tests)"}
    context = _trusted({**managed, **role_defaults(role), **variables})
    text = (ROOT / "roles" / role / "templates" / template).read_text(encoding="utf-8")
    return str(Templar(variables=context).template(_trusted(text)))


class Rsyslogd:
    """One rsyslogd in the foreground, in `directory`: a main configuration standing for Debian's
    /etc/rsyslog.conf (a work directory, then the role's file included as /etc/rsyslog.d/*.conf is),
    its pid file, and what it says."""

    def __init__(self, directory: Path, name: str, fragment: str) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.work = directory / "work"
        self.work.mkdir(exist_ok=True)
        self.fragment = directory / f"60-{name}.conf"
        self.fragment.write_text(fragment, encoding="utf-8")
        self.config = directory / "rsyslog.main"
        self.config.write_text(f'global(workDirectory="{self.work}")\ninclude(file="{self.fragment}")\n', "utf-8")
        self.pidfile = directory / "rsyslogd.pid"
        self.log = directory / "rsyslogd.log"
        self.process: subprocess.Popen | None = None
        checked = subprocess.run(
            [str(RSYSLOGD), "-N1", "-f", str(self.config)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, f"rsyslogd -N1 refuses the {name}'s configuration:\n{checked.stderr}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, f"the {self.name} is already running"
        self.pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(RSYSLOGD), "-n", "-f", str(self.config), "-i", str(self.pidfile)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.pidfile.exists() or not self.running, 20, f"the {self.name} to start")
        assert self.running, f"the {self.name} exited at once:\n{self.said()}"

    def stop(self, kill: bool = False, timeout: float = 30) -> None:
        """SIGTERM, as systemctl stop (rsyslogd saves its place in the files), or SIGKILL (a crash)."""
        if not self.running:
            return
        os.kill(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"the {self.name} did not stop within {timeout} s:\n{self.said()}") from None

    def said(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:] if self.log.exists() else ""


class Forwarding:
    """A gateway's forwarder and a collector on loopback, each rsyslogd configured by its role's template:
    the forwarder follows `gateway` (the audit writer's directory, as /var/log/halfbridge), the collector
    files under `collected`. RELP over TLS with a throw-away CA, each side checking the other's name."""

    GATEWAY = "gw"
    COLLECTOR_NAME = "ops"

    def __init__(self, root: Path, **collector_overrides: Any) -> None:
        self.root = root
        self.gateway = root / "gateway"
        self.collected = root / "collected"
        tls = root / "tls"
        for directory in (self.gateway, self.collected, tls, root / "spool"):
            directory.mkdir(parents=True, exist_ok=True)
        ca = TestCA(tls, "RELP test CA")
        collector_crt, collector_key = ca.issue(self.COLLECTOR_NAME, server=True, names=(self.COLLECTOR_NAME,))
        gateway_crt, gateway_key = ca.issue(self.GATEWAY, names=(self.GATEWAY,))
        # The names the roles give the files they install from the inventory's PEM content.
        for source, name in [
            (ca.path, "audit-forwarder-ca.crt"),
            (gateway_crt, "audit-forwarder.crt"),
            (gateway_key, "audit-forwarder.key"),
            (ca.path, "log-collector-ca.crt"),
            (collector_crt, "log-collector.crt"),
            (collector_key, "log-collector.key"),
        ]:
            shutil.copyfile(source, tls / name)
        self.port = free_port()
        # The role's own files, moved from /var/log/halfbridge into the test's directory.
        files = [
            {**f, "path": f["path"].replace("/var/log/halfbridge/", f"{self.gateway}/")}
            for f in role_defaults("audit_forwarder")["audit_forwarder_files"]
        ]
        forwarder = render(
            *FORWARDER,
            {
                "inventory_hostname": self.GATEWAY,
                "halfbridge_log_collector": {"host": "127.0.0.1", "port": self.port, "name": self.COLLECTOR_NAME},
                "audit_forwarder_files": files,
                "audit_forwarder_tls_dir": str(tls),
                "audit_forwarder_spool_dir": str(root / "spool"),
            },
        )
        collector = render(
            *COLLECTOR,
            {
                "groups": {"halfbridge_gateway": [self.GATEWAY]},
                "log_collector_listen": "127.0.0.1",
                "log_collector_port": self.port,
                "log_collector_dir": str(self.collected),
                "log_collector_tls_dir": str(tls),
                **collector_overrides,
            },
        )
        self.forwarder = Rsyslogd(root / "forwarder", "forwarder", forwarder)
        self.collector = Rsyslogd(root / "collector", "collector", collector)

    def start_collector(self) -> None:
        self.collector.start()
        wait_listening(self.port, self.collector.process, "the collector", log=self.collector.log)

    def start(self) -> None:
        self.start_collector()
        self.forwarder.start()

    def stop(self) -> None:
        self.forwarder.stop()
        self.collector.stop()

    def copy(self, name: str = "audit.log") -> bytes:
        """The collector's copy of the gateway's `name` (audit.log or audit.checkpoints)."""
        path = self.collected / self.GATEWAY / name
        return path.read_bytes() if path.exists() else b""

    def said(self) -> str:
        return f"\n--- forwarder:\n{self.forwarder.said()}\n--- collector:\n{self.collector.said()}"
