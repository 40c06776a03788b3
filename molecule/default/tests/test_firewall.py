"""The interconnect's firewall as the hosts around the gateway meet it (article 5).

`pp` (the PP half-gateway) reaches the relay; `rogue`, on the same interconnect
network, meets silence on every port, and its packets are in the drop log;
from the gateway only the cameras' RTSP ports are reachable on the camera
network. A ruleset that nft refuses fails the play and leaves the running one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import probe

LOG = "/var/log/ulog/halfbridge-firewall.log"


@pytest.fixture(scope="module")
def gw_addresses() -> dict:
    return host_var("gw", "lab_networks")


@pytest.fixture(scope="module")
def relay_port(lab_host) -> int:
    return int(json.loads(lab_host("gw").check_output("cat /etc/halfbridge/relay.json"))["listen_port"])


def ruleset(gw) -> str:
    """The loaded table, without its counters (so that two reads compare)."""
    return gw.check_output("nft --stateless list table inet halfbridge")


def dropped(gw, chain: str = "input") -> int:
    """Packets counted by the chain's final drop rule."""
    listing = json.loads(gw.check_output(f"nft --json list chain inet halfbridge {chain}"))["nftables"]
    last = [item["rule"] for item in listing if "rule" in item][-1]
    assert {"drop": None} in last["expr"], last
    return next(e["counter"]["packets"] for e in last["expr"] if "counter" in e)


def test_the_pp_reaches_the_relay_and_nothing_else(lab_host, gw_addresses, relay_port):
    seen = probe(lab_host("pp"), gw_addresses["interconnect"], [relay_port, 22, 9108, 80])
    assert seen == {relay_port: "open", 22: "timeout", 9108: "timeout", 80: "timeout"}


def test_the_rogue_host_meets_silence_on_every_port_and_its_drops_are_logged(lab_host, gw_addresses, relay_port):
    gw, rogue = lab_host("gw"), lab_host("rogue")
    target, rogue_address = gw_addresses["interconnect"], host_var("rogue", "lab_networks")["interconnect"]
    before = dropped(gw)
    # The relay's port alone first, so that the rate-limited log surely keeps it.
    assert probe(rogue, target, [relay_port]) == {relay_port: "timeout"}
    ports = sorted({*range(1, 1025), relay_port, 8080, 8554, 9108})
    seen = probe(rogue, target, ports)
    assert set(seen.values()) == {"timeout"}, {p: o for p, o in seen.items() if o != "timeout"}
    # Not even an answer to a ping (ICMP echo is for the management networks).
    assert rogue.run(f"ping -c 2 -W 1 {target}").rc != 0

    time.sleep(1)  # ulogd writes each line as it comes (sync=1); leave it a moment
    log = gw.check_output(f"grep -a ' SRC={rogue_address} ' {LOG} || true")
    assert "halfbridge drop in:" in log and f" DPT={relay_port} " in log, log[-2000:]
    # Rate limited: the scan dropped more than a thousand packets, the log kept a few dozen.
    count = dropped(gw) - before
    logged = log.count("\n")
    assert count > len(ports) and logged < count / 5, (count, logged)


def test_from_the_gateway_only_the_cameras_rtsp_ports_are_reachable(lab_host, cameras):
    gw = lab_host("gw")
    endpoints = {(urlsplit(c["rtsp_url"]).hostname, urlsplit(c["rtsp_url"]).port) for c in cameras}
    for address, port in endpoints:
        assert probe(gw, address, [port]) == {port: "open"}, (address, port)
    camera_host = min(endpoints)[0]
    before = dropped(gw, "output")
    others = probe(gw, camera_host, [22, 80, 554, 8599, 9000], wait=2)
    # Nothing reached the camera host (it would answer a closed port with a reset: "refused").
    assert set(others.values()) <= {"timeout", "EPERM"}, others
    assert set(probe(gw, "198.18.10.30", [8554], wait=2).values()) <= {"timeout", "EPERM"}
    assert dropped(gw, "output") - before >= 6
    time.sleep(1)
    assert f"DST={camera_host} " in gw.check_output(f"grep -a 'halfbridge drop out:.* DPT=8599 ' {LOG} || true")


def test_health_metrics_and_node_exporter_answer_the_supervision_host_only(lab_host, gw_addresses):
    ports = [9108, 9100]
    assert probe(lab_host("ops"), gw_addresses["management"], ports) == dict.fromkeys(ports, "open")
    # Another host of the management network (pp's management address) gets nothing there.
    assert probe(lab_host("pp"), gw_addresses["management"], ports) == dict.fromkeys(ports, "timeout")


def test_a_ruleset_nft_refuses_fails_the_play_and_leaves_the_running_one(lab_host, relay_port, tmp_path):
    gw = lab_host("gw")
    loaded, on_disk = ruleset(gw), gw.check_output("sha256sum /etc/halfbridge/firewall.nft")
    broken = {"interconnect_firewall_input_extra": ["tcp dport 70000 accept"]}
    # The role alone (the package and the rest are deployed already).
    playbook = tmp_path / "firewall.yml"
    playbook.write_text('[{"hosts": "halfbridge_gateway", "roles": [{"role": "interconnect_firewall"}]}]')
    play = subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", str(playbook), "-e", json.dumps(broken)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
    )  # fmt: skip
    assert play.returncode != 0
    assert "failed to validate" in play.stdout and "70000" in play.stdout, play.stdout[-3000:]
    assert ruleset(gw) == loaded
    assert gw.check_output("sha256sum /etc/halfbridge/firewall.nft") == on_disk
    assert probe(lab_host("pp"), host_var("gw", "lab_networks")["interconnect"], [relay_port]) == {relay_port: "open"}
