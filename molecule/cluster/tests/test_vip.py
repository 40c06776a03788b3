"""One address for the PP (docs/vip.md), as the hosts around the cluster meet it.

The VIP is held by exactly one gateway, and the PP reaches the relay on it. The relay of the gateway
that holds it is stopped: the other gateway holds it and answers within a time measured and printed
(under 10 s); the relay started again, the address stays where it went (a returning gateway does not
take it back). `rogue` meets silence on etcd's ports and the node listener, and its VRRP adverts are
dropped by the firewall and move nothing. The gateways reach each other's etcd and node ports.
"""

from __future__ import annotations

import json
import shlex
import textwrap
import time

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import probe

INVENTORY = ROOT / "inventories" / "lab-cluster"
GATEWAYS = ("gw1", "gw2")
LOG = "/var/log/ulog/halfbridge-firewall.log"


# Run on pp: connect to HOST:PORT every 0.1 s until a connection is accepted; prints the seconds waited.
UNTIL_OPEN = textwrap.dedent(
    """
    import socket, sys, time
    host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            print(time.monotonic() - started)
            break
        except OSError:
            time.sleep(0.1)
    else:
        print(-1)
    """
)

# Run on rogue: a VRRPv2 advert for the VIP's router id at priority 255 (the highest), to each ADDRESS.
FORGE = textwrap.dedent(
    """
    import socket, struct, sys
    router_id, vip, targets = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    def checksum(data):
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF
    body = struct.pack("!BBBBBBH", 0x21, router_id, 255, 1, 0, 1, 0) + socket.inet_aton(vip) + bytes(8)
    advert = body[:6] + struct.pack("!H", checksum(body)) + body[8:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    for _ in range(5):
        for target in targets:
            sock.sendto(advert, (target, 0))
    print("sent")
    """
)


def var(host: str, name: str, default=None):
    try:
        return host_var(host, name, INVENTORY)
    except KeyError:
        return default


def run_on(host, script: str, *args) -> str:
    return host.check_output(shlex.join(["python3", "-c", script, *map(str, args)]))


@pytest.fixture(scope="module")
def vip() -> dict:
    return var("gw1", "stream_relay_vip")


@pytest.fixture(scope="module")
def relay_port(lab_host) -> int:
    return int(json.loads(lab_host("gw1").check_output("cat /etc/halfbridge/relay.json"))["listen_port"])


def holders(lab_host, address: str) -> list[str]:
    """The gateways that have the VIP on an interface."""
    return [name for name in GATEWAYS if f" {address}/" in lab_host(name).check_output("ip -4 -o address show")]


def wait_for_one_holder(lab_host, address: str, limit: float = 15) -> str:
    deadline = time.monotonic() + limit
    while True:
        held = holders(lab_host, address)
        if len(held) == 1:
            return held[0]
        assert time.monotonic() < deadline, f"the VIP {address} is held by {held or 'no gateway'}"
        time.sleep(0.5)


def relay_healthy(gw, name: str) -> bool:
    management = var(name, "stream_relay_management_host")
    port = var(name, "stream_relay_management_port", 9108)
    check = f"import urllib.request; urllib.request.urlopen('http://{management}:{port}/healthz', timeout=2)"
    return gw.run(shlex.join(["python3", "-c", check])).rc == 0


def test_the_vip_is_held_by_exactly_one_gateway(lab_host, vip):
    holder = wait_for_one_holder(lab_host, vip["address"])
    assert holders(lab_host, vip["address"]) == [holder]
    # keepalived runs on both, and the other one is waiting, not holding.
    for name in GATEWAYS:
        assert lab_host(name).service("keepalived").is_running, name


def test_the_pp_reaches_the_relay_on_the_vip(lab_host, vip, relay_port):
    assert probe(lab_host("pp"), vip["address"], [relay_port]) == {relay_port: "open"}


