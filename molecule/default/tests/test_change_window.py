"""Article 8's change window on the lab: a change the PP sees needs a major change notified 30 days ahead.

Each refused run is a real `site.yml`: it stops before any host is touched. The run that goes
through is the change window and the baseline alone (playbooks/change_window.yml then
change_baseline.yml), so that the lab is not redeployed; the baseline is put back after it.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import subprocess
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import ROOT, host_var

BASELINE = "/var/lib/halfbridge/interconnect-baseline.json"
AUDIT = "/var/log/halfbridge/audit.log"
# What a refused run must leave as it was on the gateway.
WATCHED = f"{BASELINE} /etc/halfbridge/relay.json /etc/halfbridge/firewall.nft /etc/halfbridge/quotad.json"


def play(*playbooks: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", *playbooks, *(["-e", json.dumps(extra)] if extra else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


def ago(days: int) -> str:
    return (dt.datetime.now(ZoneInfo("Europe/Paris")).date() - dt.timedelta(days=days)).isoformat()


@pytest.fixture(scope="module")
def peers_added() -> dict:
    """A change the PP sees: a second address of its half-gateway."""
    return {"halfbridge_pp_peers": [*host_var("gw", "halfbridge_pp_peers"), "198.51.100.40/32"]}


def register(days_ago: int) -> dict:
    return {"halfbridge_changes": [{"id": "CHG-LAB-1", "summary": "second PP address", "major": True,
                                    "notified_on": ago(days_ago)}]}  # fmt: skip


def test_the_deployment_recorded_what_the_pp_sees(lab_host, cameras):
    baseline = json.loads(lab_host("gw").check_output(f"cat {BASELINE}"))
    assert baseline["pp_peers"] == ["198.51.100.30/32"] and baseline["max_simultaneous_flows"] == 10
    assert [c["id"] for c in baseline["cameras"]] == sorted(c["id"] for c in cameras)
    assert "password" not in json.dumps(baseline) and "rtsp" not in json.dumps(baseline)


def test_a_change_notified_29_days_ago_is_refused_and_nothing_changes(lab_host, peers_added):
    gw = lab_host("gw")
    before = gw.check_output(f"sha256sum {WATCHED}")
    done = play("site.yml", extra={**peers_added, **register(29)})
    assert done.returncode != 0
    text = said(done)
    assert "This deployment changes what the PP sees of the interconnect: pp_peers:" in text
    assert f"CHG-LAB-1, notified on {ago(29)}, may go live on {ago(-1)}" in text
    assert "Nothing was changed" in text
    assert "TASK [gateway_base" not in done.stdout  # stopped before the gateway's roles
    assert gw.check_output(f"sha256sum {WATCHED}") == before


def test_at_30_days_the_change_goes_through_and_the_baseline_moves(lab_host, peers_added):
    gw = lab_host("gw")
    try:
        playbooks = ("playbooks/change_window.yml", "playbooks/change_baseline.yml")
        done = play(*playbooks, extra={**peers_added, **register(30)})
        assert done.returncode == 0, done.stdout[-3000:]
        assert "Change CHG-LAB-1 (notified on" in said(done)
        assert "198.51.100.40/32" in json.loads(gw.check_output(f"cat {BASELINE}"))["pp_peers"]
    finally:  # the lab's firewall never got the address: the baseline goes back to what is deployed
        back = play("playbooks/change_baseline.yml")
        assert back.returncode == 0, back.stdout[-3000:]
    assert json.loads(gw.check_output(f"cat {BASELINE}"))["pp_peers"] == ["198.51.100.30/32"]


def test_a_change_the_pp_cannot_see_needs_no_notice():
    done = play("playbooks/change_window.yml", extra={"recorder_backoff_cap": 11, "stream_relay_lease_ttl": 8})
    assert done.returncode == 0 and "Nothing the PP sees of the interconnect changes" in said(done)


def test_an_emergency_change_goes_through_and_is_in_the_audit_log(lab_host, peers_added):
    done = play("playbooks/change_window.yml", extra={**peers_added, "change_window_emergency": "INC-LAB-0099"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Emergency change under incident INC-LAB-0099" in said(done)
    entries = lab_host("gw").check_output(f'grep -a \'"event":"change.emergency"\' {AUDIT}').splitlines()
    entry = json.loads(entries[-1])
    assert entry["incident"] == "INC-LAB-0099"
    assert entry["changes"][0]["path"] == "pp_peers" and "198.51.100.40/32" in entry["changes"][0]["after"]
    assert lab_host("gw").run(f"/opt/halfbridge/venv/bin/halfbridge-audit verify {AUDIT}").rc == 0


def test_the_change_notice_tells_each_pp_contact_once_and_starts_the_30_days(lab_host, peers_added):
    gw, pp = lab_host("gw"), lab_host("pp")
    undated = {"halfbridge_changes": [{"id": "CHG-LAB-2", "summary": "Deuxième adresse de la demi-passerelle PP",
                                       "major": True}]}  # fmt: skip
    extra = {**peers_added, **undated, "change": "CHG-LAB-2"}
    sent = play("playbooks/change-notice.yml", extra=extra)
    assert sent.returncode == 0, sent.stdout[-3000:]
    names = pp.check_output("grep -l 'X-Halfbridge-Change: CHG-LAB-2' /var/lib/smtp-sink/Maildir/new/* || true").split()
    notices = [
        email.message_from_bytes(pp.check_output(f"cat {n}").encode(), policy=email.policy.default) for n in names
    ]
    contacts = host_var("gw", "halfbridge_contacts")["pp"]
    assert sorted(m["To"].addresses[0].addr_spec for m in notices) == sorted(c["email"] for c in contacts)
    body = notices[0].get_body(("plain",)).get_content()
    assert "Référence du changement : CHG-LAB-2" in body and "pp_peers" in body and "198.51.100.40/32" in body
    assert f"Mise en service au plus tôt le : {ago(-30)}" in body
    [entry] = [json.loads(line) for line in gw.check_output(f"grep -a CHG-LAB-2 {AUDIT}").splitlines()]
    assert entry["event"] == "change.notified" and entry["sent_on"] == ago(0) and entry["earliest"] == ago(-30)

    again = play("playbooks/change-notice.yml", extra=extra)
    assert again.returncode == 0 and f"The notice of CHG-LAB-2 was sent on {ago(0)}" in said(again)
    assert (
        len(pp.check_output("grep -l 'X-Halfbridge-Change: CHG-LAB-2' /var/lib/smtp-sink/Maildir/new/*").split()) == 2
    )

    # The change window counts from the day the notice left: 30 days to go.
    refused = play("playbooks/change_window.yml", extra=extra)
    assert refused.returncode != 0
    assert f"CHG-LAB-2, notified on {ago(0)}, may go live on {ago(-30)}" in said(refused)
