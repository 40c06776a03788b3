"""keepalived's configuration for a two-gateway cluster, as role relay_vip renders it on the controller.

The role's own checks (roles/relay_vip/tasks/checks.yml) run against a cluster inventory of the
contract's shape (gw1, gw2, and ops as a third etcd member), and its templates render for each gateway:
VRRP in unicast between the two interconnect addresses, the VIP on the interface, the same priority on
both, lowered while the relay is unhealthy. keepalived itself checks the file when it is installed here.
The relay's health check runs against a relay that answers 200, one that answers 503, one that is not
there and one that never answers. molecule's cluster scenario moves the address for real
(molecule/cluster/tests/test_vip.py).
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

TEMPLATES = ROOT / "roles" / "relay_vip" / "templates"
RENDERED = {
    "keepalived.conf": "etc/keepalived/keepalived.conf",
    "relay-health": "etc/keepalived/halfbridge-relay-health",
    "vip-notify": "etc/keepalived/halfbridge-vip-notify",
    "keepalived.service.d.conf": "etc/systemd/system/keepalived.service.d/halfbridge.conf",
}
PLAY = f"""
- name: keepalived's files, rendered on the controller
  hosts: halfbridge_gateway
  gather_facts: false
  tasks:
    - name: Check the VIP, the interconnect addresses and the peers
      ansible.builtin.include_role:
        name: relay_vip
        tasks_from: checks
        public: true
    - name: The interconnect interface (found from the gathered facts on a gateway)
      ansible.builtin.set_fact:
        __relay_vip_interface: eth1
    - name: Render the files
      ansible.builtin.template:
        src: "{TEMPLATES}/{{{{ item.value }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ inventory_hostname }}}}-{{{{ item.key }}}}"
        mode: "0644"
      loop: {json.dumps([{"key": key, "value": value} for key, value in RENDERED.items()])}
