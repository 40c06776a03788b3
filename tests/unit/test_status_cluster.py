"""halfbridge-status on a gateway of a cluster: etcd's members and quorum, the PP's address, who records each camera.

The gateway is tests/unit/test_status.py's (a real quota daemon, recorder status files, indexes...), made a
cluster's by a quotad.json whose backend is etcd. Its etcd members are fakes on loopback that answer as etcd's
JSON gateway does (TLS, the client's certificate required): healthy, without a leader, silent, or absent; the
PP's address is one this host has (127.0.0.1) or has not.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from halfbridge import status
from tests.support.inventory import ROOT
from tests.support.pki import TestCA
from tests.unit.test_status import Gateway, quotad, section  # noqa: F401 (quotad: the fixture)

NO_LEADER = {"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}


class FakeMember:
    """One etcd member's JSON gateway: `leader` is the member id it follows (0: none, it refuses everything);
    `silent`, it reads requests and never answers (a member cut off, or stopped by SIGSTOP)."""

    def __init__(self, ca: TestCA, name: str, ident: int, leader: int, http10: bool = False) -> None:
        self.name, self.ident, self.leader = name, ident, leader
        self.silent, self.closing = False, threading.Event()
        self.cluster: list[FakeMember] = []
        cert, key = ca.issue(f"etcd-{name}", server=True, addresses=("127.0.0.1",))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.path))
        context.load_cert_chain(cert, key)
        context.verify_mode = ssl.CERT_REQUIRED  # as etcd's --client-cert-auth
        member = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0" if http10 else "HTTP/1.1"  # etcd's gateway keeps the connection open

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if member.silent:
                    member.closing.wait(30)
                    return
                body = json.dumps(member.answer(self.path)).encode()
                self.send_response(503 if b'"error"' in body else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str) -> dict:
        if not self.leader:
            return NO_LEADER
        header = {"cluster_id": "1", "member_id": str(self.ident), "raft_term": "2"}
        if path == "/v3/maintenance/status":
            return {"header": header, "version": "3.4.23", "leader": str(self.leader), "raftIndex": "11"}
        if path == "/v3/cluster/member/list":
            members = [{"ID": str(m.ident), "name": m.name, "clientURLs": [m.url]} for m in self.cluster]
            return {"header": header, "members": members}
        if path == "/v3/kv/range":
            return {"header": {**header, "revision": "7"}}
        return {"error": "unknown path", "code": 12, "message": "Not Implemented"}

    def close(self) -> None:
        if not self.closing.is_set():
            self.closing.set()
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def ca(tmp_path) -> TestCA:
    (tmp_path / "etcd-ca").mkdir()
    return TestCA(tmp_path / "etcd-ca", "etcd test CA")


@pytest.fixture
def members(ca):
    """gw1, gw2 and ops, gw1 leading; a test changes one before the command runs."""
    made = [FakeMember(ca, name, ident, leader=101) for name, ident in (("gw1", 101), ("gw2", 102), ("ops", 103))]
    for member in made:
        member.cluster = made
    yield made
    for member in made:
        member.close()


@pytest.fixture
def gw(tmp_path, quotad, ca, members) -> Gateway:  # noqa: F811 (quotad: the fixture imported)
    """gw1 of a cluster: quotad.json with the etcd backend, the PP's address on this host, cam-a recorded here
    and cam-b by gw2."""
    gateway = Gateway(tmp_path / "gw", quotad)
    cert, key = ca.issue("gw1-quotad")
    config = {
        "socket": str(quotad),
        "limit": 10,
        "ttl": 15,
        "backend": "etcd",
        "etcd": {
            "endpoints": [member.url for member in members],
            "ca_file": str(ca.path),
            "cert_file": str(cert),
            "key_file": str(key),
            "gateway": "gw1",
        },
    }
    (gateway.etc / "quotad.json").write_text(json.dumps(config))
    (gateway.etc / "vip.json").write_text(json.dumps({"address": "127.0.0.1", "prefix": 8}))
    holds(gateway, "cam-a", "gw1", "2026-12-02T09:00:00Z")
    stands_by(gateway, "cam-b", "gw2")
    return gateway


def holds(gw: Gateway, camera: str, holder: str, since: str) -> None:
    gw.status_file(
        camera,
        state="recording",
        updated=since,
        cluster={"gateway": "gw1", "role": "holder", "holder": holder, "held_since": since},
    )


def stands_by(gw: Gateway, camera: str, holder: str | None) -> None:
    gw.status_file(
        camera,
        state="standby",
        updated="2026-12-02T09:00:00Z",
        cluster={"gateway": "gw1", "role": "standby", "holder": holder, "held_since": None},
    )


def test_a_nominal_cluster_shows_the_quorum_the_leader_the_address_held_and_who_records_what(gw):
    code, table = gw.status()
    assert code == 0, table
    lines = section(table, "CLUSTER")
    assert lines[0].split(None, 1)[1] == (
        "etcd quorum, 3/3 members healthy, leader gw1; the PP's address 127.0.0.1 held here"
    )
    etcd = [line.split() for line in lines[1:4]]
    assert [row[:2] + row[3:] for row in etcd] == [
        ["etcd", "gw1", "healthy,", "leader"],
        ["etcd", "gw2", "healthy"],
        ["etcd", "ops", "healthy"],
    ]
    assert [line.split(None, 1)[1] for line in lines[4:]] == ["gw1 (here)  cam-a", "gw2         cam-b"]
    # cam-b's recorder here stands by while gw2 records it: nothing needs attention.
    cameras = section(table, "CAMERAS")
    assert "1/2 recording here, 1 by other gateways" in cameras[0] and "not recording" not in cameras[0]
    assert cameras[2].split()[:2] == ["cam-b", "standby"]
    assert table.index("CLUSTER") < table.index("FLOWS")


def test_the_json_says_the_same_with_every_key_the_documentation_shows(gw):
    code, report = gw.report()
    assert code == 0, report["attention"]
    part = report["cluster"]
    assert (part["gateway"], part["quorum"], part["members_healthy"], part["members_total"]) == ("gw1", True, 3, 3)
    assert part["leader"] == "gw1" and (part["vip"], part["vip_held_here"]) == ("127.0.0.1", True)
    assert [(m["name"], m["state"], m["leader"]) for m in part["members"]] == [
        ("gw1", "healthy", True),
        ("gw2", "healthy", False),
        ("ops", "healthy", False),
    ]
    assert part["recorded_by"] == [
        {"camera": "cam-a", "gateway": "gw1", "here": True, "held_since": "2026-12-02T09:00:00Z"},
        {"camera": "cam-b", "gateway": "gw2", "here": False, "held_since": None},
    ]
    assert report["cameras"]["not_recording"] == []
    blocks = re.findall(r"```json\n(.*?)\n```", (ROOT / "docs/status.md").read_text(), re.S)
    documented = next(json.loads(block) for block in blocks if '"cluster"' in block)["cluster"]
    assert set(part) == set(documented)
    assert set(part["members"][0]) == set(documented["members"][0])
    assert set(part["recorded_by"][0]) == set(documented["recorded_by"][0])


def test_a_member_that_does_not_answer_or_has_no_leader_is_shown_so_and_the_quorum_holds(gw, members):
    silent = members[2]
    silent.silent = True
    members[1].leader = 0  # gw2 lost its leader (cut off from the others)
    code, report = gw.report("--timeout", "4")
    _, table = gw.status("--timeout", "4")
    assert code == 1
    part = report["cluster"]
    assert (part["quorum"], part["members_healthy"], part["members_total"], part["leader"]) == (True, 1, 3, "gw1")
    assert [(m["name"], m["state"]) for m in part["members"]] == [
        ("gw1", "healthy"),
        ("gw2", "no leader"),
        ("ops", "no answer"),  # named by the member list gw1 answered
    ]
    assert part["members"][2]["problem"] == "no answer within 1 s"  # a quarter of --timeout
    said = "\n".join(part["attention"])
    assert f"etcd member gw2 ({members[1].url}) has no leader" in said
    assert f"etcd member ops ({silent.url}) does not answer (no answer within 1 s)" in said
    assert "the cluster holds while a majority (2 of 3) is healthy" in said
    assert "etcd quorum, 1/3 members healthy, leader gw1" in section(table, "CLUSTER")[0]
    assert "Traceback" not in table


def test_members_without_a_leader_are_a_lost_quorum(gw, members):
    for member in members:
        member.leader = 0
    code, report = gw.report()
    _, table = gw.status()
    assert code == 1
    part = report["cluster"]
    assert (part["quorum"], part["members_healthy"], part["leader"]) == (False, 0, None)
    assert {m["state"] for m in part["members"]} == {"no leader"}
    assert any(sentence.startswith("cluster: etcd has no quorum") for sentence in report["attention"])
    assert section(table, "CLUSTER")[0].split(None, 1)[1].startswith("ETCD HAS NO QUORUM, 0/3 members healthy")


def test_no_member_reachable_is_said_per_member_never_a_traceback(gw, members):
    for member in members:
        member.close()
    code, report = gw.report()
    assert code == 1 and report["cluster"]["error"] is None
    assert [m["state"] for m in report["cluster"]["members"]] == ["no answer"] * 3
    assert all("cannot connect" in m["problem"] for m in report["cluster"]["members"])
    assert report["cluster"]["members_total"] == 3 and report["cluster"]["quorum"] is False


def test_the_pps_address_not_on_this_host_is_held_elsewhere_and_without_vip_json_none_is_said(gw):
    (gw.etc / "vip.json").write_text(json.dumps({"address": "192.0.2.99", "prefix": 24}))
    code, report = gw.report()
    assert code == 0 and (report["cluster"]["vip"], report["cluster"]["vip_held_here"]) == ("192.0.2.99", False)
    assert "the PP's address 192.0.2.99 held elsewhere" in section(gw.status()[1], "CLUSTER")[0]
    (gw.etc / "vip.json").unlink()
    _, report = gw.report()
    assert (report["cluster"]["vip"], report["cluster"]["vip_held_here"]) == (None, None)


def test_a_camera_no_gateway_holds_needs_attention(gw):
    stands_by(gw, "cam-b", None)
    code, report = gw.report()
    assert code == 1 and report["cameras"]["not_recording"] == ["cam-b"]
    assert "cameras: camera cam-b is recorded by no gateway" in "\n".join(report["attention"])
    assert report["cluster"]["recorded_by"][1]["gateway"] is None
    assert any(line.split()[:3] == ["records", "nobody", "cam-b"] for line in section(gw.status()[1], "CLUSTER"))


def test_a_single_gateway_shows_no_cluster(gw):
    """No quotad.json, or one of the memory backend: the report is the single gateway's, without a cluster part."""
    config = json.loads((gw.etc / "quotad.json").read_text())
    for quotad_json in (None, {key: config[key] for key in ("socket", "limit", "ttl")}):
        if quotad_json is None:
            (gw.etc / "quotad.json").unlink()
        else:
            (gw.etc / "quotad.json").write_text(json.dumps(quotad_json))
        _, report = gw.report()
        _, table = gw.status()
        assert "cluster" not in report and "CLUSTER" not in table
        parts = [name for name in status.READERS if name != "cluster"]
        assert list(report) == ["host", "version", "checked_at", "ok", "attention", *parts]


