"""The firewall's ruleset for a gateway of a two-gateway cluster, and for the single lab gateway.

The lab's inventory made a cluster of the contract's shape (inventories/lab-cluster): gw1 and gw2, ops
the third etcd member, the VIP on the interconnect. The role's own tasks and template render each
gateway's ruleset (as tests/unit/test_firewall.py does for the single gateway), and nft checks it when
it is installed here. What is checked is what each cluster opening is made of: etcd's ports from and to
the other members only, the node listener between the gateways only, VRRP between the two interconnect
addresses only, the VIP's relay port passed on to the relay's own address; and that a single gateway
gets none of it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, ROOT
from tests.support.playbook import ansible_playbook
from tests.unit.test_firewall import elements, render

TEMPLATE = ROOT / "roles" / "interconnect_firewall" / "templates" / "etc" / "halfbridge" / "firewall.nft.j2"
PLAY = f"""
- name: The gateways' rulesets, rendered on the controller
  hosts: halfbridge_gateway
  gather_facts: false
  tasks:
    - name: Work out what the ruleset admits
      ansible.builtin.include_role:
        name: interconnect_firewall
        tasks_from: ruleset
        public: true
    - name: Render the ruleset
      ansible.builtin.template:
        src: {TEMPLATE}
        dest: "{{{{ out }}}}/{{{{ inventory_hostname }}}}.nft"
        mode: "0644"
"""
# gw1, gw2 and ops: management (cluster) and interconnect addresses, as in the contract.
CLUSTER_HOSTS = {
    "gw1": {"management": "198.18.0.11", "interconnect": "198.51.100.11", "cameras": "198.18.10.11"},
    "gw2": {"management": "198.18.0.12", "interconnect": "198.51.100.12", "cameras": "198.18.10.12"},
}
CLUSTER_CONTRACT = ("halfbridge_cluster_address", "stream_relay_interconnect_address")


def cluster_inventory(directory: Path) -> Path:
    """The lab's inventory with its gateway doubled into a cluster, in `directory`."""
    inventory = directory / "inventory"
    shutil.copytree(LAB_INVENTORY / "group_vars", inventory / "group_vars")
    hosts = yaml.safe_load((LAB_INVENTORY / "hosts.yml").read_text(encoding="utf-8"))
    children = hosts["all"]["children"]["lab"]["children"]
    lab_gw = children["halfbridge_gateway"]["hosts"]["gw"]
    children["halfbridge_gateway"] = {
        "hosts": {
            name: {
                **lab_gw,
                "lab_networks": networks,
                "halfbridge_cluster_address": networks["management"],
                "stream_relay_interconnect_address": networks["interconnect"],
            }
            for name, networks in CLUSTER_HOSTS.items()
        },
        "vars": {"stream_relay_vip": {"address": "198.51.100.10", "prefix": 24, "router_id": 51}},
    }
    ops = children["supervision"]["hosts"]["ops"]
    ops["halfbridge_cluster_address"] = ops["lab_networks"]["management"]
    children["halfbridge_etcd"] = {"hosts": {"gw1": None, "gw2": None, "ops": None}}
    hosts_file = inventory / "hosts.yml"
    hosts_file.write_text(yaml.safe_dump(hosts), encoding="utf-8")
    (inventory / "vault-password").symlink_to(LAB_INVENTORY / "vault-password")
    return hosts_file


