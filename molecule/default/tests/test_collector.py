"""The audit log's copy on `ops`, the log collector (docs/collector.md): what the gateway writes reaches it, byte
for byte, and a collector away for a minute loses nothing of what was written meanwhile.

The requests come from `pp`, over the interconnect, with the lab agent's certificate, as the PP makes them.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from tests.support.inventory import host_var
from tests.support.waiting import wait_for

AGENT = "/etc/halfbridge-pp"
AS_AGENT = ["--cacert", f"{AGENT}/ca.crt", "--cert", f"{AGENT}/agent.crt", "--key", f"{AGENT}/agent.key"]
LOGS = "/var/log/halfbridge"
COPY = "/var/log/halfbridge-collector/gw/audit.log"
# The collector's rsyslog, and the socket that would start it again at the first local log line.
COLLECTOR_UNITS = "syslog.socket rsyslog.service"
OUTAGE = 60


@pytest.fixture(scope="module")
def cameras_url() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443/v1/cameras"


def ask(pp, url: str) -> None:
    """One authenticated request from the PP; the relay answers 200."""
    status = pp.check_output(shlex.join(["curl", "-sS", *AS_AGENT, "-o", "/dev/null", "-w", "%{http_code}", url]))
    assert status == "200", status


def gateway_lines(gw) -> list[str]:
    """The gateway's audit log, oldest first: the renamed files (their names sort as the chain runs), then audit.log."""
    return gw.check_output(f"cat $(ls {LOGS}/audit-*.log 2>/dev/null | sort) {LOGS}/audit.log").splitlines()


def collected_lines(ops) -> list[str]:
    return ops.check_output(f"cat {COPY} 2>/dev/null || true").splitlines()


def seq(line: str) -> int:
    return json.loads(line)["seq"]


def last_seq(gw) -> int:
    return seq(gw.check_output(f"tail -n 1 {LOGS}/audit.log"))


def test_an_authentication_from_the_pp_reaches_the_collector_byte_for_byte(lab_host, cameras_url):
    gw, ops, pp = lab_host("gw"), lab_host("ops"), lab_host("pp")
    before = last_seq(gw)
    ask(pp, cameras_url)
    wait_for(lambda: last_seq(gw) > before, 20, "the request in the gateway's audit log")
    written = [line for line in gateway_lines(gw) if seq(line) > before]
    assert any(json.loads(line)["event"].startswith("auth.") for line in written), written
    wait_for(
        lambda: set(written) <= set(collected_lines(ops)),
        60,
        "the new entries in the collector's copy",
        detail=lambda: f"; the copy ends with {collected_lines(ops)[-3:]}",
    )
    # Filed as the gateway wrote them: the same lines, nothing before them on their line, 0640 in a 0750 directory.
    assert ops.file(COPY).mode == 0o640 and ops.file(COPY).user == "root"
    assert ops.file("/var/log/halfbridge-collector/gw").mode == 0o750
    # Nowhere else on the collector: not in its own syslog files.
    assert ops.run(f"grep -rlF {shlex.quote(written[-1])} /var/log/syslog /var/log/messages").rc != 0


def test_a_collector_stopped_for_a_minute_loses_nothing(lab_host, cameras_url):
    gw, ops, pp = lab_host("gw"), lab_host("ops"), lab_host("pp")

    # The copy has caught up, and a few heartbeats have gone since its last entry (the forwarder has read the
    # collector's acknowledgement of it): the collector stops between two entries, as in a maintenance.
    def quiet() -> bool:
        if collected_lines(ops)[-1:] != gateway_lines(gw)[-1:]:
            return False
        time.sleep(3)
        return collected_lines(ops)[-1:] == gateway_lines(gw)[-1:]

    wait_for(quiet, 90, "the collector's copy to catch up")
    began = last_seq(gw)
    ops.check_output(f"systemctl stop {COLLECTOR_UNITS}")
    try:
        stopped = time.monotonic()
        asked = 0
        while time.monotonic() - stopped < OUTAGE:
            ask(pp, cameras_url)
            asked += 1
            time.sleep(3)
        assert ops.run("systemctl is-active --quiet rsyslog.service").rc != 0, "rsyslog came back on ops by itself"
        assert asked >= 10
    finally:
        ops.check_output("systemctl start rsyslog.service")
    end = last_seq(gw)
    assert end >= began + asked  # each request is at least its authentication in the history
    wait_for(
        lambda: any(seq(line) == end for line in collected_lines(ops)),
        120,
        f"entry {end} in the collector's copy",
        interval=2,
    )
    written = [line for line in gateway_lines(gw) if began < seq(line) <= end]
    copied = [line for line in collected_lines(ops) if began < seq(line) <= end]
    # Every entry written while the collector was away, once, in order, as the gateway wrote it.
    assert [seq(line) for line in copied] == list(range(began + 1, end + 1))
    assert copied == written