def test_this_hosts_addresses_are_read_from_ip():
    with contextlib.suppress(FileNotFoundError):
        assert status.ipaddress.ip_address("127.0.0.1") in status._local_addresses(5.0)
        return
    pytest.skip("no ip command (iproute2) on this host")


def test_a_bad_etcd_section_is_the_parts_sentence(gw):
    config = json.loads((gw.etc / "quotad.json").read_text())
    config["etcd"]["endpoints"] = ["http://127.0.0.1:2379"]
    (gw.etc / "quotad.json").write_text(json.dumps(config))
    _, report = gw.report()
    assert "is not https://HOST:PORT" in report["cluster"]["error"]
    assert report["flows"]["error"] is None  # the other parts still show


def test_a_member_that_closes_the_connection_after_its_answer_is_read_as_well(ca):
    """HTTP/1.0, or "Connection: close" (a proxy in front of etcd): the client reads the answer all the same."""
    from halfbridge.etcd_sync import SyncEtcd
    from halfbridge.etcd_wire import EtcdSettings

    member = FakeMember(ca, "gw1", 101, leader=101, http10=True)
    cert, key = ca.issue("gw1-quotad")
    try:
        client = SyncEtcd(EtcdSettings([member.url], ca.path, cert, key, timeout=2.0))
        assert client.ask(member.url, "/v3/maintenance/status", {})["leader"] == "101"
        assert client.range("health") == []
    finally:
        member.close()