"""
# The contract's cluster (inventories/lab-cluster): two gateways, ops as the third etcd member.
CLUSTER = {
    "all": {
        "children": {
            "halfbridge_gateway": {
                "hosts": {
                    "gw1": {
                        "stream_relay_interconnect_address": "198.51.100.11",
                        "stream_relay_management_host": "198.18.0.11",
                        "halfbridge_cluster_address": "198.18.0.11",
                    },
                    "gw2": {
                        "stream_relay_interconnect_address": "198.51.100.12",
                        "stream_relay_management_host": "198.18.0.12",
                        "halfbridge_cluster_address": "198.18.0.12",
                    },
                },
                "vars": {"stream_relay_vip": {"address": "198.51.100.10", "prefix": 24, "router_id": 51}},
            },
            "halfbridge_etcd": {
                "hosts": {"gw1": None, "gw2": None, "ops": {"halfbridge_cluster_address": "198.18.0.50"}}
            },
        }
    }
}


def render(directory: Path, inventory: dict = CLUSTER, **variables) -> subprocess.CompletedProcess:
    """The role's files for each gateway of `inventory`, in `directory`/<host>-<name>."""
    (directory / "hosts.yml").write_text(yaml.safe_dump(inventory), encoding="utf-8")
    (directory / "play.yml").write_text(PLAY, encoding="utf-8")
    extra = {
        "out": str(directory),
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **variables,
    }
    (directory / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    return ansible_playbook(
        "-i", str(directory / "hosts.yml"), str(directory / "play.yml"), "-e", f"@{directory / 'extra.json'}",
        timeout=180,
    )  # fmt: skip


def block(config: str, keyword: str) -> list[str]:
    """The lines of a keepalived block (`vrrp_instance halfbridge_relay`, `unicast_peer`...), comments out."""
    body = config.split(keyword + " {", 1)[1]
    lines, depth = [], 1
    for line in body.splitlines():
        text = line.split("#", 1)[0].strip()
        depth += text.count("{") - text.count("}")
        if depth <= 0:
            break
        if text:
            lines.append(" ".join(text.split()))
    return lines


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("relay_vip")
    done = render(directory)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return directory


def test_vrrp_is_unicast_between_the_two_interconnect_addresses(cluster):
    for host, own, peer in (("gw1", "198.51.100.11", "198.51.100.12"), ("gw2", "198.51.100.12", "198.51.100.11")):
        config = (cluster / f"{host}-keepalived.conf").read_text(encoding="utf-8")
        instance = block(config, "vrrp_instance halfbridge_relay")
        assert f"unicast_src_ip {own}" in instance
        assert block(config, "unicast_peer") == [peer]
        assert "check_unicast_src" in instance
        assert "interface eth1" in instance and "virtual_router_id 51" in instance
        assert block(config, "virtual_ipaddress") == ["198.51.100.10/24 dev eth1"]
        assert f"router_id {host}" in block(config, "global_defs")


def test_both_gateways_start_as_backups_with_the_same_priority_lowered_while_the_relay_is_unhealthy(cluster):
    for host in ("gw1", "gw2"):
        config = (cluster / f"{host}-keepalived.conf").read_text(encoding="utf-8")
        instance = block(config, "vrrp_instance halfbridge_relay")
        assert "state BACKUP" in instance and "priority 100" in instance and "advert_int 1" in instance
        # No nopreempt: an unhealthy holder must yield to a healthy gateway (docs/vip.md).
        assert "nopreempt" not in instance
        assert block(config, "track_script") == ["halfbridge_relay_health"]
    script = block((cluster / "gw1-keepalived.conf").read_text(encoding="utf-8"), "vrrp_script halfbridge_relay_health")
    assert script == [
        'script "/etc/keepalived/halfbridge-relay-health"',
        "interval 1",
        "timeout 1",
        "fall 2",
        "rise 2",
        "weight -50",
        "init_fail",
    ]


def test_scripts_run_as_their_own_account_and_keepalived_keeps_only_its_capabilities(cluster):
    defaults = block((cluster / "gw1-keepalived.conf").read_text(encoding="utf-8"), "global_defs")
    assert "enable_script_security" in defaults and "script_user halfbridge-vrrp" in defaults
    unit = (cluster / "gw1-keepalived.service.d.conf").read_text(encoding="utf-8")
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_KILL" in unit.splitlines()


INTERFACES = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")


@pytest.mark.skipif(shutil.which("keepalived") is None or not INTERFACES, reason="keepalived is not installed here")
def test_keepalived_accepts_the_configuration(cluster, tmp_path):
    config = (cluster / "gw1-keepalived.conf").read_text(encoding="utf-8")
    # The scripts and the interface are the gateway's: here, this machine's stand in. The scripts' account
    # too: keepalived 2.2.7 kills itself in --config-test when it checks a script of another account.
    here = (("/etc/keepalived/halfbridge-", "/bin/true #"), ("halfbridge-vrrp", "root"), ("eth1", INTERFACES[0]))
    for gateway, mine in here:
        config = config.replace(gateway, mine)
    (tmp_path / "keepalived.conf").write_text(config)
    done = subprocess.run(
        ["keepalived", "--config-test", "--use-file", str(tmp_path / "keepalived.conf")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_notify_line_names_the_gateway_and_the_address(cluster, tmp_path):
    notify = (cluster / "gw1-vip-notify").read_text(encoding="utf-8")
    # logger replaced by echo, to read the line the journal would get.
    logger = "exec logger --tag halfbridge-vip --priority daemon.notice"
    (tmp_path / "notify").write_text(notify.replace(logger, "echo"))
    said = subprocess.run(
        ["sh", str(tmp_path / "notify"), "INSTANCE", "halfbridge_relay", "MASTER", "100"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert said == "-- gw1 now holds the PP's address 198.51.100.10/24 on eth1 (priority 100)\n"


class _Relay(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def health_check(tmp_path):
    """Run the rendered check against 127.0.0.1:PORT; returns (exit code, seconds)."""

    def run(port: int) -> tuple[int, float]:
        directory = tmp_path / f"check-{port}"
        directory.mkdir()
        done = render(directory, relay_vip_health_host="127.0.0.1", relay_vip_health_port=port)
        assert done.returncode == 0, done.stdout[-3000:]
        started = time.monotonic()
        code = subprocess.run(
            [sys.executable, "-I", str(directory / "gw1-relay-health")], timeout=10, check=False
        ).returncode
        return code, time.monotonic() - started

    return run


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_the_check_passes_only_when_the_relay_says_it_is_healthy(health_check, status, code):
    handler = type("Relay", (_Relay,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert health_check(server.server_address[1])[0] == code
        finally:
            server.shutdown()


def test_the_check_fails_on_a_relay_that_is_not_there_or_never_answers(health_check):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert health_check(port)[0] == 1
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        code, seconds = health_check(silent.getsockname()[1])
    # Failed by its own timeout (0.8 s), before keepalived's (1 s) would kill it.
    assert code == 1 and seconds < 1.0 + 0.5


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            {"halfbridge_gateway": {"gw1": CLUSTER["all"]["children"]["halfbridge_gateway"]["hosts"]["gw1"]}},
            "halfbridge_gateway has only gw1: the VIP moves between gateways, and there is no other",
        ),
        ({"vip": {"address": "198.51.100.10", "prefix": 24, "router_id": 300}}, "a VRRP virtual router id is 1 to 255"),
        (
            {"vip": {"address": "198.51.100.12", "prefix": 24, "router_id": 51}},
            "is also the interconnect address of a gateway",
        ),
    ],
)
def test_what_keepalived_cannot_be_given_is_refused_with_a_sentence(tmp_path, change, said):
    inventory = json.loads(json.dumps(CLUSTER))
    gateways = inventory["all"]["children"]["halfbridge_gateway"]
    if "halfbridge_gateway" in change:
        gateways["hosts"] = change["halfbridge_gateway"]
    if "vip" in change:
        gateways["vars"]["stream_relay_vip"] = change["vip"]
    done = render(tmp_path, inventory)
    assert done.returncode != 0
    assert said in " ".join(done.stdout.split()), done.stdout[-3000:]


INTERFACE_PLAY = """
- name: The interconnect interface, found among this machine's own
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Find the interface that holds the address
      ansible.builtin.include_role:
        name: relay_vip
        tasks_from: interface
        public: true
    - name: Say which
      ansible.builtin.debug:
        msg: "interface={{ __relay_vip_interface }}"
"""


def local_ipv4() -> dict[str, str]:
    """This machine's interfaces other than loopback, and their first IPv4 address."""
    if shutil.which("ip") is None:
        return {}
    listing = subprocess.run(["ip", "-4", "-o", "address", "show"], capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = {}
    for line in listing.splitlines():
        fields = line.split()
        if fields[1] != "lo":
            found.setdefault(fields[1], fields[3].split("/")[0])
    return found


def find_interface(directory: Path, address: str) -> subprocess.CompletedProcess:
    (directory / "play.yml").write_text(INTERFACE_PLAY, encoding="utf-8")
    extra = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "stream_relay_interconnect_address": address,
    }
    (directory / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    return ansible_playbook(
        "-i", "localhost,", str(directory / "play.yml"), "-e", f"@{directory / 'extra.json'}", timeout=120
    )  # fmt: skip


@pytest.mark.skipif(not local_ipv4(), reason="no interface with an IPv4 address here")
def test_the_interface_is_the_one_that_holds_the_interconnect_address(tmp_path):
    interface, address = sorted(local_ipv4().items())[-1]
    done = find_interface(tmp_path, address)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"interface={interface}" in done.stdout


def test_a_gateway_without_its_interconnect_address_is_refused_with_a_sentence(tmp_path):
    done = find_interface(tmp_path, "203.0.113.254")
    assert done.returncode != 0
    said = " ".join(done.stdout.split())
    assert "No interface of localhost has 203.0.113.254 (stream_relay_interconnect_address)" in said, said[-2000:]
