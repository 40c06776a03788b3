"""The firewall's ruleset as the role renders it for the lab's gateway, on the controller.

The role's own tasks work out what the ruleset admits (roles/interconnect_firewall/tasks/ruleset.yml,
from the lab inventory and a state that says the interconnect is open), and its template renders it
into a file of the test's; molecule loads it for real (molecule/default/tests/test_firewall.py).
What is checked here is what each opening is made of: SSH from the management networks, the relay's
health and metrics and node_exporter from the supervision hosts only, NTP to the time servers; and
the sentences that refuse what the firewall cannot hold.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, ROOT
from tests.support.playbook import ansible_playbook

TEMPLATE = ROOT / "roles" / "interconnect_firewall" / "templates" / "etc" / "halfbridge" / "firewall.nft.j2"
LAB = {
    name: yaml.safe_load((LAB_INVENTORY / "group_vars" / "all" / f"{name}.yml").read_text(encoding="utf-8"))
    for name in ("convention", "supervision", "time")
}
PLAY = f"""
- name: The gateway's ruleset, rendered on the controller
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
        dest: "{{{{ out }}}}/firewall.nft"
        mode: "0644"
"""


def render(directory: Path, **variables) -> subprocess.CompletedProcess:
    """The lab gateway's ruleset in `directory`/firewall.nft, with `variables` over the inventory's."""
    (directory / "play.yml").write_text(PLAY, encoding="utf-8")
    extra = {
        "out": str(directory),
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "__firewall_state": {"stdout": json.dumps({"suspended": False})},
        **variables,
    }
    (directory / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    return ansible_playbook(
        "-i", str(LAB_INVENTORY), str(directory / "play.yml"), "-e", f"@{directory / 'extra.json'}", timeout=180
    )


def input_rules(ruleset: str) -> list[str]:
    chain = ruleset.split("chain input {", 1)[1].split("\n\t}", 1)[0]
    return [" ".join(line.split()) for line in chain.splitlines() if line.strip()]


def elements(ruleset: str, name: str) -> list[str]:
    body = ruleset.split(f"set {name} {{", 1)[1].split("}", 1)[0] + "}"
    found = re.search(r"elements = \{ (.*) \}", body)
    return found.group(1).split(", ") if found else []


@pytest.fixture(scope="module")
def lab_ruleset(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("firewall")
    done = render(directory)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return (directory / "firewall.nft").read_text(encoding="utf-8")


def test_ssh_is_open_to_the_management_networks_and_nothing_else_is(lab_ruleset):
    rules = input_rules(lab_ruleset)
    assert elements(lab_ruleset, "management_v4") == LAB["convention"]["halfbridge_zones"]["management"]
    assert "ip saddr @management_v4 tcp dport { 22 } accept" in rules
    assert [rule for rule in rules if "@management_v4 tcp" in rule] == [
        "ip saddr @management_v4 tcp dport { 22 } accept"
    ]


def test_health_metrics_and_node_exporter_are_open_to_the_supervision_hosts_only(lab_ruleset):
    rules = input_rules(lab_ruleset)
    assert elements(lab_ruleset, "supervision_v4") == LAB["supervision"]["halfbridge_supervision"]["hosts"]
    assert elements(lab_ruleset, "supervision_v6") == []
    assert "ip saddr @supervision_v4 tcp dport { 9100, 9108 } accept" in rules
    # No other rule names those ports: nobody else reaches them.
    others = [rule for rule in rules if re.search(r"\b(9100|9108)\b", rule) and "@supervision_v" not in rule]
    assert others == []


def test_ntp_goes_to_the_time_servers(lab_ruleset):
    servers = [f"{address}/32" for address in LAB["time"]["halfbridge_time_servers"]]
    assert (
        f"ip daddr {{ {', '.join(servers)} }} udp dport {{ 123 }} accept "
        'comment "NTP (the time servers, halfbridge_time_servers)"'
    ) in " ".join(lab_ruleset.split())


def test_without_supervision_hosts_health_and_metrics_stay_closed(tmp_path):
    done = render(tmp_path, halfbridge_supervision={"hosts": []})
    assert done.returncode == 0, done.stdout[-3000:]
    ruleset = (tmp_path / "firewall.nft").read_text(encoding="utf-8")
    assert elements(ruleset, "supervision_v4") == [] and elements(ruleset, "supervision_v6") == []
    assert "ip saddr @supervision_v4 tcp dport { 9100, 9108 } accept" in input_rules(ruleset)


def test_ipv6_supervision_and_time_servers_by_name_with_their_addresses(tmp_path):
    done = render(
        tmp_path,
        halfbridge_supervision={"hosts": ["2001:db8:50::/64", "192.0.2.50", "192.0.2.51/32"]},
        halfbridge_time_servers=["ntp1.partner.example", "192.0.2.123"],
        interconnect_firewall_time_server_addresses=["2001:db8::123"],
    )
    assert done.returncode == 0, done.stdout[-3000:]
    ruleset = (tmp_path / "firewall.nft").read_text(encoding="utf-8")
    # Normalised and merged by halfbridge_cidrs.
    assert elements(ruleset, "supervision_v4") == ["192.0.2.50/31"]
    assert elements(ruleset, "supervision_v6") == ["2001:db8:50::/64"]
    assert "ip6 saddr @supervision_v6 tcp dport { 9100, 9108 } accept" in input_rules(ruleset)
    flat = " ".join(ruleset.split())
    assert "ip daddr { 192.0.2.123/32 } udp dport { 123 } accept" in flat
    assert "ip6 daddr { 2001:db8::123/128 } udp dport { 123 } accept" in flat


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        (
            {"halfbridge_time_servers": ["ntp1.partner.example"]},
            "The time servers ntp1.partner.example are names: the firewall opens udp/123 to addresses only.",
        ),
        (
            {"halfbridge_supervision": {"hosts": ["198.18.0.500/32"]}},
            "interconnect_firewall_supervision: '198.18.0.500/32' is not a valid IPv4/IPv6 network",
        ),
    ],
)
def test_what_the_firewall_cannot_hold_is_refused_with_a_sentence(tmp_path, variables, said):
    done = render(tmp_path, **variables)
    assert done.returncode != 0
    assert said in " ".join(done.stdout.split()), done.stdout[-3000:]
    assert not (tmp_path / "firewall.nft").exists()
