"""The relay against a hostile peer on the interconnect, and a quota daemon that restarts mid-flows.

`rogue` is let into the PP's set for these tests only: it floods the relay with idle
TLS connections and slowloris clients while an agent on the PP's half-gateway
watches live and opens a new flow. Then the quota daemon restarts while 10 flows
stream and 10 more race in: the history never shows more than 10 open at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.inventory import host_var
from tests.support.lab import put
from tests.support.viewer import curl, get_json
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"
FLOOD = Path(__file__).resolve().parents[3] / "tests" / "support" / "flood.py"


@pytest.fixture(scope="module")
def relay(lab_host) -> dict:
    return json.loads(lab_host("gw").check_output("cat /etc/halfbridge/relay.json"))


@pytest.fixture(scope="module")
def base(relay) -> str:
    return f"https://{relay['listen_host']}:{relay['listen_port']}"


@pytest.fixture
def rogue_admitted(lab_host):
    """`rogue` among the PP's peers for this test only: in the firewall's set, and among the relay unit's
    allowed peers (`IPAddressAllow=`, a runtime property reverted after)."""
    gw = lab_host("gw")
    address = host_var("rogue", "lab_networks")["interconnect"]
    gw.check_output(f"nft add element inet halfbridge pp_peers_v4 '{{ {address} }}'")
    gw.check_output(f"systemctl set-property --runtime halfbridge-relay IPAddressAllow={address}")
    yield address
    gw.run(f"nft delete element inet halfbridge pp_peers_v4 '{{ {address} }}'")
    gw.run("systemctl revert halfbridge-relay")
    assert address not in gw.check_output("systemctl show -p IPAddressAllow halfbridge-relay")


def in_use(pp, base) -> int:
    return get_json(pp, f"{base}/v1/flows")[1]["in_use"]


def viewers(pp, url: str, count: int, seconds: int = 60) -> None:
    command = (
        f"setsid -f curl -sS --cacert /etc/halfbridge-pp/ca.crt --cert /etc/halfbridge-pp/agent.crt "
        f"--key /etc/halfbridge-pp/agent.key --max-time {seconds} -o /dev/null '{url}' </dev/null >/dev/null 2>&1"
    )
    pp.check_output(f"for i in $(seq {count}); do {command}; done")


def metrics(gw, relay) -> str:
    read = "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())'"
    return gw.check_output(f"{read} http://{relay['management_host']}:{relay['management_port']}/metrics")


def test_a_flooding_peer_never_locks_the_agents_out_and_its_connections_are_closed(
    lab_host, cameras, relay, base, rogue_admitted
):
    gw, pp, rogue = lab_host("gw"), lab_host("pp"), lab_host("rogue")
    camera = cameras[0]["id"]
    live = f"{base}/v1/cameras/{camera}/live"
    wait_for(lambda: in_use(pp, base) == 0, 30, "the earlier flows to end")
    viewers(pp, live, 1)  # an agent watching
    wait_for(lambda: in_use(pp, base) == 1, 10, "the agent's flow")
    put(rogue, "/tmp/flood.py", FLOOD.read_bytes())
    rogue.check_output(
        f"setsid -f sh -c 'python3 /tmp/flood.py {relay['listen_host']} {relay['listen_port']} 200 200 30 "
        "> /tmp/flood.json 2> /tmp/flood.err' </dev/null >/dev/null 2>&1"
    )
    try:
        time.sleep(4)  # the flood is on: 400 connections from one address
        timing = curl(pp, live, "--max-time", "4", "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer}")
        code, first_byte = timing.stdout.split()
        assert code == "200", timing.stderr
        assert float(first_byte) < 1.0, f"a new flow's first byte came after {first_byte} s during the flood"
        assert in_use(pp, base) >= 1, "the watching agent's flow went on"
        wait_for(lambda: rogue.run("test -s /tmp/flood.json").rc == 0, 60, "the flood's report")
    finally:
        rogue.run("pkill -f /tmp/flood.py")
        pp.run("pkill curl")
    report = json.loads(rogue.check_output("cat /tmp/flood.json"))
    deadline = relay.get("header_seconds", 10) + relay.get("handshake_seconds", 10) + 3
    for kind, seen in report.items():
        assert seen["still_open"] == 0, (kind, seen)
        assert seen["closed_after"], f"no {kind} connection got through the firewall: {seen}"
        assert max(seen["closed_after"]) <= deadline, (kind, sorted(seen["closed_after"])[-5:])
    counted = metrics(gw, relay)
    for reason in ("per-peer-limit", "header-deadline"):
        assert f'halfbridge_relay_connections_cut_total{{reason="{reason}"}}' in counted, reason


def audit_after(gw, seq: int) -> list[dict]:
    lines = gw.check_output(f"cat {AUDIT}").splitlines()
    return [entry for entry in map(json.loads, lines) if entry["seq"] > seq]


def test_a_restarted_quota_daemon_never_puts_more_than_ten_flows_on_the_wire(lab_host, cameras, base):
    gw, pp = lab_host("gw"), lab_host("pp")
    wait_for(lambda: in_use(pp, base) == 0, 30, "the earlier flows to end")
    seq = json.loads(gw.check_output(f"tail -n 1 {AUDIT}"))["seq"]
    url = f"{base}/v1/cameras/{cameras[0]['id']}/live"
    viewers(pp, url, 10)
    wait_for(lambda: in_use(pp, base) == 10, 20, "10 flows to be open")
    gw.check_output("systemctl restart halfbridge-quotad")
    viewers(pp, url, 10, seconds=30)  # 10 more race in at once
    ttl = json.loads(gw.check_output("cat /etc/halfbridge/quotad.json")).get("ttl", 15)
    time.sleep(ttl + 10)  # past one lease's life
    pp.run("pkill curl")
    wait_for(lambda: in_use(pp, base) == 0, 30, "every flow to end")

    entries = audit_after(gw, seq)
    open_leases, most = set(), 0
    for entry in entries:  # in the order they were written
        if entry["event"] == "flow.start":
            open_leases.add(entry["lease"])
            most = max(most, len(open_leases))
        elif entry["event"] == "flow.end":
            open_leases.discard(entry["lease"])
    assert most == 10, f"at most {most} flows were open at once according to the history"
    refused = [e for e in entries if e["event"] == "relay.request" and e["status"] in (429, 503)]
    assert refused, "the 10 requests that raced in were refused while 10 flows held the quota"
