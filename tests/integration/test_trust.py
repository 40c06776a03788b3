"""The relay against the PP's smartcard PKI (article 6): chain and revocation at the TLS handshake,
fail closed without a current CRL, new CRLs taken without a restart, revoked agents' flows cut."""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl

import pytest

from tests.support.pki import TestCA
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for


@pytest.fixture
def lab(tmp_path, camera):
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    lab = RelayLab(
        tmp_path,
        [{"id": camera.id, "name": "Simulated", "site": "Test"}],
        crl_dir=str(crl_dir),
        designated_agents=["agent-dupont", "agent-martin", "agent-revoked", "agent-expired"],
    )
    lab.crl_path = crl_dir / "test-ca.crl"
    lab.ca.crl(lab.crl_path)
    lab.start()
    yield lab
    lab.stop()


def refused_at_handshake(lab: RelayLab, certificate) -> None:
    """The connection fails (under TLS 1.3 the client learns it at its first read): judged on the server side."""
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        lab.get("/v1/cameras", certificate=certificate)


def handshake_refusals(lab: RelayLab) -> list[dict]:
    return [e for e in lab.audit() if e["event"] == "auth.refused" and e.get("stage") == "handshake"]


def relay_log(lab: RelayLab) -> str:
    return (lab.workdir / "relay.log").read_text()


def test_each_certificate_the_pki_refuses_is_refused_at_the_handshake_and_its_reason_kept(lab):
    revoked = lab.ca.issue("agent-revoked")
    expired = lab.ca.issue("agent-expired", expired=True)
    lab.ca.crl(lab.crl_path, revoked=(revoked[0],))
    wait_for(lambda: "reloaded CRLs" in relay_log(lab), 10, "the relay to take the new CRL")
    (lab.workdir / "elsewhere").mkdir()
    foreign = TestCA(lab.workdir / "elsewhere", "Unknown CA").issue("agent-dupont")  # a CA the PP does not have

    for certificate in (revoked, expired, foreign):
        refused_at_handshake(lab, certificate)
    wait_for(lambda: len(handshake_refusals(lab)) == 3, 10, "three handshake refusals in the history")
    by_agent = {(e["agent"], e["issuer"]): e for e in handshake_refusals(lab)}
    assert "certificate revoked" in by_agent[("agent-revoked", "CN=Test CA,O=Halfbridge tests")]["reason"]
    assert "certificate has expired" in by_agent[("agent-expired", "CN=Test CA,O=Halfbridge tests")]["reason"]
    stranger_entry = by_agent[("agent-dupont", "CN=Unknown CA,O=Halfbridge tests")]
    assert "unable to get local issuer certificate" in stranger_entry["reason"]
    for entry in handshake_refusals(lab):
        assert entry["result"] == "refused" and entry["peer"] == "127.0.0.1"
        assert entry["serial"] and len(entry["fingerprint"]) == 64 and entry["subject"].startswith("CN=agent-")
    # The designated agent with a good certificate still gets in, and the refusals are counted.
    assert lab.get("/v1/cameras").status == 200
    metrics = lab.management("/metrics").body.decode()
    assert 'halfbridge_tls_handshakes_refused_total{reason="verify-23"} 1' in metrics  # revoked
    assert 'halfbridge_tls_handshakes_refused_total{reason="verify-10"} 1' in metrics  # expired
    assert "halfbridge_revocation_checkable 1" in metrics


def test_an_expired_crl_refuses_everyone_and_a_fresh_one_lets_them_in_without_a_restart(lab):
    assert lab.get("/v1/cameras").status == 200
    lab.ca.crl(lab.crl_path, hours=-0.5)  # what the PP published has run out: the gateway cannot know who is revoked
    wait_for(lambda: lab.management("/healthz").status == 503, 10, "the relay to notice the expired CRL")
    refused_at_handshake(lab, True)
    health = lab.management("/healthz").json()
    assert any("the CRL of CN=Test CA,O=Halfbridge tests expired at" in p for p in health["problems"]), health
    assert "revocation cannot be checked, nobody gets in" in relay_log(lab)
    assert "halfbridge_revocation_checkable 0" in lab.management("/metrics").body.decode()
    wait_for(lambda: handshake_refusals(lab), 10, "the refusal in the history")
    assert "CRL has expired" in handshake_refusals(lab)[-1]["reason"]

    pid = lab.relay.pid
    lab.ca.crl(lab.crl_path)  # a fresh CRL, as halfbridge-crl installs it
    wait_for(lambda: lab.management("/healthz").status == 200, 10, "the relay to take the fresh CRL")
    assert lab.get("/v1/cameras").status == 200
    assert lab.relay.pid == pid and lab.relay.poll() is None
    assert "every CRL is current again" in relay_log(lab)


def test_a_ca_without_its_crl_refuses_everyone(lab):
    lab.crl_path.unlink()
    wait_for(lambda: lab.management("/healthz").status == 503, 10, "the relay to notice the missing CRL")
    refused_at_handshake(lab, True)
    wait_for(lambda: handshake_refusals(lab), 10, "the refusal in the history")
    assert "unable to get certificate CRL" in handshake_refusals(lab)[-1]["reason"]
    assert any("there is no CRL of CN=Test CA" in p for p in lab.management("/healthz").json()["problems"])


def test_an_agent_revoked_during_a_live_flow_loses_it_at_the_next_refresh_and_cannot_start_another(lab, camera):
    lab.record(camera)
    martin = lab.ca.issue("agent-martin")
    dupont_flow = lab.open(f"/v1/cameras/{camera.id}/live")
    martin_flow = lab.open(f"/v1/cameras/{camera.id}/live", certificate=martin)
    assert dupont_flow.status == 200 and dupont_flow.read1(65536)
    assert martin_flow.status == 200 and martin_flow.read1(65536)
    kept_alive = lab.connect()  # a connection whose handshake came before the revocation
    kept_alive.request("GET", "/v1/cameras")
    assert kept_alive.getresponse().read() and kept_alive.sock is not None

    lab.ca.crl(lab.crl_path, revoked=(lab.client_cert,))  # the PP revokes agent-dupont's card
    ends = lambda: [e for e in lab.audit() if e["event"] == "flow.end"]  # noqa: E731
    wait_for(ends, 10, "the revoked agent's flow to end")
    (end,) = ends()
    assert end["agent"] == "agent-dupont" and end["ended"] == "the agent's certificate was revoked (CRL refresh)"
    with contextlib.suppress(ssl.SSLError, ConnectionError, http.client.HTTPException):
        while dupont_flow.read1(65536):  # what was in flight, then the end (or a reset)
            pass
    dupont_flow.close()
    kept_alive.request("GET", "/v1/cameras")  # its next request is refused too
    answer = kept_alive.getresponse()
    assert answer.status == 403 and json.loads(answer.read())["type"].endswith(":certificate-revoked")
    refused_at_handshake(lab, True)
    wait_for(lambda: handshake_refusals(lab), 10, "the refusal in the history")
    assert handshake_refusals(lab)[-1]["agent"] == "agent-dupont"
    assert "certificate revoked" in handshake_refusals(lab)[-1]["reason"]
    # The other agent's flow goes on.
    assert martin_flow.read1(65536)
    martin_flow.close()