def test_the_gateways_reach_each_others_etcd_and_node_listener(lab_host):
    node_port = int(var("gw1", "stream_relay_node_port", 8444))
    for name, other in (("gw1", "gw2"), ("gw2", "gw1")):
        seen = probe(lab_host(name), var(other, "halfbridge_cluster_address"), [2379, 2380, node_port])
        # Through both firewalls: etcd answers; the node port answers or refuses, but is not dropped.
        assert seen[2379] == "open" and seen[2380] == "open", (name, seen)
        assert seen[node_port] != "timeout", (name, seen)
    # ops, the third etcd member, reaches the gateways' etcd.
    seen = probe(lab_host("ops"), var("gw1", "halfbridge_cluster_address"), [2379, 2380])
    assert seen == {2379: "open", 2380: "open"}


def test_rogue_meets_silence_on_etcd_and_the_node_listener(lab_host):
    node_port = int(var("gw1", "stream_relay_node_port", 8444))
    rogue = lab_host("rogue")
    for name in GATEWAYS:
        for address in (var(name, "halfbridge_cluster_address"), var(name, "stream_relay_interconnect_address")):
            seen = probe(rogue, address, [2379, 2380, node_port])
            assert set(seen.values()) == {"timeout"}, (name, address, seen)
    # pp, on the management network too, is no etcd member either.
    seen = probe(lab_host("pp"), var("gw1", "halfbridge_cluster_address"), [2379, 2380, node_port])
    assert set(seen.values()) == {"timeout"}, seen


def test_rogue_cannot_take_the_vip_with_vrrp(lab_host, vip):
    holder = wait_for_one_holder(lab_host, vip["address"])
    rogue_address = var("rogue", "lab_networks")["interconnect"]
    targets = [var(name, "stream_relay_interconnect_address") for name in GATEWAYS]
    assert run_on(lab_host("rogue"), FORGE, vip["router_id"], vip["address"], *targets).strip() == "sent"
    time.sleep(4)  # longer than keepalived's master-down interval: an advert it took would have moved the VIP
    assert holders(lab_host, vip["address"]) == [holder]
    for name, target in zip(GATEWAYS, targets, strict=True):
        # Dropped by the firewall (logged with the IP protocol's number), before keepalived could read it.
        log = lab_host(name).check_output(f"grep -a ' SRC={rogue_address} DST={target} .*PROTO=112 ' {LOG} || true")
        assert "halfbridge drop in:" in log, (name, log[-1000:])


def test_the_vip_moves_when_its_relay_stops_and_stays_when_it_returns(lab_host, vip, relay_port):
    holder = wait_for_one_holder(lab_host, vip["address"])
    other = next(name for name in GATEWAYS if name != holder)
    assert relay_healthy(lab_host(other), other), f"the relay of {other} is not healthy: nothing to move to"
    gw = lab_host(holder)
    started = time.monotonic()
    try:
        gw.check_output("systemctl stop halfbridge-relay.service")
        waited = float(run_on(lab_host("pp"), UNTIL_OPEN, vip["address"], relay_port, 20))
        elapsed = time.monotonic() - started
        assert waited >= 0, f"the VIP {vip['address']} did not answer within 20 s of the relay of {holder} stopping"
        print(f"\nthe VIP answered from {other} {elapsed:.1f} s after the relay of {holder} stopped")
        assert holders(lab_host, vip["address"]) == [other]
        assert elapsed < 10
    finally:
        gw.check_output("systemctl start halfbridge-relay.service")
    # Healthy again, and longer than its rise and a master-down interval: the address stays on the other.
    deadline = time.monotonic() + 60
    while not relay_healthy(gw, holder):
        assert time.monotonic() < deadline, f"the relay of {holder} did not come back"
        time.sleep(1)
    time.sleep(6)
    assert holders(lab_host, vip["address"]) == [other]
    assert probe(lab_host("pp"), vip["address"], [relay_port]) == {relay_port: "open"}
