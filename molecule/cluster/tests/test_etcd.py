"""The cluster's etcd as its clients meet it (docs/etcd.md), on the management network of inventories/lab-cluster.

Three members, healthy over TLS; a client without a certificate, or with one from another CA, is refused
on the client and the peer ports alike; one member stopped, the two others still admit a write; back,
it has caught up.
"""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import put
from tests.support.waiting import wait_for

CLUSTER = ROOT / "inventories" / "lab-cluster"
MEMBERS = ("gw1", "gw2", "ops")
TLS = "/etc/etcd/tls"
ETCDCTL = "/usr/local/sbin/halfbridge-etcdctl"
PROBES = "/root/etcd-tests"
# A GET of /health on https://ADDRESS:PORT trusting the servers CA, with a client certificate if given:
# {"status": ..., "body": ...}, or {"error": ...} when the TLS handshake or the request fails.
PROBE = """
import http.client, json, ssl, sys
address, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], *(sys.argv[4:6] or [None, None])
context = ssl.create_default_context(cafile=ca)
if cert:
    context.load_cert_chain(cert, key)
try:
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=5)
    connection.request("GET", "/health")
    answer = connection.getresponse()
    print(json.dumps({"status": answer.status, "body": answer.read(4096).decode()}))
except (OSError, ssl.SSLError, http.client.HTTPException) as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
"""


def address(member: str) -> str:
    return host_var(member, "halfbridge_cluster_address", CLUSTER)


def endpoint(member: str) -> str:
    return f"https://{address(member)}:2379"


def etcdctl(host, *arguments: str, endpoints: tuple[str, ...] = ()):
    """halfbridge-etcdctl on `host` (the member's certificate), towards `endpoints` (the members by default)."""
    chosen = f"ETCDCTL_ENDPOINTS={','.join(endpoints)} " if endpoints else ""
    return host.run(f"{chosen}{ETCDCTL} {shlex.join(arguments)}")


@pytest.fixture(scope="module")
def gw1(lab_host):
    """gw1, with the probe and a client certificate from rogue-ca (the lab's agent-lab-05)."""
    host = lab_host("gw1")
    pki = Path(str(host_var("gw1", "lab_pki_dir", CLUSTER)))
    host.check_output(f"install -d -m 0700 {PROBES}")
    put(host, f"{PROBES}/probe.py", PROBE.encode(), mode="0600")
    for suffix in ("crt", "key"):
        put(host, f"{PROBES}/rogue.{suffix}", (pki / f"agent-lab-05.{suffix}").read_bytes(), mode="0600")
    yield host
    host.run(f"rm -rf {PROBES}")


def probe(host, member: str, port: int = 2379, cert: str | None = None, key: str | None = None) -> dict:
    arguments = [f"{PROBES}/probe.py", address(member), str(port), f"{TLS}/ca.crt", *([cert, key] if cert else [])]
    return json.loads(host.check_output(shlex.join(["python3", *arguments])))


def own_copy(host, member: str, key: str) -> str:
    """`key` as `member` itself holds it (a serializable read: no quorum asked), from `host`."""
    answer = etcdctl(host, "get", key, "--consistency=s", "--print-value-only", endpoints=(endpoint(member),))
    return answer.stdout.strip()


def test_the_three_members_are_healthy_over_tls(lab_host):
    gw1 = lab_host("gw1")
    answer = etcdctl(gw1, "endpoint", "health", "--cluster", "-w", "json")
    assert answer.rc == 0, answer.stderr
    health = {entry["endpoint"]: entry["health"] for entry in json.loads(answer.stdout)}
    assert health == {endpoint(m): True for m in MEMBERS}
    members = json.loads(etcdctl(gw1, "member", "list", "-w", "json").stdout)["members"]
    assert {m["name"]: m["peerURLs"] for m in members} == {m: [f"https://{address(m)}:2380"] for m in MEMBERS}
    for member in MEMBERS:
        host = lab_host(member)
        assert host.service("etcd").is_enabled
        data = host.file("/var/lib/etcd/halfbridge")
        assert (data.user, data.mode) == ("etcd", 0o700)
        key = host.file(f"{TLS}/member.key")
        assert (key.user, key.group, key.mode) == ("root", "etcd", 0o640)
        # The package's default member never ran as a cluster of its own.
        assert not host.file("/var/lib/etcd/default").exists


def test_a_client_without_a_certificate_is_refused_by_every_member(gw1):
    for member in MEMBERS:
        # The control: the same probe with the member's certificate is answered.
        answered = probe(gw1, member, cert=f"{TLS}/member.crt", key=f"{TLS}/member.key")
        assert answered.get("status") == 200 and '"health":"true"' in answered["body"], answered
        for port in (2379, 2380):
            refused = probe(gw1, member, port)
            assert "error" in refused, f"{member}:{port} answered a client without a certificate: {refused}"


def test_a_certificate_from_another_ca_is_refused_by_every_member(gw1):
    for member in MEMBERS:
        for port in (2379, 2380):
            refused = probe(gw1, member, port, cert=f"{PROBES}/rogue.crt", key=f"{PROBES}/rogue.key")
            assert "error" in refused, f"{member}:{port} answered a rogue-ca certificate: {refused}"


def test_two_members_keep_the_quorum_and_the_third_catches_up(lab_host):
    gw1, gw2, ops = lab_host("gw1"), lab_host("gw2"), lab_host("ops")
    key, value = f"/halfbridge-tests/{uuid.uuid4().hex}", uuid.uuid4().hex
    ops.check_output("systemctl stop etcd.service")
    try:
        written = etcdctl(gw1, "put", key, value, endpoints=(endpoint("gw1"),))
        assert written.rc == 0, f"two members of three refused a write: {written.stderr}"
        read = etcdctl(gw2, "get", key, "--print-value-only", endpoints=(endpoint("gw2"),))
        assert read.stdout.strip() == value
    finally:
        # Ready (systemd's notification) once it is back in the cluster.
        ops.check_output("systemctl start etcd.service")
    wait_for(lambda: own_copy(ops, "ops", key) == value, 30, "ops to catch up with the write made while it was down")
    assert etcdctl(ops, "endpoint", "health", "--cluster").rc == 0
    etcdctl(gw1, "del", key)