def test_the_playbooks_table_says_the_quorum_and_which_gateway_holds_the_pps_address(gw):
    from tests.unit.test_status import load_filter

    _, here = gw.status("--json")
    (gw.etc / "vip.json").write_text(json.dumps({"address": "192.0.2.99", "prefix": 24}))
    _, elsewhere = gw.status("--json")
    status_table = load_filter().status_table

    table = status_table({"gw1": {"rc": 0, "stdout": here}, "gw2": {"rc": 0, "stdout": elsewhere}})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["GATEWAY", "STATUS", "CLUSTER"]
    assert lines[1].split()[:6] == ["gw1", "ok", "quorum", "3/3,", "holds", "VIP"]
    assert lines[2].split()[:4] == ["gw2", "ok", "quorum", "3/3"] and "VIP" not in lines[2]
    assert "Needs attention" not in table

    nobody = status_table({"gw1": {"rc": 0, "stdout": elsewhere}, "gw2": {"rc": 0, "stdout": elsewhere}})
    assert "- cluster: no gateway that answered holds the PP's address 192.0.2.99" in nobody
    both = status_table({"gw1": {"rc": 0, "stdout": here}, "gw2": {"rc": 0, "stdout": here}})
    assert "- cluster: gw1 and gw2 each hold the PP's address 127.0.0.1" in both