def render_cluster(directory: Path, **variables) -> subprocess.CompletedProcess:
    hosts = cluster_inventory(directory)
    (directory / "play.yml").write_text(PLAY, encoding="utf-8")
    extra = {
        "out": str(directory),
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "__firewall_state": {"stdout": json.dumps({"suspended": False})},
        **variables,
    }
    (directory / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    return ansible_playbook("-i", str(hosts), str(directory / "play.yml"), "-e", f"@{directory / 'extra.json'}")


def chain_rules(ruleset: str, chain: str) -> list[str]:
    """The lines of one chain, whitespace folded, up to its closing brace."""
    rules = []
    for line in ruleset.split(f"chain {chain} {{", 1)[1].splitlines():
        if line.strip() == "}":
            break
        if line.strip():
            rules.append(" ".join(line.split()))
    return rules


def input_rules(ruleset: str) -> list[str]:
    return chain_rules(ruleset, "input")


def output_rules(ruleset: str) -> list[str]:
    return chain_rules(ruleset, "output")


def cluster_rules(rules: list[str]) -> list[str]:
    """The rules that name a cluster set, etcd's or the node listener's port, or VRRP."""
    return [r for r in rules if re.search(r"@cluster_|\b(2379|2380|8444)\b|protocol 112", r) and not r.startswith("#")]


@pytest.fixture(scope="module")
def rulesets(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("firewall-cluster")
    done = render_cluster(directory)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return {name: (directory / f"{name}.nft").read_text(encoding="utf-8") for name in CLUSTER_HOSTS}


def test_etcd_is_open_to_and_from_the_other_members_only(rulesets):
    ruleset = rulesets["gw1"]
    assert elements(ruleset, "cluster_etcd_v4") == ["198.18.0.12/32", "198.18.0.50/32"]
    assert "set cluster_etcd_clients_v4" not in ruleset  # every gateway is a member
    assert "set cluster_etcd_v6" not in ruleset
    etcd_in = [r for r in cluster_rules(input_rules(ruleset)) if "2379" in r or "2380" in r]
    assert etcd_in == ["ip saddr @cluster_etcd_v4 tcp dport { 2379, 2380 } accept"]
    etcd_out = [r for r in cluster_rules(output_rules(ruleset)) if "2379" in r or "2380" in r]
    assert etcd_out == [
        'ip daddr @cluster_etcd_v4 tcp dport { 2379, 2380 } accept comment "etcd (the cluster\'s members)"'
    ]


def test_the_node_listener_is_open_between_the_gateways_only(rulesets):
    for name, other in (("gw1", "198.18.0.12/32"), ("gw2", "198.18.0.11/32")):
        ruleset = rulesets[name]
        assert elements(ruleset, "cluster_gateways_v4") == [other]
        assert [r for r in cluster_rules(input_rules(ruleset)) if "8444" in r] == [
            "ip saddr @cluster_gateways_v4 tcp dport 8444 accept"
        ]
        assert [r for r in cluster_rules(output_rules(ruleset)) if "8444" in r] == [
            "ip daddr @cluster_gateways_v4 tcp dport 8444 accept "
            'comment "The relay\'s node listener (the other gateways)"'
        ]


def test_vrrp_passes_between_the_two_interconnect_addresses_and_nothing_else(rulesets):
    for name, own, other in (("gw1", "198.51.100.11", "198.51.100.12"), ("gw2", "198.51.100.12", "198.51.100.11")):
        ruleset = rulesets[name]
        assert elements(ruleset, "cluster_vrrp_v4") == [f"{other}/32"]
        # By number: nft resolves "vrrp" through /etc/protocols, which a minimal system may lack.
        assert [r for r in input_rules(ruleset) if "protocol 112" in r and not r.startswith("#")] == [
            f"ip saddr @cluster_vrrp_v4 ip daddr {own} ip protocol 112 accept"
        ]
        assert [r for r in output_rules(ruleset) if "protocol 112" in r] == [
            f"ip saddr {own} ip daddr @cluster_vrrp_v4 ip protocol 112 accept "
            'comment "VRRP, IP protocol 112 (the other gateways)"'
        ]


def test_the_vips_relay_port_is_passed_on_to_the_relays_own_address(rulesets):
    for name, networks in CLUSTER_HOSTS.items():
        # The relay listens on its gateway's interconnect address; the holder of the VIP passes it on there.
        assert chain_rules(rulesets[name], "vip") == [
            "type nat hook prerouting priority dstnat; policy accept;",
            f"ip daddr 198.51.100.10 tcp dport 8443 dnat ip to {networks['interconnect']}",
        ]
        # Then the input chain meets the relay's own address: the PP's rule holds whatever the destination.
        relay = [r for r in input_rules(rulesets[name]) if "dport 8443 accept" in r]
        assert relay == ["ip saddr @pp_peers_v4 tcp dport 8443 accept", "ip6 saddr @pp_peers_v6 tcp dport 8443 accept"]


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed here")
def test_nft_accepts_each_gateways_ruleset(rulesets, tmp_path):
    for name, ruleset in rulesets.items():
        (tmp_path / f"{name}.nft").write_text(ruleset, encoding="utf-8")
        # In a network namespace of its own when it can: --check never loads anything, but stays apart.
        command = ["nft", "--check", "--file", str(tmp_path / f"{name}.nft")]
        if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], check=False).returncode == 0:
            command = ["unshare", "--net", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if "Operation not permitted" in done.stderr:
            pytest.skip("nft --check needs CAP_NET_ADMIN here")
        assert done.returncode == 0, (name, done.stderr)


def test_a_single_gateway_has_no_cluster_opening(tmp_path):
    done = render(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    ruleset = (tmp_path / "firewall.nft").read_text(encoding="utf-8")
    assert "cluster_" not in ruleset and "protocol 112" not in ruleset and "chain vip" not in ruleset
    assert cluster_rules(input_rules(ruleset)) == [] and cluster_rules(output_rules(ruleset)) == []


@pytest.mark.parametrize(
    "variables",
    [{"interconnect_firewall_cluster_vrrp_peers": ["2001:db8::12"]}, {"stream_relay_listen_host": "198.51.100.10"}],
    ids=["vrrp-peer-ipv6", "relay-on-the-vip"],
)
def test_vrrp_or_a_vip_the_firewall_cannot_hold_is_refused_with_a_sentence(tmp_path, variables):
    done = render_cluster(tmp_path, **variables)
    assert done.returncode != 0
    said = " ".join(done.stdout.split())
    assert "VRRP is opened between IPv4 interconnect addresses only, and the VIP is passed on" in said, said[-2000:]
