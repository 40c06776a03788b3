"""A suspension of the interconnect (article 8) as the relay lives it: open flows end, new ones are refused."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from halfbridge.audit import AuditClient
from halfbridge.interconnect import Interconnect
from halfbridge.quotad import QuotaClient
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for


@pytest.fixture
def lab(tmp_path, camera):
    cameras = [{"id": camera.id, "name": "Simulated", "site": "Test"}]
    relay = RelayLab(tmp_path, cameras, interconnect_state=str(tmp_path / "interconnect.json"))
    relay.start()
    relay.record(camera)
    yield relay
    relay.stop()


def _state(lab: RelayLab) -> Interconnect:
    return Interconnect(lab.workdir / "interconnect.json", AuditClient(lab.auditd.socket))


def _read_until_end(response, budget: float) -> float:
    """Read a flow until the relay ends it; returns when that happened (monotonic)."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            if not response.read1(65536):
                return time.monotonic()
        except (OSError, http.client.HTTPException):  # the relay closed the connection mid-chunk
            return time.monotonic()
    raise AssertionError(f"the flow was still open {budget} s after the suspension")


def test_a_suspension_ends_the_open_flow_and_refuses_new_requests_until_restored(lab, camera):
    flow = lab.open(f"/v1/cameras/{camera.id}/live")
    assert flow.status == 200
    assert len(flow.read1(65536)) > 0
    flow.fp.raw._sock.settimeout(10)

    cut = time.monotonic()
    _state(lab).suspend("INC-2026-042", "compromission suspectée du poste d'exploitation", 8)
    ended = _read_until_end(flow, 10)
    assert ended - cut < 3, f"the flow ended {ended - cut:.1f} s after the suspension"
    flow.close()
    wait_for(lambda: QuotaClient(lab.socket).leases()["in_use"] == 0, 10, "the cut flow's slot to be released")

    end = wait_for(lambda: [e for e in lab.audit() if e["event"] == "flow.end"], 10, "the flow.end entry")[0]
    assert end["ended"] == "the interconnect was suspended (incident INC-2026-042)"

    refused = lab.get("/v1/cameras")
    assert refused.status == 503
    problem = refused.json()
    assert problem["type"].endswith("interconnect-suspended")
    assert "INC-2026-042" in problem["detail"]
    assert lab.get(f"/v1/cameras/{camera.id}/live").status == 503
    assert QuotaClient(lab.socket).leases()["in_use"] == 0  # a refused flow takes no slot

    _state(lab).restore("INC-2026-042")
    assert lab.get("/v1/cameras").status == 200

    events = [e["event"] for e in lab.audit()]
    assert events.index("interconnect.suspended") < events.index("flow.end") < events.index("interconnect.restored")
    assert [e["status"] for e in lab.audit() if e["event"] == "relay.request"][:2] == [503, 503]
    assert lab.auditd.verify().ok  # relay and playbooks share one chain


def test_a_damaged_state_file_keeps_the_interconnect_closed(lab):
    assert lab.get("/v1/cameras").status == 200
    (lab.workdir / "interconnect.json").write_text("{not json")
    refused = lab.get("/v1/cameras")
    assert refused.status == 503
    assert "cannot be read" in refused.json()["detail"]
    (lab.workdir / "interconnect.json").write_text(json.dumps({"restored": {"incident": "INC-1"}}))
    assert lab.get("/v1/cameras").status == 200


def test_the_suspended_relay_says_so_on_the_management_side(lab):
    assert "halfbridge_interconnect_suspended 0" in lab.management("/metrics").body.decode()
    _state(lab).suspend("INC-7", "test", 8)
    health = lab.management("/healthz")
    assert health.status == 200 and health.json()["suspended_for"] == "INC-7"
    assert "halfbridge_interconnect_suspended 1" in lab.management("/metrics").body.decode()
    with socket.create_connection(("127.0.0.1", lab.port), timeout=5):
        pass  # the port stays open: cutting the PP off is the firewall's job, refusing is the relay's
